package main

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"
)

func benchResult(ceiling, history, recv, captureCPU float64) *result {
	return &result{
		Ceiling: rateResult{ChangesPerSec: ceiling},
		CatchUp: catchUp{
			Changes: 1000,
			Stages: []catchUpResult{
				{System: "postgresql", Stage: stageRecvlogical, ChangesPerSec: recv},
				{System: "changes", Stage: "history", ChangesPerSec: history},
			},
			Usage: []usageResult{{Window: "changes: capture", Component: "capture", CPUSecPerMChanges: captureCPU}},
		},
	}
}

func TestCompare(t *testing.T) {
	find := func(cs []comparison, name string) comparison {
		t.Helper()
		for _, c := range cs {
			if c.name == name {
				return c
			}
		}
		t.Fatalf("no figure %q in %v", name, cs)
		return comparison{}
	}
	tests := []struct {
		name    string
		old     *result
		new     *result
		flagged []string
	}{
		{"same", benchResult(1000, 20000, 75000, 40), benchResult(1000, 20000, 75000, 40), nil},
		{"within 20 %", benchResult(1000, 20000, 75000, 40), benchResult(810, 16100, 75000, 49), nil},
		{"better", benchResult(1000, 20000, 75000, 40), benchResult(2000, 40000, 75000, 20), nil},
		{"a rate fell by more than 20 %", benchResult(1000, 20000, 75000, 40), benchResult(1000, 15000, 75000, 40),
			[]string{"catch-up changes history, changes/s", "catch-up capture / pg_recvlogical"}},
		{"the ceiling fell", benchResult(1000, 20000, 75000, 40), benchResult(700, 20000, 75000, 40),
			[]string{"postgresql alone, changes/s"}},
		{"a cost rose by more than 25 %", benchResult(1000, 20000, 75000, 40), benchResult(1000, 20000, 75000, 52),
			[]string{"catch-up while changes: capture: capture, CPU-s/M"}},
		{"an idle component's cost doubled", benchResult(1000, 20000, 75000, 0.1), benchResult(1000, 20000, 75000, 0.2), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cs := compare(tt.old, tt.new)
			if len(cs) != 5 {
				t.Fatalf("%d figures compared, want 5: %+v", len(cs), cs)
			}
			var got []string
			for _, c := range cs {
				if c.flag {
					got = append(got, c.name)
				}
			}
			if strings.Join(got, "|") != strings.Join(tt.flagged, "|") {
				t.Errorf("flagged %q, want %q", got, tt.flagged)
			}
			var out bytes.Buffer
			if n := printComparison(&out, "old.json", cs); n != len(tt.flagged) {
				t.Errorf("printComparison counted %d flags, want %d", n, len(tt.flagged))
			}
			if lines := strings.Count(out.String(), "\nFLAG: "); lines != len(tt.flagged) {
				t.Errorf("%d FLAG lines, want %d:\n%s", lines, len(tt.flagged), out.String())
			}
		})
	}
	c := find(compare(benchResult(1000, 20000, 80000, 40), benchResult(1000, 30000, 80000, 50)), "catch-up capture / pg_recvlogical")
	if c.old != 0.25 || c.new != 0.375 || c.better != 1.5 {
		t.Errorf("capture / pg_recvlogical: %+v, want 0.25 -> 0.375, 1.5x", c)
	}
	c = find(compare(benchResult(1000, 20000, 80000, 40), benchResult(1000, 30000, 80000, 50)), "catch-up while changes: capture: capture, CPU-s/M")
	if c.better != 0.8 || c.flag {
		t.Errorf("CPU-s/M 40 -> 50: %+v, want better 0.8, not flagged", c)
	}
}

// TestCompareFiguresMissing compares only what both runs measured: a run
// without Debezium or pg_recvlogical against one with them.
func TestCompareFiguresMissing(t *testing.T) {
	old := benchResult(1000, 20000, 75000, 40)
	old.CatchUp.Stages = append(old.CatchUp.Stages, catchUpResult{System: "debezium", Stage: "topics", ChangesPerSec: 10000})
	cur := benchResult(1000, 20000, 0, 40)
	for _, c := range compare(old, cur) {
		if strings.Contains(c.name, "debezium") || strings.Contains(c.name, "pg_recvlogical") {
			t.Errorf("compared %q, which the new run lacks", c.name)
		}
	}
}

// TestCompareSameFile reads the earlier run from the file the new one
// overwrites, as make bench-platform does.
func TestCompareSameFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bench-result.json")
	if err := benchResult(1000, 20000, 75000, 40).write(path); err != nil {
		t.Fatal(err)
	}
	old, err := readResult(path)
	if err != nil {
		t.Fatal(err)
	}
	cur := benchResult(1000, 10000, 75000, 40)
	if err := cur.write(path); err != nil {
		t.Fatal(err)
	}
	cs := compare(old, cur)
	var flagged int
	for _, c := range cs {
		if c.flag {
			flagged++
		}
	}
	if flagged != 2 {
		t.Errorf("%d figures flagged, want 2 (history and capture / pg_recvlogical): %+v", flagged, cs)
	}
}
