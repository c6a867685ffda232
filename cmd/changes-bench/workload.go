package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	mrand "math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// benchTypes are the workload's entity types, one table each.
var benchTypes = []string{"account", "campaign", "creative"}

// schema creates the workload's tables. Every insert and update sets seq to
// a number unique in the run: a consumer that reads a change's seq finds its
// commit time in the workload's record.
const schema = `
create table if not exists %[1]s (
	id bigint primary key,
	seq bigint not null,
	name text not null,
	budget numeric(14,2) not null,
	status text not null,
	attrs jsonb,
	payload text,
	updated_at timestamptz not null default now()
)`

// commit is a change the workload committed: its seq and when COMMIT
// returned.
type commit struct {
	seq int64
	at  int64 // unix nanoseconds
}

// workload drives PostgreSQL with a mix of inserts, updates, deletes and
// multi-row transactions over benchTypes, from many connections.
type workload struct {
	pool    *pgxpool.Pool
	tables  map[string]string // type -> table
	seq     atomic.Int64
	nextID  [3]atomic.Int64
	changes atomic.Int64
	deletes atomic.Int64
	txns    atomic.Int64
	big     string // a TOASTed value: random hex, incompressible enough to leave the row

	mu      sync.Mutex
	commits []commit // recorded when record is set
	record  atomic.Bool
}

func newWorkload(ctx context.Context, url, prefix string, conns int) (*workload, error) {
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
	w := &workload{pool: pool, tables: map[string]string{}, big: hex.EncodeToString(b)}
	for _, typ := range benchTypes {
		w.tables[typ] = prefix + "_" + typ
		if _, err := pool.Exec(ctx, fmt.Sprintf(schema, w.tables[typ])); err != nil {
			return nil, fmt.Errorf("create %s: %w", w.tables[typ], err)
		}
	}
	return w, nil
}

func (w *workload) Close() { w.pool.Close() }

// seed inserts n rows per table, so updates and deletes have rows to hit.
func (w *workload) seed(ctx context.Context, n int64) error {
	for i, typ := range benchTypes {
		_, err := w.pool.Exec(ctx, fmt.Sprintf(`insert into %s (id, seq, name, budget, status, attrs)
			select g, 0, 'seed '||g, 1000, 'active', '{"seed": true}' from generate_series(1, $1::bigint) g on conflict do nothing`, w.tables[typ]), n)
		if err != nil {
			return err
		}
		w.nextID[i].Store(n)
	}
	return nil
}

// run commits transactions until ctx is done or limit changes are committed
// (0: no limit), at rate changes per second (0: as fast as it can) from
// conns goroutines.
func (w *workload) run(ctx context.Context, rate float64, limit int64, conns int) error {
	var tokens chan struct{}
	if rate > 0 {
		// A token per transaction, paced so that committed changes follow
		// rate: the transactions due are the changes due over the average
		// changes per transaction seen so far.
		tokens = make(chan struct{}, conns)
		c0, t0 := w.changes.Load(), w.txns.Load()
		go func() {
			defer close(tokens)
			start := time.Now()
			sent := int64(0)
			t := time.NewTicker(time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
				}
				perTxn := 2.0
				if dt := w.txns.Load() - t0; dt > 100 {
					perTxn = float64(w.changes.Load()-c0) / float64(dt)
				}
				due := int64(time.Since(start).Seconds() * rate / perTxn)
				for ; sent < due; sent++ {
					select {
					case tokens <- struct{}{}:
					case <-ctx.Done():
						return
					}
				}
			}
		}()
	}
	errc := make(chan error, conns)
	for c := range conns {
		go func() {
			rnd := mrand.New(mrand.NewPCG(uint64(c), uint64(time.Now().UnixNano())))
			for ctx.Err() == nil && (limit == 0 || w.changes.Load() < limit) {
				if tokens != nil {
					if _, ok := <-tokens; !ok {
						break
					}
				}
				if err := w.txn(ctx, rnd); err != nil && ctx.Err() == nil {
					errc <- err
					return
				}
			}
			errc <- nil
		}()
	}
	var first error
	for range conns {
		if err := <-errc; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// txn commits one transaction: one change (70 %) or 2..8 (30 %); each an
// update (55 %), an insert (30 %) or a delete (15 %); 5 % of inserts and
// updates carry a 8 KB TOASTed payload.
func (w *workload) txn(ctx context.Context, rnd *mrand.Rand) error {
	n := 1
	if rnd.IntN(10) < 3 {
		n = 2 + rnd.IntN(7)
	}
	tx, err := w.pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.Background())
	var seqs []int64
	changed, deleted := int64(0), int64(0)
	for range n {
		ti := rnd.IntN(len(benchTypes))
		table := w.tables[benchTypes[ti]]
		seq := w.seq.Add(1)
		payload := any(nil)
		if rnd.IntN(20) == 0 {
			payload = w.big
		}
		var tag interface{ RowsAffected() int64 }
		switch k := rnd.IntN(100); {
		case k < 55:
			id := 1 + rnd.Int64N(max(w.nextID[ti].Load(), 1))
			t, err := tx.Exec(ctx, "update "+table+" set seq = $1, budget = budget + 1, status = $2, payload = coalesce($3, payload), updated_at = now() where id = $4",
				seq, []string{"active", "paused", "archived"}[rnd.IntN(3)], payload, id)
			if err != nil {
				return err
			}
			tag = t
		case k < 85:
			id := w.nextID[ti].Add(1)
			t, err := tx.Exec(ctx, "insert into "+table+" (id, seq, name, budget, status, attrs, payload) values ($1, $2, $3, $4, 'active', $5, $6)",
				id, seq, fmt.Sprintf("%s %d", benchTypes[ti], id), rnd.IntN(100000), fmt.Sprintf(`{"k": %d, "tags": ["a", "b"]}`, rnd.IntN(1000)), payload)
			if err != nil {
				return err
			}
			tag = t
		default:
			id := 1 + rnd.Int64N(max(w.nextID[ti].Load(), 1))
			t, err := tx.Exec(ctx, "delete from "+table+" where id = $1", id)
			if err != nil {
				return err
			}
			tag = t
			deleted += t.RowsAffected()
			seq = 0 // a delete carries no seq: counted, not timed
		}
		if tag.RowsAffected() > 0 {
			changed += tag.RowsAffected()
			if seq != 0 {
				seqs = append(seqs, seq)
			}
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return err
	}
	at := time.Now().UnixNano()
	w.changes.Add(changed)
	w.deletes.Add(deleted)
	w.txns.Add(1)
	if w.record.Load() && len(seqs) > 0 {
		w.mu.Lock()
		for _, s := range seqs {
			w.commits = append(w.commits, commit{s, at})
		}
		w.mu.Unlock()
	}
	return nil
}

// takeCommits returns the recorded commits and forgets them.
func (w *workload) takeCommits() []commit {
	w.mu.Lock()
	defer w.mu.Unlock()
	c := w.commits
	w.commits = nil
	return c
}
