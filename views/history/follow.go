package history

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/IBM/sarama"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/internal/kread"
)

// Follow calls fn with every change of entityType the history holds from
// offset from on (from its end now when from is negative), truncates of
// the type included, and the markers of resyncs that copied the type
// (codecs.OpResync: the changes they replace are not in the history one by
// one), in history order, as they are committed, until ctx is done (it
// returns ctx.Err()) or fn returns an error (returned). Only committed
// records are read (read_committed), so a follower sees every change once,
// never one of an aborted transaction.
//
// Each Follow reads on a Kafka client of its own: a follower waits on the
// broker for new records, and the Reader's other reads must not queue
// behind it. A fetch that fails (a broker away, a leader moving) is logged
// and tried again every second. A from that retention has passed is
// ErrBeforeHistory; a record that is not an event is logged and skipped
// (the router dead-letters it).
func (r *Reader) Follow(ctx context.Context, entityType string, from int64, fn func(Change) error) error {
	client, err := sarama.NewClient(r.brokers, r.scfg)
	if err != nil {
		return fmt.Errorf("history: kafka client: %w", err)
	}
	defer client.Close()
	if from < 0 {
		from = sarama.OffsetNewest
	}
	prefix, resync := []byte(entityType+"/"), []byte("resync/")
	err = kread.Follow(ctx, client, r.topic, 0, from, func(err error) {
		r.log.Warn("following the history: fetch failed, trying again", "topic", r.topic, "err", err)
	}, func(rec *kread.Record) error {
		marker := bytes.HasPrefix(rec.Key, resync)
		if !marker && !bytes.HasPrefix(rec.Key, prefix) {
			return nil
		}
		ev, err := (codecs.EventCodec{}).Decode(rec.Value)
		if err != nil {
			r.log.Warn("following the history: a record is not an event; skipped", "topic", r.topic, "offset", rec.Offset, "err", err)
			return nil
		}
		switch {
		case ev.Op == codecs.OpResync:
			if !slices.Contains(ev.Resync.Types, entityType) {
				return nil
			}
		case marker || ev.EntityType != entityType:
			return nil
		}
		return fn(Change{Offset: rec.Offset, Event: ev})
	})
	if errors.Is(err, kread.ErrOffsetOutOfRange) {
		return fmt.Errorf("%w: offset %d", ErrBeforeHistory, from)
	}
	return err
}
