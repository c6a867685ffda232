package capture

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/changes-dev/changes/internal/promreg"
)

// metrics are the changes_capture_* series.
type metrics struct {
	changes         *prometheus.CounterVec
	transactions    prometheus.Counter
	skipped         prometheus.Counter
	bytes           prometheus.Counter
	ackedLSN        prometheus.Gauge
	slotLag         prometheus.Gauge
	standby         prometheus.Gauge
	snapshotRunning prometheus.Gauge
	snapshotRows    *prometheus.CounterVec
	commitToHistory prometheus.Histogram
	kafkaTxns       prometheus.Counter
	kafkaTxnRecords prometheus.Histogram
	kafkaCommit     prometheus.Histogram
	repaired        prometheus.Counter
	folded          prometheus.Counter
	connected       *prometheus.GaugeVec
	retries         prometheus.Counter
}

// LatencyBuckets are the histogram buckets, in seconds, of the platform's
// latency metrics: fine below a second, where the platform should be, and
// reaching the reference system's 5 s and 1 min marks.
var LatencyBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}

func newMetrics() *metrics {
	return &metrics{
		changes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "changes_capture_changes_total",
			Help: "Changes decoded from PostgreSQL and produced to the history topic, by entity type and operation.",
		}, []string{"entity_type", "op"}),
		transactions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "changes_capture_transactions_total",
			Help: "Committed transactions decoded from PostgreSQL.",
		}),
		skipped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "changes_capture_skipped_total",
			Help: "Changes PostgreSQL resent after a restart that the history already held, so they were not written again.",
		}),
		bytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "changes_capture_bytes_total",
			Help: "Bytes of encoded events produced to the history topic.",
		}),
		ackedLSN: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "changes_capture_acknowledged_lsn",
			Help: "WAL position (as a number) up to which Kafka has every change; reported to PostgreSQL as flushed.",
		}),
		slotLag: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "changes_capture_slot_lag_bytes",
			Help: "WAL PostgreSQL keeps for the slot: pg_current_wal_lsn() minus confirmed_flush_lsn, read every 5 s.",
		}),
		standby: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "changes_capture_standby",
			Help: "1 while this capture waits for another one to release the slot, else 0.",
		}),
		snapshotRunning: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "changes_capture_snapshot_running",
			Help: "1 while the initial snapshot copies rows, else 0.",
		}),
		snapshotRows: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "changes_capture_snapshot_rows_total",
			Help: "Rows the initial snapshot copied to the history, by entity type.",
		}, []string{"entity_type"}),
		commitToHistory: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "changes_capture_commit_to_history_seconds",
			Help:    "Time from a transaction's commit in PostgreSQL to Kafka's acknowledgement of its change in the history topic.",
			Buckets: LatencyBuckets,
		}),
		kafkaTxns: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "changes_capture_kafka_transactions_total",
			Help: "Kafka transactions of the history topic committed.",
		}),
		kafkaTxnRecords: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "changes_capture_kafka_transaction_records",
			Help:    "Records per committed Kafka transaction of the history topic.",
			Buckets: prometheus.ExponentialBuckets(1, 4, 10),
		}),
		kafkaCommit: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "changes_capture_kafka_commit_seconds",
			Help:    "Time to commit a Kafka transaction of the history: the flush of its records and the coordinator's answer.",
			Buckets: LatencyBuckets,
		}),
		repaired: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "changes_capture_history_repairs_total",
			Help: "Changes missing from the history although later ones were there (a hole left by a version without Kafka transactions), written late by the capture.",
		}),
		folded: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "changes_capture_folded_total",
			Help: "Streamed changes left out because a resumed initial snapshot copied their row after them (the copy holds them).",
		}),
		connected: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "changes_capture_connected",
			Help: "1 while the capture streams (both services reachable), 0 while it waits to retry after an error of the named dependency (kafka or postgres).",
		}, []string{"dependency"}),
		retries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "changes_capture_retries_total",
			Help: "Capture sessions that ended with a retryable error and were started again.",
		}),
	}
}

// register registers the metrics with r, reusing series another capture in
// the process registered before.
func (m *metrics) register(r prometheus.Registerer) error {
	var err error
	if m.changes, err = promreg.Register(r, m.changes); err != nil {
		return err
	}
	if m.transactions, err = promreg.Register(r, m.transactions); err != nil {
		return err
	}
	if m.skipped, err = promreg.Register(r, m.skipped); err != nil {
		return err
	}
	if m.bytes, err = promreg.Register(r, m.bytes); err != nil {
		return err
	}
	if m.ackedLSN, err = promreg.Register(r, m.ackedLSN); err != nil {
		return err
	}
	if m.slotLag, err = promreg.Register(r, m.slotLag); err != nil {
		return err
	}
	if m.standby, err = promreg.Register(r, m.standby); err != nil {
		return err
	}
	if m.snapshotRunning, err = promreg.Register(r, m.snapshotRunning); err != nil {
		return err
	}
	if m.snapshotRows, err = promreg.Register(r, m.snapshotRows); err != nil {
		return err
	}
	if m.commitToHistory, err = promreg.Register(r, m.commitToHistory); err != nil {
		return err
	}
	if m.kafkaTxns, err = promreg.Register(r, m.kafkaTxns); err != nil {
		return err
	}
	if m.kafkaTxnRecords, err = promreg.Register(r, m.kafkaTxnRecords); err != nil {
		return err
	}
	if m.kafkaCommit, err = promreg.Register(r, m.kafkaCommit); err != nil {
		return err
	}
	if m.repaired, err = promreg.Register(r, m.repaired); err != nil {
		return err
	}
	if m.folded, err = promreg.Register(r, m.folded); err != nil {
		return err
	}
	if m.connected, err = promreg.Register(r, m.connected); err != nil {
		return err
	}
	m.retries, err = promreg.Register(r, m.retries)
	return err
}
