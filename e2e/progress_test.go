package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/internal/platform"
	"github.com/changes-dev/changes/topology"
	"github.com/changes-dev/changes/views"
	"github.com/changes-dev/changes/views/history"
)

// insertLSN is where PostgreSQL's WAL ends for the connection's last
// commit: pg_current_wal_insert_lsn() after COMMIT, what views.AtLeast asks.
func insertLSN(t testing.TB, ctx context.Context, db *pgx.Conn) codecs.LSN {
	t.Helper()
	var s string
	if err := db.QueryRow(ctx, "select pg_current_wal_insert_lsn()::text").Scan(&s); err != nil {
		t.Fatal(err)
	}
	lsn, err := codecs.ParseLSN(s)
	if err != nil {
		t.Fatal(err)
	}
	return lsn
}

// TestReadYourWrites: a writer that reads its own write through a view with
// views.AtLeast sees it every time, while other writers keep the pipeline
// busy; and on a quiet database (only a table the platform does not
// capture is written) the view's watermark still reaches the server's WAL
// end, so a read-your-writes never waits for an unrelated write. The
// view's watermark never claims more than PostgreSQL has written.
func TestReadYourWrites(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	e := stack(t)
	_, topo, db, table := itemTable(t, ctx, e, "ryw", "id bigint primary key, v bigint not null", 4, nil)
	other := table + "_uncaptured"
	execSQL(t, ctx, db, "create table "+other+" (id bigint primary key, v bigint not null)")
	onCleanup(t, e, func(ctx context.Context, db *pgx.Conn) { db.Exec(ctx, "drop table if exists "+other) })
	run := startPlatform(t, ctx, topo)
	waitSlotActive(t, ctx, db, topo.Config().Postgres.Slot)
	v := run.views["item"]
	if err := v.WaitRecovered(ctx); err != nil {
		t.Fatal(err)
	}

	// Other writers: about 300 changes/s to other rows.
	loadCtx, stopLoad := context.WithCancel(ctx)
	var load sync.WaitGroup
	load.Go(func() {
		conn, err := pgx.Connect(loadCtx, e.pgURL)
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close(context.Background())
		for i := int64(0); loadCtx.Err() == nil; i++ {
			if _, err := conn.Exec(loadCtx, fmt.Sprintf("insert into %s values (%d, 0) on conflict (id) do update set v = %s.v + 1", table, 1000+i%500, table)); err != nil && loadCtx.Err() == nil {
				t.Error(err)
				return
			}
			time.Sleep(3 * time.Millisecond)
		}
	})

	const writes = 300
	waits := make([]time.Duration, 0, writes)
	for i := int64(1); i <= writes; i++ {
		id := i % 20
		execSQL(t, ctx, db, fmt.Sprintf("insert into %s values (%d, %d) on conflict (id) do update set v = excluded.v", table, id, i))
		lsn := insertLSN(t, ctx, db)
		start := time.Now()
		rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
		st, err := v.Get(rctx, id, views.AtLeast(lsn))
		rcancel()
		if err != nil {
			t.Fatalf("write %d: Get(%d) at least %s: %v (applied through %s)", i, id, lsn, err, v.AppliedThrough().LSN)
		}
		waits = append(waits, time.Since(start))
		if st == nil || string(st.Row["v"]) != fmt.Sprint(i) {
			t.Fatalf("write %d: Get(%d) at least %s = %+v: not the write (applied through %s)", i, id, lsn, st, v.AppliedThrough().LSN)
		}
	}
	stopLoad()
	load.Wait()
	slices.Sort(waits)
	t.Logf("read-your-writes under load: %d reads, wait p50 %s p99 %s max %s (watermark interval %s)", writes,
		waits[len(waits)/2], waits[len(waits)*99/100], waits[len(waits)-1], topo.Config().Postgres.WatermarkInterval)

	// Quiet: only an uncaptured table changes. The watermark comes from
	// keepalives.
	for i := range 3 {
		execSQL(t, ctx, db, fmt.Sprintf("insert into %s values (%d, 0)", other, i))
		lsn := insertLSN(t, ctx, db)
		start := time.Now()
		wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
		err := v.WaitApplied(wctx, lsn)
		wcancel()
		if err != nil {
			t.Fatalf("quiet database, uncaptured write %d: %v", i, err)
		}
		t.Logf("quiet database: watermark past an uncaptured write after %s", time.Since(start).Round(time.Millisecond))
	}
	var current string
	if err := db.QueryRow(ctx, "select pg_current_wal_lsn()::text").Scan(&current); err != nil {
		t.Fatal(err)
	}
	server, _ := codecs.ParseLSN(current)
	if w := v.AppliedThrough(); w.LSN > server {
		t.Errorf("the view claims to have applied through %s, PostgreSQL has written up to %s", w.LSN, server)
	}
	for p, w := range v.PartitionsAppliedThrough() {
		if w.IsZero() {
			t.Errorf("partition %d has no watermark", p)
		}
	}
}

