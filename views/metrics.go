package views

import (
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/changes-dev/changes/internal/promreg"
)

// metrics are a view's changes_view_* series, labelled with its entity type.
type metrics struct {
	updates         *prometheus.CounterVec
	recoveryUpdates prometheus.Counter
	liveUpdates     prometheus.Counter
	entities        prometheus.Gauge
	lag             prometheus.Gauge
	recovered       prometheus.Gauge
	get             prometheus.Observer
	badRecords      prometheus.Counter
	slowSubscribers prometheus.Counter
	connected       prometheus.Gauge
	synced          prometheus.Gauge
	recovering      atomic.Int64
}

func newMetrics(r prometheus.Registerer, entityType string) (*metrics, error) {
	updates := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "changes_view_updates_total",
		Help: "Table records a view applied, by entity type and phase (recovery: catching up after the start; live).",
	}, []string{"entity_type", "phase"})
	entities := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "changes_view_entities",
		Help: "Entities a view holds (deleted and truncated ones excluded).",
	}, []string{"entity_type"})
	lag := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "changes_view_lag_records",
		Help: "Table records a view has not applied yet, over all partitions (read every second).",
	}, []string{"entity_type"})
	recovered := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "changes_view_recovered",
		Help: "1 once every partition of a view caught up with its table after the start, else 0.",
	}, []string{"entity_type"})
	get := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "changes_view_get_seconds",
		Help:    "Latency of View.Get.",
		Buckets: prometheus.ExponentialBuckets(1e-6, 4, 10), // 1 µs .. 262 ms
	}, []string{"entity_type"})
	bad := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "changes_view_bad_records_total",
		Help: "Table records a view could not apply (a key that is no entity id) or decode for its subscribers.",
	}, []string{"entity_type"})
	slow := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "changes_view_slow_subscribers_total",
		Help: "Subscriptions ended because their reader fell behind its buffer.",
	}, []string{"entity_type"})
	connected := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "changes_view_connected",
		Help: "1 while Kafka answers a view (checked every second), 0 while it is unreachable and the view answers from its local copy.",
	}, []string{"entity_type"})
	synced := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "changes_view_synced_timestamp_seconds",
		Help: "Unix time when a view last held every record of its table (checked every second): its reads are at most this old.",
	}, []string{"entity_type"})
	var err error
	if connected, err = promreg.Register(r, connected); err != nil {
		return nil, err
	}
	if synced, err = promreg.Register(r, synced); err != nil {
		return nil, err
	}
	if updates, err = promreg.Register(r, updates); err != nil {
		return nil, err
	}
	if entities, err = promreg.Register(r, entities); err != nil {
		return nil, err
	}
	if lag, err = promreg.Register(r, lag); err != nil {
		return nil, err
	}
	if recovered, err = promreg.Register(r, recovered); err != nil {
		return nil, err
	}
	if get, err = promreg.Register(r, get); err != nil {
		return nil, err
	}
	if bad, err = promreg.Register(r, bad); err != nil {
		return nil, err
	}
	if slow, err = promreg.Register(r, slow); err != nil {
		return nil, err
	}
	return &metrics{
		updates:         updates,
		recoveryUpdates: updates.WithLabelValues(entityType, "recovery"),
		liveUpdates:     updates.WithLabelValues(entityType, "live"),
		entities:        entities.WithLabelValues(entityType),
		lag:             lag.WithLabelValues(entityType),
		recovered:       recovered.WithLabelValues(entityType),
		get:             get.WithLabelValues(entityType),
		badRecords:      bad.WithLabelValues(entityType),
		slowSubscribers: slow.WithLabelValues(entityType),
		connected:       connected.WithLabelValues(entityType),
		synced:          synced.WithLabelValues(entityType),
	}, nil
}

func (m *metrics) updated(recovering bool) {
	if recovering {
		m.recovering.Add(1)
		m.recoveryUpdates.Inc()
	} else {
		m.liveUpdates.Inc()
	}
}

func (m *metrics) setRecovered(ok bool) {
	if ok {
		m.recovered.Set(1)
	} else {
		m.recovered.Set(0)
	}
}

func (m *metrics) observeGet(start time.Time) { m.get.Observe(time.Since(start).Seconds()) }

// recoveryRecords is how many records this view applied while recovering,
// for progress logs.
func (m *metrics) recoveryRecords() float64 { return float64(m.recovering.Load()) }
