package processors

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/changes-dev/changes/internal/promreg"
)

// metrics are the changes_router_*, changes_snapshot_* and
// changes_processor_* series.
type metrics struct {
	routed      *prometheus.CounterVec
	applied     *prometheus.CounterVec
	skipped     *prometheus.CounterVec
	rewrites    *prometheus.CounterVec
	badStates   *prometheus.CounterVec
	deadLetters *prometheus.CounterVec
	tombstones  *prometheus.CounterVec
	restarts    *prometheus.CounterVec
	in          *prometheus.CounterVec
	lag         *prometheus.GaugeVec
	connected   *prometheus.GaugeVec
}

func newMetrics() *metrics {
	return &metrics{
		routed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "changes_router_events_total",
			Help: "History events emitted to the events topic of their entity type.",
		}, []string{"entity_type"}),
		applied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "changes_snapshot_applied_total",
			Help: "Changes applied to a snapshot table, by entity type and operation.",
		}, []string{"entity_type", "op"}),
		skipped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "changes_snapshot_skipped_total",
			Help: "Changes not applied because the table already holds a state at or after their position (redelivery).",
		}, []string{"entity_type"}),
		rewrites: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "changes_processor_rewrites_total",
			Help: "Changes delivered again at exactly the stored state's position, whose state was written to the table again (the local copy may have been ahead of the changelog after a crash), by entity type.",
		}, []string{"entity_type"}),
		tombstones: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "changes_snapshot_tombstones_total",
			Help: "Deleted entities whose grace period ended, replaced by a Kafka tombstone.",
		}, []string{"entity_type"}),
		in: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "changes_processor_events_in_total",
			Help: "Records a processor consumed from its input topic, by consumer group.",
		}, []string{"group"}),
		lag: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "changes_processor_lag_records",
			Help: "Records of an input partition not yet processed by this instance, by consumer group, topic and partition (read every 5 s).",
		}, []string{"group", "topic", "partition"}),
		connected: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "changes_processor_connected",
			Help: "1 while a processor runs and Kafka answers (probed every 2 s), 0 while it is being restarted or Kafka is unreachable, by consumer group.",
		}, []string{"group"}),
		restarts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "changes_processor_restarts_total",
			Help: "Times a processor failed and was restarted, by consumer group.",
		}, []string{"group"}),
		badStates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "changes_snapshot_bad_states_total",
			Help: "Stored snapshot-table records that did not decode as a state, read as absent, by entity type.",
		}, []string{"entity_type"}),
		deadLetters: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "changes_processor_deadletters_total",
			Help: "Records sent to the dead-letter topic because they could not be decoded, routed or applied, by consumer group and reason: undecodable, undeclared_type, bad_truncate, wrong_key, not_applicable or too_large.",
		}, []string{"group", "reason"}),
	}
}

// register registers the metrics with r, reusing the series that processors
// built before with the same registerer registered.
func (m *metrics) register(r prometheus.Registerer) error {
	for _, c := range []**prometheus.CounterVec{&m.routed, &m.applied, &m.skipped, &m.rewrites, &m.badStates, &m.deadLetters, &m.tombstones, &m.restarts, &m.in} {
		var err error
		if *c, err = promreg.Register(r, *c); err != nil {
			return err
		}
	}
	for _, g := range []**prometheus.GaugeVec{&m.lag, &m.connected} {
		var err error
		if *g, err = promreg.Register(r, *g); err != nil {
			return err
		}
	}
	return nil
}
