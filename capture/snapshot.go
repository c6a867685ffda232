package capture

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/IBM/sarama"
	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/changes-dev/changes/codecs"
)

// snapshotBatch is how many rows one query of the initial snapshot reads:
// the copy holds at most one batch in memory, plus the producer's buffer.
const snapshotBatch = 5000

// snapshotFrom says where a copy starts: every row it writes has the commit
// LSN base (the slot's consistent point minus one, below every streamed
// change) and the next index; it starts at table index table, after id
// after when resuming.
type snapshotFrom struct {
	base     codecs.LSN
	index    uint32
	table    int
	after    int64
	resuming bool
}

// copiedRows is what resuming needs to know of the snapshot rows at the end
// of the history, seen newest first: the newest row, and the row before the
// oldest gap in their indices (a write that failed while later ones
// succeeded), or the newest row if there is none. It holds three rows, not
// every copied row.
type copiedRows struct {
	newest, prev, after *codecs.Event
	gaps                int
}

// see takes the next older row.
func (r *copiedRows) see(ev *codecs.Event) {
	switch {
	case r.newest == nil:
		r.newest, r.after = ev, ev
	case r.prev.Position.Index != ev.Position.Index+1:
		r.after = ev
		r.gaps++
	}
	r.prev = ev
}

// resumeFrom works out where an interrupted snapshot goes on, from the
// snapshot rows of this slot (commit LSN base) at the end of the history.
// It resumes after the last row before the first gap in their indices, so
// no row is left out; rows after the gap are copied again, with new
// indices after the last one written, so positions keep increasing.
func (se *session) resumeFrom(rows copiedRows, base codecs.LSN) snapshotFrom {
	if rows.newest == nil {
		return snapshotFrom{base: base}
	}
	if rows.gaps > 0 {
		se.log.Warn("snapshot: a gap in the copied rows; copying again from before it",
			"after_index", rows.after.Position.Index, "gaps", rows.gaps)
	}
	next := rows.newest.Position.Index + 1
	for i, t := range se.tables {
		if t.entityType == rows.after.EntityType {
			return snapshotFrom{base: base, index: next, table: i, after: afterID(rows.after.EntityID), resuming: true}
		}
	}
	return snapshotFrom{base: base, index: next}
}

// copySnapshot copies every row of the captured tables, as tx sees them, to
// the history as OpSnapshot events, table by table in id order, in batches.
// It returns when Kafka has every row.
func (se *session) copySnapshot(ctx context.Context, tx pgx.Tx, from snapshotFrom) error {
	producer, err := sarama.NewAsyncProducerFromClient(se.client)
	if err != nil {
		return fmt.Errorf("snapshot producer: %w", err)
	}
	var (
		wg       sync.WaitGroup
		failOnce sync.Once
		failErr  error
	)
	failed := make(chan struct{})
	wg.Add(2)
	go func() {
		defer wg.Done()
		for range producer.Successes() {
		}
	}()
	go func() {
		defer wg.Done()
		for e := range producer.Errors() {
			failOnce.Do(func() { failErr = fmt.Errorf("kafka did not take a snapshot row: %w", e.Err); close(failed) })
		}
	}()
	copyErr := se.copyRows(ctx, tx, producer, failed, from)
	producer.AsyncClose()
	wg.Wait()
	if failErr != nil {
		return failErr
	}
	return copyErr
}

