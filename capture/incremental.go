package capture

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/IBM/sarama"
	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/topology"
)

// Incremental snapshots copy a table's rows while the stream goes on, by
// the watermark method (DBLog; Debezium's incremental snapshots): the
// table is copied in chunks of postgres.snapshot_chunk_rows rows in key
// order, and around the query of each chunk the capture writes a low and a
// high watermark to the WAL (a signal, see signal.go). The stream, meeting the low watermark,
// notes every key of the table it changes until the high one; at the high
// watermark it writes the chunk's rows it did not see change, as OpSnapshot
// events of the high watermark's transaction. A row the stream changed
// meanwhile is left out of the chunk: its change, which the history holds,
// is newer than or as new as the copy. So a copied row is never older than
// a change before it in the history, and never hides a change after it;
// the stream never waits for a chunk.
//
// Requests and progress live in the capture-state topic, progress written
// at most once a progressInterval: a restart resumes a snapshot after the
// last chunk recorded there, and copies the chunks since again (their rows
// then have newer positions: at least once, never backwards).

// progressInterval is how often a running snapshot's progress is written
// to the capture-state topic.
const progressInterval = time.Second

// incrementalSnapshot is a requested incremental snapshot, as the
// capture-state topic keeps it until it is done or cancelled.
type incrementalSnapshot struct {
	// ID is the request's LSN, unique per slot; "added-<type>-<n>" for a
	// type declared after the slot's initial snapshot, "resync-<type>-<n>"
	// for a resync's copy.
	ID   string `json:"id"`
	Type string `json:"type"`
	// From and To bound the keys copied (each included; "" none), in key
	// text.
	From string `json:"from,omitempty"`
	To   string `json:"to,omitempty"`
	// After is the last key of the last chunk recorded ("" none yet).
	After     string    `json:"after,omitempty"`
	Chunks    int64     `json:"chunks"`
	Rows      int64     `json:"rows"`
	Requested time.Time `json:"requested"`
	// Resync says the copy is a resync's (see resync.go): rows equal to
	// the snapshot tables' states are not written, and Same counts them;
	// then the tables' entities the table no longer has are deleted, with
	// Deleting set, After the last key of the tables looked up, and
	// Deleted counting the deletes written.
	Resync   bool  `json:"resync,omitempty"`
	Same     int64 `json:"same,omitempty"`
	Deleting bool  `json:"deleting,omitempty"`
	Deleted  int64 `json:"deleted,omitempty"`
}

// copiedChunk is a chunk's rows between its watermarks, for the stream.
type copiedChunk struct {
	id    string
	chunk int64
	run   string
	rows  []chunkRow
	// deletes are keys the table did not hold when read (a resync's):
	// each gets a delete unless the stream changed it in the window.
	deletes []codecs.Key
	// seen is the snapshot the rows were read in.
	seen pgSnapshot
}

// pgSnapshot is what a PostgreSQL snapshot (pg_current_snapshot) says of
// transaction ids, 32-bit as the replication stream carries them: those at
// or above xmax, and those in xip, were not visible to it.
type pgSnapshot struct {
	xmax uint32
	xip  map[uint32]bool
}

// parsePGSnapshot reads pg_current_snapshot()'s text, xmin:xmax:xip,...
func parsePGSnapshot(text string) (pgSnapshot, error) {
	parts := strings.Split(text, ":")
	if len(parts) != 3 {
		return pgSnapshot{}, fmt.Errorf("snapshot %q: want xmin:xmax:xip", text)
	}
	xmax, err := strconv.ParseUint(parts[1], 10, 64)
	if err != nil {
		return pgSnapshot{}, fmt.Errorf("snapshot %q: %w", text, err)
	}
	sn := pgSnapshot{xmax: uint32(xmax), xip: map[uint32]bool{}}
	if parts[2] != "" {
		for _, x := range strings.Split(parts[2], ",") {
			xid, err := strconv.ParseUint(x, 10, 64)
			if err != nil {
				return pgSnapshot{}, fmt.Errorf("snapshot %q: %w", text, err)
			}
			sn.xip[uint32(xid)] = true
		}
	}
	return sn, nil
}

// visible reports whether a committed transaction xid was visible to the
// snapshot (ids compared modulo 2^32, as PostgreSQL does).
func (sn pgSnapshot) visible(xid uint32) bool {
	return int32(xid-sn.xmax) < 0 && !sn.xip[xid]
}

// chunkRow is one row of a chunk: its key and its JSON.
type chunkRow struct {
	key codecs.Key
	row []byte
}

// chunkDone tells the copier that a chunk's rows are in Kafka.
type chunkDone struct {
	id      string
	chunk   int64
	written int
	// retry: the stream did not write the chunk (it saw no low watermark
	// for it): copy it again.
	retry bool
	// again are the keys of rows left out because the stream changed them
	// in the window with TOASTed columns left unchanged: copied again.
	again []codecs.Key
}

