package history

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"github.com/IBM/sarama"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/internal/kread"
)

// ErrOffsetBeforeHistory: the asked offset is before the first record the
// history holds (retention passed it).
var ErrOffsetBeforeHistory = errors.New("the asked offset is older than the history")

// Follow calls fn with every change of entityType the history holds from
// offset from on (from its end now when from is negative), truncates of
// the type included, in history order, as they are committed, until ctx is
// done (it returns ctx.Err()) or fn returns an error (returned). Only
// committed records are read (read_committed), so a follower sees every
// change once, never one of an aborted transaction. A fetch that fails (a
// broker away, a leader moving) is logged and tried again every second. A
// from that retention has passed is ErrOffsetBeforeHistory; a record that
// is not an event is logged and skipped (the router dead-letters it).
func (r *Reader) Follow(ctx context.Context, entityType string, from int64, fn func(Change) error) error {
	if from < 0 {
		from = sarama.OffsetNewest
	}
	prefix := []byte(entityType + "/")
	err := kread.Follow(ctx, r.client, r.topic, 0, from, func(err error) {
		r.log.Warn("following the history: fetch failed, trying again", "topic", r.topic, "err", err)
	}, func(rec *kread.Record) error {
		if !bytes.HasPrefix(rec.Key, prefix) {
			return nil
		}
		ev, err := (codecs.EventCodec{}).Decode(rec.Value)
		if err != nil {
			r.log.Warn("following the history: a record is not an event; skipped", "topic", r.topic, "offset", rec.Offset, "err", err)
			return nil
		}
		if ev.EntityType != entityType {
			return nil
		}
		return fn(Change{Offset: rec.Offset, Event: ev})
	})
	if errors.Is(err, kread.ErrOffsetOutOfRange) {
		return fmt.Errorf("%w: offset %d", ErrOffsetBeforeHistory, from)
	}
	return err
}
