package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
)

// regressionDrop is how far a figure may fall against the earlier run
// before the comparison flags it: new/old below 0.8 for a rate, old/new
// below 0.8 for a cost (CPU seconds per million changes).
const regressionDrop = 0.20

// idleCost is the CPU seconds per million changes below which a component
// was idle in a window (PostgreSQL while Kafka Streams drains Debezium's
// topics: 0.1-0.2): such a cost is shown but never flagged, its ratio is
// noise.
const idleCost = 5.0

// figure is one figure two runs are compared on.
type figure struct {
	name  string
	value float64
	// cost says lower is better (CPU seconds per million changes); the
	// rest are rates and ratios of rates, higher is better.
	cost bool
}

// figures lists r's throughput figures (rates and ratios of rates) and the
// catch-up's CPU seconds per million changes of each component.
func figures(r *result) []figure {
	var out []figure
	add := func(name string, v float64, cost bool) {
		if v > 0 {
			out = append(out, figure{name: name, value: v, cost: cost})
		}
	}
	add("postgresql alone, changes/s", r.Ceiling.ChangesPerSec, false)
	for _, s := range r.CatchUp.Stages {
		add(fmt.Sprintf("catch-up %s %s, changes/s", s.System, s.Stage), s.ChangesPerSec, false)
	}
	if v, ok := r.captureShare(); ok {
		add("catch-up capture / pg_recvlogical", v, false)
	}
	if v, ok := r.changesPerDebezium(); ok {
		add("catch-up changes / debezium", v, false)
	}
	for _, u := range r.CatchUp.Usage {
		add(fmt.Sprintf("catch-up while %s: %s, CPU-s/M", u.Window, u.Component), u.CPUSecPerMChanges, true)
	}
	for _, l := range r.Live {
		add(fmt.Sprintf("live %s achieved, changes/s", l.Rate), l.ChangesPerSec, false)
	}
	if v := r.View; v != nil {
		add("view bootstrap, records/s", v.RecordsPerSec, false)
	}
	return out
}

// comparison is one figure of two runs.
type comparison struct {
	name     string
	old, new float64
	// better is new/old for a rate, old/new for a cost: below 1 the new
	// run is worse.
	better float64
	flag   bool
}

// compare compares the figures the two runs share; a figure fell too far
// when better < 1 - regressionDrop.
func compare(old, cur *result) []comparison {
	was := map[string]float64{}
	for _, f := range figures(old) {
		was[f.name] = f.value
	}
	var out []comparison
	for _, f := range figures(cur) {
		o, ok := was[f.name]
		if !ok {
			continue
		}
		c := comparison{name: f.name, old: o, new: f.value, better: f.value / o}
		if f.cost {
			c.better = o / f.value
		}
		c.flag = c.better < 1-regressionDrop && !(f.cost && f.value < idleCost)
		out = append(out, c)
	}
	return out
}

// printComparison writes the comparison as a table, a FLAG line for each
// figure that fell too far, and returns how many did.
func printComparison(w io.Writer, from string, cs []comparison) (flagged int) {
	fmt.Fprintf(w, "\ncompared with %s (better: new/old for a rate, old/new for CPU-s/M; FLAG below %.2f)\n", from, 1-regressionDrop)
	if len(cs) == 0 {
		fmt.Fprintf(w, "  no figure in common\n")
		return 0
	}
	fmt.Fprintf(w, "  %-72s %12s %12s %7s\n", "figure", "old", "new", "better")
	for _, c := range cs {
		mark := ""
		if c.flag {
			mark = "  FLAG"
			flagged++
		}
		fmt.Fprintf(w, "  %-72s %12.2f %12.2f %6.2fx%s\n", c.name, c.old, c.new, c.better, mark)
	}
	for _, c := range cs {
		if c.flag {
			fmt.Fprintf(w, "FLAG: %s fell by %.0f %% (%.2f, was %.2f)\n", c.name, (1-c.better)*100, c.new, c.old)
		}
	}
	return flagged
}

// readResult reads a result written by an earlier run.
func readResult(path string) (*result, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r result
	if err := json.Unmarshal(raw, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &r, nil
}