// incrementals is what a session's stream and its copier share: the
// requests, and the chunk between its watermarks.
type incrementals struct {
	log     *slog.Logger
	metrics *metrics
	topo    *topology.Topology
	client  sarama.Client
	// historyEnd is the history's end offset when the session started: a
	// resync compares with the snapshot tables once they hold it.
	historyEnd int64
	// chunkRows is how many rows a chunk copies (postgres.snapshot_chunk_rows).
	chunkRows int
	// view is the view a resync's copy viewOf compares with, kept while
	// the copy is retried; the copier's own.
	view       *tablesView
	viewOf     string
	stateTopic string
	url        string
	tables     map[string]table
	// run tells this session's watermarks from an earlier session's,
	// which PostgreSQL may resend after a restart.
	run string

	// writing serializes the writes of the state: each is made outside mu,
	// so the stream never waits for Kafka to read it.
	writing sync.Mutex
	mu      sync.Mutex
	state   captureState // Incremental is the queue: its first is copied
	// pending says the queue is not empty: the stream then keeps its
	// recent changes.
	pending atomic.Bool
	chunk   *copiedChunk
	wake    chan struct{}
	done    chan chunkDone
}

func newIncrementals(se *session, state captureState, historyEnd int64) *incrementals {
	var nonce [6]byte
	rand.Read(nonce[:])
	inc := &incrementals{
		log: se.log.With("component", "incremental_snapshot"), metrics: se.metrics,
		topo: se.topo, historyEnd: historyEnd, chunkRows: se.topo.Config().Postgres.SnapshotChunkRows, client: se.client, stateTopic: se.topo.CaptureState(), url: se.topo.Config().Postgres.URL,
		tables: map[string]table{}, run: hex.EncodeToString(nonce[:]),
		state: state, wake: make(chan struct{}, 1), done: make(chan chunkDone, 1),
	}
	for _, t := range se.tables {
		inc.tables[t.entityType] = t
	}
	inc.pending.Store(len(state.Incremental) > 0)
	return inc
}

// poke wakes the copier.
func (inc *incrementals) poke() {
	select {
	case inc.wake <- struct{}{}:
	default:
	}
}

// request queues a requested snapshot, and returns once the capture-state
// topic has it: only then may the stream acknowledge the request's
// transaction. A request the state already took (PostgreSQL resent it) or
// of an undeclared type is logged and dropped.
func (inc *incrementals) request(sig signal, lsn codecs.LSN) error {
	t, ok := inc.tables[sig.Snapshot]
	if !ok {
		inc.log.Error("incremental snapshot requested of an entity type the config does not declare: ignored", "entity_type", sig.Snapshot)
		return nil
	}
	for _, b := range []string{sig.From, sig.To} {
		if b == "" {
			continue
		}
		if _, err := codecs.ParseKey(t.kind(), b); err != nil {
			inc.log.Error("incremental snapshot requested with a bound that is not a key of the table: ignored", "entity_type", sig.Snapshot, "bound", b, "err", err)
			return nil
		}
	}
	var queued int
	err := inc.update(func(next *captureState) bool {
		if lsn <= next.SignalsThrough {
			return false
		}
		next.Incremental = append(next.Incremental, incrementalSnapshot{
			ID: lsn.String(), Type: sig.Snapshot, From: sig.From, To: sig.To, Requested: time.Now().UTC(),
		})
		next.SignalsThrough = lsn
		queued = len(next.Incremental)
		return true
	})
	if err != nil || queued == 0 {
		return err
	}
	inc.log.Info("incremental snapshot requested", "entity_type", sig.Snapshot, "id", lsn.String(), "from", sig.From, "to", sig.To, "queued", queued)
	inc.poke()
	return nil
}

// update applies change to a copy of the state and, if it says so, writes
// the copy to the capture-state topic and keeps it once Kafka has it.
func (inc *incrementals) update(change func(next *captureState) bool) error {
	inc.writing.Lock()
	defer inc.writing.Unlock()
	inc.mu.Lock()
	next := inc.state
	next.Incremental = slices.Clone(next.Incremental)
	inc.mu.Unlock()
	if !change(&next) {
		return nil
	}
	if err := writeState(inc.client, inc.stateTopic, next); err != nil {
		return err
	}
	inc.mu.Lock()
	inc.state = next
	inc.pending.Store(len(next.Incremental) > 0)
	inc.mu.Unlock()
	return nil
}

// cancel drops the queued and running snapshots of a type.
func (inc *incrementals) cancel(typ string, lsn codecs.LSN) error {
	cancelled := -1
	err := inc.update(func(next *captureState) bool {
		if lsn <= next.SignalsThrough {
			return false
		}
		n := len(next.Incremental)
		next.Incremental = slices.DeleteFunc(next.Incremental, func(s incrementalSnapshot) bool { return s.Type == typ })
		next.SignalsThrough = lsn
		cancelled = n - len(next.Incremental)
		return true
	})
	if err != nil || cancelled < 0 {
		return err
	}
	inc.log.Info("incremental snapshots cancelled", "entity_type", typ, "cancelled", cancelled)
	inc.poke()
	return nil
}

// find returns the queued snapshot id.
func (inc *incrementals) find(id string) (incrementalSnapshot, bool) {
	inc.mu.Lock()
	defer inc.mu.Unlock()
	for _, s := range inc.state.Incremental {
		if s.ID == id {
			return s, true
		}
	}
	return incrementalSnapshot{}, false
}

