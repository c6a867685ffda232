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
// only if its position is after the stored one and after the partition's
// last TRUNCATE (codecs.Judge, the rule the views and the history reader
// share). Records that cannot be decoded or routed go to the dead-letter
// topic with the reason in a header and are counted in
// changes_processor_deadletters_total; they never stop a processor.
//
// Offsets are committed by goka only after the table write and every emit of
// a record are acknowledged: delivery is at least once.
//
// # After a crash or a broker outage
//
// Every event of an events topic ends in its table topic, which is all the
// views read:
//
//   - goka writes a state to its local goleveldb copy before the changelog
//     record is acknowledged, so after a SIGKILL the local copy can be ahead
//     of the table topic. The change is delivered again (its offset was not
//     committed), and a change redelivered at exactly the stored state's
//     position writes that state again (changes_processor_rewrites_total); a
//     truncate marker likewise. Only strictly older changes are skipped.
//   - goka marks each message's offset once that message's own writes are
//     acknowledged, in any order, so a later message could be committed past
//     an earlier one still waiting for a broker that then fails it. A
//     processor's acknowledgements therefore pass through one queue in the
//     order they were made, and once one write failed every later write and
//     commit fails too (order.go): no offset moves past a failed write.
//   - While sarama cannot find a partition's leader it fails a record at
//     once and sends the ones behind it when the leader is back, so a
//     redelivered change could land after a progress watermark that covers
//     it. The producer therefore keeps each marker (watermark or truncate)
//     in place in its partition: it goes out only once every earlier record
//     of the partition was acknowledged, later ones only once it was, and
//     after a failure nothing more goes out (fence.go).
//   - Left: the sweep deletes a state locally before its tombstone is
//     acknowledged. A crash in between leaves the deleted (or truncated-away)
//     state in the table topic, where views already treat it as absent; it
//     is only never compacted away.
package processors
