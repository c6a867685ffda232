package processors

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func testSupervisor(restarts *int) supervisor {
	return supervisor{
		name: "g", log: slog.New(slog.NewTextHandler(io.Discard, nil)), maxFailures: 3,
		first: time.Millisecond, max: 4 * time.Millisecond, stable: time.Hour,
		restarts: func() { *restarts++ },
	}
}

func TestSupervisorGivesUpAfterFailuresInARow(t *testing.T) {
	var restarts, runs int
	err := testSupervisor(&restarts).run(context.Background(), func(context.Context) error {
		runs++
		return errors.New("boom")
	})
	if err == nil || !strings.Contains(err.Error(), "failed 3 times in a row") || !strings.Contains(err.Error(), "boom") {
		t.Fatalf("got %v, want the last error after 3 failures", err)
	}
	if runs != 3 || restarts != 2 {
		t.Errorf("runs %d, restarts %d; want 3 and 2", runs, restarts)
	}
}

func TestSupervisorResetsAfterAStableRun(t *testing.T) {
	var restarts, runs int
	s := testSupervisor(&restarts)
	s.stable = 20 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	err := s.run(ctx, func(ctx context.Context) error {
		runs++
		if runs%2 == 0 {
			time.Sleep(25 * time.Millisecond) // a stable run, then a failure
		}
		if runs == 7 {
			cancel()
			return nil
		}
		return errors.New("boom")
	})
	if err != nil {
		t.Fatalf("got %v; stable runs between failures should reset the count", err)
	}
	if restarts != 6 {
		t.Errorf("restarts %d, want 6", restarts)
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
