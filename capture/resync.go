package capture

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/IBM/sarama"
	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/internal/kread"
	"github.com/changes-dev/changes/topology"
	"github.com/changes-dev/changes/views"
)

// A resync recovers from a lost replication slot (dropped, or its WAL
// removed past max_slot_wal_keep_size, as after a failover to a replica
// without it) without a gap in the snapshot tables. The changes committed
// while no slot kept them are gone from the WAL; what the database holds
// now is not. So the capture creates a new slot, writes a marker to the
// history (codecs.OpResync: what the history misses), and copies every
// table by incremental snapshots while the new slot streams, each row
// compared with the entity's state in its snapshot table:
//
//   - a row equal to the state is not written: the tables have it;
//   - a row that differs, or that the tables do not have, is written as an
//     OpSnapshot event at its chunk's high watermark, as any incremental
//     snapshot writes it;
//   - then the entities the tables hold that the table no longer has are
//     deleted: their keys are looked up in the table, and those not found
//     are looked up again between a low and a high watermark, so a row
//     inserted meanwhile is never deleted; the others get an OpDelete at
//     the high watermark.
//
// The states compared are read from a view of the snapshot table (package
// views), in the storage directory, once the router and the type's
// snapshot processors have applied the whole history as it was when the
// session started: an entity the stream has not changed since then has
// that state in the tables; one it changed has a newer state, and its
// row, read after that change, is either equal to it or written again,
// which is redundant. A chunk is read first without watermarks, and again
// between them only when a row differs. A row left out of a chunk because
// the stream changed it with TOASTed columns left unchanged (filled from a
// state the gap may have made stale) is copied again (see copyChunk).

// resyncDeleteBatch is how many keys of a snapshot table the search for
// deleted entities looks up in the database at a time.
const resyncDeleteBatch = 10_000

// WithResync lets Run recover from a lost replication slot by a resync
// (changes capture --resync): when the slot is missing, or PostgreSQL
// removed WAL it needed (the slot is then dropped), while the history holds
// changes, Run creates a new slot, marks the history, and copies every
// table again, writing only what differs from the snapshot tables, and
// deletes for entities the database no longer has. Without it Run returns
// ErrSlotMissing or ErrSlotLost. It does nothing when the slot is fine,
// so it may stay set. The snapshot processors must run meanwhile: the
// resync compares with their tables.
func WithResync() Option { return func(c *Capture) { c.resync = true } }

// resyncMarker is a resync's marker not yet in the history: the session
// that creates the new slot writes it, or the next one if it failed first.
type resyncMarker struct {
	// After is the position of the history's last change before the resync.
	After codecs.Position `json:"after"`
}

// dropLostSlot drops a slot whose WAL is gone, for a resync.
func dropLostSlot(ctx context.Context, conn *pgx.Conn, slot string, log *slog.Logger) error {
	log.Warn("dropping the replication slot whose WAL PostgreSQL removed, for a resync", "slot", slot)
	if _, err := conn.Exec(ctx, "select pg_drop_replication_slot($1)", slot); err != nil {
		return fmt.Errorf("drop the lost replication slot %s: %w", slot, err)
	}
	return nil
}

// createForResync starts a resync: it records in the capture-state topic
// a copy of every declared type and the marker to write, then creates the
// slot (without a snapshot: the copies are incremental) and writes the
// marker. A crash between the two leaves the record: the next session
// writes the marker and copies. It returns the new state: nothing of the
// lost slot's (its cuts, its signals) applies to the new one.
//
// The server's WAL must be past the history's last change: after a
// failover to a replica that was behind, the new slot's changes would
// sort before what the history holds, and the snapshot processors would
// ignore them as old.
func (se *session) createForResync(ctx context.Context, written codecs.Position) (captureState, error) {
	cfg := se.topo.Config()
	if err := se.checkWALPast(ctx, written); err != nil {
		return captureState{}, err
	}
	state := captureState{Slot: cfg.Postgres.Slot, Snapshot: snapshotDone, Types: se.entityTypes(),
		Resync: &resyncMarker{After: written}}
	now := time.Now()
	for _, typ := range state.Types {
		state.Incremental = append(state.Incremental, incrementalSnapshot{
			ID: fmt.Sprintf("resync-%s-%d", typ, now.UnixNano()), Type: typ, Resync: true, Requested: now.UTC(),
		})
	}
	if err := writeState(se.client, se.topo.CaptureState(), state); err != nil {
		return state, err
	}
	res, err := pglogrepl.CreateReplicationSlot(ctx, se.repl, cfg.Postgres.Slot, "pgoutput",
		pglogrepl.CreateReplicationSlotOptions{Mode: pglogrepl.LogicalReplication, SnapshotAction: "NOEXPORT_SNAPSHOT"})
	if err != nil {
		return state, fmt.Errorf("create replication slot %s: %w", cfg.Postgres.Slot, err)
	}
	se.log.Warn("resync: created a new replication slot; every table is copied again, and only what differs from the snapshot tables is written",
		"slot", cfg.Postgres.Slot, "lsn", res.ConsistentPoint, "history_position", written.String(), "entity_types", state.Types)
	return state, se.writeResyncMarker(ctx, state)
}

