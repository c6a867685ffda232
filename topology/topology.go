package topology

// Topology names every topic and consumer group of a deployment. It is built
// from a validated Config and is safe for concurrent use (it is read-only).
// Names are plain strings: the processors and views turn them into goka's
// topic types where goka asks for them.
//
// With the default prefix "changes" and an entity type "account":
//
//	changes.history                   the history: every change, commit order, 1 partition
//	changes.router                    the group that routes the history by entity type
//	changes.events.account            the account events, keyed by entity id
//	changes.snapshot.account          the group that keeps the latest account states
//	changes.snapshot.account-table    its compacted changelog: the account snapshot
//	changes.deadletter                records that could not be decoded or routed
//	changes.capture-state             the capture's own state per slot (initial snapshot done?), compacted
type Topology struct {
	cfg *Config
}

// New returns the topology of cfg, which must have passed Validate.
func New(cfg *Config) *Topology { return &Topology{cfg: cfg} }

// Config returns the configuration the topology was built from.
func (t *Topology) Config() *Config { return t.cfg }

// History is the single-partition topic that holds every captured change in
// commit order.
func (t *Topology) History() string { return t.cfg.Topics.Prefix + ".history" }

// DeadLetter is the topic that receives records no processor could handle,
// with the reason in a header.
func (t *Topology) DeadLetter() string { return t.cfg.Topics.Prefix + ".deadletter" }

// CaptureState is the compacted topic where the capture keeps its state per
// replication slot, such as whether the initial snapshot is complete.
func (t *Topology) CaptureState() string { return t.cfg.Topics.Prefix + ".capture-state" }

// RouterGroup is the consumer group that reads the history and emits each
// change to the events topic of its entity type.
func (t *Topology) RouterGroup() string { return t.cfg.Topics.Prefix + ".router" }

// Events is the topic of one entity type's changes, keyed by entity id and
// partitioned like its snapshot table.
func (t *Topology) Events(entityType string) string {
	return t.cfg.Topics.Prefix + ".events." + entityType
}

// SnapshotGroup is the consumer group that keeps the latest state of every
// entity of one type in its group table.
func (t *Topology) SnapshotGroup(entityType string) string {
	return t.cfg.Topics.Prefix + ".snapshot." + entityType
}

// Snapshot is the compacted table topic of one entity type: the latest state
// of each entity, keyed by entity id. It is the group table goka derives
// from SnapshotGroup (goka.GroupTable: the group's name and "-table"); a
// test of the processors holds the two together.
func (t *Topology) Snapshot(entityType string) string {
	return t.SnapshotGroup(entityType) + tableSuffix
}

// tableSuffix is what goka appends to a group's name to name its table.
const tableSuffix = "-table"

// EntityTypes lists the declared entity types in config order.
func (t *Topology) EntityTypes() []string {
	out := make([]string, len(t.cfg.Entities))
	for i, e := range t.cfg.Entities {
		out[i] = e.Type
	}
	return out
}