func (se *session) copyRows(ctx context.Context, tx pgx.Tx, producer sarama.AsyncProducer, failed <-chan struct{}, from snapshotFrom) error {
	cp := &snapshotCopy{
		tx: tx, producer: producer, failed: failed,
		topic: se.topo.History(), maxBytes: se.topo.Config().Kafka.MaxRecordBytes,
		base: from.base, index: from.index, taken: time.Now().UTC(),
	}
	se.metrics.snapshotRunning.Set(1)
	defer se.metrics.snapshotRunning.Set(0)
	for ti := from.table; ti < len(se.tables); ti++ {
		t := se.tables[ti]
		after, resuming := from.after, from.resuming && ti == from.table
		started, lastReport, rows := time.Now(), time.Now(), 0
		if resuming {
			se.log.Info("snapshot: resuming", "entity_type", t.entityType, "table", t.qualified(), "after_id", after)
		} else {
			se.log.Info("snapshot: copying", "entity_type", t.entityType, "table", t.qualified())
		}
		for {
			where := ""
			args := []any{}
			if resuming {
				where = "where " + pgx.Identifier{t.idColumn}.Sanitize() + " > $1"
				args = append(args, after)
			}
			sql := fmt.Sprintf("select * from %s %s order by %s limit %d", t.quoted(), where, pgx.Identifier{t.idColumn}.Sanitize(), snapshotBatch)
			if err := se.checkLock(ctx); err != nil {
				return err
			}
			n, last, err := cp.batch(ctx, t, sql, args)
			if err != nil {
				return err
			}
			rows += n
			se.metrics.snapshotRows.WithLabelValues(t.entityType).Add(float64(n))
			if time.Since(lastReport) >= 5*time.Second {
				se.log.Info("snapshot: progress", "entity_type", t.entityType, "rows", rows,
					"rows_per_s", int(float64(rows)/time.Since(started).Seconds()))
				lastReport = time.Now()
			}
			if n < snapshotBatch {
				break
			}
			after, resuming = last, true
		}
		se.log.Info("snapshot: copied", "entity_type", t.entityType, "rows", rows, "seconds", time.Since(started).Seconds())
	}
	return nil
}

// snapshotCopy is one copy of the snapshot's rows: where they come from,
// where they go, and the position the next row takes. Every row of a copy
// has the same commit LSN and commit time; the index goes up by one a row.
type snapshotCopy struct {
	tx       pgx.Tx
	producer sarama.AsyncProducer
	failed   <-chan struct{} // closed once a write of producer failed
	topic    string
	maxBytes int        // kafka.max_record_bytes
	base     codecs.LSN // every row's commit LSN
	index    uint32     // the next row's position index
	taken    time.Time  // every row's commit time: when the copy began
}

// batch copies the rows sql returns from table t and reports how many and
// the last id.
func (cp *snapshotCopy) batch(ctx context.Context, t table, sql string, args []any) (int, int64, error) {
	rows, err := cp.tx.Query(ctx, sql, append([]any{pgx.QueryResultFormats{pgx.TextFormatCode}}, args...)...)
	if err != nil {
		return 0, 0, fmt.Errorf("snapshot of %s: %w", t.qualified(), err)
	}
	defer rows.Close()
	fields := rows.FieldDescriptions()
	names := make([]string, len(fields))
	oids := make([]uint32, len(fields))
	idIndex := -1
	for i, f := range fields {
		names[i], oids[i] = f.Name, f.DataTypeOID
		if f.Name == t.idColumn {
			idIndex = i
		}
	}
	if idIndex < 0 {
		return 0, 0, fmt.Errorf("%w: table %s has no id column %s", ErrSetup, t.qualified(), t.idColumn)
	}
	n, last := 0, int64(0)
	for rows.Next() {
		raw := rows.RawValues()
		row, err := codecs.TextRow(names, oids, raw)
		if err != nil {
			return 0, 0, fmt.Errorf("snapshot of %s: %w", t.qualified(), err)
		}
		if last, err = strconv.ParseInt(string(raw[idIndex]), 10, 64); err != nil {
			return 0, 0, fmt.Errorf("snapshot of %s: id %q: %w", t.qualified(), raw[idIndex], err)
		}
		if cp.index == math.MaxUint32 {
			return 0, 0, fmt.Errorf("snapshot: more than %d rows do not fit the position index", uint32(math.MaxUint32))
		}
		ev := &codecs.Event{
			EntityType: t.entityType, EntityID: codecs.IntKey(last), Op: codecs.OpSnapshot, After: row,
			CommitLSN: cp.base, Position: codecs.Position{CommitLSN: cp.base, Index: cp.index},
			CommitTime: cp.taken, CaptureTime: time.Now().UTC(),
		}
		msg, err := historyRecord(cp.topic, t, ev, cp.maxBytes)
		if err != nil {
			return 0, 0, err
		}
		select {
		case cp.producer.Input() <- msg:
		case <-cp.failed:
			return 0, 0, errSnapshotWriteFailed // copySnapshot reports the producer's error
		case <-ctx.Done():
			return 0, 0, ctx.Err()
		}
		cp.index++
		n++
	}
	if err := rows.Err(); err != nil {
		return 0, 0, fmt.Errorf("snapshot of %s: %w", t.qualified(), err)
	}
	return n, last, nil
}