// TestConsistentCuts: money moves between two entity types in transactions
// that each change a wallet and an escrow row, so the sum over both types
// stays constant. Every read through a views.Group sees that sum, while
// writers keep committing; reads of the same views without a Group need
// not (they are counted, not asserted: they may happen to see it). A past
// cut, rebuilt from the history at a cut's LSN (history.OffsetAtLSN, then
// TypeAt of each type), holds what the Group read there, row by row.
func TestConsistentCuts(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	e := stack(t)
	name := uniqueName("cut")
	wallets, escrows := name+"_wallet", name+"_escrow"
	cfg := testConfig(t, e, name, []topology.EntityConfig{
		{Type: "wallet", Table: "public." + wallets, IDColumn: "id", Partitions: 4},
		{Type: "escrow", Table: "public." + escrows, IDColumn: "id", Partitions: 3},
	})
	topo := topology.New(cfg)
	cleanupStack(t, e, cfg, wallets, escrows)
	db, err := pgx.Connect(ctx, e.pgURL)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(context.Background())
	const nWallets, nEscrows, each = 20, 10, 1000
	execSQL(t, ctx, db, fmt.Sprintf("create table %s (id bigint primary key, balance bigint not null)", wallets))
	execSQL(t, ctx, db, fmt.Sprintf("create table %s (id bigint primary key, amount bigint not null)", escrows))
	execSQL(t, ctx, db, fmt.Sprintf("insert into %s select g, %d from generate_series(1, %d) g", wallets, each, nWallets))
	execSQL(t, ctx, db, fmt.Sprintf("insert into %s select g, 0 from generate_series(1, %d) g", escrows, nEscrows))
	if err := platform.EnsureTopics(topo); err != nil {
		t.Fatal(err)
	}
	run := startPlatform(t, ctx, topo)
	waitSlotActive(t, ctx, db, cfg.Postgres.Slot)
	waitViewsEqual(t, ctx, db, topo, run.views)
	w, es := run.views["wallet"], run.views["escrow"]
	const total = nWallets * each

	// Writers: each transaction moves an amount between a wallet and an
	// escrow row, sometimes through a new escrow row or by deleting one.
	writeCtx, stopWriters := context.WithCancel(ctx)
	var writers sync.WaitGroup
	var txns atomic.Int64
	for n := range 2 {
		writers.Go(func() {
			conn, err := pgx.Connect(writeCtx, e.pgURL)
			if err != nil {
				t.Error(err)
				return
			}
			defer conn.Close(context.Background())
			rnd := rand.New(rand.NewPCG(uint64(n), 42))
			next := int64(1000 * (n + 1))
			for writeCtx.Err() == nil {
				wallet, amount := 1+rnd.Int64N(nWallets), 1+rnd.Int64N(20)
				err := pgx.BeginFunc(writeCtx, conn, func(tx pgx.Tx) error {
					var stmts []string
					switch k := rnd.IntN(10); {
					case k < 7: // wallet -> escrow, or back (a balance may go negative: the sum is what counts)
						escrow := 1 + rnd.Int64N(nEscrows)
						if k%2 == 1 {
							amount = -amount
						}
						stmts = []string{
							fmt.Sprintf("update %s set balance = balance - %d where id = %d", wallets, amount, wallet),
							fmt.Sprintf("update %s set amount = amount + %d where id = %d", escrows, amount, escrow),
						}
					case k < 9: // a new escrow row
						next++
						stmts = []string{
							fmt.Sprintf("update %s set balance = balance - %d where id = %d", wallets, amount, wallet),
							fmt.Sprintf("insert into %s values (%d, %d)", escrows, next, amount),
						}
					default: // an escrow row closed, its amount back to a wallet
						stmts = []string{
							fmt.Sprintf("with gone as (delete from %s where id = (select max(id) from %s where id > %d) returning amount) "+
								"update %s set balance = balance + coalesce((select amount from gone), 0) where id = %d", escrows, escrows, nEscrows, wallets, wallet),
						}
					}
					for _, s := range stmts {
						if _, err := tx.Exec(writeCtx, s); err != nil {
							return err
						}
					}
					return nil
				})
				if err != nil && writeCtx.Err() == nil {
					t.Error(err)
					return
				}
				txns.Add(1)
			}
		})
	}

	sum := func(ctx context.Context, v *views.View, col string) int64 {
		var s int64
		for st, err := range v.All(ctx) {
			if err != nil {
				t.Fatal(err)
			}
			n, err := strconv.ParseInt(string(st.Row[col]), 10, 64)
			if err != nil {
				t.Fatalf("%s %s: %v", v.EntityType(), col, err)
			}
			s += n
		}
		return s
	}
	rows := func(ctx context.Context, v *views.View) map[string]string {
		out := map[string]string{}
		for st, err := range v.All(ctx) {
			if err != nil {
				t.Fatal(err)
			}
			out[v.EntityType()+"/"+st.EntityID.String()] = string(mustJSON(t, st.Row))
		}
		return out
	}
	type kept struct {
		cut  views.Cut
		rows map[string]string
	}
	var keep []kept
	g := views.NewGroup(w, es)
	var reads, torn, cutsSeen int
	var last codecs.LSN
	waits := []time.Duration{}
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		start := time.Now()
		err := g.Read(ctx, func(cut views.Cut) error {
			waits = append(waits, time.Since(start))
			if cut.LSN != last {
				cutsSeen++
			}
			if cut.LSN < last { // the same again if nothing changed in between
				t.Errorf("cut %s after cut %s", cut.LSN, last)
			}
			last = cut.LSN
			if got := sum(ctx, w, "balance") + sum(ctx, es, "amount"); got != total {
				t.Errorf("read %d at cut %s: wallets and escrows sum to %d, want %d", reads, cut.LSN, got, total)
			}
			if reads%25 == 5 {
				all := rows(ctx, w)
				maps.Copy(all, rows(ctx, es))
				keep = append(keep, kept{cut, all})
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		reads++
		// The same sums without a Group.
		if sum(ctx, w, "balance")+sum(ctx, es, "amount") != total {
			torn++
		}
	}
	stopWriters()
	writers.Wait()
	slices.Sort(waits)
	t.Logf("%d transactions; %d reads through a Group at %d cuts, each whole (wait for the cut p50 %s, max %s); %d of %d reads without one saw a torn sum",
		txns.Load(), reads, cutsSeen, waits[len(waits)/2], waits[len(waits)-1], torn, reads)
	if reads < 20 || cutsSeen < 20 {
		t.Errorf("only %d reads at %d cuts in 15 s: the views hardly moved", reads, cutsSeen)
	}
	waitViewsEqual(t, ctx, db, topo, run.views)

	h, err := history.Open(topo, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	for _, k := range keep {
		end, err := h.OffsetAtLSN(ctx, k.cut.LSN)
		if err != nil {
			t.Fatal(err)
		}
		past := map[string]string{}
		for _, typ := range []string{"wallet", "escrow"} {
			states, err := h.TypeAt(ctx, typ, end, nil)
			if err != nil {
				t.Fatal(err)
			}
			for _, st := range states {
				past[typ+"/"+st.EntityID.String()] = string(mustJSON(t, st.Row))
			}
		}
		if !maps.Equal(past, k.rows) {
			t.Errorf("the history at cut %s (offset %d) holds %d rows, the Group read %d, not the same", k.cut.LSN, end, len(past), len(k.rows))
		}
	}
	t.Logf("%d cuts rebuilt from the history, each equal to the Group's read", len(keep))
}

func mustJSON(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
