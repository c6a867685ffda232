package capture

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/IBM/sarama"
	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/changes-dev/changes/codecs"
)

// snapshotBatch is how many rows one query of the initial snapshot reads:
// the copy holds at most one batch in memory, plus the producer's buffer.
const snapshotBatch = 5000

// snapshotFrom says where a copy starts: every row it writes has the commit
// LSN base (the slot's consistent point minus one, below every streamed
// change) and the next index; it starts at table index table, after key
// after when resuming.
type snapshotFrom struct {
	base     codecs.LSN
	index    uint32
	table    int
	after    codecs.Key
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
func (se *session) resumeFrom(rows copiedRows, base codecs.LSN) (snapshotFrom, error) {
	if rows.newest == nil {
		return snapshotFrom{base: base}, nil
	}
	if rows.gaps > 0 {
		se.log.Warn("snapshot: a gap in the copied rows; copying again from before it",
			"after_index", rows.after.Position.Index, "gaps", rows.gaps)
	}
	next := rows.newest.Position.Index + 1
	for i, t := range se.tables {
		if t.entityType == rows.after.EntityType {
			if _, err := t.keyValues(rows.after.EntityID); err != nil {
				return snapshotFrom{}, fmt.Errorf("%w: the interrupted snapshot cannot resume after its last copied row: %v (the table's key changed since: start over with --recreate-slot)", ErrSetup, err)
			}
			return snapshotFrom{base: base, index: next, table: i, after: rows.after.EntityID, resuming: true}, nil
		}
	}
	return snapshotFrom{base: base, index: next}, nil
}

// copySnapshot copies every row of the captured tables, as tx sees them, to
// the history as OpSnapshot events, table by table in key order, in batches.
// It returns when Kafka has every row.
func (se *session) copySnapshot(ctx context.Context, tx pgx.Tx, from snapshotFrom) error {
	w, err := newSnapshotWriter(se.topo.Config().Kafka, se.topo.History())
	if err != nil {
		return err
	}
	copyErr := se.copyRows(ctx, tx, w, from)
	if err := w.close(ctx); copyErr == nil {
		return err
	}
	return copyErr
}

// recordSink takes the records of a copy in order (snapshotWriter).
type recordSink interface {
	add(ctx context.Context, msg *sarama.ProducerMessage) error
}

func (se *session) copyRows(ctx context.Context, tx pgx.Tx, out recordSink, from snapshotFrom) error {
	cp := &snapshotCopy{
		tx: tx, out: out,
		topic: se.topo.History(), maxBytes: se.topo.Config().Kafka.MaxRecordBytes,
		base: from.base, index: from.index, taken: time.Now().UTC(), around: 512,
	}
	se.metrics.snapshotRunning.Set(1)
	defer se.metrics.snapshotRunning.Set(0)
	for ti := from.table; ti < len(se.tables); ti++ {
		t := se.tables[ti]
		after, resuming := from.after, from.resuming && ti == from.table
		started, lastReport, rows := time.Now(), time.Now(), 0
		if resuming {
			se.log.Info("snapshot: resuming", "entity_type", t.entityType, "table", t.qualified(), "after_id", after.String())
		} else {
			se.log.Info("snapshot: copying", "entity_type", t.entityType, "table", t.qualified())
		}
		cp.enc = nil // a table's own columns
		for {
			sql, args, err := pageQuery(t, after, resuming)
			if err != nil {
				return err
			}
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
	out      recordSink
	topic    string
	maxBytes int        // kafka.max_record_bytes
	base     codecs.LSN // every row's commit LSN
	index    uint32     // the next row's position index
	taken    time.Time  // every row's commit time: when the copy began

	// The current table's columns, as its first batch found them.
	enc       *codecs.RowEncoder
	names     []string
	oids      []uint32
	keyIndex  []int
	keyOIDs   []uint32
	keyValues [][]byte // a buffer for a row's key columns
	// row is a buffer for the row's JSON; around what the last event
	// took besides its row, and some.
	row    []byte
	around int
}

// pageQuery is the query of the next batch of t's rows after key after
// (from the first row unless resuming): see keysetQuery.
func pageQuery(t table, after codecs.Key, resuming bool) (string, []any, error) {
	if !resuming {
		return keysetQuery(t, nil, nil, nil, snapshotBatch)
	}
	return keysetQuery(t, &after, nil, nil, snapshotBatch)
}

// columns takes the columns of a batch of table t: the first batch's
// make the row encoder; every later batch must have the same.
func (cp *snapshotCopy) columns(t table, fields []pgconn.FieldDescription) error {
	if cp.enc != nil && len(fields) == len(cp.names) {
		same := true
		for i, f := range fields {
			same = same && f.Name == cp.names[i] && f.DataTypeOID == cp.oids[i]
		}
		if same {
			return nil
		}
	}
	names := make([]string, len(fields))
	oids := make([]uint32, len(fields))
	for i, f := range fields {
		names[i], oids[i] = f.Name, f.DataTypeOID
	}
	keyIndex := make([]int, len(t.keyColumns))
	keyOIDs := make([]uint32, len(t.keyColumns))
	for k, col := range t.keyColumns {
		if keyIndex[k] = slices.Index(names, col); keyIndex[k] < 0 {
			return fmt.Errorf("%w: table %s has no key column %s", ErrSetup, t.qualified(), col)
		}
		keyOIDs[k] = oids[keyIndex[k]]
	}
	enc, err := codecs.NewRowEncoder(names, oids)
	if err != nil {
		return fmt.Errorf("snapshot of %s: %w", t.qualified(), err)
	}
	cp.enc, cp.names, cp.oids, cp.keyIndex, cp.keyOIDs = enc, names, oids, keyIndex, keyOIDs
	return nil
}

// key is the entity key of raw, a row of table t in the columns of the
// current batch: the same function as the stream's (relation.key), so a
// row's copy and its changes have one key.
func (cp *snapshotCopy) key(t table, raw [][]byte) (codecs.Key, error) {
	cp.keyValues = cp.keyValues[:0]
	for _, i := range cp.keyIndex {
		cp.keyValues = append(cp.keyValues, raw[i])
	}
	return codecs.ColumnKey(t.keyColumns, cp.keyOIDs, cp.keyValues)
}

// batch copies the rows sql returns from table t and reports how many and
// the last key.
func (cp *snapshotCopy) batch(ctx context.Context, t table, sql string, args []any) (int, codecs.Key, error) {
	var last codecs.Key
	rows, err := cp.tx.Query(ctx, sql, append([]any{pgx.QueryResultFormats{pgx.TextFormatCode}}, args...)...)
	if err != nil {
		return 0, last, fmt.Errorf("snapshot of %s: %w", t.qualified(), err)
	}
	defer rows.Close()
	if err := cp.columns(t, rows.FieldDescriptions()); err != nil {
		return 0, last, err
	}
	n := 0
	for rows.Next() {
		raw := rows.RawValues()
		if last, err = cp.key(t, raw); err != nil {
			return 0, last, fmt.Errorf("%w: snapshot of %s: %v", ErrInvalidKey, t.qualified(), err)
		}
		if cp.index == math.MaxUint32 {
			return 0, last, fmt.Errorf("snapshot: more than %d rows do not fit the position index", uint32(math.MaxUint32))
		}
		if cp.row, err = cp.enc.Append(cp.row[:0], raw); err != nil {
			return 0, last, fmt.Errorf("snapshot of %s: %w", t.qualified(), err)
		}
		ev := codecs.Event{
			EntityType: t.entityType, EntityID: last, Op: codecs.OpSnapshot,
			CommitLSN: cp.base, Position: codecs.Position{CommitLSN: cp.base, Index: cp.index},
			CommitTime: cp.taken, CaptureTime: time.Now().UTC(),
		}
		// Each record owns its value, sized by the row and what the last
		// event took around its row, so most take one allocation.
		value, err := codecs.EventCodec{}.AppendWithAfter(make([]byte, 0, len(cp.row)+cp.around), &ev, cp.row)
		if err != nil {
			return 0, last, fmt.Errorf("encode snapshot row of %s id %s: %w", t.qualified(), last, err)
		}
		cp.around = len(value) - len(cp.row) + 16
		msg, err := newHistoryRecord(cp.topic, t, &ev, value, cp.maxBytes)
		if err != nil {
			return 0, last, err
		}
		if err := cp.out.add(ctx, msg); err != nil {
			return 0, last, err
		}
		cp.index++
		n++
	}
	if err := rows.Err(); err != nil {
		return 0, last, fmt.Errorf("snapshot of %s: %w", t.qualified(), err)
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
	from, err := se.resumeFrom(rows, base)
	if err != nil {
		return state, err
	}

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
	cut := snapshotCut{Type: se.tables[from.table].entityType, FromStart: !from.resuming, LSN: lsn}
	cut.setAfter(from.after)
	state.Cuts = append(state.Cuts, cut)
	if err := writeState(se.client, se.topo.CaptureState(), state); err != nil {
		return state, err
	}
	se.log.Warn("resuming an interrupted initial snapshot from a new database snapshot; changes the rest of the copy already holds are left out of the stream",
		"slot", cfg.Postgres.Slot, "entity_type", cut.Type, "after_id", from.after.String(), "index", from.index, "snapshot_lsn", lsn.String())
	if err := se.copyTables(ctx, res.SnapshotName, from); err != nil {
		return state, err
	}
	state.Snapshot = snapshotDone
	return state, writeState(se.client, se.topo.CaptureState(), state)
}

// cuts is the snapshot cuts of a slot, resolved against the tables: the
// stream asks it whether a change is already in a resumed copy's row.
type cuts struct {
	list   []resolvedCut
	max    codecs.LSN // no change at or after it is left out
	tables []table
	// collate compares two values of a text key column as the database
	// orders them (see compareKeys); nil outside a session (tests).
	collate *collator
}

type resolvedCut struct {
	table     int
	after     codecs.Key
	fromStart bool
	lsn       codecs.LSN
}

func (se *session) resolveCuts(list []snapshotCut) (*cuts, error) {
	out := &cuts{tables: se.tables}
	if se.topo != nil {
		out.collate = &collator{url: se.topo.Config().Postgres.URL}
	}
	for _, sc := range list {
		ti := slices.IndexFunc(se.tables, func(t table) bool { return t.entityType == sc.Type })
		if ti < 0 {
			return nil, fmt.Errorf("%w: the interrupted snapshot resumed in entity type %q, which the config no longer declares", ErrSetup, sc.Type)
		}
		after, err := sc.afterKey()
		if err != nil {
			return nil, fmt.Errorf("%w: the capture state's cut in entity type %q: %v", ErrSetup, sc.Type, err)
		}
		if !sc.FromStart {
			if _, err := se.tables[ti].keyValues(after); err != nil {
				return nil, fmt.Errorf("%w: the interrupted snapshot's cut in entity type %q: %v (the table's key changed since the snapshot: start over with --recreate-slot)", ErrSetup, sc.Type, err)
			}
		}
		out.list = append(out.list, resolvedCut{table: ti, after: after, fromStart: sc.FromStart, lsn: sc.LSN})
		out.max = max(out.max, sc.LSN)
	}
	return out, nil
}

// covers reports whether the change of entity key of table ti committed at
// lsn is already in the state a resumed copy took of its row: the latest
// cut the row comes after, in the copy's order, copied it as of that cut's
// LSN. Only changes before the last cut's LSN are compared.
func (cs *cuts) covers(ctx context.Context, ti int, key codecs.Key, lsn codecs.LSN) (bool, error) {
	if cs == nil || lsn >= cs.max {
		return false, nil
	}
	for i := len(cs.list) - 1; i >= 0; i-- {
		c := cs.list[i]
		if ti > c.table || (ti == c.table && c.fromStart) {
			return lsn < c.lsn, nil
		}
		if ti == c.table {
			order, err := compareKeys(ctx, cs.tables[ti], key, c.after, cs.collate)
			if err != nil {
				return false, err
			}
			if order > 0 {
				return lsn < c.lsn, nil
			}
		}
	}
	return false, nil
}

// compareKeys orders two keys of table t as the snapshot's copy pages
// through it (pageQuery): the key columns in their index's order, each in
// the database's order. Integers compare as numbers and uuids as their
// canonical text (PostgreSQL orders uuids by their bytes, which is the
// order of that text), both here. Text parts that differ are compared by
// PostgreSQL in the column's collation (collate), as the index orders them:
// the copy keeps to the database's order, rather than ordering by
// collate "C", because only then is each batch an index range scan of a
// big table; the price is a query per change compared, which happens only
// for changes of the window between the slot's start and the last cut's
// LSN, and only for keys whose text parts differ.
func compareKeys(ctx context.Context, t table, a, b codecs.Key, collate *collator) (int, error) {
	av, err := t.keyValues(a)
	if err != nil {
		return 0, err
	}
	bv, err := t.keyValues(b)
	if err != nil {
		return 0, err
	}
	for _, k := range t.key.order {
		x, y := av[k], bv[k]
		if x == y {
			continue // equal bytes are equal in every collation
		}
		switch t.key.kinds[k] {
		case codecs.KeyInteger:
			xi, err1 := strconv.ParseInt(x, 10, 64)
			yi, err2 := strconv.ParseInt(y, 10, 64)
			if err := errors.Join(err1, err2); err != nil {
				return 0, fmt.Errorf("table %s key column %s: %w", t.qualified(), t.keyColumns[k], err)
			}
			return cmp.Compare(xi, yi), nil
		case codecs.KeyUUID:
			return strings.Compare(x, y), nil
		default:
			if collate == nil {
				return 0, fmt.Errorf("table %s key column %s: no connection to compare text in the column's collation", t.qualified(), t.keyColumns[k])
			}
			order, err := collate.compare(ctx, t.key.types[k], t.key.collations[k], x, y)
			if err != nil {
				return 0, fmt.Errorf("compare keys of %s in the collation of %s: %w", t.qualified(), t.keyColumns[k], err)
			}
			if order != 0 {
				return order, nil
			}
		}
	}
	return 0, nil
}

// collator compares text values in a column's collation on a connection of
// its own, opened at the first comparison.
type collator struct {
	url  string
	conn *pgx.Conn
}

func (c *collator) compare(ctx context.Context, typ, collation, x, y string) (int, error) {
	if c.conn == nil {
		conn, err := pgx.Connect(ctx, c.url)
		if err != nil {
			return 0, fmt.Errorf("connect to postgres: %w", err)
		}
		c.conn = conn
	}
	expr := func(p string) string {
		e := p + "::text::" + typ
		if collation != "" {
			e += " collate " + collation
		}
		return e
	}
	var order int
	sql := fmt.Sprintf("select case when %[1]s < %[2]s then -1 when %[1]s > %[2]s then 1 else 0 end", expr("$1"), expr("$2"))
	if err := c.conn.QueryRow(ctx, sql, x, y).Scan(&order); err != nil {
		return 0, err
	}
	return order, nil
}

func (c *collator) close() {
	if c != nil && c.conn != nil {
		c.conn.Close(context.Background())
		c.conn = nil
	}
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

// entityTypes lists the captured entity types, in config order.
func (se *session) entityTypes() []string {
	out := make([]string, len(se.tables))
	for i, t := range se.tables {
		out[i] = t.entityType
	}
	return out
}