// createAndSnapshot creates the slot with an exported snapshot and copies
// every row as of the slot's consistent point, so the snapshot and the
// stream meet exactly: a row committed during the copy is in the stream, not
// in the copy. The state topic says "running" before the slot exists and
// "done" after Kafka has every row, so a crash in between resumes.
func (se *session) createAndSnapshot(ctx context.Context, written codecs.Position) error {
	cfg := se.topo.Config()
	stateTopic := se.topo.CaptureState()
	state := captureState{Slot: cfg.Postgres.Slot, Snapshot: snapshotRunning, Types: se.entityTypes()}
	if err := writeState(se.client, stateTopic, state); err != nil {
		return err
	}
	res, err := pglogrepl.CreateReplicationSlot(ctx, se.repl, cfg.Postgres.Slot, "pgoutput",
		pglogrepl.CreateReplicationSlotOptions{Mode: pglogrepl.LogicalReplication, SnapshotAction: "EXPORT_SNAPSHOT"})
	if err != nil {
		return fmt.Errorf("create replication slot %s: %w", cfg.Postgres.Slot, err)
	}
	cp, err := codecs.ParseLSN(res.ConsistentPoint)
	if err != nil {
		return fmt.Errorf("create replication slot %s: %w", cfg.Postgres.Slot, err)
	}
	se.log.Info("created replication slot", "slot", cfg.Postgres.Slot, "lsn", cp.String(), "snapshot", res.SnapshotName)
	// The exported snapshot lives until se.repl runs its next command
	// (START_REPLICATION, after the copy).
	if cp <= written.CommitLSN {
		return fmt.Errorf("%w: the new slot starts at %s, not after the history's last change at %s (another server?): its changes would sort before what the history holds",
			ErrSetup, cp, written)
	}
	if err := se.copyTables(ctx, res.SnapshotName, snapshotFrom{base: cp - 1}); err != nil {
		return err
	}
	state.Snapshot = snapshotDone
	return writeState(se.client, stateTopic, state)
}

// resumeSnapshot goes on with a snapshot a crash interrupted, and returns
// the state with the cut it made. The exported snapshot died with the
// crash, so the rest is copied from a new one: a temporary slot's, exported
// at its consistent point, so the copy is exactly the database as of that
// LSN (see snapshotCut). The cut is recorded before any row is copied; the
// stream, which starts where the first snapshot did, then leaves out the
// changes those rows already hold, so no entity's history goes backwards:
// its copied state, then every change committed after it, in commit order.
func (se *session) resumeSnapshot(ctx context.Context, state captureState) (captureState, error) {
	cfg := se.topo.Config()
	start, err := se.slotPosition(ctx)
	if err != nil {
		return state, err
	}
	base := start - 1
	var rows copiedRows
	err = readBack(ctx, se.client, se.topo.History(), func(ev *codecs.Event) bool {
		if ev.Op != codecs.OpSnapshot || ev.CommitLSN != base {
			return false
		}
		rows.see(ev)
		return true
	})
	if err != nil {
		return state, err
	}
	from := se.resumeFrom(rows, base)

	// The exported snapshot lives while this connection stays idle: until
	// the copy is done.
	tmpConn, err := connectReplication(ctx, cfg.Postgres.URL)
	if err != nil {
		return state, err
	}
	defer tmpConn.Close(context.Background())
	tmpSlot := fmt.Sprintf("%s_resume_%d", cfg.Postgres.Slot, time.Now().UnixNano()%1_000_000_000)
	if len(tmpSlot) > 63 {
		tmpSlot = tmpSlot[len(tmpSlot)-63:]
	}
	res, err := pglogrepl.CreateReplicationSlot(ctx, tmpConn, tmpSlot, "pgoutput",
		pglogrepl.CreateReplicationSlotOptions{Temporary: true, Mode: pglogrepl.LogicalReplication, SnapshotAction: "EXPORT_SNAPSHOT"})
	if err != nil {
		return state, fmt.Errorf("create the temporary replication slot %s for the resumed snapshot: %w", tmpSlot, err)
	}
	lsn, err := codecs.ParseLSN(res.ConsistentPoint)
	if err != nil {
		return state, fmt.Errorf("temporary replication slot %s: %w", tmpSlot, err)
	}
	cut := snapshotCut{Type: se.tables[from.table].entityType, After: from.after, FromStart: !from.resuming, LSN: lsn}
	state.Cuts = append(state.Cuts, cut)
	if err := writeState(se.client, se.topo.CaptureState(), state); err != nil {
		return state, err
	}
	se.log.Warn("resuming an interrupted initial snapshot from a new database snapshot; changes the rest of the copy already holds are left out of the stream",
		"slot", cfg.Postgres.Slot, "entity_type", cut.Type, "after_id", from.after, "index", from.index, "snapshot_lsn", lsn.String())
	if err := se.copyTables(ctx, res.SnapshotName, from); err != nil {
		return state, err
	}
	state.Snapshot = snapshotDone
	return state, writeState(se.client, se.topo.CaptureState(), state)
}

