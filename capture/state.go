package capture

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/IBM/sarama"
)

// Snapshot states kept in the capture-state topic.
const (
	snapshotRunning = "running"
	snapshotDone    = "done"
)

// captureState is the capture's record per slot in the capture-state topic.
type captureState struct {
	Slot     string `json:"slot"`
	Snapshot string `json:"snapshot"`
	// Types are the entity types the snapshot copies or copied.
	Types   []string  `json:"types"`
	Updated time.Time `json:"updated"`
}

// readState returns the latest state of slot, or the zero state when there
// is none. The topic is compacted and holds a record per slot, so reading it
// whole is cheap.
func readState(ctx context.Context, client sarama.Client, topic, slot string) (captureState, error) {
	var st captureState
	newest, err := client.GetOffset(topic, 0, sarama.OffsetNewest)
	if err != nil {
		return st, fmt.Errorf("capture state end offset: %w", err)
	}
	oldest, err := client.GetOffset(topic, 0, sarama.OffsetOldest)
	if err != nil {
		return st, fmt.Errorf("capture state start offset: %w", err)
	}
	if newest <= oldest {
		return st, nil
	}
	consumer, err := sarama.NewConsumerFromClient(client)
	if err != nil {
		return st, err
	}
	defer consumer.Close()
	pc, err := consumer.ConsumePartition(topic, 0, oldest)
	if err != nil {
		return st, fmt.Errorf("read capture state: %w", err)
	}
	defer pc.Close()
	timeout := time.NewTimer(30 * time.Second)
	defer timeout.Stop()
	for {
		select {
		case m := <-pc.Messages():
			if string(m.Key) == slot {
				var next captureState
				if m.Value == nil {
					next = captureState{} // a tombstone forgets the slot
				} else if err := json.Unmarshal(m.Value, &next); err != nil {
					return st, fmt.Errorf("capture state at offset %d: %w", m.Offset, err)
				}
				st = next
			}
			if m.Offset >= newest-1 {
				return st, nil
			}
		case err := <-pc.Errors():
			return st, fmt.Errorf("read capture state: %w", err)
		case <-timeout.C:
			return st, fmt.Errorf("read capture state: not read to offset %d within 30 s", newest-1)
		case <-ctx.Done():
			return st, ctx.Err()
		}
	}
}

// writeState records the snapshot state of slot; it returns once Kafka has it.
func writeState(client sarama.Client, topic, slot, snapshot string, types []string) error {
	producer, err := sarama.NewSyncProducerFromClient(client)
	if err != nil {
		return fmt.Errorf("capture state producer: %w", err)
	}
	defer producer.Close()
	value, err := json.Marshal(captureState{Slot: slot, Snapshot: snapshot, Types: types, Updated: time.Now().UTC()})
	if err != nil {
		return err
	}
	_, _, err = producer.SendMessage(&sarama.ProducerMessage{Topic: topic, Key: sarama.StringEncoder(slot), Value: sarama.ByteEncoder(value)})
	if err != nil {
		return fmt.Errorf("write capture state: %w", err)
	}
	return nil
}
