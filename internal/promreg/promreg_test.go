package promreg_test

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/changes-dev/changes/internal/promreg"
)

func TestRegisterReusesAndRejects(t *testing.T) {
	reg := prometheus.NewRegistry()
	newCounter := func() *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: "changes_test_total", Help: "h"}, []string{"a"})
	}
	first, err := promreg.Register(reg, newCounter())
	if err != nil {
		t.Fatal(err)
	}
	second, err := promreg.Register(reg, newCounter())
	if err != nil {
		t.Fatal(err)
	}
	first.WithLabelValues("x").Inc()
	second.WithLabelValues("x").Inc()
	if got := testutil.ToFloat64(first.WithLabelValues("x")); got != 2 {
		t.Errorf("shared counter = %v, want 2", got)
	}
	other := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "changes_test_total", Help: "h"}, []string{"b"})
	if _, err := promreg.Register(reg, other); err == nil {
		t.Error("same name with other labels registered without error")
	}
	if _, err := promreg.Register[prometheus.Counter](nil, prometheus.NewCounter(prometheus.CounterOpts{Name: "x", Help: "h"})); err != nil {
		t.Errorf("nil registerer: %v", err)
	}
}

// Two factories on one registry share their series, as two processors of
// one process do; a clash is kept as the factory's error and the rest is
// still built.
func TestFactory(t *testing.T) {
	reg := prometheus.NewRegistry()
	build := func() (*promreg.Factory, prometheus.Counter, *prometheus.GaugeVec, prometheus.Histogram) {
		f := promreg.With(reg)
		return f,
			f.Counter("changes_test_events_total", "Events."),
			f.GaugeVec("changes_test_lag_records", "Lag.", "group"),
			f.Histogram("changes_test_latency_seconds", "Latency.", promreg.LatencyBuckets)
	}
	f1, c1, g1, h1 := build()
	f2, c2, g2, h2 := build()
	if err := errors.Join(f1.Err(), f2.Err()); err != nil {
		t.Fatal(err)
	}
	c1.Inc()
	c2.Inc()
	g1.WithLabelValues("a").Set(3)
	g2.WithLabelValues("a").Add(1)
	h1.Observe(0.002)
	h2.Observe(4000)
	want := `
# HELP changes_test_events_total Events.
# TYPE changes_test_events_total counter
changes_test_events_total 2
# HELP changes_test_lag_records Lag.
# TYPE changes_test_lag_records gauge
changes_test_lag_records{group="a"} 4
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "changes_test_events_total", "changes_test_lag_records"); err != nil {
		t.Error(err)
	}
	if n := testutil.CollectAndCount(h1); n != 1 {
		t.Errorf("histogram series: %d, want 1", n)
	}

	f3 := promreg.With(reg)
	clash := f3.CounterVec("changes_test_events_total", "Events.", "other")
	after := f3.Gauge("changes_test_after", "Built after the clash.")
	if f3.Err() == nil {
		t.Error("the same name with other labels: no error")
	}
	clash.WithLabelValues("x").Inc() // counts, unexported
	after.Set(1)
	if n := testutil.CollectAndCount(reg, "changes_test_after"); n != 1 {
		t.Errorf("a metric built after the error is not registered (%d series)", n)
	}

	nop := promreg.With(nil)
	nop.Counter("changes_test_unregistered_total", "Nowhere.").Inc()
	if nop.Err() != nil {
		t.Errorf("nil registerer: %v", nop.Err())
	}
}

func TestLatencyBucketsReachTheReportMarks(t *testing.T) {
	for _, mark := range []float64{1, 5, 60, 3600} {
		if !slices.Contains(promreg.LatencyBuckets, mark) {
			t.Errorf("LatencyBuckets lack %gs: the share of changes within it cannot be read from a histogram", mark)
		}
	}
	if !slices.IsSorted(promreg.LatencyBuckets) {
		t.Error("LatencyBuckets are not sorted")
	}
}

func TestSum(t *testing.T) {
	reg := prometheus.NewRegistry()
	f := promreg.With(reg)
	c := f.CounterVec("changes_test_total", "Test.", "entity_type", "op")
	c.WithLabelValues("a", "insert").Add(2)
	c.WithLabelValues("a", "delete").Add(3)
	c.WithLabelValues("b", "insert").Add(5)
	f.Histogram("changes_test_seconds", "Test.", []float64{1}).Observe(0.5)
	for _, tc := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"changes_test_total", map[string]string{"entity_type": "a"}, 5},
		{"changes_test_total", map[string]string{"entity_type": "b", "op": "insert"}, 5},
		{"changes_test_total", map[string]string{"entity_type": "c"}, 0},
		{"changes_test_total", nil, 10},
		{"changes_test_seconds", nil, 1},
		{"changes_none_total", nil, 0},
	} {
		if got, err := promreg.Sum(reg, tc.name, tc.labels); err != nil || got != tc.want {
			t.Errorf("Sum(%s, %v) = %v, %v; want %v", tc.name, tc.labels, got, err, tc.want)
		}
	}
}