// checkWALPast fails unless the server's WAL is past written, and past the
// history's last progress watermark: the views say they hold every
// transaction that committed before it, and a new slot's changes must not
// make that false.
func (se *session) checkWALPast(ctx context.Context, written codecs.Position) error {
	watermark, err := watermarkPastChanges(ctx, se.client, se.topo.History())
	if err != nil {
		return err
	}
	if watermark > written.CommitLSN+1 {
		written = codecs.Position{CommitLSN: watermark - 1}
	}
	conn, err := pgx.Connect(ctx, se.topo.Config().Postgres.URL)
	if err != nil {
		return fmt.Errorf("connect to postgres: %w", err)
	}
	defer conn.Close(context.Background())
	var text string
	if err := conn.QueryRow(ctx, "select pg_current_wal_insert_lsn()::text").Scan(&text); err != nil {
		return fmt.Errorf("read the server's WAL position: %w", err)
	}
	current, err := codecs.ParseLSN(text)
	if err != nil {
		return err
	}
	if current <= written.CommitLSN+1 { // the marker goes at the slot's start - 1
		return fmt.Errorf("%w: the server's WAL is at %s, not past the history's last change or watermark at %s (a failover to a replica that was behind?): "+
			"a new slot's changes would sort before what the history holds. Nothing was created. Start the resync again once the WAL is past %s "+
			"(it advances with every write; select pg_switch_wal() moves it to the next segment)",
			ErrSetup, current, written.CommitLSN, written.CommitLSN)
	}
	return nil
}

// writeResyncMarker writes the marker state records to the history, just
// before the new slot's first change, and then drops it from the record.
func (se *session) writeResyncMarker(ctx context.Context, state captureState) error {
	until, err := se.slotPosition(ctx)
	if err != nil {
		return err
	}
	last, err := lastEvent(ctx, se.client, se.topo.History())
	if err != nil {
		return err
	}
	at := codecs.Position{CommitLSN: until - 1}
	switch {
	case last != nil && last.Op == codecs.OpResync && last.Resync != nil && last.Resync.Slot == state.Slot && last.Resync.Until == until:
		se.log.Info("resync: the history holds the marker already", "position", last.Position.String())
	case last != nil && last.Position.Compare(at) >= 0:
		// Not expected: the stream starts once the marker is written.
		se.log.Error("resync: the history already holds changes of the new slot; its marker is not written", "history_position", last.Position.String())
	default:
		now := time.Now().UTC()
		ev := &codecs.Event{Op: codecs.OpResync, CommitLSN: at.CommitLSN, Position: at, CommitTime: now, CaptureTime: now,
			Resync: &codecs.Resync{Slot: state.Slot, After: state.Resync.After, Until: until, Types: state.Types}}
		if err := se.writeMarker(ev); err != nil {
			return err
		}
		se.log.Warn("resync: marked the history", "after", state.Resync.After.String(), "until", until.String(), "position", at.String())
	}
	state.Resync = nil
	return writeState(se.client, se.topo.CaptureState(), state)
}

// writeMarker writes ev alone in a transaction of the history.
func (se *session) writeMarker(ev *codecs.Event) error {
	value, err := codecs.EventCodec{}.Encode(ev)
	if err != nil {
		return err
	}
	if err := se.producer.BeginTxn(); err != nil {
		return fmt.Errorf("kafka: begin the resync marker's transaction: %w", err)
	}
	se.producer.Input() <- &sarama.ProducerMessage{
		Topic: se.topo.History(), Key: sarama.StringEncoder("resync/" + ev.Resync.Slot), Value: sarama.ByteEncoder(value),
		Headers:  []sarama.RecordHeader{{Key: []byte(codecs.HeaderOp), Value: []byte(codecs.OpResync)}},
		Metadata: &recordMeta{position: ev.Position},
	}
	if err := se.producer.CommitTxn(); err != nil {
		return fmt.Errorf("kafka: commit the resync marker: %w", err)
	}
	return nil
}

