package promreg_test

import (
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
