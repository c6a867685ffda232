package capture

import (
	"context"
	"fmt"
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
//
// Progress watermarks are not changes: they are passed over too.
func lastEvent(ctx context.Context, client sarama.Client, topic string) (*codecs.Event, error) {
	var last *codecs.Event
	err := readBack(ctx, client, topic, func(ev *codecs.Event) bool {
		if ev.Op == codecs.OpWatermark {
			return true
		}
		last = ev
		return false
	})
	return last, err
}

// watermarkPastChanges returns the highest progress watermark the history
// holds after its last change, or 0 if none: a watermark written at a
// keepalive says the history holds every transaction that committed before
// a WAL position past that change. Watermarks before the last change are
// at or before its commit.
func watermarkPastChanges(ctx context.Context, client sarama.Client, topic string) (codecs.LSN, error) {
	var high codecs.LSN
	err := readBack(ctx, client, topic, func(ev *codecs.Event) bool {
		if ev.Op != codecs.OpWatermark {
			return false
		}
		high = max(high, ev.CommitLSN)
		return true
	})
	return high, err
}

// tailWindow is how many records the capture reads back from the end of the
// history at a time when it checks what a crashed capture left behind.
const tailWindow = 2000

// readBack calls visit with the history's committed events from its end
// backwards, newest first, until visit returns false or the topic's start.
// It holds one window of events at a time, however far it goes back (a
// transaction of millions of rows, a long snapshot). It reads at
// read_committed up to the last stable offset: records of a transaction a
// crashed capture left open or that was aborted are not history.
func readBack(ctx context.Context, client sarama.Client, topic string, visit func(*codecs.Event) bool) error {
	newest, err := kread.End(client, topic, 0)
	if err != nil {
		return fmt.Errorf("history end offset: %w", err)
	}
	oldest, err := kread.Start(client, topic, 0)
	if err != nil {
		return fmt.Errorf("history start offset: %w", err)
	}
	for end := newest; end > oldest; end -= tailWindow {
		start := max(oldest, end-tailWindow)
		window, err := readRange(ctx, client, topic, start, end)
		if err != nil {
			return err
		}
		for i := len(window) - 1; i >= 0; i-- {
			if !visit(window[i]) {
				return nil
			}
		}
	}
	return nil
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
	// held are the indices the history holds per commit LSN, as spans:
	// a transaction's changes are contiguous, so one span each unless
	// something is missing.
	held map[codecs.LSN][]span
	last codecs.Position
	n    int
}

// span is the indices lo..hi, inclusive.
type span struct{ lo, hi uint32 }

// add records that the history holds p; adding in descending position
// order (as readBack visits) extends spans downwards.
func (r *resent) add(p codecs.Position) {
	if r.n == 0 || p.Compare(r.last) > 0 {
		r.last = p
	}
	r.n++
	s := r.held[p.CommitLSN]
	if k := len(s); k > 0 && s[k-1].lo == p.Index+1 {
		s[k-1].lo = p.Index
		return
	}
	r.held[p.CommitLSN] = append(s, span{lo: p.Index, hi: p.Index})
}

func (r *resent) has(p codecs.Position) bool {
	for _, sp := range r.held[p.CommitLSN] {
		if p.Index >= sp.lo && p.Index <= sp.hi {
			return true
		}
	}
	return false
}

// readResent reads back from the history's end to the first change that
// committed before confirmed, or a watermark at or before it (every change
// before that committed earlier: a quiet time of watermarks alone is not
// read through to the last change).
func readResent(ctx context.Context, client sarama.Client, topic string, confirmed codecs.LSN) (*resent, error) {
	r := &resent{held: map[codecs.LSN][]span{}}
	err := readBack(ctx, client, topic, func(ev *codecs.Event) bool {
		if ev.Op == codecs.OpWatermark {
			return ev.CommitLSN > confirmed
		}
		if ev.CommitLSN < confirmed {
			return false
		}
		r.add(ev.Position)
		return true
	})
	if err != nil {
		return nil, err
	}
	return r, nil
}

// written reports whether the history holds the change at p, and whether p
// is a hole: missing although the history holds later changes.
func (r *resent) written(p codecs.Position) (done, hole bool) {
	if r.n == 0 || p.Compare(r.last) > 0 {
		return false, false
	}
	if r.has(p) {
		return true, false
	}
	return false, true
}
