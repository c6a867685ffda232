package capture

import (
	"context"
	"fmt"
	"time"

	"github.com/IBM/sarama"

	"github.com/changes-dev/changes/codecs"
)

// lastWritten reads the last record of the single-partition history topic
// and returns its position, or the zero position (before every change) when
// the topic holds no record. The
// capture is the topic's only writer and writes in position order, so every
// change at or before this position is in the history already: after a crash
// PostgreSQL resends them from the slot's flush position, and the capture
// skips them instead of writing them twice.
func lastWritten(ctx context.Context, client sarama.Client, topic string) (pos codecs.Position, err error) {
	ev, err := lastEvent(ctx, client, topic)
	if err != nil || ev == nil {
		return pos, err
	}
	return ev.Position, nil
}

// lastEvent is the last event of the history, or nil when it holds none.
func lastEvent(ctx context.Context, client sarama.Client, topic string) (*codecs.Event, error) {
	newest, err := client.GetOffset(topic, 0, sarama.OffsetNewest)
	if err != nil {
		return nil, fmt.Errorf("history end offset: %w", err)
	}
	oldest, err := client.GetOffset(topic, 0, sarama.OffsetOldest)
	if err != nil {
		return nil, fmt.Errorf("history start offset: %w", err)
	}
	if newest <= oldest {
		return nil, nil
	}
	consumer, err := sarama.NewConsumerFromClient(client)
	if err != nil {
		return nil, err
	}
	defer consumer.Close()
	pc, err := consumer.ConsumePartition(topic, 0, newest-1)
	if err != nil {
		return nil, fmt.Errorf("read history at offset %d: %w", newest-1, err)
	}
	defer pc.Close()
	timeout := time.NewTimer(30 * time.Second)
	defer timeout.Stop()
	select {
	case m := <-pc.Messages():
		ev, err := codecs.EventCodec{}.Decode(m.Value)
		if err != nil {
			// Only the capture writes the history: a record it cannot read
			// means another writer, and skipping by it could lose changes.
			return nil, fmt.Errorf("the last history record (offset %d) is not an event, so the capture cannot tell what it already wrote: %w", m.Offset, err)
		}
		return ev, nil
	case err := <-pc.Errors():
		return nil, fmt.Errorf("read history at offset %d: %w", newest-1, err)
	case <-timeout.C:
		return nil, fmt.Errorf("read history at offset %d: no record within 30 s", newest-1)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}
