package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"sort"
	"strings"
	"time"
)

// result is everything a run measured, as written to JSON.
type result struct {
	Machine        string       `json:"machine"`
	DebeziumConfig string       `json:"debezium_config,omitempty"`
	KStreamsConfig string       `json:"kstreams_config,omitempty"`
	Seconds        float64      `json:"seconds"`
	Backlog        int64        `json:"backlog"`
	Ceiling        rateResult   `json:"postgres_ceiling"`
	CatchUp        catchUp      `json:"catch_up"`
	Live           []liveResult `json:"live"`
	View           *viewResult  `json:"view_bootstrap,omitempty"`
}

type rateResult struct {
	ChangesPerSec float64 `json:"changes_per_sec"`
	TxnsPerSec    float64 `json:"transactions_per_sec"`
	PostgresCores float64 `json:"postgres_cores"`
}

type catchUp struct {
	Changes int64           `json:"changes"`
	Stages  []catchUpResult `json:"stages"`
	Usage   []usageResult   `json:"usage"`
}

type catchUpResult struct {
	System        string  `json:"system"`
	Stage         string  `json:"stage"`
	Seconds       float64 `json:"seconds"`
	ChangesPerSec float64 `json:"changes_per_sec"`
	// StartSeconds is, for Kafka Streams, the part of Seconds until the
	// app was RUNNING (JVM start, the group's rebalance, stores opened).
	StartSeconds float64 `json:"start_seconds,omitempty"`
}

type liveResult struct {
	Rate           string  `json:"rate"`
	ChangesPerSec  float64 `json:"changes_per_sec"`
	ChangesHistory stats   `json:"changes_history"`
	ChangesView    stats   `json:"changes_view"`
	Debezium       stats   `json:"debezium"`
	// KStreams is from COMMIT to the row being in the Kafka Streams app's
	// store, where an interactive query reads it.
	KStreams stats `json:"kafka_streams"`
	// KStreamsAfterTopic is from the bench's consumer reading the change in
	// Debezium's topic to the row in the app's store: the app's own part.
	KStreamsAfterTopic stats `json:"kafka_streams_after_topic"`
	// ChangesEvents and ChangesTable are from COMMIT to a consumer reading
	// the change in its type's events topic (the router's output) and in its
	// snapshot table's topic (the snapshot processor's): with the history
	// and the view, where the view's latency goes, hop by hop.
	ChangesEvents stats         `json:"changes_events"`
	ChangesTable  stats         `json:"changes_table"`
	Usage         []usageResult `json:"usage"`
}

type usageResult struct {
	// Window is whose run the usage was measured in: changes, debezium or
	// both.
	Window    string  `json:"window"`
	Component string  `json:"component"`
	Cores     float64 `json:"cores"`
	// CPUSecPerMChanges is the component's CPU seconds over the window per
	// million changes it drained (catch-up windows only): unlike cores, it
	// does not depend on how busy the machine was.
	CPUSecPerMChanges float64 `json:"cpu_s_per_million_changes,omitempty"`
	RSSMiB            float64 `json:"rss_mib"`
	PeakMiB           float64 `json:"peak_rss_mib"`
}

// sample reads every component's usage now.
func sample(comps []component) map[string]usage {
	out := map[string]usage{}
	for _, c := range comps {
		out[c.name] = c.usage()
	}
	return out
}

// usageBetween is each component's usage over a window of elapsed; with
// changes > 0 (a catch-up of that many changes), its CPU seconds per
// million changes too.
func usageBetween(window string, before, after map[string]usage, elapsed time.Duration, changes int64) []usageResult {
	var out []usageResult
	for name, a := range after {
		cpu := (a.cpu - before[name].cpu).Seconds()
		u := usageResult{Window: window, Component: name, Cores: cpu / elapsed.Seconds(), RSSMiB: a.rssMiB, PeakMiB: a.peakMiB}
		if changes > 0 {
			u.CPUSecPerMChanges = cpu / float64(changes) * 1e6
		}
		out = append(out, u)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Component < out[j].Component })
	return out
}

