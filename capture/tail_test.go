package capture

import (
	"context"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/topology"
)

// TestReadBackThroughWatermarks writes a history whose last change is
// followed by more watermarks than one read-back window holds, some out of
// order, and checks what a starting capture reads there: the last change
// (lastEvent), and the highest watermark after it (watermarkPastChanges),
// which a watermark before that change must not raise.
func TestReadBackThroughWatermarks(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	k := testKafka(t, 1<<20)
	topic := testTopic(t, k, nil)
	client, err := topology.NewClient(k)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	cfg, err := topology.SaramaConfig(k)
	if err != nil {
		t.Fatal(err)
	}
	producer, err := sarama.NewSyncProducer(k.Brokers, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer producer.Close()

	var msgs []*sarama.ProducerMessage
	add := func(ev *codecs.Event) {
		t.Helper()
		value, err := codecs.EventCodec{}.Encode(ev)
		if err != nil {
			t.Fatal(err)
		}
		msgs = append(msgs, &sarama.ProducerMessage{Topic: topic, Key: sarama.StringEncoder(WatermarkKey), Value: sarama.ByteEncoder(value)})
	}
	watermark := func(lsn codecs.LSN) {
		add(&codecs.Event{Op: codecs.OpWatermark, CommitLSN: lsn, Position: codecs.Position{CommitLSN: lsn}, CommitTime: time.Now().UTC(), CaptureTime: time.Now().UTC()})
	}
	change := func(lsn codecs.LSN, id int64) {
		ev := snapshotEvent(id, 0, time.Now().UTC())
		ev.Op, ev.CommitLSN, ev.Position = codecs.OpInsert, lsn, codecs.Position{CommitLSN: lsn}
		add(ev)
	}

	// Empty: nothing either way.
	if last, err := lastEvent(ctx, client, topic); err != nil || last != nil {
		t.Fatalf("empty history: lastEvent = %v, %v; want nil", last, err)
	}
	watermark(50)
	change(100, 1)
	watermark(5000) // before the last change: not past it
	change(200, 2)
	const after = 2*tailWindow + 10
	for i := range after {
		watermark(codecs.LSN(300 + i))
	}
	watermark(250) // an older one after the newest: still the newest counts
	if err := producer.SendMessages(msgs); err != nil {
		t.Fatal(err)
	}
	last, err := lastEvent(ctx, client, topic)
	if err != nil {
		t.Fatal(err)
	}
	if last == nil || last.EntityID != codecs.IntKey(2) || last.Position != (codecs.Position{CommitLSN: 200}) {
		t.Fatalf("lastEvent = %+v, want the change of entity 2 at 0/C8", last)
	}
	high, err := watermarkPastChanges(ctx, client, topic)
	if err != nil {
		t.Fatal(err)
	}
	if want := codecs.LSN(300 + after - 1); high != want {
		t.Fatalf("watermarkPastChanges = %s, want %s", high, want)
	}

	// A change last: no watermark is past it.
	msgs = nil
	change(100000, 3)
	if err := producer.SendMessages(msgs); err != nil {
		t.Fatal(err)
	}
	if high, err := watermarkPastChanges(ctx, client, topic); err != nil || high != 0 {
		t.Fatalf("watermarkPastChanges after a change = %s, %v; want 0", high, err)
	}
}
