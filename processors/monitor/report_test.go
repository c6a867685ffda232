package monitor

import (
	"strings"
	"testing"
	"time"
)

// The report prints each stage's shares within SLOBounds beside the
// reference system's row, and says what that row is.
func TestReportPrint(t *testing.T) {
	from := time.Date(2026, 11, 25, 23, 0, 0, 0, time.UTC)
	rep := &Report{From: from, To: from.Add(30 * time.Minute), Latencies: []*Latencies{
		{EntityType: "account", Stage: "history", samples: []float64{0.5, 2, 30, 600}, committed: 5},
		{EntityType: "account", Stage: "snapshot"},
	}}
	var b strings.Builder
	rep.Print(&b)
	out := b.String()
	for _, want := range []string{
		"changes slo: changes committed 2026-11-25T23:00:00Z .. 2026-11-25T23:30:00Z (30m0s)\n",
		"  commit -> history account              5         4    25.0%    50.0%    75.0%   100.0%        2s     10m0s     10m0s     10m0s\n",
		"  commit -> snapshot account             0         0        -        -        -        -         -         -         -         -\n",
		"  reference system                                               81.8%    89.0%   100.0%\n",
		"\n  " + ReferenceNote + "\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
}
