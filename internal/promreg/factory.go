package promreg

import "github.com/prometheus/client_golang/prometheus"

// LatencyBuckets are the bounds, in seconds, of every latency histogram of
// the platform (capture, monitor): fine below a second, where the platform
// should be, and reaching the reference report's 1 s, 5 s, 1 min and 1 h
// marks, so that the share of changes within each is read from the
// buckets. Do not modify it.
var LatencyBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600}

// Factory builds a package's collectors and registers each with one
// Registerer as Register does: a collector another part of the process
// registered before is reused. It is how every package of ours defines its
// metrics, like promauto.With but returning errors instead of panicking.
// A collector that fails to register still counts, unexported, and the
// first such error is kept (Err). A Factory is not safe for concurrent use.
type Factory struct {
	r   prometheus.Registerer
	err error
}

// With returns a Factory that registers with r; a nil r registers nothing.
func With(r prometheus.Registerer) *Factory { return &Factory{r: r} }

// Err returns the first registration error, if any.
func (f *Factory) Err() error { return f.err }

// Counter registers a counter.
func (f *Factory) Counter(name, help string) prometheus.Counter {
	return add(f, prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help}))
}

// CounterVec registers a counter with labels.
func (f *Factory) CounterVec(name, help string, labels ...string) *prometheus.CounterVec {
	return add(f, prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels))
}

// Gauge registers a gauge.
func (f *Factory) Gauge(name, help string) prometheus.Gauge {
	return add(f, prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: help}))
}

// GaugeVec registers a gauge with labels.
func (f *Factory) GaugeVec(name, help string, labels ...string) *prometheus.GaugeVec {
	return add(f, prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name, Help: help}, labels))
}

// Histogram registers a histogram with the given bucket bounds (such as
// LatencyBuckets).
func (f *Factory) Histogram(name, help string, buckets []float64) prometheus.Histogram {
	return add(f, prometheus.NewHistogram(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets}))
}

// HistogramVec registers a histogram with labels.
func (f *Factory) HistogramVec(name, help string, buckets []float64, labels ...string) *prometheus.HistogramVec {
	return add(f, prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets}, labels))
}

func add[C prometheus.Collector](f *Factory, c C) C {
	got, err := Register(f.r, c)
	if err != nil && f.err == nil {
		f.err = err
	}
	return got
}
