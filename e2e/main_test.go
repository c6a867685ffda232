package e2e

import (
	"os"
	"testing"
)

// TestMain runs the tests, or, with produceStatesEnv set, is the producer
// process of a benchmark (see benchLiveView).
func TestMain(m *testing.M) {
	if spec := os.Getenv(produceStatesEnv); spec != "" {
		os.Exit(produceStates(spec))
	}
	os.Exit(m.Run())
}