// tablesView is a view of a snapshot table that a resync compares rows
// with, in a directory of its own that close removes.
type tablesView struct {
	view *views.View
	dir  string
	stop context.CancelFunc
	done chan struct{} // closed when the view stops; err says why
	err  error
}

// resyncView returns the view of snap's snapshot table: the one opened for
// snap before (a copy failed and is retried), or a new one.
func (inc *incrementals) resyncView(ctx context.Context, snap incrementalSnapshot, log *slog.Logger) (*tablesView, error) {
	if inc.view != nil && inc.viewOf == snap.ID && !inc.view.stopped() {
		return inc.view, nil
	}
	inc.closeView()
	log.Info("resync: waiting until the snapshot table holds the history, to compare the table with it")
	tv, err := inc.openTablesView(ctx, snap.Type)
	if err != nil {
		return nil, err
	}
	inc.view, inc.viewOf = tv, snap.ID
	return tv, nil
}

// closeView closes the view resyncView opened, if any.
func (inc *incrementals) closeView() {
	if inc.view != nil {
		inc.view.close()
		inc.view, inc.viewOf = nil, ""
	}
}

// openTablesView waits until the processors have applied the history up
// to historyEnd to typ's snapshot table, then opens a view of it, in the
// storage directory (it holds a copy of the table), and waits until it has
// read the table.
func (inc *incrementals) openTablesView(ctx context.Context, typ string) (*tablesView, error) {
	if err := inc.waitApplied(ctx, typ); err != nil {
		return nil, err
	}
	// A directory a killed capture left is wiped.
	dir := filepath.Join(inc.topo.Config().Storage, "capture-resync", typ)
	if err := os.RemoveAll(dir); err != nil {
		return nil, fmt.Errorf("resync of %s: %w", typ, err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("resync of %s: %w", typ, err)
	}
	v, err := views.New(inc.topo, typ, views.WithStorageDir(dir), views.WithRegisterer(prometheus.NewRegistry()),
		views.WithLogger(inc.log.With("view", typ)))
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	vctx, stop := context.WithCancel(ctx)
	tv := &tablesView{view: v, dir: dir, stop: stop, done: make(chan struct{})}
	go func() {
		defer close(tv.done)
		tv.err = v.Run(vctx)
	}()
	// Waits until the view has read the table, or stops.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-tv.done:
			cancel()
		case <-wctx.Done():
		}
	}()
	if err := v.WaitRecovered(wctx); err != nil {
		tv.close()
		if ctx.Err() == nil {
			return nil, fmt.Errorf("resync of %s: the view of its snapshot table stopped before it had read it: %v", typ, tv.err)
		}
		return nil, err
	}
	return tv, nil
}

// stopped reports whether the view stopped.
func (tv *tablesView) stopped() bool {
	select {
	case <-tv.done:
		return true
	default:
		return false
	}
}

func (tv *tablesView) close() {
	tv.stop()
	<-tv.done
	os.RemoveAll(tv.dir)
}

// differing returns the rows whose state in the tables differs (or that
// the tables do not hold), and how many are the same.
func (tv *tablesView) differing(ctx context.Context, rows []chunkRow) ([]chunkRow, int, error) {
	out := rows[:0]
	same := 0
	for _, r := range rows {
		st, err := tv.view.GetKey(ctx, r.key)
		if err != nil {
			return nil, 0, err
		}
		if st != nil && sameRow(st.Row, r.row) {
			same++
			continue
		}
		out = append(out, r)
	}
	return out, same, nil
}

// sameRow reports whether row, a chunk row's JSON object, holds the
// columns of have, each with the same JSON text. The capture writes a
// column's value with one encoder, copied or streamed.
func sameRow(have codecs.Row, row []byte) bool {
	var got codecs.Row
	if err := json.Unmarshal(row, &got); err != nil || len(got) != len(have) {
		return false
	}
	for col, v := range got {
		if w, ok := have[col]; !ok || !bytes.Equal(v, w) {
			return false
		}
	}
	return true
}

