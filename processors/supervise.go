package processors

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// Supervision defaults: goka stops a processor on any processing error by
// design, so Run restarts it, with backoff, and gives up (returns the error,
// so the process exits non-zero) after too many failures in a row.
const (
	// MaxFailuresInARow is how many consecutive failed runs of one processor
	// Run accepts before it returns the last error.
	MaxFailuresInARow = 5
	// stableAfter is how long a run must last to reset the failure count.
	stableAfter  = time.Minute
	firstBackoff = time.Second
	maxBackoff   = 30 * time.Second
)

// supervisor restarts one processor.
type supervisor struct {
	name        string
	log         *slog.Logger
	restarts    func() // counts a restart
	maxFailures int
	first, max  time.Duration
	stable      time.Duration
}

// run calls once until ctx is done (then it returns nil) or once has failed
// maxFailures times in a row (then it returns the last error). A run that
// lasted at least stable resets the count; the wait between runs doubles
// from first up to max.
func (s supervisor) run(ctx context.Context, once func(context.Context) error) error {
	failures, backoff := 0, s.first
	for {
		started := time.Now()
		err := once(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err == nil || errors.Is(err, context.Canceled) {
			err = errors.New("stopped without an error")
		}
		if time.Since(started) >= s.stable {
			failures, backoff = 0, s.first
		}
		failures++
		if failures >= s.maxFailures {
			return fmt.Errorf("processor %s failed %d times in a row, last: %w", s.name, failures, err)
		}
		s.log.Error("processor failed; restarting", "group", s.name, "err", err, "failures_in_a_row", failures, "backoff", backoff)
		s.restarts()
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, s.max)
	}
}
