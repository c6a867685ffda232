package processors

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/changes-dev/changes/internal/outage"
)

// Supervision: goka stops a processor on any error by design (a processing
// error, or Kafka gone for longer than the clients' timeouts), so Run
// restarts it, with backoff, for as long as the error is one that retrying
// can fix (see outage.Retryable): a broker outage of any length does not
// stop the processors.
const (
	// stableAfter is how long a run must last to reset the backoff.
	stableAfter  = outage.StableAfter
	firstBackoff = outage.First
	maxBackoff   = outage.Max
)

// supervisor restarts one processor.
type supervisor struct {
	name       string
	log        *slog.Logger
	restarts   func() // counts a restart
	first, max time.Duration
	stable     time.Duration
	storageDir string // the local copies of the tables, named in errors about them
}

// ErrStaleLocalCopy is returned by Run when a local copy of a table holds
// more than the table's topic: the topic was deleted and created again, or
// the storage folder belongs to another cluster. Retrying cannot fix it; the
// folder must be deleted (the copy is then rebuilt from the topic).
var ErrStaleLocalCopy = errors.New("the local copy of a table is ahead of its topic")

// staleLocalCopy recognises goka's error for a local copy ahead of its
// topic; goka returns it as text only.
func staleLocalCopy(err error) bool {
	return strings.Contains(err.Error(), "our cache has one")
}

// run calls once until ctx is done (then it returns nil) or once fails with
// an error that retrying cannot fix (returned). It logs the first failure of
// a series, not every retry; a run that lasted at least stable ends the
// series and resets the wait between runs, which doubles from first up to
// max.
func (s supervisor) run(ctx context.Context, once func(context.Context) error) error {
	backoff, failing := s.first, false
	for {
		started := time.Now()
		err := once(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err == nil || errors.Is(err, context.Canceled) {
			err = errors.New("stopped without an error")
		}
		if staleLocalCopy(err) {
			return fmt.Errorf("processor %s: %w: the topic was created again or %s belongs to another cluster; stop the processors, delete that folder and start them again (it is rebuilt from the topics): %v",
				s.name, ErrStaleLocalCopy, s.storageDir, err)
		}
		if !outage.Retryable(err) {
			return fmt.Errorf("processor %s: %w", s.name, err)
		}
		if time.Since(started) >= s.stable {
			backoff, failing = s.first, false
		}
		if !failing {
			s.log.Warn("processor stopped; restarting it until it runs again", "group", s.name, "err", err.Error(), "retry_in", backoff.String())
			failing = true
		} else {
			s.log.Debug("processor failed again", "group", s.name, "err", err.Error(), "retry_in", backoff.String())
		}
		s.restarts()
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, s.max)
	}
}
