package capture

import (
	"context"
	"fmt"
	"time"

	"github.com/IBM/sarama"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/topology"
)

// WatermarkKey is the history record key of progress watermarks
// (codecs.OpWatermark). It has no "/", so it is no entity's "type/id".
const WatermarkKey = "~watermark"

// watermarks decides when the stream appends a progress watermark to the
// history: a record saying that every transaction that committed before
// its LSN is in the history before it. The router copies it to every
// partition of every type, the snapshot processors keep the latest per
// partition, and a view reads there what it has applied.
//
// A watermark is written at most every interval, and only between
// PostgreSQL transactions, into the Kafka transaction that holds the
// transactions it covers (or a transaction of its own), so it reaches the
// history after them. What it covers advances with each transaction's end
// LSN (pgoutput sends transactions in commit order, so every transaction
// that committed before that end was decoded before it), and with the WAL
// end of a keepalive received between transactions (every transaction
// that committed before it was decoded, or holds nothing captured).
type watermarks struct {
	interval time.Duration
	// covered: every transaction that committed before it is decoded and
	// in the producer's hands; at is its commit time (a keepalive's:
	// the server's clock when it sent it).
	covered codecs.LSN
	at      time.Time
	// written is the last watermark written, at writtenAt.
	written   codecs.LSN
	writtenAt time.Time
}

// advance records that every transaction that committed before lsn is
// decoded.
func (w *watermarks) advance(lsn codecs.LSN, at time.Time) {
	if lsn > w.covered {
		w.covered, w.at = lsn, at
	}
}

// wait is how long from now the next watermark is due; 0 if it is due, a
// negative duration if there is nothing new to write.
func (w *watermarks) wait(now time.Time) time.Duration {
	if w.covered <= w.written {
		return -1
	}
	return max(0, w.interval-now.Sub(w.writtenAt))
}

// perPartition is the least watermark interval per partition of every
// type: each watermark becomes a record in each, so watermarks never add
// more than 1,000 records/s to the events topics and the snapshot tables,
// however many partitions the types have.
const perPartition = time.Millisecond

// watermarkInterval is the interval between watermarks for cfg: the
// configured one, or more for types of many partitions (perPartition).
func watermarkInterval(cfg *topology.Config) time.Duration {
	n := 0
	for _, e := range cfg.Entities {
		n += e.Partitions
	}
	return max(cfg.Postgres.WatermarkInterval, time.Duration(n)*perPartition)
}

// writeWatermark appends a watermark of what the stream has decoded to
// the open Kafka transaction (opening one if none is), when one is due.
// It writes none below what the history held at the session's start: a
// restarted capture decodes again what is there, and the history already
// says more.
func (s *stream) writeWatermark(ctx context.Context) error {
	now := time.Now()
	if s.cur != nil || s.wm.wait(now) != 0 {
		return nil
	}
	lsn := s.wm.covered
	if s.resent != nil && s.resent.n > 0 && lsn <= s.resent.last.CommitLSN {
		s.wm.written = lsn
		return nil
	}
	ev := &codecs.Event{
		Op: codecs.OpWatermark, CommitLSN: lsn, Position: codecs.Position{CommitLSN: lsn},
		CommitTime: s.wm.at.UTC(), CaptureTime: now.UTC(),
	}
	value, err := codecs.EventCodec{}.Encode(ev)
	if err != nil {
		return fmt.Errorf("encode watermark %s: %w", lsn, err)
	}
	if err := s.beginTxn(); err != nil {
		return err
	}
	msg := &sarama.ProducerMessage{
		Topic: s.topic, Key: sarama.StringEncoder(WatermarkKey), Value: sarama.ByteEncoder(value),
		Timestamp: ev.CommitTime,
		Headers:   []sarama.RecordHeader{{Key: headerOp, Value: []byte(codecs.OpWatermark)}},
		Metadata:  &recordMeta{position: ev.Position},
	}
	select {
	case s.producer.Input() <- msg:
	case <-s.failed:
		return s.failErr
	case <-ctx.Done():
		return ctx.Err()
	}
	s.ktx.records++
	s.wm.written, s.wm.writtenAt = lsn, now
	s.metrics.watermarks.Inc()
	return nil
}
