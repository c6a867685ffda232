package capture

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/IBM/sarama"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/internal/kread"
)

// lastEvent returns the last event of the single-partition history topic:
// the capture is its only writer and writes in position order, so it tells
// how far the history goes. It is nil when the topic holds no event.
// Records that are not events (written by something else; the router
// dead-letters them) carry no position and are passed over.
func lastEvent(ctx context.Context, client sarama.Client, topic string) (*codecs.Event, error) {
	first := true
	events, err := readBack(ctx, client, topic, func(*codecs.Event) bool {
		keep := first
		first = false
		return keep
	})
	if err != nil || len(events) == 0 {
		return nil, err
	}
	return events[0], nil
}

// tailWindow is how many records the capture reads back from the end of the
// history at a time when it checks what a crashed capture left behind; the
// producer never has more than a few thousand records in flight.
const tailWindow = 2000

// readBack returns the history's committed records from its end backwards,
// oldest first, while keep accepts them: it stops at the first record keep
// rejects (which is not returned) or at the start of the topic. It reads at
// read_committed up to the last stable offset: records of a transaction a
// crashed capture left open or that was aborted are not history.
func readBack(ctx context.Context, client sarama.Client, topic string, keep func(*codecs.Event) bool) ([]*codecs.Event, error) {
	newest, err := kread.End(client, topic, 0)
	if err != nil {
		return nil, fmt.Errorf("history end offset: %w", err)
	}
	oldest, err := kread.Start(client, topic, 0)
	if err != nil {
		return nil, fmt.Errorf("history start offset: %w", err)
	}
	var kept []*codecs.Event // newest first
	for end := newest; end > oldest; end -= tailWindow {
		start := max(oldest, end-tailWindow)
		window, err := readRange(ctx, client, topic, start, end)
		if err != nil {
			return nil, err
		}
		for i := len(window) - 1; i >= 0; i-- {
			if !keep(window[i]) {
				slices.Reverse(kept)
				return kept, nil
			}
			kept = append(kept, window[i])
		}
	}
	slices.Reverse(kept)
	return kept, nil
}

// readRange decodes the history's committed records at offsets [start, end).
func readRange(ctx context.Context, client sarama.Client, topic string, start, end int64) ([]*codecs.Event, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var out []*codecs.Event
	err := kread.Range(ctx, client, topic, 0, start, end, func(r *kread.Record) (bool, error) {
		// A record that is not an event has no position: pass it over.
		if ev, err := (codecs.EventCodec{}).Decode(r.Value); err == nil {
			out = append(out, ev)
		}
		return true, nil
	})
	if err != nil {
		return nil, fmt.Errorf("read history [%d, %d): %w", start, end, err)
	}
	return out, nil
}

// resent is what the history already holds of the changes PostgreSQL resends
// after a restart: every change of a transaction that ended after the slot's
// confirmed position. A resent change is skipped if the history has it; one
// it lacks although it holds later ones is a hole. The capture writes the
// history in Kafka transactions, so it makes none; a history written by an
// older version may hold one (a failed write while later ones succeeded).
// The capture repairs it: it writes the missing change now, after the later
// ones, rather than lose it. Every reader applies a change to an entity only
// if its position is after the entity's, so the tables end right; a replay
// of the history sees that change late.
type resent struct {
	positions map[codecs.Position]bool
	last      codecs.Position
}

// readResent reads back from the history's end to the first change that
// committed before confirmed.
func readResent(ctx context.Context, client sarama.Client, topic string, confirmed codecs.LSN) (*resent, error) {
	events, err := readBack(ctx, client, topic, func(ev *codecs.Event) bool { return ev.CommitLSN >= confirmed })
	if err != nil {
		return nil, err
	}
	r := &resent{positions: make(map[codecs.Position]bool, len(events))}
	for _, ev := range events {
		r.positions[ev.Position] = true
		r.last = ev.Position
	}
	return r, nil
}

// written reports whether the history holds the change at p, and whether p
// is a hole: missing although the history holds later changes.
func (r *resent) written(p codecs.Position) (done, hole bool) {
	if p.Compare(r.last) > 0 {
		return false, false
	}
	if r.positions[p] {
		return true, false
	}
	return false, true
}
