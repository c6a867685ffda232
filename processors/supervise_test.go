package processors

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/changes-dev/changes/topology"
)

func testSupervisor(restarts *int) supervisor {
	return supervisor{
		name: "g", log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		first: time.Millisecond, max: 4 * time.Millisecond, stable: time.Hour,
		restarts: func() { *restarts++ },
	}
}

// TestSupervisorRetriesOutagesForever: a broker outage of any length is a
// series of retryable failures; the supervisor never gives up on them.
func TestSupervisorRetriesOutagesForever(t *testing.T) {
	var restarts, runs int
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	err := testSupervisor(&restarts).run(ctx, func(context.Context) error {
		runs++
		if runs == 50 {
			cancel()
			return nil
		}
		return errors.New("kafka: client has run out of available brokers to talk to: connection refused")
	})
	if err != nil {
		t.Fatalf("got %v after %d runs, want a clean stop: outages are retried forever", err, runs)
	}
	if restarts != 49 {
		t.Errorf("restarts %d, want 49", restarts)
	}
}

func TestSupervisorStopsOnWhatRetryingCannotFix(t *testing.T) {
	var restarts, runs int
	err := testSupervisor(&restarts).run(context.Background(), func(context.Context) error {
		runs++
		return fmt.Errorf("%w: events has 3 partitions, the config asks for 4", topology.ErrTopicMismatch)
	})
	if !errors.Is(err, topology.ErrTopicMismatch) || !strings.Contains(err.Error(), "processor g") {
		t.Fatalf("got %v, want the mismatch, naming the processor", err)
	}
	if runs != 1 || restarts != 0 {
		t.Errorf("runs %d, restarts %d; want 1 and 0", runs, restarts)
	}
}

func TestSupervisorBackoffDoublesAndResetsAfterAStableRun(t *testing.T) {
	var restarts, runs int
	s := testSupervisor(&restarts)
	s.first, s.max, s.stable = 10*time.Millisecond, 40*time.Millisecond, 100*time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var gaps []time.Duration
	last := time.Now()
	err := s.run(ctx, func(ctx context.Context) error {
		runs++
		gaps = append(gaps, time.Since(last))
		if runs == 5 {
			time.Sleep(110 * time.Millisecond) // a stable run, then a failure
		}
		if runs == 7 {
			cancel()
			return nil
		}
		last = time.Now()
		return errors.New("boom")
	})
	if err != nil {
		t.Fatal(err)
	}
	// Waits before runs 2..7: 10, 20, 40, 40 ms; after the stable run 10, 20 ms.
	want := []time.Duration{10, 20, 40, 40, 10, 20}
	for i, w := range want {
		got := gaps[i+1]
		if w *= time.Millisecond; got < w || got > w+30*time.Millisecond {
			t.Errorf("wait before run %d: %v, want about %v", i+2, got, w)
		}
	}
}

func TestSupervisorStopsCleanlyOnCancel(t *testing.T) {
	var restarts int
	ctx, cancel := context.WithCancel(context.Background())
	err := testSupervisor(&restarts).run(ctx, func(ctx context.Context) error {
		cancel()
		return context.Canceled
	})
	if err != nil || restarts != 0 {
		t.Fatalf("got %v with %d restarts; want a clean stop", err, restarts)
	}
}

// TestSupervisorStopsOnStaleLocalCopy: a local copy ahead of its topic is
// not an outage: the supervisor stops at once and names the folder.
func TestSupervisorStopsOnStaleLocalCopy(t *testing.T) {
	var restarts int
	s := testSupervisor(&restarts)
	s.storageDir = "/data/processors"
	goka := errors.New("Setup failed. Cannot start processor for partition 3: kafka tells us there's no message in the topic, but our cache has one. The table might be gone. Try to delete your local cache! Topic t, partition 3, hwm 0, local offset 2686")
	err := s.run(context.Background(), func(context.Context) error { return goka })
	if !errors.Is(err, ErrStaleLocalCopy) || !strings.Contains(err.Error(), "/data/processors") || restarts != 0 {
		t.Errorf("run = %v after %d restarts; want ErrStaleLocalCopy naming the folder, at once", err, restarts)
	}
}
