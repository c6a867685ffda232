package monitor

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/changes-dev/changes/internal/promreg"
	"github.com/changes-dev/changes/topology"
)

// LatencyBuckets are the bounds of the latency histograms, in seconds: fine
// below a second, and the reference report's 1 s, 5 s, 60 s and 3600 s.
var LatencyBuckets = []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600}

// metrics are the changes_monitor_* series.
type metrics struct {
	toHistory        *prometheus.HistogramVec
	toSnapshot       *prometheus.HistogramVec
	historyAnomalies *prometheus.CounterVec
	inconsistent     *prometheus.CounterVec
	stale            *prometheus.GaugeVec
	tracked          prometheus.Gauge
	forgotten        *prometheus.CounterVec
	dropped          prometheus.Gauge
	consumerErrors   *prometheus.CounterVec
	audits           *prometheus.CounterVec
	groupLag         *prometheus.GaugeVec
	slotLag          *prometheus.GaugeVec
	slotRetained     *prometheus.GaugeVec
	slotActive       *prometheus.GaugeVec
	slotPresent      *prometheus.GaugeVec
	badRecords       *prometheus.CounterVec
}

func newMetrics(r prometheus.Registerer, topo *topology.Topology) (*metrics, error) {
	m := &metrics{
		toHistory: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "changes_monitor_commit_to_history_seconds",
			Help:    "Time from a change's commit in PostgreSQL to the moment the history's consumer (the router) had it, by entity type.",
			Buckets: LatencyBuckets,
		}, []string{"entity_type"}),
		toSnapshot: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "changes_monitor_commit_to_snapshot_seconds",
			Help:    "Time from a change's commit in PostgreSQL to its application to the snapshot table, by entity type.",
			Buckets: LatencyBuckets,
		}, []string{"entity_type"}),
		historyAnomalies: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "changes_monitor_history_anomalies_total",
			Help: "History records out of order: kind is duplicate (a position already held), reorder (an earlier position) or gap (an index skipped inside a transaction); or of an entity type the config does not declare (undeclared_type; the router dead-letters them).",
		}, []string{"kind"}),
		inconsistent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "changes_monitor_inconsistent_total",
			Help: "Snapshot table records that no history event explains (kind wrong_value or unknown_position), and history events the table never reached within monitor.remember (never_applied).",
		}, []string{"entity_type", "kind"}),
		stale: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "changes_monitor_stale_entities",
			Help: "Entities whose snapshot table has not reached their latest history event within monitor.stale_after.",
		}, []string{"entity_type"}),
		tracked: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "changes_monitor_remembered_events",
			Help: "History events the monitor remembers to check table records against (those of the last monitor.remember, at most monitor.remember_events).",
		}),
		forgotten: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "changes_monitor_forgotten_events_total",
			Help: "History events forgotten before monitor.remember because monitor.remember_events were remembered: pending=\"true\" if the table had not reached them yet (whether it ever does goes unreported), \"false\" if nothing waited for them (a later table record at their position goes unchecked).",
		}, []string{"pending"}),
		dropped: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "changes_monitor_unchecked_table_records",
			Help: "Table records dropped unchecked because too many waited for the history to reach their position.",
		}),
		consumerErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "changes_monitor_consumer_errors_total",
			Help: "Errors the monitor's Kafka consumers reported (sarama retries by itself), by topic.",
		}, []string{"topic"}),
		audits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "changes_monitor_audit_checks_total",
			Help: "Entities compared with PostgreSQL: result is match, mismatch, or in_flight (changed again meanwhile, not conclusive).",
		}, []string{"entity_type", "result"}),
		groupLag: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "changes_monitor_consumer_lag_records",
			Help: "Records of an input partition a processor group has not committed yet (read every 5 s).",
		}, []string{"group", "topic", "partition"}),
		slotLag: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "changes_monitor_slot_lag_bytes",
			Help: "WAL between the server's current position and what the capture confirmed (read every 5 s).",
		}, []string{"slot"}),
		slotRetained: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "changes_monitor_slot_retained_wal_bytes",
			Help: "WAL the replication slot keeps on the server's disk (current position - restart_lsn).",
		}, []string{"slot"}),
		slotActive: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "changes_monitor_slot_active",
			Help: "1 while a capture streams from the replication slot.",
		}, []string{"slot"}),
		slotPresent: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "changes_monitor_slot_present",
			Help: "1 while the replication slot exists.",
		}, []string{"slot"}),
		badRecords: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "changes_monitor_bad_records_total",
			Help: "Records the monitor could not decode, by topic.",
		}, []string{"topic"}),
	}
	// Series that should read 0 rather than be absent.
	for _, kind := range []string{Duplicate, Reorder, Gap, UndeclaredType} {
		m.historyAnomalies.WithLabelValues(kind)
	}
	for _, typ := range topo.EntityTypes() {
		for _, kind := range []string{WrongValue, UnknownPosition, NeverApplied} {
			m.inconsistent.WithLabelValues(typ, kind)
		}
		for _, res := range []string{"match", "mismatch", "in_flight"} {
			m.audits.WithLabelValues(typ, res)
		}
		m.stale.WithLabelValues(typ)
		m.toHistory.WithLabelValues(typ)
		m.toSnapshot.WithLabelValues(typ)
	}
	m.forgotten.WithLabelValues("true")
	m.forgotten.WithLabelValues("false")
	var err error
	for _, h := range []**prometheus.HistogramVec{&m.toHistory, &m.toSnapshot} {
		if *h, err = promreg.Register(r, *h); err != nil {
			return nil, err
		}
	}
	for _, c := range []**prometheus.CounterVec{&m.historyAnomalies, &m.inconsistent, &m.audits, &m.badRecords, &m.consumerErrors, &m.forgotten} {
		if *c, err = promreg.Register(r, *c); err != nil {
			return nil, err
		}
	}
	for _, g := range []**prometheus.GaugeVec{&m.stale, &m.groupLag, &m.slotLag, &m.slotRetained, &m.slotActive, &m.slotPresent} {
		if *g, err = promreg.Register(r, *g); err != nil {
			return nil, err
		}
	}
	if m.tracked, err = promreg.Register(r, m.tracked); err != nil {
		return nil, err
	}
	if m.dropped, err = promreg.Register(r, m.dropped); err != nil {
		return nil, err
	}
	return m, nil
}