// first returns the snapshot to copy, if any.
func (inc *incrementals) first() (incrementalSnapshot, bool) {
	inc.mu.Lock()
	defer inc.mu.Unlock()
	if len(inc.state.Incremental) == 0 {
		return incrementalSnapshot{}, false
	}
	return inc.state.Incremental[0], true
}

// progress records a chunk of snap in Kafka; finished drops snap from the
// queue. A snapshot cancelled meanwhile stays dropped.
func (inc *incrementals) progress(snap incrementalSnapshot, finished bool) (cancelled bool, err error) {
	err = inc.update(func(next *captureState) bool {
		i := slices.IndexFunc(next.Incremental, func(s incrementalSnapshot) bool { return s.ID == snap.ID })
		switch {
		case i < 0:
			cancelled = true
			return false
		case finished:
			next.Incremental = slices.Delete(next.Incremental, i, i+1)
		default:
			next.Incremental[i] = snap
		}
		return true
	})
	return cancelled, err
}

// put hands the stream a chunk's rows, before its high watermark.
func (inc *incrementals) put(c *copiedChunk) {
	inc.mu.Lock()
	inc.chunk = c
	inc.mu.Unlock()
}

// take returns the rows of the chunk a high watermark closes, or nil when
// this session did not copy it.
func (inc *incrementals) take(sig signal) *copiedChunk {
	inc.mu.Lock()
	defer inc.mu.Unlock()
	c := inc.chunk
	if c == nil || c.id != sig.ID || c.chunk != sig.Chunk || c.run != sig.Run {
		return nil
	}
	inc.chunk = nil
	return c
}

// copierRetry is how long the copier waits after a failure before it
// copies again.
const copierRetry = 5 * time.Second

// copyAll copies the queued snapshots one after the other until ctx ends.
// A failure (the database gone, a query refused) is logged, and the copier
// goes on after copierRetry from the last chunk recorded: the stream never
// stops for it.
func (inc *incrementals) copyAll(ctx context.Context) {
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
		inc.closeView()
	}()
	for ctx.Err() == nil {
		snap, ok := inc.first()
		if !ok {
			select {
			case <-inc.wake:
			case <-ctx.Done():
			}
			continue
		}
		var err error
		if conn == nil {
			conn, err = connectPG(ctx, inc.url, "connect to postgres for incremental snapshots", nil)
		}
		if err == nil {
			err = inc.copy(ctx, conn, snap)
		}
		if err == nil {
			inc.closeView() // the copy is done or cancelled
		}
		if err == nil || ctx.Err() != nil {
			continue
		}
		inc.log.Error("incremental snapshot failed; copying again from its last chunk recorded", "entity_type", snap.Type, "id", snap.ID, "retry_in", copierRetry, "err", err)
		if conn != nil {
			conn.Close(context.Background())
			conn = nil
		}
		select {
		case <-time.After(copierRetry):
		case <-ctx.Done():
		}
	}
}

