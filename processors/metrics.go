package processors

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/changes-dev/changes/internal/promreg"
)

// metrics are the changes_router_*, changes_snapshot_* and
// changes_processor_* series.
type metrics struct {
	routed     *prometheus.CounterVec
	watermarks prometheus.Counter
	// watermarksKept counts the watermarks a snapshot table stored.
	watermarksKept *prometheus.CounterVec
	applied        *prometheus.CounterVec
	skipped        *prometheus.CounterVec
	rewrites       *prometheus.CounterVec
	badStates      *prometheus.CounterVec
	deadLetters    *prometheus.CounterVec
	tombstones     *prometheus.CounterVec
	restarts       *prometheus.CounterVec
	in             *prometheus.CounterVec
	lag            *prometheus.GaugeVec
	connected      *prometheus.GaugeVec
}

// newMetrics registers the metrics with r (nil: none), reusing the series
// that processors built before with the same registerer registered.
func newMetrics(r prometheus.Registerer) (*metrics, error) {
	f := promreg.With(r)
	m := &metrics{
		routed: f.CounterVec("changes_router_events_total",
			"History events emitted to the events topic of their entity type.", "entity_type"),
		watermarks: f.Counter("changes_router_watermarks_total",
			"Progress watermarks of the history sent to every partition of every type's events topic."),
		watermarksKept: f.CounterVec("changes_snapshot_watermarks_total",
			"Progress watermarks a snapshot table stored as its partition's latest, by entity type (one per partition per watermark).", "entity_type"),
		applied: f.CounterVec("changes_snapshot_applied_total",
			"Changes applied to a snapshot table, by entity type and operation.", "entity_type", "op"),
		skipped: f.CounterVec("changes_snapshot_skipped_total",
			"Changes not applied because the table already holds a state at or after their position (redelivery).", "entity_type"),
		rewrites: f.CounterVec("changes_processor_rewrites_total",
			"Changes delivered again at exactly the stored state's position, whose state was written to the table again (the local copy may have been ahead of the changelog after a crash), by entity type.", "entity_type"),
		tombstones: f.CounterVec("changes_snapshot_tombstones_total",
			"Deleted entities whose grace period ended, replaced by a Kafka tombstone.", "entity_type"),
		in: f.CounterVec("changes_processor_events_in_total",
			"Records a processor consumed from its input topic, by consumer group.", "group"),
		lag: f.GaugeVec("changes_processor_lag_records",
			"Records of an input partition not yet processed by this instance, by consumer group, topic and partition (read every 5 s).", "group", "topic", "partition"),
		connected: f.GaugeVec("changes_processor_connected",
			"1 while a processor runs and Kafka answers (probed every 2 s), 0 while it is being restarted or Kafka is unreachable, by consumer group.", "group"),
		restarts: f.CounterVec("changes_processor_restarts_total",
			"Times a processor failed and was restarted, by consumer group.", "group"),
		badStates: f.CounterVec("changes_snapshot_bad_states_total",
			"Stored snapshot-table records that did not decode as a state, read as absent, by entity type.", "entity_type"),
		deadLetters: f.CounterVec("changes_processor_deadletters_total",
			"Records sent to the dead-letter topic because they could not be decoded, routed or applied, by consumer group and reason: undecodable, undeclared_type, bad_truncate, bad_watermark, wrong_key, not_applicable or too_large.", "group", "reason"),
	}
	return m, f.Err()
}
