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
	// Incremental snapshots.
	incrementalRows     *prometheus.CounterVec
	incrementalChunks   *prometheus.CounterVec
	incrementalRowsLeft *prometheus.GaugeVec
	incrementalUnseen   prometheus.Counter
	incrementalAgain    *prometheus.CounterVec
	resyncSame          *prometheus.CounterVec
	resyncDeletes       *prometheus.CounterVec
	badSignals          prometheus.Counter
	commitToHistory     prometheus.Histogram
	kafkaTxns           prometheus.Counter
	kafkaTxnRecords     prometheus.Histogram
	kafkaCommit         prometheus.Histogram
	repaired            prometheus.Counter
	folded              prometheus.Counter
	watermarks          prometheus.Counter
	connected           *prometheus.GaugeVec
	retries             prometheus.Counter
}

// newMetrics registers the metrics with r (nil: none), reusing the series
// another capture in the process registered before.
func newMetrics(r prometheus.Registerer) (*metrics, error) {
	f := promreg.With(r)
	m := &metrics{
		changes: f.CounterVec("changes_capture_changes_total",
			"Changes decoded from PostgreSQL and produced to the history topic, by entity type and operation.", "entity_type", "op"),
		transactions: f.Counter("changes_capture_transactions_total",
			"Committed transactions decoded from PostgreSQL."),
		skipped: f.Counter("changes_capture_skipped_total",
			"Changes PostgreSQL resent after a restart that the history already held, so they were not written again."),
		bytes: f.Counter("changes_capture_bytes_total",
			"Bytes of encoded events produced to the history topic."),
		ackedLSN: f.Gauge("changes_capture_acknowledged_lsn",
			"WAL position (as a number) up to which Kafka has every change; reported to PostgreSQL as flushed."),
		slotLag: f.Gauge("changes_capture_slot_lag_bytes",
			"WAL PostgreSQL keeps for the slot: pg_current_wal_lsn() minus confirmed_flush_lsn, read every 5 s."),
		standby: f.Gauge("changes_capture_standby",
			"1 while this capture waits for another one to release the slot, else 0."),
		snapshotRunning: f.Gauge("changes_capture_snapshot_running",
			"1 while the initial snapshot copies rows, else 0."),
		snapshotRows: f.CounterVec("changes_capture_snapshot_rows_total",
			"Rows the initial snapshot copied to the history, by entity type.", "entity_type"),
		incrementalRows: f.CounterVec("changes_capture_incremental_snapshot_rows_total",
			"Rows incremental snapshots wrote to the history, by entity type (rows the stream changed while their chunk was copied are left out).", "entity_type"),
		incrementalChunks: f.CounterVec("changes_capture_incremental_snapshot_chunks_total",
			"Chunks incremental snapshots copied, by entity type.", "entity_type"),
		incrementalRowsLeft: f.GaugeVec("changes_capture_incremental_snapshot_rows_left",
			"Rows the running incremental snapshot of the entity type has left to copy: counted when it starts or resumes, less each chunk's rows since.", "entity_type"),
		incrementalUnseen: f.Counter("changes_capture_incremental_snapshot_unseen_changes_total",
			"Changes committed just before a chunk's low watermark that the chunk's query did not see yet (PostgreSQL makes commits visible after writing them): their rows were left out of the chunk, their changes being newer."),
		incrementalAgain: f.CounterVec("changes_capture_incremental_snapshot_recopied_rows_total",
			"Rows copied again in a follow-up chunk because the stream changed them in their chunk's window with TOASTed columns left unchanged, by entity type.", "entity_type"),
		resyncSame: f.CounterVec("changes_capture_resync_same_rows_total",
			"Rows a resync (changes capture --resync) copied that equal their entity's state in the snapshot tables: not written.", "entity_type"),
		resyncDeletes: f.CounterVec("changes_capture_resync_deletes_total",
			"Deletes a resync wrote for entities the snapshot tables held that the database no longer has, by entity type.", "entity_type"),
		badSignals: f.Counter("changes_capture_bad_signals_total",
			"Messages with the slot's signal prefix that are not signals: logged and ignored."),
		commitToHistory: f.Histogram("changes_capture_commit_to_history_seconds",
			"Time from a transaction's commit in PostgreSQL to Kafka's acknowledgement of its change in the history topic.", promreg.LatencyBuckets),
		kafkaTxns: f.Counter("changes_capture_kafka_transactions_total",
			"Kafka transactions of the history topic committed."),
		kafkaTxnRecords: f.Histogram("changes_capture_kafka_transaction_records",
			"Records per committed Kafka transaction of the history topic.", prometheus.ExponentialBuckets(1, 4, 10)),
		kafkaCommit: f.Histogram("changes_capture_kafka_commit_seconds",
			"Time to commit a Kafka transaction of the history: the flush of its records and the coordinator's answer.", promreg.LatencyBuckets),
		repaired: f.Counter("changes_capture_history_repairs_total",
			"Changes missing from the history although later ones were there (a hole left by a version without Kafka transactions), written late by the capture."),
		folded: f.Counter("changes_capture_folded_total",
			"Streamed changes left out because a resumed initial snapshot copied their row after them (the copy holds them)."),
		watermarks: f.Counter("changes_capture_watermarks_total",
			"Progress watermarks appended to the history (every transaction that committed before a watermark's LSN is before it; see postgres.watermark_interval)."),
		connected: f.GaugeVec("changes_capture_connected",
			"1 while the capture streams (both services reachable), 0 while it waits to retry after an error of the named dependency (kafka or postgres).", "dependency"),
		retries: f.Counter("changes_capture_retries_total",
			"Capture sessions that ended with a retryable error and were started again."),
	}
	return m, f.Err()
}