// copy copies snap chunk by chunk from after its last chunk recorded.
func (inc *incrementals) copy(ctx context.Context, conn *pgx.Conn, snap incrementalSnapshot) error {
	log := inc.log.With("entity_type", snap.Type, "id", snap.ID)
	t, ok := inc.tables[snap.Type]
	if !ok {
		log.Error("incremental snapshot of an entity type the config no longer declares: dropped", "rows", snap.Rows)
		_, err := inc.progress(snap, true)
		return err
	}
	parse := func(s string) (*codecs.Key, error) {
		if s == "" {
			return nil, nil
		}
		k, err := codecs.ParseKey(t.kind(), s)
		return &k, err
	}
	from, err := parse(snap.From)
	if err != nil {
		return err
	}
	to, err := parse(snap.To)
	if err != nil {
		return err
	}
	after, err := parse(snap.After)
	if err != nil {
		return err
	}
	var tv *tablesView
	if snap.Resync {
		if tv, err = inc.resyncView(ctx, snap, log); err != nil {
			return err
		}
		if snap.Deleting {
			return inc.deleteVanished(ctx, conn, snap, t, tv, log)
		}
	}
	if after == nil {
		log.Info("incremental snapshot: copying", "table", t.qualified(), "from", snap.From, "to", snap.To, "resync", snap.Resync)
	} else {
		log.Info("incremental snapshot: resuming", "table", t.qualified(), "after", snap.After, "rows", snap.Rows, "chunks", snap.Chunks)
	}
	left, err := rowsLeft(ctx, conn, t, after, from, to)
	if err != nil {
		return err
	}
	rowsLeftGauge := inc.metrics.incrementalRowsLeft.WithLabelValues(snap.Type)
	rowsLeftGauge.Set(float64(left))
	defer rowsLeftGauge.Set(0)
	started, lastReport, recorded, startRows := time.Now(), time.Now(), time.Now(), snap.Rows
	cp := &snapshotCopy{}
	for {
		res, err := inc.copyChunk(ctx, conn, cp, snap, t, tv, after, from, to)
		if err != nil {
			return err
		}
		if res.retry {
			// Cancelled, or the stream had no window for it: copy it again
			// unless cancelled.
			if _, still := inc.find(snap.ID); !still {
				inc.logCancelled(log, snap)
				return nil
			}
			continue
		}
		read, last, same := res.read, res.last, res.same
		finished := read < inc.chunkRows
		snap.Chunks, snap.Rows, snap.Same = res.chunk, snap.Rows+int64(res.written), snap.Same+int64(same)
		if read > 0 {
			snap.After, after = last.String(), &last
		}
		left = max(0, left-int64(read))
		rowsLeftGauge.Set(float64(left))
		inc.metrics.incrementalRows.WithLabelValues(snap.Type).Add(float64(res.written))
		inc.metrics.incrementalChunks.WithLabelValues(snap.Type).Inc()
		if same > 0 {
			inc.metrics.resyncSame.WithLabelValues(snap.Type).Add(float64(same))
		}
		// The chunk is in Kafka; its record in the capture-state topic is
		// only what a restart resumes from, so it is written at most once
		// a progressInterval (a restart copies the chunks since again).
		if finished && tv != nil {
			log.Info("resync: table copied; looking for entities the tables hold that the table no longer has",
				"rows", snap.Rows, "same", snap.Same, "chunks", snap.Chunks, "seconds", time.Since(started).Seconds())
			snap.Deleting, snap.After = true, ""
			if cancelled, err := inc.progress(snap, false); err != nil || cancelled {
				return err
			}
			return inc.deleteVanished(ctx, conn, snap, t, tv, log)
		}
		var cancelled bool
		if finished || time.Since(recorded) >= progressInterval {
			if cancelled, err = inc.progress(snap, finished); err != nil {
				return err
			}
			recorded = time.Now()
		} else if _, still := inc.find(snap.ID); !still {
			cancelled = true
		}
		switch {
		case cancelled:
			inc.logCancelled(log, snap)
			return nil
		case finished:
			log.Info("incremental snapshot: done", "rows", snap.Rows, "chunks", snap.Chunks, "seconds", time.Since(started).Seconds())
			return nil
		case time.Since(lastReport) >= 5*time.Second:
			log.Info("incremental snapshot: progress", "rows", snap.Rows, "same", snap.Same, "chunks", snap.Chunks, "after", snap.After, "rows_left", left,
				"rows_per_s", int(float64(snap.Rows-startRows)/time.Since(started).Seconds()))
			lastReport = time.Now()
		}
	}
}

// chunkResult is what copyChunk copied.
type chunkResult struct {
	read    int        // rows read
	last    codecs.Key // the last row's key
	same    int        // rows a resync found equal to the tables (not written)
	written int        // rows in Kafka
	chunk   int64      // the last chunk number taken
	retry   bool       // the stream did not write the chunk: copy it again
}

// maxAgain is how many times the rows of a chunk that the stream changed
// with TOASTed columns left unchanged are copied again.
const maxAgain = 5

// copyChunk copies the chunk of snap after after, numbered snap.Chunks+1.
//
// A resync's chunk is read first without watermarks: when every row equals
// its entity's state in the tables, there is nothing to write and no
// watermark is needed. Otherwise it is read again between watermarks.
//
// Rows the stream changed between the chunk's watermarks are left out, as
// their changes are in the history. When such a change left TOASTed
// columns out (unchanged, so PostgreSQL did not send them), the snapshot
// processors fill them from the entity's state, which a type added after
// the slot's snapshot does not have yet and a resync's may hold stale:
// those rows are copied again in follow-up chunks of their keys, up to
// maxAgain times.
func (inc *incrementals) copyChunk(ctx context.Context, conn *pgx.Conn, cp *snapshotCopy, snap incrementalSnapshot, t table, tv *tablesView, after, from, to *codecs.Key) (chunkResult, error) {
	res := chunkResult{chunk: snap.Chunks + 1}
	sql, args, err := keysetQuery(t, after, from, to, inc.chunkRows)
	if err != nil {
		return res, err
	}
	if tv != nil {
		rows, last, _, err := inc.selectRows(ctx, conn, cp, t, sql, args)
		if err != nil {
			return res, err
		}
		differ, same, err := tv.differing(ctx, rows)
		if err != nil {
			return res, err
		}
		if len(differ) == 0 {
			res.read, res.last, res.same = len(rows), last, same
			return res, nil
		}
	}
	done, err := inc.windowed(ctx, conn, cp, snap.ID, res.chunk, t, tv, sql, args, &res)
	if err != nil || done.retry {
		res.retry = done.retry
		return res, err
	}
	res.written = done.written
	again := done.again
	for round := 0; len(again) > 0 && round < maxAgain; round++ {
		inc.metrics.incrementalAgain.WithLabelValues(snap.Type).Add(float64(len(again)))
		res.chunk++
		sql, args, err := keysQuery(t, again)
		if err != nil {
			return res, err
		}
		var follow chunkResult
		if done, err = inc.windowed(ctx, conn, cp, snap.ID, res.chunk, t, tv, sql, args, &follow); err != nil {
			return res, err
		}
		if !done.retry {
			res.written += done.written
			again = done.again
		}
	}
	if len(again) > 0 {
		inc.log.Warn("incremental snapshot: rows kept changing with TOASTed columns left unchanged while copied; copy them again later (changes snapshot --from --to)",
			"entity_type", snap.Type, "id", snap.ID, "keys", len(again), "first", again[0].String())
	}
	return res, nil
}

