// Package processors holds the goka processors that turn the history topic
// into per-type snapshot tables.
//
//	history (1 partition) --Router--> events.<type> (N partitions, keyed by id)
//	events.<type> --Snapshot--> snapshot.<type>-table (compacted, keyed by id)
//
// The Router reads the single-partition history in order and emits each event
// to the topic of its entity type, keyed by entity id, so one type's groups
// scale by partition while every entity's changes stay in order. It routes
// by the record's key and changes-op header, decoding only records without
// them; the Snapshot decodes and checks every event. A Snapshot
// keeps each entity's latest State in its group table; it applies a change
// only if its position is after the stored one, so redelivered changes are
// no-ops. Records that cannot be decoded or routed go to the dead-letter
// topic with the reason in a header and are counted in
// changes_processor_deadletters_total; they never stop a processor.
//
// Offsets are committed by goka only after the table write and every emit of
// a record are acknowledged: delivery is at least once.
package processors
