package processors_test

import (
	"context"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/lovoo/goka"
	"github.com/lovoo/goka/tester"

	"github.com/changes-dev/changes/processors"
)

// TestRunWaitsForItsGoroutines: when Run returns, nothing it started is
// still running: the sweep, the lag gauges and the readiness watch of each
// processor are stopped and waited for, as is the Kafka probe. (A guard
// against a goroutine that would not stop: one that stops late but surely
// is usually gone by the time the stacks are read.)
func TestRunWaitsForItsGoroutines(t *testing.T) {
	topo := testTopology(t)
	tt := tester.New(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- processors.Run(ctx, topo, processors.WithGokaOptions(goka.WithTester(tt))) }()
	// Until the sweeps run: they start once their processor is ready.
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(stacks(), "processors.sweepEvery") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if !strings.Contains(stacks(), "processors.sweepEvery") {
		t.Fatal("the sweep never started")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return after its context was cancelled")
	}
	for _, fn := range []string{"processors.sweepEvery", "processors.reportLag", "processors.Run."} {
		if s := stacks(); strings.Contains(s, fn) {
			t.Errorf("%s still runs after Run returned:\n%s", fn, s)
		}
	}
}

// stacks is every goroutine's stack.
func stacks() string {
	buf := make([]byte, 1<<20)
	return string(buf[:runtime.Stack(buf, true)])
}
