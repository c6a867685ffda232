package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	mrand "math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/changes-dev/changes/internal/workload"
)

// benchTypes are the workload's entity types, one table each.
var benchTypes = []string{"account", "campaign", "creative"}

// benchKey is how a bench table is keyed: its key columns in the table
// definition, the config's key_columns, and the condition that selects the
// row of the workload's n-th entity ($1 in match, $n in values).
type benchKey struct {
	columns    string // "id bigint" or "tenant integer, name text"
	primaryKey string // "id" or "tenant, name"
	match      string // where clause for entity $1 (a bigint)
	values     string // the key columns' values for entity $1
	keyColumns string // the config's key_columns, "" for id_column id
}

// benchKeys key account by an integer, campaign by a uuid derived from the
// entity's number, creative by a composite (tenant, name) whose name holds
// a slash: the three kinds of keys a bench run carries.
var benchKeys = map[string]benchKey{
	"account":  {"id bigint", "id", "id = $1", "$1", ""},
	"campaign": {"id uuid", "id", "id = md5($1::bigint::text)::uuid", "md5($1::bigint::text)::uuid", ""},
	"creative": {"tenant integer, name text", "tenant, name", "tenant = ($1::bigint % 16)::integer and name = 'creative/' || $1::bigint", "($1::bigint % 16)::integer, 'creative/' || $1::bigint", "[tenant, name]"},
}

// schema creates the workload's tables, keyed by the type's benchKey (%[2]s
// its columns, %[3]s its primary key). Every insert and update sets seq to
// a number unique in the run: a consumer that reads a change's seq finds its
// commit time in the workload's record.
const schema = `
create table if not exists %[1]s (
	%[2]s,
	seq bigint not null,
	label text not null,
	budget numeric(14,2) not null,
	status text not null,
	attrs jsonb,
	payload text,
	updated_at timestamptz not null default now(),
	primary key (%[3]s)
)`

// tableSQL is the schema of table keyed as k.
func tableSQL(table string, k benchKey) string {
	return fmt.Sprintf(schema, table, k.columns, k.primaryKey)
}

// commit is a change the workload committed: its seq and when COMMIT
// returned.
type commit struct {
	seq int64
	at  int64 // unix nanoseconds
}

// benchWorkload drives PostgreSQL with a mix of inserts, updates, deletes and
// multi-row transactions over benchTypes, from many connections.
type benchWorkload struct {
	pool    *pgxpool.Pool
	tables  map[string]string // type -> table
	seq     atomic.Int64
	nextID  [3]atomic.Int64
	changes atomic.Int64 // of every run so far, like deletes and txns
	deletes atomic.Int64
	txns    atomic.Int64
	big     string // a TOASTed value: random hex, incompressible enough to leave the row

	mu      sync.Mutex
	commits []commit // recorded when record is set
	record  atomic.Bool
}

func newWorkload(ctx context.Context, url, prefix string, conns int) (*benchWorkload, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, err
	}
	cfg.MaxConns = int32(conns)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	b := make([]byte, 4096)
	rand.Read(b)
	w := &benchWorkload{pool: pool, tables: map[string]string{}, big: hex.EncodeToString(b)}
	for _, typ := range benchTypes {
		w.tables[typ] = prefix + "_" + typ
		if _, err := pool.Exec(ctx, tableSQL(w.tables[typ], benchKeys[typ])); err != nil {
			return nil, fmt.Errorf("create %s: %w", w.tables[typ], err)
		}
	}
	return w, nil
}

func (w *benchWorkload) Close() { w.pool.Close() }

// seed inserts n rows per table, so updates and deletes have rows to hit.
func (w *benchWorkload) seed(ctx context.Context, n int64) error {
	for i, typ := range benchTypes {
		k := benchKeys[typ]
		_, err := w.pool.Exec(ctx, fmt.Sprintf(`insert into %s (%s, seq, label, budget, status, attrs)
			select %s, 0, 'seed '||g, 1000, 'active', '{"seed": true}' from generate_series(1, $1::bigint) g on conflict do nothing`,
			w.tables[typ], k.primaryKey, strings.ReplaceAll(k.values, "$1", "g")), n)
		if err != nil {
			return err
		}
		w.nextID[i].Store(n)
	}
	return nil
}

