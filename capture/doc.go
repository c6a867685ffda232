// Package capture reads every committed change of the configured tables
// through PostgreSQL logical replication (pgoutput) and appends it, in commit
// order, to the single-partition history topic.
//
// # Delivery
//
// Changes are produced to Kafka as they are decoded (acks=all, idempotent, one
// request in flight), so a large transaction is never held in memory, inside
// Kafka transactions (transactional id changes-capture.<history>.<slot>). A
// Kafka transaction commits at a PostgreSQL transaction boundary as soon as
// the stream pauses, else every 5 ms or four times the last commit's
// duration (every 100 ms or ten times the last commit's duration while the
// transactions decoded committed more than a second ago: a catch-up); one
// over 100,000 changes or 10 s is split. A failed write aborts
// its Kafka transaction, so no later change is visible without it: the
// history never has a hole (sarama's plain producer goes on with later
// records after one failed). Readers of the history read at read_committed.
//
// The flush position reported to PostgreSQL is the end LSN of the last
// transaction whose every change is in a committed Kafka transaction, never
// the position of a change inside a transaction; a keepalive's WAL end is
// echoed only while nothing is in flight. A crash therefore loses nothing:
// PostgreSQL resends every transaction after the flush position.
//
// # Outages
//
// Run survives outages of Kafka and PostgreSQL: a session that fails with a
// Retryable error is started again after a backoff (1 s doubling to 5 s),
// with a log line when a dependency is lost and one when streaming resumes,
// and changes_capture_connected{dependency}. Errors that need someone to act
// (a lost or missing slot, ErrSetup, ErrRecordTooLarge, refused credentials)
// end Run.
//
// # One writer
//
// A capture holds a session advisory lock named after its slot for as long
// as it runs, and the slot admits one stream at a time. A second capture on
// the same slot waits as a standby (changes_capture_standby = 1) and takes
// over when the first one stops; only once it holds the lock does it read the
// slot's position and the end of the history, and it starts streaming only
// when it is ready to write, so an active slot means a streaming capture.
//
// # No duplicates
//
// The capture is the history's only writer (the slot admits one stream at a
// time) and writes in position order. Starting its transactional producer
// fences any older capture of the slot and aborts what it left open; then it
// reads back the committed changes of the resent transactions and skips them,
// so a crash between Kafka's acknowledgement and the report to PostgreSQL,
// or a PostgreSQL restart that forgot the last reported position, writes
// nothing twice (changes_capture_skipped_total counts what was skipped).
//
// # Initial snapshot
//
// When the slot is new, the capture creates it with an exported snapshot and
// copies every existing row of the captured tables as of the slot's
// consistent point, table by table in key order, in batches of 5000, as
// OpSnapshot events placed just before the slot's first change; then it
// streams. The snapshot and the stream meet exactly: a row committed during
// the copy is streamed, not copied. Progress is logged every 5 s and counted
// in changes_capture_snapshot_rows_total.
//
// The copy encodes each row straight from PostgreSQL's text
// (codecs.RowEncoder) and writes its records itself, not through sarama's
// producer: whole record batches of up to kafka.max_record_bytes, up to
// three produce requests in flight, under a producer id of its own with
// sequence numbers, so the broker keeps them in order and refuses every
// batch after one it did not write. It never retries: a failed write fails
// the copy, which resumes like a crashed one.
//
// The <prefix>.capture-state topic records "running" before the slot is
// created and "done" when Kafka has every row. A capture that finds a running
// snapshot (it crashed) resumes after the last row in the history, from a new
// database snapshot exported by a temporary slot, so its consistent point is
// an exact LSN. The state records that cut before any row is copied; the
// stream, which still starts at the first snapshot's point, leaves out every
// change committed before the cut to a row copied after it
// (changes_capture_folded_total): the copy already holds it, and writing it
// after the copy would take the entity back in time. Nothing is lost or
// copied twice, and no entity's history ever goes backwards. (A TRUNCATE
// between the first snapshot and a resumed copy is streamed and hides the
// resumed copy's rows of that table too: truncate a table only after its
// snapshot is done.) --recreate-slot takes a new snapshot.
// A session advisory lock keeps a second capture off the slot meanwhile.
//
// # Incremental snapshots
//
// A table is copied again while the stream goes on, by the watermark method
// of DBLog (incremental.go): in chunks of postgres.snapshot_chunk_rows
// (default 1,024) rows in key order, each read between a low and a high
// watermark the capture writes to the WAL
// with pg_logical_emit_message (a signal, signal.go: no table of the
// platform's in the database). The stream notes the keys of the table it
// changes from the low watermark on; at the high one it writes the chunk's
// other rows as OpSnapshot events of the high watermark's transaction, and
// leaves out the rows it saw change (their changes are in the history,
// as new as the copy or newer). PostgreSQL makes a commit visible only
// after writing it to the WAL, and commits flushed together become visible
// in any order, so a change committed just before the low watermark may be
// invisible to the chunk's query: the query runs in a repeatable-read
// transaction that records its snapshot, the stream keeps the last 2 s of
// changes while a snapshot runs, and the rows of changes before the low
// watermark that the snapshot did not see are left out too
// (changes_capture_incremental_snapshot_unseen_changes_total). No copied
// row is older than a change before it in the history, and the stream never
// waits for a copy.
//
// Requests are signals too: changes snapshot --type T [--from K --to K]
// (RequestSnapshot, or the same message written by a DBA) asks for one;
// --cancel ends them (CancelSnapshot); PendingSnapshots lists them. The
// capture-state topic keeps each request and, at most once a second, its
// last chunk in Kafka, so a restart resumes it; the chunks since are copied
// again. An
// entity type declared after the slot's initial snapshot is copied this
// way at the next start. Progress is logged every 5 s and counted in
// changes_capture_incremental_snapshot_{rows,chunks}_total and
// changes_capture_incremental_snapshot_rows_left.
//
// # Keys
//
// An entity's key comes from its table's key columns (entities[].id_column,
// or key_columns for several): smallint, integer or bigint (an integer key,
// in decimal, as every key before other kinds), uuid (lowercase hyphenated),
// text, varchar or char(n) (the value as PostgreSQL prints it, a char's
// padding included), or several of them (a composite key of the parts).
// The columns must be NOT NULL, exactly the columns of the primary key or of
// a unique, non-partial index (in any order), and in the replica identity
// unless it is FULL. The stream, the snapshot and internal/dbcheck build keys
// with the one function codecs.ColumnKey. A change whose key column is NULL
// or missing, whose key is longer than codecs.MaxKeyBytes, or whose text key
// starts with codecs.ReservedKeyPrefix is ErrInvalidKey: like
// ErrRecordTooLarge, nothing of the change's transaction is written (the
// open Kafka transaction is aborted if it holds part of it), the
// transaction is not acknowledged, and Run ends. An update that changes the key is a delete of
// the old key and an insert of the new one.
//
// The snapshot pages through a table in the order of the key's index
// (keyset pagination, a row comparison for several columns), so every batch
// is an index range scan; text parts are ordered in the column's collation.
// A resumed copy's cut records its last key (state "after" for an integer
// key, as before; "after_key" and "after_kind" otherwise), and the stream
// compares keys with it in the same order: integers and uuids in Go, text
// parts that differ by asking PostgreSQL, only for the changes before the
// last cut's LSN.
//
// # Idle tables
//
// While nothing captured is in flight, the capture asks PostgreSQL for a
// keepalive every second and confirms its WAL end, so the slot follows the
// server's WAL when the captured tables are idle and other tables or
// databases are busy; changes_capture_slot_lag_bytes shows what the slot holds.
//
// # Progress watermarks
//
// At most every postgres.watermark_interval (100 ms), between PostgreSQL
// transactions, the capture appends a progress watermark to the history
// (codecs.OpWatermark, key WatermarkKey): every transaction that committed
// before its LSN is in the history before it, and every change after it
// committed at or after it. Its LSN is the end of the last transaction
// decoded, or the WAL end of a keepalive received between transactions
// (pgoutput sends transactions in commit order, so every transaction that
// committed before either was decoded, or held nothing captured). It goes
// into the Kafka transaction of the changes it covers, so it is never
// visible without them. A restarted capture writes none below what the
// history holds already. The router copies each to every partition of every
// type, which is how a view knows what it has applied
// (views.View.AppliedThrough, views.AtLeast, views.Group);
// changes_capture_watermarks_total counts them. A resync refuses a server
// whose WAL is not past the history's last watermark either.
//
// # Setup
//
// At start Capture checks wal_level, the captured tables, their key columns and
// replica identities, and creates the publication and the logical slot when
// they are absent. A slot whose WAL was removed (wal_status = lost) or that
// uses another plugin is an error that names what to do; it is never replaced
// silently. A slot that is missing although the history holds changes was
// dropped: Run returns ErrSlotMissing. The operator chooses the way out:
// WithResync (changes capture --resync) recovers without a gap in the
// snapshot tables (below); WithRecreateSlot (--recreate-slot) takes a new
// initial snapshot and accepts the gap.
//
// # Resync after a lost slot
//
// With WithResync, a missing slot, or one whose WAL PostgreSQL removed
// (dropped first), while the history holds changes, starts a resync. The
// capture records in the capture-state topic an incremental snapshot of
// every declared type, creates a new slot, and writes a marker to the
// history (codecs.OpResync, codecs.Resync: the last change before the gap
// and the LSN the new slot streams from; the router skips it). Each copy
// then waits until the router and the type's snapshot processors have
// applied the history as the session found it, opens a view of the
// snapshot table in a temporary directory, and compares every chunk's rows
// with their entities' states there: rows that are equal are not written
// (changes_capture_resync_same_rows_total), the others are written at the
// chunk's high watermark as any incremental snapshot writes them. Last, it
// looks up the keys the snapshot table holds in the database,
// resyncDeleteBatch at a time; those missing are looked up again between a
// low and a high watermark, and each still missing, and not changed by the
// stream in that window, gets a delete at the high watermark
// (changes_capture_resync_deletes_total). An entity the stream changed
// after the session began may be written once more than needed (its row
// equals its streamed state, which the view may not have yet), never with
// an older state. A restart resumes the copies and the delete search from
// their progress recorded, and writes the marker if the first session did
// not.
package capture