// windowed reads the rows sql returns between a low and a high watermark
// numbered chunk, leaves out those equal to the tables (a resync's), and
// has the stream write the rest at the high watermark. It records in res
// the rows read, the last key and the rows found equal.
func (inc *incrementals) windowed(ctx context.Context, conn *pgx.Conn, cp *snapshotCopy, id string, chunk int64, t table, tv *tablesView, sql string, args []any, res *chunkResult) (chunkDone, error) {
	if err := emitSignal(ctx, conn, inc.slot(), signal{Watermark: lowWatermark, ID: id, Chunk: chunk, Run: inc.run}); err != nil {
		return chunkDone{}, err
	}
	rows, last, seen, err := inc.selectRows(ctx, conn, cp, t, sql, args)
	if err != nil {
		return chunkDone{}, err
	}
	res.read, res.last = len(rows), last
	if tv != nil {
		if rows, res.same, err = tv.differing(ctx, rows); err != nil {
			return chunkDone{}, err
		}
		if len(rows) == 0 {
			// Nothing to write: the high watermark only closes the window.
			err := emitSignal(ctx, conn, inc.slot(), signal{Watermark: highWatermark, ID: id, Chunk: chunk, Run: inc.run})
			return chunkDone{id: id, chunk: chunk}, err
		}
	}
	return inc.writeChunk(ctx, conn, &copiedChunk{id: id, chunk: chunk, run: inc.run, rows: rows, seen: seen})
}

// logCancelled logs that snap was cancelled; loudly for a resync's, after
// which the snapshot tables may differ from the database.
func (inc *incrementals) logCancelled(log *slog.Logger, snap incrementalSnapshot) {
	if snap.Resync {
		log.Warn("resync: cancelled; the snapshot tables may differ from the database until the type is copied again (changes snapshot --type)",
			"rows", snap.Rows, "chunks", snap.Chunks)
		return
	}
	log.Info("incremental snapshot: cancelled", "rows", snap.Rows, "chunks", snap.Chunks)
}

// writeChunk hands the stream c, read after its low watermark, writes its
// high watermark and waits until the stream has written c's rows (or
// deletes) to Kafka.
func (inc *incrementals) writeChunk(ctx context.Context, conn *pgx.Conn, c *copiedChunk) (chunkDone, error) {
	inc.put(c)
	if err := emitSignal(ctx, conn, inc.slot(), signal{Watermark: highWatermark, ID: c.id, Chunk: c.chunk, Run: inc.run}); err != nil {
		return chunkDone{}, err
	}
	var done chunkDone
	select {
	case done = <-inc.done:
	case <-ctx.Done():
		return done, ctx.Err()
	}
	if done.id != c.id || done.chunk != c.chunk {
		return done, fmt.Errorf("incremental snapshot %s: chunk %d done, but %s chunk %d was copied", done.id, done.chunk, c.id, c.chunk)
	}
	return done, nil
}

// deleteVanished is a resync's last step for snap's table t: it looks up
// the keys the snapshot table holds (tv) in the table, resyncDeleteBatch at
// a time, and those it does not find again between a low and a high
// watermark, in a repeatable-read transaction as a chunk is read; the
// stream writes a delete for each still missing at the high watermark,
// unless it changed the entity in the window.
func (inc *incrementals) deleteVanished(ctx context.Context, conn *pgx.Conn, snap incrementalSnapshot, t table, tv *tablesView, log *slog.Logger) error {
	var after *codecs.Key
	if snap.After != "" {
		k, err := codecs.ParseKey(t.kind(), snap.After)
		if err != nil {
			return err
		}
		after = &k
	}
	started, recorded := time.Now(), time.Now()
	for {
		keys, err := tv.nextKeys(ctx, after, resyncDeleteBatch)
		if err != nil {
			return err
		}
		if len(keys) == 0 {
			if cancelled, err := inc.progress(snap, true); err != nil || cancelled {
				return err
			}
			log.Info("resync: done", "rows", snap.Rows, "same", snap.Same, "deleted", snap.Deleted, "chunks", snap.Chunks,
				"delete_search_seconds", time.Since(started).Seconds())
			return nil
		}
		present, err := existingKeys(ctx, conn, t, keys)
		if err != nil {
			return err
		}
		var absent []codecs.Key
		for i, k := range keys {
			if !present[i] {
				absent = append(absent, k)
			}
		}
		for len(absent) > 0 {
			chunk := snap.Chunks + 1
			if err := emitSignal(ctx, conn, inc.slot(), signal{Watermark: lowWatermark, ID: snap.ID, Chunk: chunk, Run: inc.run}); err != nil {
				return err
			}
			gone, seen, err := selectGone(ctx, conn, t, absent)
			if err != nil {
				return err
			}
			done := chunkDone{id: snap.ID, chunk: chunk}
			if len(gone) > 0 {
				if done, err = inc.writeChunk(ctx, conn, &copiedChunk{id: snap.ID, chunk: chunk, run: inc.run, deletes: gone, seen: seen}); err != nil {
					return err
				}
			} else if err := emitSignal(ctx, conn, inc.slot(), signal{Watermark: highWatermark, ID: snap.ID, Chunk: chunk, Run: inc.run}); err != nil {
				return err // (the high watermark only closes the window)
			}
			if done.retry {
				if _, still := inc.find(snap.ID); !still {
					log.Info("resync: cancelled", "rows", snap.Rows, "deleted", snap.Deleted)
					return nil
				}
				continue
			}
			snap.Chunks, snap.Deleted = chunk, snap.Deleted+int64(done.written)
			inc.metrics.incrementalChunks.WithLabelValues(snap.Type).Inc()
			inc.metrics.resyncDeletes.WithLabelValues(snap.Type).Add(float64(done.written))
			break
		}
		last := keys[len(keys)-1]
		snap.After, after = last.String(), &last
		if time.Since(recorded) >= progressInterval {
			if cancelled, err := inc.progress(snap, false); err != nil || cancelled {
				return err
			}
			recorded = time.Now()
		}
	}
}

