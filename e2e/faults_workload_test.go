package e2e

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/changes-dev/changes/codecs"
	wl "github.com/changes-dev/changes/internal/workload" // this file's type is workload
)

// The fault suite's tables, in a database of the suite's own stack. Every
// table has a version column that every update increments; doc has TOASTed
// bodies (some 20 KB, incompressible) that most updates leave unchanged and
// REPLICA IDENTITY FULL; big is filled before the platform starts, so its
// rows come through the initial snapshot. txlog is not captured: it tells
// whether a transaction whose COMMIT lost its connection committed.
const faultTables = `
create table acct (id bigint primary key, version integer not null, balance numeric(20,4) not null, tags jsonb not null, status text not null);
create table doc (id bigint primary key, version integer not null, title text not null, body text);
alter table doc replica identity full;
create table big (id bigint primary key, version integer not null, payload text not null);
create table beat (id bigint primary key, version integer not null);
create table txlog (seq bigint primary key);
`

// faultTypes are the captured tables as entity types, with their partitions.
var faultTypes = []struct {
	typ        string
	partitions int
}{{"acct", 4}, {"doc", 2}, {"big", 4}, {"beat", 1}}

// workload commits multi-row transactions over acct, doc and big from a few
// connections, and a heartbeat (beat 1, updated every 100 ms) that the
// recovery probes follow: two internal/workload engines with the mixes
// below. It records every committed change in the ledger. Each worker owns
// the ids congruent to its number, so an entity's changes come from one
// connection and their commit order is the order recorded. It rides out
// PostgreSQL restarts: the engines reconnect, and resolve a COMMIT whose
// answer was lost by looking for the transaction's txlog row.
type workload struct {
	url     string
	workers int
	rate    float64 // transactions per second per worker

	runs []*wl.Workload[faultTxn] // the workers' and the heartbeat's, once started
	seq  atomic.Int64

	mu      sync.Mutex
	ledger  ledger
	changes int
	txns    int
	inDoubt int // COMMITs whose answer was lost
	errs    []string
	beatVer int64
	beatAt  time.Time
}

func newWorkload(url string, workers int, rate float64) *workload {
	return &workload{url: url, workers: workers, rate: rate,
		ledger: ledger{base: map[entityKey]bool{}, steps: map[entityKey][]step{}}}
}

// populate fills big with n rows at version 1 and makes the heartbeat's
// row, before the slot exists.
func (w *workload) populate(ctx context.Context, db *pgx.Conn, n int) error {
	if _, err := db.Exec(ctx, "insert into big select g, 1, md5(g::text) from generate_series(1, $1::bigint) g", n); err != nil {
		return fmt.Errorf("populate big: %w", err)
	}
	if _, err := db.Exec(ctx, "insert into beat values (1, 1)"); err != nil {
		return fmt.Errorf("populate beat: %w", err)
	}
	w.ledger.base[entityKey{"beat", 1}] = true
	for id := int64(1); id <= int64(n); id++ {
		w.ledger.base[entityKey{"big", id}] = true
	}
	return nil
}

// start runs the workers and the heartbeat until finish.
func (w *workload) start(ctx context.Context, bigRows int) {
	ws := make([]*worker, w.workers)
	for i := range ws {
		ws[i] = &worker{w: w, n: i, live: map[string][]int64{}}
		for id := int64(1); id <= int64(bigRows); id++ {
			if id%int64(w.workers) == int64(i) {
				ws[i].live["big"] = append(ws[i].live["big"], id)
			}
		}
		ws[i].next = int64(bigRows) // new ids of every table start after big's
	}
	hb := &worker{w: w, beat: true}
	for _, cfg := range []wl.Config[faultTxn]{{
		Workers: w.workers, Rate: w.rate * float64(w.workers), Seed: 7,
		Txn: func(ctx context.Context, tx pgx.Tx, i int, rnd *mrand.Rand) (int, faultTxn, error) {
			return ws[i].txn(ctx, tx, rnd)
		},
		Commit: func(c wl.Commit[faultTxn]) { ws[c.Worker].committed(c.Record) },
	}, {
		Workers: 1, Rate: 10, // every 100 ms
		Txn: func(ctx context.Context, tx pgx.Tx, _ int, rnd *mrand.Rand) (int, faultTxn, error) {
			return hb.txn(ctx, tx, rnd)
		},
		Commit: func(c wl.Commit[faultTxn]) { hb.committed(c.Record) },
	}} {
		cfg.URL, cfg.Resolve, cfg.OnError = w.url, w.resolve, w.onError
		run, err := wl.Start(ctx, cfg)
		if err != nil {
			w.fail(err)
			continue
		}
		w.runs = append(w.runs, run)
	}
}

// finish stops every worker between transactions and waits for them.
func (w *workload) finish() {
	for _, r := range w.runs {
		if err := r.Stop(); err != nil {
			w.fail(err)
		}
	}
}

// pause waits for the transactions in flight and holds the next ones until resume.
func (w *workload) pause() {
	for _, r := range w.runs {
		r.Pause()
	}
}