func machine() string {
	cpu := "?"
	if raw, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(raw), "\n") {
			if v, ok := strings.CutPrefix(l, "model name"); ok {
				cpu = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	mem := ""
	if raw, err := os.ReadFile("/proc/meminfo"); err == nil {
		f := strings.Fields(strings.SplitN(string(raw), "\n", 2)[0])
		if len(f) >= 2 {
			mem = f[1] + " kB"
		}
	}
	pg, _ := exec.Command("postgres", "--version").Output()
	return fmt.Sprintf("%d cores (%s), %s memory, %s, %s", runtime.NumCPU(), cpu, mem, runtime.Version(), strings.TrimSpace(string(pg)))
}

func (r *result) write(path string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// print writes the table.
func (r *result) print(w io.Writer) {
	fmt.Fprintf(w, "\nchanges-bench: %s\n", r.Machine)
	if r.DebeziumConfig != "" {
		fmt.Fprintf(w, "%s\n", r.DebeziumConfig)
	}
	if r.KStreamsConfig != "" {
		fmt.Fprintf(w, "%s\n", r.KStreamsConfig)
	}
	fmt.Fprintln(w)
	if r.Ceiling.ChangesPerSec > 0 { // not run by --only
		fmt.Fprintf(w, "PostgreSQL alone (workload flat out, nothing capturing): %.0f changes/s, %.0f transactions/s, %.2f cores\n\n",
			r.Ceiling.ChangesPerSec, r.Ceiling.TxnsPerSec, r.Ceiling.PostgresCores)
	}
	if len(r.CatchUp.Stages) > 0 {
		fmt.Fprintf(w, "catch-up: a backlog of %d changes in the WAL, drained by each system from its own slot, one at a time;\n", r.CatchUp.Changes)
		fmt.Fprintf(w, "changes stage by stage (the capture into the history, then the processors and a view from it)\n")
		if r.KStreamsConfig != "" {
			fmt.Fprintf(w, "Kafka Streams from Debezium's full topics once Debezium is done (from its JVM's start), then both stages added up\n")
		}
		fmt.Fprintf(w, "  %-10s %-31s %10s %14s\n", "system", "into", "seconds", "changes/s")
		for _, s := range r.CatchUp.Stages {
			fmt.Fprintf(w, "  %-10s %-31s %10.1f %14.0f\n", s.System, s.Stage, s.Seconds, s.ChangesPerSec)
		}
		for _, s := range r.CatchUp.Stages {
			if s.StartSeconds > 0 {
				fmt.Fprintf(w, "  %s: RUNNING (JVM started, group joined, stores open) after %.1f s of its %.1f s\n", s.System, s.StartSeconds, s.Seconds)
			}
		}
		if v, ok := r.changesPerDebezium(); ok {
			fmt.Fprintf(w, "  WAL -> Kafka, changes / debezium: %.2fx\n", v)
		}
		if v, ok := r.captureShare(); ok {
			fmt.Fprintf(w, "  capture / pg_recvlogical: %.2fx (the capture's share of PostgreSQL's own decoding rate)\n", v)
		}
		for _, win := range []string{"pg_recvlogical", "changes: capture", "changes: processors and view", "debezium", "kafka streams"} {
			var us []usageResult
			for _, u := range r.CatchUp.Usage {
				if u.Window == win {
					us = append(us, u)
				}
			}
			if len(us) > 0 {
				fmt.Fprintf(w, "  while %s drained it:", win)
				printUsage(w, us)
			}
		}
		fmt.Fprintf(w, "  (CPU-s/M: CPU seconds per million changes of the backlog, whatever else the machine ran)\n")
		fmt.Fprintln(w)
	}
	if len(r.Live) > 0 {
		fmt.Fprintf(w, "live: both running while the workload runs; latency from COMMIT returned to a consumer reading the change (ms)\n")
		ks := r.KStreamsConfig != ""
		head := fmt.Sprintf("  %-8s %10s | %-29s | %-29s | %-29s |", "rate", "achieved/s", "changes: history", "changes: view", "debezium: topic")
		sub := fmt.Sprintf("  %-8s %10s | %s | %s | %s |", "", "", cellsHead, cellsHead, cellsHead)
		if ks {
			head += fmt.Sprintf(" %-29s |", "kafka streams: store")
			sub += " " + cellsHead + " |"
		}
		fmt.Fprintf(w, "%s %s\n%s\n", head, "p99 ratio", sub)
		for _, l := range r.Live {
			ratio := "-"
			if l.Debezium.Samples > 0 && l.ChangesHistory.P99ms > 0 {
				ratio = fmt.Sprintf("%.1fx", l.Debezium.P99ms/l.ChangesHistory.P99ms)
			}
			line := fmt.Sprintf("  %-8s %10.0f | %s | %s | %s |", l.Rate, l.ChangesPerSec, cells(l.ChangesHistory), cells(l.ChangesView), cells(l.Debezium))
			if ks {
				line += " " + cells(l.KStreams) + " |"
			}
			fmt.Fprintf(w, "%s %s\n", line, ratio)
		}
		if ks {
			fmt.Fprintf(w, "  kafka streams: COMMIT to the row in the app's store, where an interactive query reads it; its own part, from the change read in Debezium's topic to the row in its store:\n")
			for _, l := range r.Live {
				fmt.Fprintf(w, "    at %s: %s\n", l.Rate, strings.TrimSpace(cells(l.KStreamsAfterTopic)))
			}
		}
		if r.Live[0].ChangesTable.Samples > 0 {
			fmt.Fprintf(w, "  changes hop by hop (--hops): COMMIT to a consumer of each topic, p50 / p99 / p99.9 (ms)\n")
			fmt.Fprintf(w, "  %-8s | %-27s | %-27s | %-27s | %-27s\n", "rate", "history", "events (router)", "table (snapshot)", "view")
			for _, l := range r.Live {
				fmt.Fprintf(w, "  %-8s | %s | %s | %s | %s\n", l.Rate, hop(l.ChangesHistory), hop(l.ChangesEvents), hop(l.ChangesTable), hop(l.ChangesView))
			}
		}
		for _, l := range r.Live {
			fmt.Fprintf(w, "  at %s:", l.Rate)
			printUsage(w, l.Usage)
		}
	}
	if v := r.View; v != nil {
		fmt.Fprintf(w, "\nview bootstrap (changes serve, %d entities of ~330 bytes, 8 partitions, from an empty directory):\n", v.Entities)
		fmt.Fprintf(w, "  ready after %.1f s: %.0f records/s; resident %.0f MiB, peak %.0f MiB\n", v.Seconds, v.RecordsPerSec, v.RSSMiB, v.PeakMiB)
		fmt.Fprintf(w, "  restarted on its directory: ready after %.2f s, resident %.0f MiB\n", v.RestartSeconds, v.RestartRSSMiB)
	}
}

// cellsHead heads the four columns of cells.
var cellsHead = fmt.Sprintf("%6s %7s %7s %7s", "p50", "p99", "p99.9", "max")

func cells(s stats) string {
	if s.Samples == 0 {
		return fmt.Sprintf("%6s %7s %7s %7s", "-", "-", "-", "-")
	}
	return fmt.Sprintf("%6.1f %7.1f %7.1f %7.1f", s.P50ms, s.P99ms, s.P999ms, s.MaxMs)
}

// hop is a stage's p50, p99 and p99.9 in one cell.
func hop(s stats) string {
	if s.Samples == 0 {
		return fmt.Sprintf("%27s", "-")
	}
	return fmt.Sprintf("%8.1f %8.1f %9.1f", s.P50ms, s.P99ms, s.P999ms)
}

func printUsage(w io.Writer, us []usageResult) {
	var parts []string
	for _, u := range us {
		cpu := ""
		if u.CPUSecPerMChanges > 0 {
			cpu = fmt.Sprintf(" (%.1f CPU-s/M)", u.CPUSecPerMChanges)
		}
		parts = append(parts, fmt.Sprintf("%s %.2f cores%s %.0f MiB", u.Component, u.Cores, cpu, u.RSSMiB))
	}
	fmt.Fprintf(w, " %s\n", strings.Join(parts, "; "))
}

// stageRecvlogical is the catch-up stage of pg_recvlogical.
const stageRecvlogical = "pg_recvlogical (decoding alone)"

// stage returns the catch-up rate of system's stage.
func (r *result) stage(system, stage string) (float64, bool) {
	for _, s := range r.CatchUp.Stages {
		if s.System == system && s.Stage == stage && s.ChangesPerSec > 0 {
			return s.ChangesPerSec, true
		}
	}
	return 0, false
}

// changesPerDebezium is the capture's catch-up rate into the history over
// Debezium's into its topics.
func (r *result) changesPerDebezium() (float64, bool) {
	ours, ok1 := r.stage("changes", "history")
	dbz, ok2 := r.stage("debezium", "topics")
	return ours / dbz, ok1 && ok2
}

// captureShare is the capture's catch-up rate over pg_recvlogical's: the
// share of PostgreSQL's own decoding rate the capture reaches.
func (r *result) captureShare() (float64, bool) {
	ours, ok1 := r.stage("changes", "history")
	pg, ok2 := r.stage("postgresql", stageRecvlogical)
	return ours / pg, ok1 && ok2
}