// selectGone returns which of keys table t does not hold, read in a
// repeatable-read transaction, and its snapshot (see selectRows).
func selectGone(ctx context.Context, conn *pgx.Conn, t table, keys []codecs.Key) ([]codecs.Key, pgSnapshot, error) {
	var gone []codecs.Key
	seen, err := inSnapshot(ctx, conn, t, func(tx pgx.Tx) error {
		present, err := existingKeys(ctx, tx, t, keys)
		for i, k := range keys {
			if err == nil && !present[i] {
				gone = append(gone, k)
			}
		}
		return err
	})
	return gone, seen, err
}

// inSnapshot runs read in a read-only repeatable-read transaction of conn
// and returns the transaction's snapshot (pg_current_snapshot), which tells
// the stream which transactions read saw (see selectRows).
func inSnapshot(ctx context.Context, conn *pgx.Conn, t table, read func(pgx.Tx) error) (pgSnapshot, error) {
	var seen pgSnapshot
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return seen, fmt.Errorf("incremental snapshot of %s: %w", t.qualified(), err)
	}
	defer tx.Rollback(context.Background())
	var snapText string
	if err := tx.QueryRow(ctx, "select pg_current_snapshot()::text").Scan(&snapText); err != nil {
		return seen, fmt.Errorf("incremental snapshot of %s: %w", t.qualified(), err)
	}
	if seen, err = parsePGSnapshot(snapText); err != nil {
		return seen, err
	}
	if err := read(tx); err != nil {
		return seen, err
	}
	return seen, tx.Commit(ctx)
}

// slot is the slot whose signals the copier writes.
func (inc *incrementals) slot() string {
	inc.mu.Lock()
	defer inc.mu.Unlock()
	return inc.state.Slot
}

// selectRows reads the rows of t that sql (keysetQuery, keysQuery)
// returns, each as its key and its JSON, and the last one's key.
//
// The rows are read in a repeatable-read transaction whose snapshot is
// returned: a transaction whose commit precedes the low watermark in the
// WAL may still be invisible to a query that starts after the watermark's
// commit returned (PostgreSQL makes a commit visible after it writes it to
// the WAL, and transactions flushed together become visible in any order),
// so the stream needs to know which transactions the rows include.
func (inc *incrementals) selectRows(ctx context.Context, conn *pgx.Conn, cp *snapshotCopy, t table, sql string, args []any) ([]chunkRow, codecs.Key, pgSnapshot, error) {
	var out []chunkRow
	var last codecs.Key
	seen, err := inSnapshot(ctx, conn, t, func(tx pgx.Tx) (err error) {
		out, last, err = inc.readChunk(ctx, tx, cp, t, sql, args)
		return err
	})
	if err != nil {
		return nil, last, seen, err
	}
	return out, last, seen, nil
}

// readChunk runs a chunk's query in tx: each row as its key and its JSON.
func (inc *incrementals) readChunk(ctx context.Context, tx pgx.Tx, cp *snapshotCopy, t table, sql string, args []any) ([]chunkRow, codecs.Key, error) {
	var last codecs.Key
	rows, err := tx.Query(ctx, sql, append([]any{pgx.QueryResultFormats{pgx.TextFormatCode}}, args...)...)
	if err != nil {
		return nil, last, fmt.Errorf("incremental snapshot of %s: %w", t.qualified(), err)
	}
	defer rows.Close()
	if err := cp.columns(t, rows.FieldDescriptions()); err != nil {
		return nil, last, err
	}
	out := make([]chunkRow, 0, inc.chunkRows)
	for rows.Next() {
		raw := rows.RawValues()
		if last, err = cp.key(t, raw); err != nil {
			return nil, last, fmt.Errorf("%w: incremental snapshot of %s: %v", ErrInvalidKey, t.qualified(), err)
		}
		row, err := cp.enc.Append(nil, raw)
		if err != nil {
			return nil, last, fmt.Errorf("incremental snapshot of %s: %w", t.qualified(), err)
		}
		out = append(out, chunkRow{key: last, row: row})
	}
	if err := rows.Err(); err != nil {
		return nil, last, fmt.Errorf("incremental snapshot of %s: %w", t.qualified(), err)
	}
	return out, last, nil
}

