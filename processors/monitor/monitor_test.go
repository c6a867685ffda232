package monitor

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/internal/promreg"
)

// The metrics the alert rules read, by name and labels, fed through the
// monitor's record handling.
func TestMonitorMetrics(t *testing.T) {
	topo := testTopo(t)
	reg := prometheus.NewRegistry()
	m, err := New(topo, WithRegisterer(reg))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	commit := now.Add(-3 * time.Second)
	e1 := ev(1, 10, 0, codecs.OpInsert, `1`)
	e1.CommitTime = commit
	rawEvent, err := (codecs.EventCodec{}).Encode(e1)
	if err != nil {
		t.Fatal(err)
	}
	hist := topo.History()
	// The history event, twice (a duplicate), and the router's copy.
	m.apply(record{source: fromHistory, msg: &sarama.ConsumerMessage{Topic: hist, Offset: 0, Value: rawEvent}}, now)
	m.apply(record{source: fromHistory, msg: &sarama.ConsumerMessage{Topic: hist, Offset: 1, Value: rawEvent}}, now)
	m.apply(record{source: fromEvents, typ: "a", msg: &sarama.ConsumerMessage{Topic: "events", Value: rawEvent, Timestamp: commit.Add(20 * time.Millisecond)}}, now)
	// The table applies it 2 s after the commit, with a wrong value.
	st := stateOf(e1)
	st.Row["v"] = []byte(`2`)
	st.CommitTime, st.AppliedTime = commit, commit.Add(2*time.Second)
	rawState, err := (codecs.StateCodec{}).Encode(st)
	if err != nil {
		t.Fatal(err)
	}
	m.apply(record{source: fromTable, typ: "a", msg: &sarama.ConsumerMessage{Topic: "tbl", Key: []byte("1"), Value: rawState}}, now)
	// Entity 2 never reaches its table.
	e2 := ev(2, 11, 0, codecs.OpInsert, `1`)
	raw2, _ := (codecs.EventCodec{}).Encode(e2)
	m.apply(record{source: fromHistory, msg: &sarama.ConsumerMessage{Topic: hist, Offset: 2, Value: raw2}}, now)
	m.apply(record{source: fromHistory, msg: &sarama.ConsumerMessage{Topic: hist, Offset: 3, Value: []byte("garbage")}}, now)
	m.checkStale(now.Add(time.Minute))

	want := `
# HELP changes_monitor_history_anomalies_total History records out of order: kind is duplicate (a position already held), reorder (an earlier position) or gap (an index skipped inside a transaction); or of an entity type the config does not declare (undeclared_type; the router dead-letters them).
# TYPE changes_monitor_history_anomalies_total counter
changes_monitor_history_anomalies_total{kind="duplicate"} 1
changes_monitor_history_anomalies_total{kind="gap"} 0
changes_monitor_history_anomalies_total{kind="reorder"} 0
changes_monitor_history_anomalies_total{kind="undeclared_type"} 0
# HELP changes_monitor_inconsistent_total Snapshot table records that no history event explains (kind wrong_value or unknown_position), and history events the table never reached within monitor.remember (never_applied).
# TYPE changes_monitor_inconsistent_total counter
changes_monitor_inconsistent_total{entity_type="a",kind="never_applied"} 0
changes_monitor_inconsistent_total{entity_type="a",kind="unknown_position"} 0
changes_monitor_inconsistent_total{entity_type="a",kind="wrong_value"} 1
# HELP changes_monitor_stale_entities Entities whose snapshot table has not reached their latest history event within monitor.stale_after.
# TYPE changes_monitor_stale_entities gauge
changes_monitor_stale_entities{entity_type="a"} 1
# HELP changes_monitor_bad_records_total Records the monitor could not decode, by topic.
# TYPE changes_monitor_bad_records_total counter
changes_monitor_bad_records_total{topic="` + hist + `"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want),
		"changes_monitor_history_anomalies_total", "changes_monitor_inconsistent_total", "changes_monitor_stale_entities", "changes_monitor_bad_records_total"); err != nil {
		t.Error(err)
	}
	// The latencies land in their buckets: 20 ms to history, 2 s to snapshot.
	bucket := func(name string, le float64) uint64 {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() != name {
				continue
			}
			for _, bk := range mf.GetMetric()[0].GetHistogram().GetBucket() {
				if bk.GetUpperBound() == le {
					return bk.GetCumulativeCount()
				}
			}
		}
		t.Fatalf("%s has no bucket le=%g", name, le)
		return 0
	}
	if got := [2]uint64{bucket("changes_monitor_commit_to_history_seconds", 0.01), bucket("changes_monitor_commit_to_history_seconds", 0.025)}; got != [2]uint64{0, 1} {
		t.Errorf("commit to history 20 ms: cumulative counts at 10 ms, 25 ms = %v, want [0 1]", got)
	}
	if got := [2]uint64{bucket("changes_monitor_commit_to_snapshot_seconds", 1), bucket("changes_monitor_commit_to_snapshot_seconds", 2.5)}; got != [2]uint64{0, 1} {
		t.Errorf("commit to snapshot 2 s: cumulative counts at 1 s, 2.5 s = %v, want [0 1]", got)
	}
	for _, name := range []string{"changes_monitor_commit_to_history_seconds", "changes_monitor_commit_to_snapshot_seconds"} {
		if n := testutil.CollectAndCount(reg, name); n != 1 {
			t.Errorf("%s has %d series, want 1 (entity_type=a)", name, n)
		}
	}
	for _, b := range SLOBounds {
		if !slices.Contains(promreg.LatencyBuckets, b.Seconds()) {
			t.Errorf("latency buckets lack the report's %s", b)
		}
	}
}

// TestMonitorBoundedSeries feeds history events of many forged entity types
// and more events than monitor.remember_events: no forged type becomes a
// label value, the forged events are counted as one kind of history anomaly,
// and the events forgotten early are counted.
func TestMonitorBoundedSeries(t *testing.T) {
	topo := testTopo(t)
	topo.Config().Monitor.RememberEvents = 1000
	reg := prometheus.NewRegistry()
	m, err := New(topo, WithRegisterer(reg))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	hist := topo.History()
	feed := func(off int64, e *codecs.Event) {
		raw, err := (codecs.EventCodec{}).Encode(e)
		if err != nil {
			t.Fatal(err)
		}
		m.apply(record{source: fromHistory, msg: &sarama.ConsumerMessage{Topic: hist, Offset: off, Value: raw}}, now)
	}
	const forged, declared = 200, 1200
	for i := range forged {
		e := ev(int64(i), codecs.LSN(10+i), 0, codecs.OpInsert, `1`)
		e.EntityType = fmt.Sprintf("forged_%d", i)
		feed(int64(i), e)
	}
	// Declared events the table never reaches: with the forged ones, 400
	// more than the monitor remembers.
	for i := range declared {
		feed(int64(forged+i), ev(int64(i), codecs.LSN(10+forged+i), 0, codecs.OpInsert, `1`))
	}
	m.checkStale(now.Add(time.Minute))
	m.checkStale(now.Add(time.Hour)) // past monitor.remember: never applied

	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, metric := range mf.GetMetric() {
			for _, l := range metric.GetLabel() {
				if l.GetName() == "entity_type" && l.GetValue() != "a" && l.GetValue() != undeclaredLabel {
					t.Errorf("%s has entity_type=%q, want only declared types or %q", mf.GetName(), l.GetValue(), undeclaredLabel)
				}
			}
		}
	}
	want := `
# HELP changes_monitor_forgotten_events_total History events forgotten before monitor.remember because monitor.remember_events were remembered: pending="true" if the table had not reached them yet (whether it ever does goes unreported), "false" if nothing waited for them (a later table record at their position goes unchecked).
# TYPE changes_monitor_forgotten_events_total counter
changes_monitor_forgotten_events_total{pending="false"} 200
changes_monitor_forgotten_events_total{pending="true"} 200
`
	// The forged events are the oldest: forgotten first, nothing waited
	// for them; then the first 200 declared ones, which were pending.
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "changes_monitor_forgotten_events_total"); err != nil {
		t.Error(err)
	}
	if got := testutil.ToFloat64(m.metrics.historyAnomalies.WithLabelValues(UndeclaredType)); got != forged {
		t.Errorf("undeclared_type anomalies = %v, want %d", got, forged)
	}
	if got := testutil.ToFloat64(m.metrics.inconsistent.WithLabelValues("a", NeverApplied)); got != 1000 {
		t.Errorf("never_applied = %v, want 1000 (the remembered events)", got)
	}
}
