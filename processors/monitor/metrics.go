package monitor

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/changes-dev/changes/internal/promreg"
	"github.com/changes-dev/changes/topology"
)

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

// newMetrics registers the metrics with r (nil: none), with the series of
// every entity type of topo at 0.
func newMetrics(r prometheus.Registerer, topo *topology.Topology) (*metrics, error) {
	f := promreg.With(r)
	m := &metrics{
		toHistory: f.HistogramVec("changes_monitor_commit_to_history_seconds",
			"Time from a change's commit in PostgreSQL to the moment the history's consumer (the router) had it, by entity type.", promreg.LatencyBuckets, "entity_type"),
		toSnapshot: f.HistogramVec("changes_monitor_commit_to_snapshot_seconds",
			"Time from a change's commit in PostgreSQL to its application to the snapshot table, by entity type.", promreg.LatencyBuckets, "entity_type"),
		historyAnomalies: f.CounterVec("changes_monitor_history_anomalies_total",
			"History records out of order: kind is duplicate (a position already held), reorder (an earlier position) or gap (an index skipped inside a transaction); or of an entity type the config does not declare (undeclared_type; the router dead-letters them).", "kind"),
		inconsistent: f.CounterVec("changes_monitor_inconsistent_total",
			"Snapshot table records that no history event explains (kind wrong_value or unknown_position), and history events the table never reached within monitor.remember (never_applied).", "entity_type", "kind"),
		stale: f.GaugeVec("changes_monitor_stale_entities",
			"Entities whose snapshot table has not reached their latest history event within monitor.stale_after.", "entity_type"),
		tracked: f.Gauge("changes_monitor_remembered_events",
			"History events the monitor remembers to check table records against (those of the last monitor.remember, at most monitor.remember_events)."),
		forgotten: f.CounterVec("changes_monitor_forgotten_events_total",
			"History events forgotten before monitor.remember because monitor.remember_events were remembered: pending=\"true\" if the table had not reached them yet (whether it ever does goes unreported), \"false\" if nothing waited for them (a later table record at their position goes unchecked).", "pending"),
		dropped: f.Gauge("changes_monitor_unchecked_table_records",
			"Table records dropped unchecked because too many waited for the history to reach their position."),
		consumerErrors: f.CounterVec("changes_monitor_consumer_errors_total",
			"Errors the monitor's Kafka consumers reported (sarama retries by itself), by topic.", "topic"),
		audits: f.CounterVec("changes_monitor_audit_checks_total",
			"Entities compared with PostgreSQL: result is match, mismatch, or in_flight (changed again meanwhile, not conclusive).", "entity_type", "result"),
		groupLag: f.GaugeVec("changes_monitor_consumer_lag_records",
			"Records of an input partition a processor group has not committed yet (read every 5 s).", "group", "topic", "partition"),
		slotLag: f.GaugeVec("changes_monitor_slot_lag_bytes",
			"WAL between the server's current position and what the capture confirmed (read every 5 s).", "slot"),
		slotRetained: f.GaugeVec("changes_monitor_slot_retained_wal_bytes",
			"WAL the replication slot keeps on the server's disk (current position - restart_lsn).", "slot"),
		slotActive: f.GaugeVec("changes_monitor_slot_active",
			"1 while a capture streams from the replication slot.", "slot"),
		slotPresent: f.GaugeVec("changes_monitor_slot_present",
			"1 while the replication slot exists.", "slot"),
		badRecords: f.CounterVec("changes_monitor_bad_records_total",
			"Records the monitor could not decode, by topic.", "topic"),
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
	return m, f.Err()
}