// rowsLeft counts the rows of t a snapshot has left to copy after after:
// one count when a copy starts or resumes, for the rows-left gauge.
func rowsLeft(ctx context.Context, conn *pgx.Conn, t table, after, from, to *codecs.Key) (int64, error) {
	sql, args, err := keysetQuery(t, after, from, to, 1)
	if err != nil {
		return 0, err
	}
	sql, _, _ = strings.Cut(sql, " order by ")
	var n int64
	if err := conn.QueryRow(ctx, strings.Replace(sql, "select *", "select count(*)", 1), args...).Scan(&n); err != nil {
		return 0, fmt.Errorf("incremental snapshot of %s: count the rows left: %w", t.qualified(), err)
	}
	return n, nil
}

// keysetQuery is the query of up to limit rows of t after key after (from
// the first key when nil), within from and to (each included, when not
// nil): keyset pagination over the key columns in the order of their
// unique index, so every query is an index range scan, with a row
// comparison for several columns:
//
//	select * from t where (a, b) > ($1::text::ta, $2::text::tb) order by a, b limit N
//
// The parameters are the key columns' text, cast to the columns' own types
// so the comparison is the index's (for text, the column's collation: the
// casts carry the default collation, which gives way to the column's).
func keysetQuery(t table, after, from, to *codecs.Key, limit int) (string, []any, error) {
	cols := make([]string, len(t.key.order))
	for i, k := range t.key.order {
		cols[i] = pgx.Identifier{t.keyColumns[k]}.Sanitize()
	}
	var conds []string
	var args []any
	bound := func(k *codecs.Key, op string) error {
		if k == nil {
			return nil
		}
		values, err := t.keyValues(*k)
		if err != nil {
			return err
		}
		params := make([]string, len(t.key.order))
		for i, c := range t.key.order {
			args = append(args, values[c])
			params[i] = fmt.Sprintf("$%d::text::%s", len(args), t.key.types[c])
		}
		if len(cols) == 1 {
			conds = append(conds, fmt.Sprintf("%s %s %s", cols[0], op, params[0]))
		} else {
			conds = append(conds, fmt.Sprintf("(%s) %s (%s)", strings.Join(cols, ", "), op, strings.Join(params, ", ")))
		}
		return nil
	}
	for _, b := range []struct {
		k  *codecs.Key
		op string
	}{{after, ">"}, {from, ">="}, {to, "<="}} {
		if err := bound(b.k, b.op); err != nil {
			return "", nil, err
		}
	}
	where := ""
	if len(conds) > 0 {
		where = "where " + strings.Join(conds, " and ")
	}
	return fmt.Sprintf("select * from %s %s order by %s limit %d", t.quoted(), where, strings.Join(cols, ", "), limit), args, nil
}

// window is what the stream notes between a chunk's watermarks: the keys
// of the chunk's table it changed, and whether it truncated the table.
type window struct {
	id         string
	chunk      int64
	entityType string
	changed    map[codecs.Key]struct{}
	// partial are the keys of changed whose change left TOASTed columns
	// out (codecs.Event.Unchanged).
	partial   map[codecs.Key]struct{}
	truncated bool
	// before are the table's changes of the transactions just before the
	// low watermark (see recentChanges).
	before []recentChange
}

// saw notes a change of the window's table.
func (w *window) saw(ev *codecs.Event) {
	if ev.Op == codecs.OpTruncate {
		w.truncated = true
		return
	}
	w.changed[ev.EntityID] = struct{}{}
	if len(ev.Unchanged) > 0 {
		w.partial[ev.EntityID] = struct{}{}
	}
}

// writtenChunk is a chunk whose rows the stream wrote in the transaction
// txn (ending at end once its commit is seen), waiting for Kafka.
type writtenChunk struct {
	done chunkDone
	txn  *txn
	end  codecs.LSN
}