// nextKeys returns up to n keys of the tables after after (from the first
// when nil), in the view's key order.
func (tv *tablesView) nextKeys(ctx context.Context, after *codecs.Key, n int) ([]codecs.Key, error) {
	seq := tv.view.All(ctx)
	if after != nil {
		seq = tv.view.After(ctx, *after)
	}
	var out []codecs.Key
	for st, err := range seq {
		if err != nil {
			return nil, err
		}
		out = append(out, st.EntityID)
		if len(out) == n {
			break
		}
	}
	return out, nil
}

// waitApplied waits until the router has applied the history up to
// historyEnd, then until typ's snapshot processors have applied what the
// router had emitted by then: the snapshot table then holds every change
// of the history as it was when the session started. It logs while it
// waits: the processors must be running.
func (inc *incrementals) waitApplied(ctx context.Context, typ string) error {
	kcfg := inc.topo.Config().Kafka
	cfg, err := topology.SaramaConfig(kcfg)
	if err != nil {
		return err
	}
	admin, err := sarama.NewClusterAdmin(kcfg.Brokers, cfg)
	if err != nil {
		return fmt.Errorf("resync: kafka admin: %w", topology.ExplainKafkaError(kcfg, err))
	}
	defer admin.Close()
	if err := inc.waitGroup(ctx, admin, inc.topo.RouterGroup(), inc.topo.History(), map[int32]int64{0: inc.historyEnd}); err != nil {
		return err
	}
	parts, err := inc.client.Partitions(inc.topo.Events(typ))
	if err != nil {
		return fmt.Errorf("resync: partitions of %s: %w", inc.topo.Events(typ), err)
	}
	ends := map[int32]int64{}
	for _, p := range parts {
		if ends[p], err = kread.End(inc.client, inc.topo.Events(typ), p); err != nil {
			return fmt.Errorf("resync: end of %s/%d: %w", inc.topo.Events(typ), p, err)
		}
	}
	return inc.waitGroup(ctx, admin, inc.topo.SnapshotGroup(typ), inc.topo.Events(typ), ends)
}

