package capture

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/IBM/sarama"

	"github.com/changes-dev/changes/codecs"
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

// readBack returns the history's records from its end backwards, oldest
// first, while keep accepts them: it stops at the first record keep
// rejects (which is not returned) or at the start of the topic.
func readBack(ctx context.Context, client sarama.Client, topic string, keep func(*codecs.Event) bool) ([]*codecs.Event, error) {
	newest, err := client.GetOffset(topic, 0, sarama.OffsetNewest)
	if err != nil {
		return nil, fmt.Errorf("history end offset: %w", err)
	}
	oldest, err := client.GetOffset(topic, 0, sarama.OffsetOldest)
	if err != nil {
		return nil, fmt.Errorf("history start offset: %w", err)
	}
	consumer, err := sarama.NewConsumerFromClient(client)
	if err != nil {
		return nil, err
	}
	defer consumer.Close()
	var kept []*codecs.Event // newest first
	for end := newest; end > oldest; end -= tailWindow {
		start := max(oldest, end-tailWindow)
		window, err := readRange(ctx, consumer, topic, start, end)
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

// readRange decodes the history's records at offsets [start, end).
func readRange(ctx context.Context, consumer sarama.Consumer, topic string, start, end int64) ([]*codecs.Event, error) {
	pc, err := consumer.ConsumePartition(topic, 0, start)
	if err != nil {
		return nil, fmt.Errorf("read history at offset %d: %w", start, err)
	}
	defer pc.Close()
	timeout := time.NewTimer(30 * time.Second)
	defer timeout.Stop()
	out := make([]*codecs.Event, 0, end-start)
	for {
		select {
		case m := <-pc.Messages():
			// A record that is not an event has no position: pass it over.
			if ev, err := (codecs.EventCodec{}).Decode(m.Value); err == nil {
				out = append(out, ev)
			}
			if m.Offset >= end-1 {
				return out, nil
			}
		case err := <-pc.Errors():
			return nil, fmt.Errorf("read history at offset %d: %w", start, err)
		case <-timeout.C:
			return nil, fmt.Errorf("read history [%d, %d): not read within 30 s", start, end)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// resent is what the history already holds of the changes PostgreSQL resends
// after a restart: every change of a transaction that ended after the slot's
// confirmed position. A resent change is skipped if the history has it; one
// it lacks although it holds later ones is a hole (a Kafka write failed after
// later ones succeeded), which the capture reports instead of writing out of
// order or skipping.
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

// written reports whether the history holds the change at p. It fails with
// ErrHistoryGap when it does not but holds later changes.
func (r *resent) written(p codecs.Position) (bool, error) {
	if p.Compare(r.last) > 0 {
		return false, nil
	}
	if r.positions[p] {
		return true, nil
	}
	return false, fmt.Errorf("%w: the change at %s is not in the history, which already holds later changes up to %s", ErrHistoryGap, p, r.last)
}
