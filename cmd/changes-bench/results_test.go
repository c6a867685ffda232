package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestPrintHops checks that a live phase run with --hops prints the table
// of each hop, and one without it does not.
func TestPrintHops(t *testing.T) {
	s := func(p50, p99 float64) stats { return stats{Samples: 10, P50ms: p50, P99ms: p99, P999ms: p99} }
	r := &result{Live: []liveResult{{
		Rate: "1000/s", ChangesPerSec: 998,
		ChangesHistory: s(46.1, 172.6), ChangesEvents: s(92.6, 260.1),
		ChangesTable: s(130.1, 332.7), ChangesView: s(132.3, 334.8),
	}}}
	var out bytes.Buffer
	r.print(&out)
	if !strings.Contains(out.String(), "hop by hop") {
		t.Fatalf("no hop table:\n%s", out.String())
	}
	row := ""
	for _, l := range strings.Split(out.String(), "\n") {
		if strings.HasPrefix(l, "  1000/s   |") {
			row = l
		}
	}
	for _, want := range []string{"46.1", "92.6", "260.1", "130.1", "334.8"} {
		if !strings.Contains(row, want) {
			t.Errorf("hop row %q lacks %s", row, want)
		}
	}

	r.Live[0].ChangesEvents, r.Live[0].ChangesTable = stats{}, stats{}
	out.Reset()
	r.print(&out)
	if strings.Contains(out.String(), "hop by hop") {
		t.Errorf("a run without --hops printed the hop table:\n%s", out.String())
	}
}
