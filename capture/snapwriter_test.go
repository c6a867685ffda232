package capture

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/topology"
)

// testKafka is the Kafka config of the test stack (CHANGES_KAFKA_BROKERS)
// with records of at most maxRecordBytes. Without it the test is skipped,
// or fails under CI=true.
func testKafka(t *testing.T, maxRecordBytes int) topology.KafkaConfig {
	t.Helper()
	brokers := os.Getenv("CHANGES_KAFKA_BROKERS")
	if brokers == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("CHANGES_KAFKA_BROKERS is not set: run the tests through .ci/run")
		}
		t.Skip("CHANGES_KAFKA_BROKERS is not set: eval \"$(bash stack/stack.sh env)\" to run against the test stack")
	}
	cfg, err := topology.Parse(fmt.Appendf(nil, "kafka: {brokers: [%q], max_record_bytes: %d}\npostgres: {url: postgres://x/y}\nentities: [{type: item, table: item}]\n",
		strings.Split(brokers, ",")[0], maxRecordBytes))
	if err != nil {
		t.Fatal(err)
	}
	return cfg.Kafka
}

// testTopic creates a one-partition topic with configs for the test and
// deletes it afterwards.
func testTopic(t *testing.T, k topology.KafkaConfig, configs map[string]*string) string {
	t.Helper()
	b := make([]byte, 4)
	rand.Read(b)
	topic := "capture_test_" + hex.EncodeToString(b)
	admin, err := topology.NewClusterAdmin(k)
	if err != nil {
		t.Fatal(err)
	}
	if err := admin.CreateTopic(topic, &sarama.TopicDetail{NumPartitions: 1, ReplicationFactor: 1, ConfigEntries: configs}, false); err != nil {
		admin.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		admin.DeleteTopic(topic)
		admin.Close()
	})
	return topic
}

func snapshotEvent(id int64, index uint32, taken time.Time) *codecs.Event {
	return &codecs.Event{EntityType: "item", EntityID: codecs.IntKey(id), Op: codecs.OpSnapshot,
		After:     codecs.Row{"id": []byte(fmt.Sprint(id)), "pad": []byte(`"` + strings.Repeat("x", int(id%300)) + `"`)},
		CommitLSN: 99, Position: codecs.Position{CommitLSN: 99, Index: index}, CommitTime: taken, CaptureTime: time.Now().UTC()}
}

// TestSnapshotWriter writes records in many batches, several in flight,
// and reads back exactly those records in order: keys, values, headers
// and timestamps.
func TestSnapshotWriter(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	k := testKafka(t, 16<<10) // batches of at most 16 KiB: many
	topic := testTopic(t, k, nil)
	w, err := newSnapshotWriter(k, topic)
	if err != nil {
		t.Fatal(err)
	}
	taken := time.Date(2026, 1, 2, 3, 4, 5, 678912000, time.UTC)
	const n = 3000
	var want []*sarama.ProducerMessage
	for i := range n {
		msg, err := historyRecord(topic, intTable("s", "item", "item", "id"), snapshotEvent(int64(i+1), uint32(i), taken), k.MaxRecordBytes)
		if err != nil {
			t.Fatal(err)
		}
		if err := w.add(ctx, msg); err != nil {
			t.Fatal(err)
		}
		want = append(want, msg)
	}
	if err := w.close(ctx); err != nil {
		t.Fatal(err)
	}

	consumer, err := sarama.NewConsumer(k.Brokers, mustConfig(t, k))
	if err != nil {
		t.Fatal(err)
	}
	defer consumer.Close()
	pc, err := consumer.ConsumePartition(topic, 0, sarama.OffsetOldest)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	for i, msg := range want {
		var got *sarama.ConsumerMessage
		select {
		case got = <-pc.Messages():
		case err := <-pc.Errors():
			t.Fatal(err)
		case <-ctx.Done():
			t.Fatalf("read %d of %d records", i, n)
		}
		key, _ := msg.Key.Encode()
		value, _ := msg.Value.Encode()
		if got.Offset != int64(i) || string(got.Key) != string(key) || string(got.Value) != string(value) ||
			!got.Timestamp.Equal(taken.Truncate(time.Millisecond)) || len(got.Headers) != len(msg.Headers) {
			t.Fatalf("record %d: offset %d key %s timestamp %s, %d headers; want key %s, %s, %d headers",
				i, got.Offset, got.Key, got.Timestamp, len(got.Headers), key, taken, len(msg.Headers))
		}
		for h := range msg.Headers {
			if string(got.Headers[h].Key) != string(msg.Headers[h].Key) || string(got.Headers[h].Value) != string(msg.Headers[h].Value) {
				t.Fatalf("record %d header %d: %s=%s, want %s=%s", i, h, got.Headers[h].Key, got.Headers[h].Value, msg.Headers[h].Key, msg.Headers[h].Value)
			}
		}
	}
	select {
	case m := <-pc.Messages():
		t.Fatalf("a record more than written, at offset %d", m.Offset)
	case <-time.After(500 * time.Millisecond):
	}
}

// TestSnapshotWriterFails: a batch the broker refuses fails the writer,
// and nothing is written after it.
func TestSnapshotWriterFails(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	k := testKafka(t, 64<<10)
	small := "8000"
	topic := testTopic(t, k, map[string]*string{"max.message.bytes": &small}) // smaller than a batch
	w, err := newSnapshotWriter(k, topic)
	if err != nil {
		t.Fatal(err)
	}
	taken := time.Now().UTC()
	var addErr error
	for i := range 2000 {
		msg, err := historyRecord(topic, intTable("s", "item", "item", "id"), snapshotEvent(int64(i+1), uint32(i), taken), k.MaxRecordBytes)
		if err != nil {
			t.Fatal(err)
		}
		if addErr = w.add(ctx, msg); addErr != nil {
			break
		}
	}
	closeErr := w.close(ctx)
	if closeErr == nil || !strings.Contains(closeErr.Error(), "kafka did not take a batch") {
		t.Fatalf("close = %v, want the refused batch", closeErr)
	}
	if addErr != nil && addErr.Error() != closeErr.Error() {
		t.Errorf("add failed with %v, close with %v", addErr, closeErr)
	}
	client, err := sarama.NewClient(k.Brokers, mustConfig(t, k))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	if end, err := client.GetOffset(topic, 0, sarama.OffsetNewest); err != nil || end != 0 {
		t.Errorf("the topic ends at offset %d (%v), want 0: nothing after the refused batch", end, err)
	}
}

func mustConfig(t *testing.T, k topology.KafkaConfig) *sarama.Config {
	t.Helper()
	c, err := topology.SaramaConfig(k)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// A coordinator that loads or moves is asked again; a refusal is not.
func TestCoordinatorBusy(t *testing.T) {
	for err, want := range map[error]bool{
		sarama.ErrOffsetsLoadInProgress:                                true,
		fmt.Errorf("wrapped: %w", sarama.ErrNotCoordinatorForConsumer): true,
		sarama.ErrConcurrentTransactions:                               true,
		sarama.ErrClusterAuthorizationFailed:                           false,
		sarama.ErrTransactionalIDAuthorizationFailed:                   false,
		errors.New("connection refused"):                               false,
	} {
		if got := coordinatorBusy(err); got != want {
			t.Errorf("coordinatorBusy(%v) = %v, want %v", err, got, want)
		}
	}
}
