// Package views gives a service a locally replicated, query-able snapshot of
// one entity type, embedded in-process: a goka view of the type's snapshot
// table, stored in goleveldb and kept current from the table's compacted
// changelog.
//
// # Opening
//
// A view asks only for what it reads (Config): the Kafka brokers and
// client settings (TLS, SASL), the entity type, its snapshot table topic
// and partition count, and a storage directory. Open builds a View from
// it, OpenTyped a Typed one; neither needs the deployment's configuration
// or its database credentials. A program that has the deployment's
// topology (the platform's own commands) uses New or NewTyped, which take
// the same Config from it (ConfigFor).
//
// # Reading
//
// View.Get answers from local storage, without a network round trip (about
// 10 µs); View.All and View.Range iterate in id order over a consistent
// snapshot of every partition. Typed[T] decodes rows into the service's own
// type, in Get, All, Range, Each and Subscribe alike. Deleted entities, and entities a TRUNCATE removed, are not there.
//
// # Lifecycle and staleness
//
// Run opens the storage and catches up with the table (Status goes
// connecting, catching-up, running); WaitRecovered blocks until every
// partition has reached the end the table had at the start. Until then reads
// may be stale. Lag counts the table records not yet applied; the
// changes_view_* metrics (WithRegisterer) export it with the update rate,
// the entity count and Get latency.
//
// # Storage
//
// WithStorageDir names the directory, one goleveldb database per partition.
// Entities are stored under keys that sort like their ids, and each record is
// committed together with the table offset it brings the copy to, so a crash
// never leaves an offset ahead of its data: a restarted view reopens the
// directory and reads only what the table gained since. While it recovers, a
// view writes in batches (about 500,000 records/s on two cores); memory stays
// near 10 MiB per partition whatever the table's size (goleveldb's two 4 MiB
// write buffers), plus what the Go runtime keeps of the recovery's garbage:
// once a recovery of more than 32 MiB of records completes, the view returns
// that to the operating system (debug.FreeOSMemory) before it reports
// Recovered. GOGC (or debug.SetGCPercent) of the embedding process bounds the
// peak: at 50, a 1,000,000-entity bootstrap peaks near 200 MiB resident
// instead of 270, for next to no CPU. WithInMemory keeps everything in
// memory, for tests.
//
// # Changes as they happen
//
// Subscribe delivers every applied update on a channel; the view never waits
// for a subscriber (one that falls behind its buffer is ended with
// ErrSlowSubscriber). WithUpdateHook is the synchronous alternative.
//
// # Progress, read-your-writes and consistent cuts
//
// The platform keeps one commit order over every entity type, and a view
// knows how far along it it is. The capture appends a progress watermark
// to the history at most every postgres.watermark_interval (100 ms) while
// changes come, and about every second while the captured tables are
// quiet: every transaction that committed before its LSN is in the history
// before it. The router sends each watermark to every partition of every
// type behind the changes before it, and the snapshot processors keep the
// partition's latest in the table. So a view knows, per partition
// (PartitionsAppliedThrough, AppliedThroughKey) and as a whole
// (AppliedThrough), that it has applied everything committed before an
// LSN, and exports it (changes_view_applied_lsn,
// changes_view_applied_commit_timestamp_seconds: the view's delay behind
// the database, by the database's clock).
//
// Read-your-writes: a service that has just committed asks PostgreSQL for
// pg_current_wal_insert_lsn() on the same connection and reads with
// AtLeast(lsn) (Get, GetKey, Typed's), or waits with WaitApplied: the read
// answers once the view has applied that write. The wait is the pipeline's
// latency plus up to a watermark interval: at 1,000 changes/s on this
// project's two-core machine, 105 ms from COMMIT at the median, of which
// the write took 59 ms to reach the view (BENCHMARKS.md).
// Over HTTP, min_lsn= does the same.
//
// Consistent cuts: a Group of views reads them at one cut (Group.Read):
// the views are held at a watermark (where they stand, or the next one),
// and the read sees every transaction committed before it, across types,
// and none after. A past
// cut comes from the history: history.Reader.OffsetAtLSN, then TypeAt of
// each type at that offset.
//
// During an incremental snapshot or a resync (changes snapshot, changes
// capture --resync), a type's table is being copied again: the
// watermarks hold for the changes streamed, while the rows not yet copied
// may be missing or old until the copy is done.
//
// # The past: history and its index
//
// The history sub-package answers what an entity, or every entity of a
// type, was at a past moment, from the history topic: history.Reader
// replays the history from its start (seconds to minutes), history.Index
// keeps an index of it in goleveldb beside the views, built by tailing the
// history, and answers the same in milliseconds for one entity, and for a
// whole type from its last checkpoint instead of the history's start
// (BENCHMARKS.md, "Point in time: the history index", has the numbers;
// history.ExampleIndex). An answer is never stale: what the index has not
// read yet is read from the history.
//
// This package and its sub-packages (history: point-in-time reads of the
// history topic; server: the HTTP API of `changes serve`) pull in neither the
// capture nor the processors: a service that embeds views depends on goka,
// sarama and goleveldb only.
package views
