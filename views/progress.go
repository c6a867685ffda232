package views

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/topology"
)

// Watermark says how far a view, or one partition of it, has applied the
// history: every change committed before LSN. The capture appends a
// progress watermark to the history at most every
// postgres.watermark_interval (100 ms by default) while changes come, and
// at keepalives (about every second) while the captured tables are quiet;
// the router copies each to every partition of every type, behind the
// changes before it, and the snapshot processors store the partition's
// latest in the table, where the view reads it.
type Watermark struct {
	// LSN: every transaction that committed before it (its commit record
	// starts before LSN) is applied. Zero if the view has none yet (a
	// partition that has not received a watermark since it was created).
	LSN codecs.LSN
	// CommitTime is the commit time of the last transaction the
	// watermark covers, by the database's clock; while the tables are
	// quiet, the server's time when it said so.
	CommitTime time.Time
}

// IsZero reports whether w is no watermark at all.
func (w Watermark) IsZero() bool { return w.LSN == 0 }

// Covers reports whether w includes every transaction that committed up to
// lsn, an LSN at or after a transaction's commit record's end (see
// AtLeast).
func (w Watermark) Covers(lsn codecs.LSN) bool { return w.LSN >= pageStart(lsn) && w.LSN > 0 }

// walPageSize is PostgreSQL's WAL page size (XLOG_BLCKSZ, wal_block_size),
// 8 KiB unless the server was built otherwise; walPageHeader is the
// longest page header (XLogLongPageHeaderData, 40 bytes).
const (
	walPageSize   = 8192
	walPageHeader = 40
)

// pageStart moves an LSN that points into a WAL page's header back to the
// page's start (pages of 8 KiB, PostgreSQL's default wal_block_size; with
// larger pages an LSN 24 to 40 bytes past an 8 KiB boundary inside one is
// taken as covered one record early): no record starts or ends inside a header, so "everything
// committed before" either is the same set. pg_current_wal_insert_lsn()
// points past the header of a page the last record ended just before,
// where the capture's watermark says the page's start: without this, a
// read-your-writes on a quiet database would wait for the next write.
func pageStart(lsn codecs.LSN) codecs.LSN {
	if off := lsn % walPageSize; off > 0 && off <= walPageHeader {
		return lsn - off
	}
	return lsn
}

// AppliedThrough is the view's progress watermark: the lowest of its
// partitions' (see PartitionsAppliedThrough), since a change of any entity
// may be in any partition. It is zero until every partition holds one.
//
// It is what the view holds, not what a read sees at once in every case:
// Get and the iterations read what is applied up to now, which is at least
// what AppliedThrough said before they started.
func (v *View) AppliedThrough() Watermark {
	var low Watermark
	for p := range v.stores {
		st := v.stores[p].Load()
		if st == nil {
			return Watermark{}
		}
		w := st.appliedThrough()
		if w.IsZero() {
			return Watermark{}
		}
		if p == 0 || w.LSN < low.LSN {
			low = w
		}
	}
	return low
}

// PartitionsAppliedThrough returns each partition's progress watermark, by
// partition number; zero for a partition that has none or is not open.
func (v *View) PartitionsAppliedThrough() []Watermark {
	out := make([]Watermark, len(v.stores))
	for p := range v.stores {
		if st := v.stores[p].Load(); st != nil {
			out[p] = st.appliedThrough()
		}
	}
	return out
}

// AppliedThroughKey is the progress watermark of the partition that holds
// the entity with key k: every change of that entity committed before its
// LSN is applied. It is AppliedThrough or later.
func (v *View) AppliedThroughKey(k codecs.Key) Watermark {
	return v.partitionApplied(topology.PartitionOf(k.String(), v.partitions))
}

func (v *View) partitionApplied(p int32) Watermark {
	if st := v.stores[p].Load(); st != nil {
		return st.appliedThrough()
	}
	return Watermark{}
}

// WaitApplied waits until the view has applied every change committed up
// to lsn (AppliedThrough covers it), or ctx is done (its error). See
// AtLeast for which LSN to pass.
func (v *View) WaitApplied(ctx context.Context, lsn codecs.LSN) error {
	return v.waitFor(ctx, lsn, v.AppliedThrough)
}

// WaitAppliedKey waits until the view has applied every change of the
// entity with key k committed up to lsn (AppliedThroughKey covers it), or
// ctx is done: an entity's changes are all in its partition, which may be
// ahead of the others.
func (v *View) WaitAppliedKey(ctx context.Context, k codecs.Key, lsn codecs.LSN) error {
	return v.waitPartitionApplied(ctx, k.String(), lsn)
}

// waitPartitionApplied is WaitAppliedKey for the key whose text is text.
func (v *View) waitPartitionApplied(ctx context.Context, text string, lsn codecs.LSN) error {
	p := topology.PartitionOf(text, v.partitions)
	return v.waitFor(ctx, lsn, func() Watermark { return v.partitionApplied(p) })
}

func (v *View) waitFor(ctx context.Context, lsn codecs.LSN, applied func() Watermark) error {
	for {
		// Take the channel before reading: a watermark stored in between
		// closes it.
		changed := v.progress.changed()
		if applied().Covers(lsn) {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return fmt.Errorf("view %s: waiting for the changes committed up to %s (applied through %s): %w",
				v.entityType, lsn, v.AppliedThrough().LSN, ctx.Err())
		}
	}
}

// progress wakes the readers waiting for a watermark.
type progress struct {
	mu sync.Mutex
	ch chan struct{}
}

// changed returns a channel closed at the next watermark stored.
func (p *progress) changed() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ch == nil {
		p.ch = make(chan struct{})
	}
	return p.ch
}

// advanced wakes the waiters.
func (p *progress) advanced() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ch != nil {
		close(p.ch)
		p.ch = nil
	}
}

// ReadOption adjusts a read of a view (Get, GetKey and Typed's).
type ReadOption func(*readOptions)

type readOptions struct {
	atLeast codecs.LSN
}

// AtLeast makes a read wait, within its context, until the view has
// applied every transaction that committed up to lsn, then answer: a
// service that has just committed reads its own write (read-your-writes).
//
// lsn must be at or after the end of the writer's commit record. The LSN
// PostgreSQL returns for "select pg_current_wal_insert_lsn()" run after
// COMMIT, on the connection that committed, is (pg_current_wal_lsn() is
// too, unless synchronous_commit is off). A transaction's commit_lsn, as
// the events carry it, is where its commit record starts: too early.
// The wait is for the entity's partition (Get, GetKey) or for all of them
// (WaitApplied); a context without a deadline may wait forever if the
// platform is down. While a resync or an incremental snapshot copies the
// type's table again (changes capture --resync, changes snapshot), the
// watermark holds for the changes streamed, not for rows the copy has not
// reached yet.
func AtLeast(lsn codecs.LSN) ReadOption { return func(o *readOptions) { o.atLeast = lsn } }

func readOpts(opts []ReadOption) readOptions {
	var o readOptions
	for _, fn := range opts {
		fn(&o)
	}
	return o
}

// setAppliedMetrics sets the view's progress gauges after a watermark.
func (v *View) setAppliedMetrics() {
	w := v.AppliedThrough()
	if w.IsZero() {
		return
	}
	v.metrics.appliedLSN.Set(float64(w.LSN))
	v.metrics.appliedCommit.Set(float64(w.CommitTime.UnixNano()) / 1e9)
}