func (w *workload) resume() {
	for _, r := range w.runs {
		r.Resume()
	}
}

// onError lets the workers go on after any error: a lost connection is
// PostgreSQL going away (they reconnect); anything else is a bug of the
// workload, reported at the end.
func (w *workload) onError(err error) error {
	if !errors.Is(err, wl.ErrConnLost) {
		w.fail(err)
	}
	return nil
}

// resolve tells whether a transaction whose COMMIT lost its answer
// committed: whatever the error, it may have (a crash between the commit
// record and the answer), and txlog tells. It asks on a new connection
// until PostgreSQL answers.
func (w *workload) resolve(ctx context.Context, t faultTxn) (bool, error) {
	w.mu.Lock()
	w.inDoubt++
	w.mu.Unlock()
	ask := func() (bool, error) {
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		conn, err := pgx.Connect(cctx, w.url)
		if err != nil {
			return false, err
		}
		defer conn.Close(context.Background())
		var found bool
		err = conn.QueryRow(cctx, "select exists (select 1 from txlog where seq = $1)", t.seq).Scan(&found)
		return found, err
	}
	for ctx.Err() == nil {
		if found, err := ask(); err == nil {
			return found, nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	return false, fmt.Errorf("transaction %d: commit outcome unknown", t.seq)
}

// record adds a committed transaction's changes; lo is the WAL insert
// position read just before its commit.
func (w *workload) record(steps []stepRec, lo string) {
	lsn, err := codecs.ParseLSN(lo)
	if err != nil {
		w.fail(fmt.Errorf("commit lsn bound %q: %w", lo, err))
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	now := time.Now()
	for _, s := range steps {
		k := entityKey{s.typ, s.id}
		w.ledger.steps[k] = append(w.ledger.steps[k], step{op: s.op, version: s.version, at: now, lo: lsn})
		if s.typ == "beat" {
			w.beatVer, w.beatAt = s.version, now
		}
	}
	w.changes += len(steps)
	w.txns++
}

func (w *workload) fail(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.errs) < 20 {
		w.errs = append(w.errs, time.Now().Format("15:04:05.000")+" "+err.Error())
	}
}

// beatSince returns the heartbeat's version once one committed at or after t.
func (w *workload) beatSince(ctx context.Context, t time.Time) (int64, bool) {
	var v int64
	ok := waitFor(ctx, func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		v = w.beatVer
		return !w.beatAt.Before(t)
	})
	return v, ok
}

func (w *workload) counts() (txns, changes int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.txns, w.changes
}

// stepRec is a change a transaction made, before it is known to be committed.
type stepRec struct {
	typ     string
	id      int64
	op      codecs.Op
	version int64
}

// faultTxn is a transaction of a worker: its changes, the WAL insert
// position read just before its commit, and the worker's ids after it,
// which become the worker's once it committed.
type faultTxn struct {
	seq  int64
	made []stepRec
	lo   string
	live map[string][]int64
	next int64
}

// worker is the state of one worker of the engine (or of the heartbeat);
// only that worker's goroutine touches it.
type worker struct {
	w    *workload
	n    int
	beat bool
	rnd  *mrand.Rand
	live map[string][]int64
	next int64
}

// txn runs one transaction's statements, and the txlog row that tells
// later whether it committed.
func (k *worker) txn(ctx context.Context, tx pgx.Tx, rnd *mrand.Rand) (int, faultTxn, error) {
	k.rnd = rnd
	t := faultTxn{seq: k.w.seq.Add(1), live: map[string][]int64{}, next: k.next}
	for typ, ids := range k.live {
		t.live[typ] = append([]int64(nil), ids...)
	}
	n := 1
	if !k.beat {
		n += k.rnd.IntN(5)
	}
	for range n {
		sql, args, typ, op := k.statement(t.live, &t.next)
		rows, err := tx.Query(ctx, sql, args...)
		if err != nil {
			return 0, t, fmt.Errorf("%s: %w", strings.Fields(sql)[0], err)
		}
		for rows.Next() {
			var id, version int64
			if err := rows.Scan(&id, &version); err != nil {
				rows.Close()
				return 0, t, err
			}
			t.made = append(t.made, stepRec{typ, id, op, version})
			switch op {
			case codecs.OpInsert:
				t.live[typ] = append(t.live[typ], id)
			case codecs.OpDelete:
				t.live[typ] = removeID(t.live[typ], id)
			}
		}
		if err := rows.Err(); err != nil {
			return 0, t, err
		}
	}
	if err := tx.QueryRow(ctx, "insert into txlog values ($1) returning pg_current_wal_insert_lsn()::text", t.seq).Scan(&t.lo); err != nil {
		return 0, t, err
	}
	return len(t.made), t, nil
}

// committed records a committed transaction and makes its ids the worker's.
func (k *worker) committed(t faultTxn) {
	k.w.record(t.made, t.lo)
	k.live, k.next = t.live, t.next
}

// statement picks the next statement of a transaction; each returns the
// id and version of every row it changed, in the order it changed them.
func (k *worker) statement(live map[string][]int64, next *int64) (sql string, args []any, typ string, op codecs.Op) {
	if k.beat {
		return "update beat set version = version + 1 where id = 1 returning id, version", nil, "beat", codecs.OpUpdate
	}
	newID := func() int64 {
		*next += int64(k.w.workers)
		return *next - *next%int64(k.w.workers) + int64(k.n) // congruent to the worker's number
	}
	pick := func(t string, n int) []int64 {
		ids := live[t]
		out := make([]int64, 0, n)
		for range n {
			out = append(out, ids[k.rnd.IntN(len(ids))])
		}
		return out
	}
	r := k.rnd.IntN(100)
	switch {
	case r < 15 || len(live["acct"]) < 5:
		ids := []int64{newID(), newID(), newID()}[:1+k.rnd.IntN(3)]
		return `insert into acct (id, version, balance, tags, status)
			select id, 1, 100.5, jsonb_build_object('n', 1, 'tags', jsonb_build_array('a', id)), 'open' from unnest($1::bigint[]) id
			returning id, version`, []any{ids}, "acct", codecs.OpInsert
	case r < 25 || len(live["doc"]) < 5:
		return "insert into doc values ($1, 1, $2, $3) returning id, version", []any{newID(), "title", k.body()}, "doc", codecs.OpInsert
	case r < 45:
		return `update acct set version = version + 1, balance = balance + 0.0125,
			tags = jsonb_set(tags, '{n}', to_jsonb(version + 1)), status = case when status = 'open' then 'held' else 'open' end
			where id = any($1) returning id, version`, []any{pick("acct", 1+k.rnd.IntN(3))}, "acct", codecs.OpUpdate
	case r < 60:
		if k.rnd.IntN(10) == 0 {
			return "update doc set version = version + 1, body = $2 where id = $1 returning id, version", []any{pick("doc", 1)[0], k.body()}, "doc", codecs.OpUpdate
		}
		// The body, TOASTed when large, is left unchanged: pgoutput does not send it.
		return "update doc set version = version + 1, title = 'title ' || (version + 1) where id = $1 returning id, version", []any{pick("doc", 1)[0]}, "doc", codecs.OpUpdate
	case r < 85 && len(live["big"]) > 0:
		return "update big set version = version + 1, payload = md5(random()::text) where id = any($1) returning id, version", []any{pick("big", 1+k.rnd.IntN(5))}, "big", codecs.OpUpdate
	case r < 90:
		return "delete from acct where id = $1 returning id, version", []any{pick("acct", 1)[0]}, "acct", codecs.OpDelete
	case r < 95:
		return "delete from doc where id = $1 returning id, version", []any{pick("doc", 1)[0]}, "doc", codecs.OpDelete
	case len(live["big"]) > 0:
		return "delete from big where id = $1 returning id, version", []any{pick("big", 1)[0]}, "big", codecs.OpDelete
	}
	return "update acct set version = version + 1 where id = any($1) returning id, version", []any{pick("acct", 1)}, "acct", codecs.OpUpdate
}

// body is a doc body: one in ten is 20 KB of random text (stored out of
// line, uncompressed), the rest short.
func (k *worker) body() string {
	if k.rnd.IntN(10) != 0 {
		return "short body"
	}
	b := make([]byte, 15000)
	rand.Read(b)
	return base64.StdEncoding.EncodeToString(b)
}

func removeID(ids []int64, id int64) []int64 {
	for i, x := range ids {
		if x == id {
			ids[i] = ids[len(ids)-1]
			return ids[:len(ids)-1]
		}
	}
	return ids
}

// burst commits n updates of big in transactions of 2000 rows while the
// workers are paused, to make a backlog the capture drains at full speed.
// Its changes are recorded like the workers'.
func (w *workload) burst(ctx context.Context, n int) error {
	w.pause()
	defer w.resume()
	conn, err := pgx.Connect(ctx, w.url)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	var maxID int64
	if err := conn.QueryRow(ctx, "select coalesce(max(id), 0) from big").Scan(&maxID); err != nil {
		return err
	}
	for from := int64(1); from <= maxID && n > 0; from += 2000 {
		var made []stepRec
		var lo string
		err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			rows, err := tx.Query(ctx, "update big set version = version + 1 where id >= $1 and id < $1 + 2000 returning id, version", from)
			if err != nil {
				return err
			}
			for rows.Next() {
				var id, version int64
				if err := rows.Scan(&id, &version); err != nil {
					return err
				}
				made = append(made, stepRec{"big", id, codecs.OpUpdate, version})
			}
			if err := rows.Err(); err != nil {
				return err
			}
			return tx.QueryRow(ctx, "select pg_current_wal_insert_lsn()::text").Scan(&lo)
		})
		if err != nil {
			return fmt.Errorf("burst: %w", err)
		}
		w.record(made, lo)
		n -= len(made)
	}
	return nil
}
