package e2e

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/views"
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
