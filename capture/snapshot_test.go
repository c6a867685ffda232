package capture

import (
	"context"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/jackc/pgx/v5"

	"github.com/changes-dev/changes/codecs"
)

// TestSnapshotCopyBatch: a batch writes each row as a snapshot event at the
// copy's next index, with the copy's commit LSN and time, and the copy goes
// on at the index after the batch.
func TestSnapshotCopyBatch(t *testing.T) {
	url := testPostgresURL(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tx.Rollback(context.Background()) })
	if _, err := tx.Exec(ctx, "create temporary table copy_batch (id bigint primary key, name text) on commit drop"); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "insert into copy_batch values (3, 'c'), (5, 'e'), (9, 'i')"); err != nil {
		t.Fatal(err)
	}

	sink := &sliceSink{}
	taken := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	cp := &snapshotCopy{tx: tx, out: sink, topic: "history", maxBytes: 1 << 20, base: 99, index: 7, taken: taken}
	tab := intTable("pg_temp", "copy_batch", "letter", "id")
	const sql = "select * from copy_batch order by id"

	n, last, err := cp.batch(ctx, tab, sql, nil)
	if err != nil {
		t.Fatal(err)
	}
	if n != 3 || last != codecs.IntKey(9) || cp.index != 10 || len(sink.msgs) != 3 {
		t.Errorf("batch = %d rows (%d records), last id %s, next index %d; want 3, 9, 10", n, len(sink.msgs), last, cp.index)
	}
	for i, id := range []int64{3, 5, 9} {
		msg := sink.msgs[i]
		value, err := msg.Value.Encode()
		if err != nil {
			t.Fatal(err)
		}
		ev, err := codecs.EventCodec{}.Decode(value)
		if err != nil {
			t.Fatal(err)
		}
		want := codecs.Position{CommitLSN: 99, Index: 7 + uint32(i)}
		if msg.Topic != "history" || ev.Op != codecs.OpSnapshot || ev.EntityType != "letter" || ev.EntityID != codecs.IntKey(id) ||
			ev.CommitLSN != 99 || ev.Position != want || !ev.CommitTime.Equal(taken) {
			t.Errorf("row %d: %s %s/%s at %s (commit LSN %s, time %s) to %s; want snapshot letter/%d at %s (99, %s) to history",
				i, ev.Op, ev.EntityType, ev.EntityID, ev.Position, ev.CommitLSN, ev.CommitTime, msg.Topic, id, want, taken)
		}
	}

	// A batch stops before a row that would overflow the position index.
	cp.index = math.MaxUint32
	if _, _, err := cp.batch(ctx, tab, sql, nil); err == nil || !strings.Contains(err.Error(), "do not fit the position index") {
		t.Errorf("a full index: %v", err)
	}
}

// sliceSink is a recordSink that keeps the records.
type sliceSink struct{ msgs []*sarama.ProducerMessage }

func (s *sliceSink) add(_ context.Context, msg *sarama.ProducerMessage) error {
	s.msgs = append(s.msgs, msg)
	return nil
}
