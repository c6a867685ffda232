package views

import (
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/changes-dev/changes/internal/promreg"
)

// metrics are a view's changes_view_* series, labelled with its entity type.
type metrics struct {
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
	appliedLSN      prometheus.Gauge
	appliedCommit   prometheus.Gauge
	recovering      atomic.Int64
}

// newMetrics registers the changes_view_* metrics with r (nil: none),
// reusing the series another view of the process registered, and returns
// entityType's series.
func newMetrics(r prometheus.Registerer, entityType string) (*metrics, error) {
	f := promreg.With(r)
	updates := f.CounterVec("changes_view_updates_total",
		"Table records a view applied, by entity type and phase (recovery: catching up after the start; live).", "entity_type", "phase")
	m := &metrics{
		recoveryUpdates: updates.WithLabelValues(entityType, "recovery"),
		liveUpdates:     updates.WithLabelValues(entityType, "live"),
		entities: f.GaugeVec("changes_view_entities",
			"Entities a view holds (deleted and truncated ones excluded).", "entity_type").WithLabelValues(entityType),
		lag: f.GaugeVec("changes_view_lag_records",
			"Table records a view has not applied yet, over all partitions (read every second).", "entity_type").WithLabelValues(entityType),
		recovered: f.GaugeVec("changes_view_recovered",
			"1 once every partition of a view caught up with its table after the start, else 0.", "entity_type").WithLabelValues(entityType),
		get: f.HistogramVec("changes_view_get_seconds",
			"Latency of View.Get.", prometheus.ExponentialBuckets(1e-6, 4, 10), "entity_type").WithLabelValues(entityType), // 1 µs .. 262 ms
		badRecords: f.CounterVec("changes_view_bad_records_total",
			"Table records a view could not apply (a key that is no entity id) or decode for its subscribers.", "entity_type").WithLabelValues(entityType),
		slowSubscribers: f.CounterVec("changes_view_slow_subscribers_total",
			"Subscriptions ended because their reader fell behind its buffer.", "entity_type").WithLabelValues(entityType),
		connected: f.GaugeVec("changes_view_connected",
			"1 while Kafka answers a view (checked every second), 0 while it is unreachable and the view answers from its local copy.", "entity_type").WithLabelValues(entityType),
		synced: f.GaugeVec("changes_view_synced_timestamp_seconds",
			"Unix time when a view last held every record of its table (checked every second): its reads are at most this old.", "entity_type").WithLabelValues(entityType),
		appliedLSN: f.GaugeVec("changes_view_applied_lsn",
			"WAL position (as a number) before which a view has applied every committed change: its progress watermark (View.AppliedThrough).", "entity_type").WithLabelValues(entityType),
		appliedCommit: f.GaugeVec("changes_view_applied_commit_timestamp_seconds",
			"Unix time of the last commit a view's progress watermark covers, by the database's clock: time() minus it is how far behind the database the view is.", "entity_type").WithLabelValues(entityType),
	}
	if err := f.Err(); err != nil {
		return nil, err
	}
	return m, nil
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