// benchTxn is what a transaction leaves for the commit hook: the seqs it
// set and the rows it deleted.
type benchTxn struct {
	seqs    []int64
	deleted int64
}

// run commits transactions until ctx is done or limit changes are committed
// (0: no limit), at rate changes per second (0: as fast as it can) from
// conns connections; the first error stops it. The pacing catches up on a
// stall, so the rate over the run is the one asked.
func (w *benchWorkload) run(ctx context.Context, rate float64, limit int64, conns int) error {
	run, err := workload.Start(ctx, workload.Config[benchTxn]{
		Pool: w.pool, Workers: conns, ChangeRate: rate, CatchUp: true, Changes: limit,
		Txn: w.txn, Commit: w.committed,
	})
	if err != nil {
		return err
	}
	return run.Wait()
}

// txn is a workload.Txn: one change (70 %) or 2..8 (30 %); each an update
// (55 %), an insert (30 %) or a delete (15 %); 5 % of inserts and updates
// carry a 8 KB TOASTed payload.
func (w *benchWorkload) txn(ctx context.Context, tx pgx.Tx, _ int, rnd *mrand.Rand) (int, benchTxn, error) {
	n := 1
	if rnd.IntN(10) < 3 {
		n = 2 + rnd.IntN(7)
	}
	var rec benchTxn
	changed := 0
	for range n {
		ti := rnd.IntN(len(benchTypes))
		table, key := w.tables[benchTypes[ti]], benchKeys[benchTypes[ti]]
		seq := w.seq.Add(1)
		payload := any(nil)
		if rnd.IntN(20) == 0 {
			payload = w.big
		}
		var tag pgconn.CommandTag
		var err error
		switch k := rnd.IntN(100); {
		case k < 55:
			id := 1 + rnd.Int64N(max(w.nextID[ti].Load(), 1))
			tag, err = tx.Exec(ctx, "update "+table+" set seq = $2, budget = budget + 1, status = $3, payload = coalesce($4, payload), updated_at = now() where "+key.match,
				id, seq, []string{"active", "paused", "archived"}[rnd.IntN(3)], payload)
		case k < 85:
			id := w.nextID[ti].Add(1)
			tag, err = tx.Exec(ctx, "insert into "+table+" ("+key.primaryKey+", seq, label, budget, status, attrs, payload) values ("+key.values+", $2, $3, $4, 'active', $5, $6)",
				id, seq, fmt.Sprintf("%s %d", benchTypes[ti], id), rnd.IntN(100000), fmt.Sprintf(`{"k": %d, "tags": ["a", "b"]}`, rnd.IntN(1000)), payload)
		default:
			id := 1 + rnd.Int64N(max(w.nextID[ti].Load(), 1))
			tag, err = tx.Exec(ctx, "delete from "+table+" where "+key.match, id)
			rec.deleted += tag.RowsAffected()
			seq = 0 // a delete carries no seq: counted, not timed
		}
		if err != nil {
			return 0, rec, err
		}
		if tag.RowsAffected() > 0 {
			changed += int(tag.RowsAffected())
			if seq != 0 {
				rec.seqs = append(rec.seqs, seq)
			}
		}
	}
	return changed, rec, nil
}

// committed counts a committed transaction and, while record is set,
// records its seqs with the time its COMMIT returned.
func (w *benchWorkload) committed(c workload.Commit[benchTxn]) {
	w.changes.Add(int64(c.Changes))
	w.deletes.Add(c.Record.deleted)
	w.txns.Add(1)
	if w.record.Load() && len(c.Record.seqs) > 0 {
		at := c.At.UnixNano()
		w.mu.Lock()
		for _, s := range c.Record.seqs {
			w.commits = append(w.commits, commit{s, at})
		}
		w.mu.Unlock()
	}
}

// takeCommits returns the recorded commits and forgets them.
func (w *benchWorkload) takeCommits() []commit {
	w.mu.Lock()
	defer w.mu.Unlock()
	c := w.commits
	w.commits = nil
	return c
}