// cuts is the snapshot cuts of a slot, resolved against the tables: the
// stream asks it whether a change is already in a resumed copy's row.
type cuts struct {
	list []resolvedCut
	max  codecs.LSN // no change at or after it is left out
}

type resolvedCut struct {
	table     int
	after     int64
	fromStart bool
	lsn       codecs.LSN
}

func (se *session) resolveCuts(list []snapshotCut) (*cuts, error) {
	out := &cuts{}
	for _, sc := range list {
		ti := slices.IndexFunc(se.tables, func(t table) bool { return t.entityType == sc.Type })
		if ti < 0 {
			return nil, fmt.Errorf("%w: the interrupted snapshot resumed in entity type %q, which the config no longer declares", ErrSetup, sc.Type)
		}
		out.list = append(out.list, resolvedCut{table: ti, after: sc.After, fromStart: sc.FromStart, lsn: sc.LSN})
		out.max = max(out.max, sc.LSN)
	}
	return out, nil
}

// covers reports whether the change of entity id of table ti committed at
// lsn is already in the state a resumed copy took of its row: the latest
// cut the row comes after copied it, as of that cut's LSN.
func (cs *cuts) covers(ti int, key codecs.Key, lsn codecs.LSN) bool {
	id, _ := key.Int()
	if cs == nil || lsn >= cs.max {
		return false
	}
	for i := len(cs.list) - 1; i >= 0; i-- {
		c := cs.list[i]
		if ti > c.table || (ti == c.table && (c.fromStart || id > c.after)) {
			return lsn < c.lsn
		}
	}
	return false
}

// copyTables copies the tables in a repeatable-read, read-only transaction,
// on the exported snapshot name if one is given.
func (se *session) copyTables(ctx context.Context, name string, from snapshotFrom) error {
	conn, err := pgx.Connect(ctx, se.topo.Config().Postgres.URL)
	if err != nil {
		return fmt.Errorf("connect to postgres for the snapshot: %w", err)
	}
	defer conn.Close(context.Background())
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return fmt.Errorf("begin snapshot: %w", err)
	}
	defer tx.Rollback(context.Background())
	if name != "" {
		if _, err := tx.Exec(ctx, "set transaction snapshot "+quoteLiteral(name)); err != nil {
			return fmt.Errorf("import snapshot %s: %w", name, err)
		}
	}
	started := time.Now()
	if err := se.copySnapshot(ctx, tx, from); err != nil {
		return err
	}
	se.log.Info("snapshot: complete", "seconds", time.Since(started).Seconds())
	return tx.Commit(ctx)
}

// quoteLiteral quotes s as an SQL string literal (quotes doubled, as both
// SQL with standard_conforming_strings and the replication command grammar
// read it); SET TRANSACTION SNAPSHOT and START_REPLICATION's plugin options
// take no parameters.
func quoteLiteral(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

// checkLock fails when the connection holding the slot's advisory lock is
// gone: another capture could then take the slot while this one works.
func (se *session) checkLock(ctx context.Context) error {
	if se.lock == nil {
		return nil
	}
	if err := se.lock.Ping(ctx); err != nil {
		return fmt.Errorf("lost the connection that holds the slot's lock, so another capture may take over: %w", err)
	}
	return nil
}

// errSnapshotWriteFailed stops the copy after a failed Kafka write; the
// producer's own error is what copySnapshot returns.
var errSnapshotWriteFailed = errors.New("a snapshot row was not written")

// entityTypes lists the captured entity types, in config order.
func (se *session) entityTypes() []string {
	out := make([]string, len(se.tables))
	for i, t := range se.tables {
		out[i] = t.entityType
	}
	return out
}

// afterID is the id a resumed copy starts after.
func afterID(k codecs.Key) int64 { id, _ := k.Int(); return id }