// waitGroup waits until group has committed, in every partition of topic
// in ends, past every record before the partition's end there.
func (inc *incrementals) waitGroup(ctx context.Context, admin sarama.ClusterAdmin, group, topic string, ends map[int32]int64) error {
	started, logged := time.Now(), time.Now()
	for {
		behind, err := groupBehind(ctx, inc.client, admin, group, topic, ends)
		switch {
		case err == nil && behind == 0:
			return nil
		case time.Since(logged) >= 10*time.Second:
			inc.log.Warn("resync: waiting for the processors to apply the history before comparing with their tables (are they running?)",
				"group", group, "topic", topic, "records_behind", behind, "waited_s", int(time.Since(started).Seconds()), "err", err)
			logged = time.Now()
		}
		select {
		case <-time.After(time.Second):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// groupBehind counts the records of topic before ends that group has not
// committed past.
func groupBehind(ctx context.Context, client sarama.Client, admin sarama.ClusterAdmin, group, topic string, ends map[int32]int64) (int64, error) {
	parts := make([]int32, 0, len(ends))
	for p := range ends {
		parts = append(parts, p)
	}
	offsets, err := admin.ListConsumerGroupOffsets(group, map[string][]int32{topic: parts})
	if err == nil && offsets.Err != sarama.ErrNoError {
		err = offsets.Err
	}
	if err != nil {
		return -1, fmt.Errorf("offsets of group %s: %w", group, err)
	}
	var behind int64
	for p, end := range ends {
		b := offsets.GetBlock(topic, p)
		if b == nil || b.Err != sarama.ErrNoError {
			return -1, fmt.Errorf("offsets of group %s in %s/%d: not known", group, topic, p)
		}
		next := b.Offset
		if next < 0 {
			if next, err = kread.Start(client, topic, p); err != nil {
				return -1, err
			}
		}
		if next >= end {
			continue
		}
		if end-next > 1000 {
			behind += end - next // far behind: transaction markers are noise
			continue
		}
		// Markers of transactions are never committed past: count records.
		err := kread.Range(ctx, client, topic, p, next, end, func(*kread.Record) (bool, error) { behind++; return true, nil })
		if err != nil {
			return -1, err
		}
	}
	return behind, nil
}

// existingKeys returns which of keys, of table t, the table holds, by
// their index in keys, read through q: one query of every key's columns
// as unnested arrays of their text, each cast to its column's type.
func existingKeys(ctx context.Context, q interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}, t table, keys []codecs.Key) (map[int]bool, error) {
	n := len(t.keyColumns)
	arrays := make([][]string, n)
	for _, k := range keys {
		values, err := t.keyValues(k)
		if err != nil {
			return nil, err
		}
		for i := range n {
			arrays[i] = append(arrays[i], values[i])
		}
	}
	keyList, match, args := keysMatch(t, arrays)
	sql := fmt.Sprintf("select k.i from %s where exists (select 1 from %s t where %s)", keyList, t.quoted(), match)
	rows, err := q.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("resync of %s: look up keys: %w", t.qualified(), err)
	}
	present := map[int]bool{}
	for rows.Next() {
		var i int64
		if err := rows.Scan(&i); err != nil {
			rows.Close()
			return nil, fmt.Errorf("resync of %s: look up keys: %w", t.qualified(), err)
		}
		present[int(i-1)] = true
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("resync of %s: look up keys: %w", t.qualified(), err)
	}
	return present, nil
}

// keysQuery is the query of the rows of t with the given keys, for
// selectRows.
func keysQuery(t table, keys []codecs.Key) (string, []any, error) {
	arrays := make([][]string, len(t.keyColumns))
	for _, k := range keys {
		values, err := t.keyValues(k)
		if err != nil {
			return "", nil, err
		}
		for i := range arrays {
			arrays[i] = append(arrays[i], values[i])
		}
	}
	keyList, match, args := keysMatch(t, arrays)
	return fmt.Sprintf("select t.* from %s t join %s on %s", t.quoted(), keyList, match), args, nil
}

// keysMatch returns the unnested key columns' text, arrays (one per key
// column), as a from item k(k0, k1, ..., i), with i the key's ordinal, and
// the condition that matches a row t of table t to one of them: each key
// column equal to its text cast to the column's type (so the index serves
// it), and its text exactly that (a key of a nondeterministic collation
// matches one row, not every one it compares equal to).
func keysMatch(t table, arrays [][]string) (from, match string, args []any) {
	n := len(t.keyColumns)
	params, names, conds := make([]string, n), make([]string, n), make([]string, 0, 2*n)
	args = make([]any, n)
	for i, col := range t.keyColumns {
		c := pgx.Identifier{col}.Sanitize()
		params[i] = fmt.Sprintf("$%d::text[]", i+1)
		names[i] = fmt.Sprintf("k%d", i)
		conds = append(conds, fmt.Sprintf("t.%s = k.k%d::%s", c, i, t.key.types[i]), fmt.Sprintf(`t.%s::text collate "C" = k.k%d`, c, i))
		args[i] = arrays[i]
	}
	from = fmt.Sprintf("unnest(%s) with ordinality as k(%s, i)", strings.Join(params, ", "), strings.Join(names, ", "))
	return from, strings.Join(conds, " and "), args
}

// keyRow is the row of k's key columns, as a delete's Before holds them.
func keyRow(t table, k codecs.Key) (codecs.Row, error) {
	values, err := t.keyValues(k)
	if err != nil {
		return nil, err
	}
	row := codecs.Row{}
	for i, col := range t.keyColumns {
		if i < len(t.key.kinds) && t.key.kinds[i] == codecs.KeyInteger {
			row[col] = json.RawMessage(values[i])
			continue
		}
		v, err := json.Marshal(values[i])
		if err != nil {
			return nil, err
		}
		row[col] = v
	}
	return row, nil
}

// writeResyncDelete writes a delete of k, an entity of rel's table that a
// resync found the table no longer holds, in the current transaction.
func (s *stream) writeResyncDelete(ctx context.Context, rel *relation, k codecs.Key) error {
	ev := s.event(rel, codecs.OpDelete)
	ev.EntityID = k
	var err error
	if ev.Before, err = keyRow(rel.table, k); err != nil {
		return fmt.Errorf("resync delete of %s id %s: %w", rel.table.qualified(), k, err)
	}
	value, err := codecs.EventCodec{}.Encode(ev)
	if err != nil {
		return fmt.Errorf("resync delete of %s id %s: %w", rel.table.qualified(), k, err)
	}
	msg, err := newHistoryRecord(s.topic, rel.table, ev, value, s.cfg.Kafka.MaxRecordBytes)
	if err != nil {
		return err
	}
	return s.send(ctx, rel, ev, msg)
}
