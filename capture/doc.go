// Package capture reads every committed change of the configured tables
// through PostgreSQL logical replication (pgoutput) and appends it, in commit
// order, to the single-partition history topic.
//
// # Delivery
//
// Changes are produced to Kafka as they are decoded (acks=all, idempotent, one
// request in flight), so a large transaction is never held in memory. The
// flush position reported to PostgreSQL is the end LSN of the last
// transaction whose every change Kafka has acknowledged, never the position of
// a change inside a transaction; a keepalive's WAL end is echoed only while
// nothing is in flight. A crash therefore loses nothing: PostgreSQL resends
// every transaction after the flush position.
//
// # One writer
//
// The slot admits one stream at a time. A second capture on the same slot
// waits as a standby (changes_capture_standby = 1) and takes over when the
// first one stops; only after it holds the slot does it read the slot's
// position and the end of the history.
//
// # No duplicates
//
// The capture is the history's only writer (the slot admits one stream at a
// time) and writes in position order. At start it reads the position of the
// last record in the history and skips every resent change at or before it,
// so a crash between Kafka's acknowledgement and the report to PostgreSQL,
// or a PostgreSQL restart that forgot the last reported position, writes
// nothing twice (changes_capture_skipped_total counts what was skipped).
//
// # Idle tables
//
// While nothing captured is in flight, the capture asks PostgreSQL for a
// keepalive every second and confirms its WAL end, so the slot follows the
// server's WAL when the captured tables are idle and other tables or
// databases are busy; changes_capture_slot_lag_bytes shows what the slot holds.
//
// # Setup
//
// At start Capture checks wal_level, the captured tables, their id columns and
// replica identities, and creates the publication and the logical slot when
// they are absent. A slot whose WAL was removed (wal_status = lost) or that
// uses another plugin is an error that names what to do; it is never replaced
// silently. A slot that is missing although the history holds changes was
// dropped: Run returns ErrSlotMissing unless the operator accepts the gap
// with WithRecreateSlot (changes capture --recreate-slot).
package capture