// signal handles a message with the slot's signal prefix.
func (s *stream) signal(ctx context.Context, m *pglogrepl.LogicalDecodingMessage) error {
	sig, err := parseSignal(m.Content)
	if err != nil {
		s.metrics.badSignals.Inc()
		s.log.Error("a message with the slot's signal prefix is not a signal: ignored", "lsn", codecs.LSN(m.LSN).String(), "err", err)
		return nil
	}
	switch {
	case sig.Snapshot != "":
		return s.inc.request(sig, codecs.LSN(m.LSN))
	case sig.Cancel != "":
		return s.inc.cancel(sig.Cancel, codecs.LSN(m.LSN))
	case sig.Run != s.inc.run:
		return nil // an earlier session's chunk: its copier is gone
	case sig.Watermark == lowWatermark:
		t, ok := s.inc.chunkTable(sig)
		if !ok {
			return nil
		}
		s.win = &window{id: sig.ID, chunk: sig.Chunk, entityType: t.entityType, changed: map[codecs.Key]struct{}{},
			partial: map[codecs.Key]struct{}{}, before: s.recent.of(t.entityType)}
		return nil
	}
	// The high watermark: the chunk's rows the stream did not change go to
	// the history as changes of this transaction.
	w := s.win
	s.win = nil
	c := s.inc.take(sig)
	if c == nil {
		return nil
	}
	if s.cur == nil {
		return errors.New("replication stream: a high watermark outside a transaction")
	}
	if w == nil || w.id != sig.ID || w.chunk != sig.Chunk {
		s.awaiting = append(s.awaiting, writtenChunk{done: chunkDone{id: c.id, chunk: c.chunk, retry: true}, txn: s.cur})
		return nil
	}
	// A change committed before the low watermark that the rows' snapshot
	// did not see is newer than the row: leave the row out too.
	unseen := 0
	for _, r := range w.before {
		if c.seen.visible(r.xid) {
			continue
		}
		unseen++
		switch {
		case r.truncate:
			w.truncated = true
		case r.partial:
			w.partial[r.key] = struct{}{}
			fallthrough
		default:
			w.changed[r.key] = struct{}{}
		}
	}
	if unseen > 0 {
		s.metrics.incrementalUnseen.Add(float64(unseen))
		s.log.Debug("incremental snapshot: changes committed just before a low watermark were not visible to its chunk's query; their rows are left out", "id", c.id, "chunk", c.chunk, "changes", unseen)
	}
	rel := &relation{table: s.inc.tables[w.entityType]}
	written := 0
	var again []codecs.Key
	for _, r := range c.rows {
		if w.truncated {
			break
		}
		if _, changed := w.changed[r.key]; changed {
			if _, partial := w.partial[r.key]; partial {
				again = append(again, r.key)
			}
			continue
		}
		ev := s.event(rel, codecs.OpSnapshot)
		ev.EntityID = r.key
		value, err := codecs.EventCodec{}.AppendWithAfter(nil, ev, r.row)
		if err != nil {
			return fmt.Errorf("encode snapshot row of %s id %s: %w", rel.table.qualified(), r.key, err)
		}
		msg, err := newHistoryRecord(s.topic, rel.table, ev, value, s.cfg.Kafka.MaxRecordBytes)
		if err != nil {
			return err
		}
		if err := s.send(ctx, rel, ev, msg); err != nil {
			return err
		}
		written++
	}
	for _, k := range c.deletes {
		if _, changed := w.changed[k]; changed || w.truncated {
			continue
		}
		if err := s.writeResyncDelete(ctx, rel, k); err != nil {
			return err
		}
		written++
	}
	s.awaiting = append(s.awaiting, writtenChunk{done: chunkDone{id: c.id, chunk: c.chunk, written: written, again: again}, txn: s.cur})
	return nil
}

// chunksAcknowledged tells the copier of the chunks whose transactions
// Kafka has, acknowledged up to acked.
func (s *stream) chunksAcknowledged(acked codecs.LSN) {
	for len(s.awaiting) > 0 {
		w := s.awaiting[0]
		if w.end == 0 || w.end > acked {
			return
		}
		select {
		case s.inc.done <- w.done:
		default:
			return // the copier takes the last one first
		}
		s.awaiting = s.awaiting[1:]
	}
}

// chunkTable returns the table of the chunk a watermark marks, if the
// copier of this session copies it.
func (inc *incrementals) chunkTable(sig signal) (table, bool) {
	s, ok := inc.find(sig.ID)
	if !ok {
		return table{}, false
	}
	t, ok := inc.tables[s.Type]
	return t, ok
}

// recentWindow is how far back, by commit time, the stream keeps the
// changes of every table while an incremental snapshot runs: a transaction
// committed before a low watermark but not yet visible when the chunk's
// query began finished committing moments before the watermark.
const recentWindow = 2 * time.Second

// recentChange is a change the stream wrote while a snapshot runs.
type recentChange struct {
	xid        uint32
	commitTime time.Time
	entityType string
	key        codecs.Key
	truncate   bool
	partial    bool // TOASTed columns left out
}

// recentChanges are the changes of the last recentWindow of commit time,
// oldest first.
type recentChanges struct {
	list []recentChange
}

// add keeps ev, of transaction xid, and forgets what is older than
// recentWindow before it.
func (r *recentChanges) add(xid uint32, ev *codecs.Event) {
	r.list = append(r.list, recentChange{xid: xid, commitTime: ev.CommitTime, entityType: ev.EntityType, key: ev.EntityID,
		truncate: ev.Op == codecs.OpTruncate, partial: len(ev.Unchanged) > 0})
	cut := 0
	for cut < len(r.list) && ev.CommitTime.Sub(r.list[cut].commitTime) > recentWindow {
		cut++
	}
	if cut > 0 {
		r.list = append(r.list[:0], r.list[cut:]...)
	}
}

// of returns the kept changes of entityType.
func (r *recentChanges) of(entityType string) []recentChange {
	var out []recentChange
	for _, c := range r.list {
		if c.entityType == entityType {
			out = append(out, c)
		}
	}
	return out
}
