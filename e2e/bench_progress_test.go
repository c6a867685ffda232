package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/changes-dev/changes/capture"
	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/internal/platform"
	"github.com/changes-dev/changes/topology"
	"github.com/changes-dev/changes/views"
)

// BenchmarkReadYourWrites measures what read-your-writes and consistent
// cuts cost while a workload updates two tables at 1,000 changes/s in all
// (single-row transactions): the platform and the views run in this
// process, as a service embeds them. For each watermark interval:
//   - ryw: a writer commits an update, asks pg_current_wal_insert_lsn() on
//     its connection, and reads the row with views.AtLeast; the time from
//     COMMIT to the read's answer (p50/p99), every read checked to hold the
//     write;
//   - view: the plain commit-to-view latency of the same changes (the
//     update hook), the floor the watermark adds to;
//   - cut: the wait of views.Group.Read over both views (p50/p99);
//   - watermarks/s the capture wrote, and the records/s they became.
func BenchmarkReadYourWrites(b *testing.B) {
	for _, interval := range []time.Duration{100 * time.Millisecond, 20 * time.Millisecond} {
		b.Run("interval="+interval.String(), func(b *testing.B) { benchReadYourWrites(b, interval) })
	}
}

func benchReadYourWrites(b *testing.B, interval time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	e := stack(b)
	name := uniqueName("bench_ryw")
	one, two := name+"_one", name+"_two"
	cfg := testConfig(b, e, name, []topology.EntityConfig{
		{Type: "one", Table: "public." + one, IDColumn: "id", Partitions: 8},
		{Type: "two", Table: "public." + two, IDColumn: "id", Partitions: 8},
	})
	cfg.Postgres.WatermarkInterval = interval
	topo := topology.New(cfg)
	cleanupStack(b, e, cfg, one, two)
	pool, err := pgxpool.New(ctx, e.pgURL)
	if err != nil {
		b.Fatal(err)
	}
	defer pool.Close()
	const rows, rate, measure = 10_000, 1000, 20 * time.Second
	for _, t := range []string{one, two} {
		for _, sql := range []string{
			fmt.Sprintf("create table %s (id bigint primary key, n bigint not null)", t),
			fmt.Sprintf("insert into %s select g, 0 from generate_series(1, %d) g", t, rows),
		} {
			if _, err := pool.Exec(ctx, sql); err != nil {
				b.Fatalf("%s: %v", sql, err)
			}
		}
	}
	if err := platform.EnsureTopics(topo); err != nil {
		b.Fatal(err)
	}
	var mu sync.Mutex
	var toView []time.Duration
	measuring := false
	hook := views.WithUpdateHook(func(u views.Update) {
		if u.Recovering || u.State == nil {
			return
		}
		mu.Lock()
		if measuring {
			toView = append(toView, time.Since(u.State.CommitTime))
		}
		mu.Unlock()
	})
	runCtx, stopRun := context.WithCancel(ctx)
	done := make(chan error, 1)
	reg := prometheus.NewRegistry()
	go func() {
		done <- platform.Run(runCtx, topo, platform.All, testLogger(b), []capture.Option{capture.WithRegisterer(reg)}, nil)
	}()
	vs := map[string]*views.View{}
	var viewsDone sync.WaitGroup
	for _, typ := range []string{"one", "two"} {
		v, err := views.New(topo, typ, views.WithLogger(testLogger(b)), views.WithStorageDir(b.TempDir()), hook)
		if err != nil {
			b.Fatal(err)
		}
		vs[typ] = v
		viewsDone.Go(func() {
			if err := v.Run(runCtx); err != nil {
				b.Errorf("view %s: %v", typ, err)
			}
		})
	}
	defer func() {
		stopRun()
		if err := <-done; err != nil {
			b.Errorf("platform: %v", err)
		}
		viewsDone.Wait()
	}()
	for _, v := range vs {
		if err := v.WaitRecovered(ctx); err != nil {
			b.Fatal(err)
		}
	}

	// The workload: rate single-row updates a second over both tables,
	// rows 1..rows/2 (the readers write the upper half).
	work, stopWork := context.WithCancel(ctx)
	var writer sync.WaitGroup
	writer.Go(func() {
		tick := time.NewTicker(time.Second / rate)
		defer tick.Stop()
		for i := 0; work.Err() == nil; i++ {
			<-tick.C
			t := []string{one, two}[i%2]
			go pool.Exec(work, fmt.Sprintf("update %s set n = n + 1 where id = %d", t, 1+i%(rows/2)))
		}
	})
	defer func() { stopWork(); writer.Wait() }()
	time.Sleep(3 * time.Second) // settle
	wmBefore := metricValue(b, reg, "changes_capture_watermarks_total", nil)
	mu.Lock()
	measuring = true
	mu.Unlock()
	start := time.Now()

	// Read-your-writes, one writer, back to back.
	var ryw []time.Duration
	conn, err := pool.Acquire(ctx)
	if err != nil {
		b.Fatal(err)
	}
	rnd := rand.New(rand.NewPCG(1, 2))
	for i := int64(1); time.Since(start) < measure/2; i++ {
		id := rows/2 + 1 + rnd.Int64N(rows/2)
		if _, err := conn.Exec(ctx, fmt.Sprintf("update %s set n = %d where id = %d", one, -i, id)); err != nil {
			b.Fatal(err)
		}
		committed := time.Now()
		var text string
		if err := conn.QueryRow(ctx, "select pg_current_wal_insert_lsn()::text").Scan(&text); err != nil {
			b.Fatal(err)
		}
		lsn, err := codecs.ParseLSN(text)
		if err != nil {
			b.Fatal(err)
		}
		rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
		st, err := vs["one"].Get(rctx, id, views.AtLeast(lsn))
		rcancel()
		if err != nil {
			b.Fatal(err)
		}
		ryw = append(ryw, time.Since(committed))
		if st == nil || string(st.Row["n"]) != fmt.Sprint(-i) {
			b.Fatalf("read %d of %d at least %s: %+v, not the write", i, id, lsn, st)
		}
	}
	conn.Release()

	// Consistent cuts over both views, back to back.
	var cuts []time.Duration
	g := views.NewGroup(vs["one"], vs["two"])
	for time.Since(start) < measure {
		began := time.Now()
		if err := g.Read(ctx, func(views.Cut) error { return nil }); err != nil {
			b.Fatal(err)
		}
		cuts = append(cuts, time.Since(began))
	}
	took := time.Since(start)
	mu.Lock()
	measuring = false
	view := slices.Clone(toView)
	mu.Unlock()
	wms := (metricValue(b, reg, "changes_capture_watermarks_total", nil) - wmBefore) / took.Seconds()

	ms := func(d []time.Duration, p float64) float64 {
		slices.Sort(d)
		if len(d) == 0 {
			return 0
		}
		return float64(d[min(len(d)-1, int(p*float64(len(d))))].Microseconds()) / 1000
	}
	b.ReportMetric(ms(ryw, 0.5), "ryw_p50_ms")
	b.ReportMetric(ms(ryw, 0.99), "ryw_p99_ms")
	b.ReportMetric(ms(view, 0.5), "view_p50_ms")
	b.ReportMetric(ms(view, 0.99), "view_p99_ms")
	b.ReportMetric(ms(cuts, 0.5), "cut_p50_ms")
	b.ReportMetric(ms(cuts, 0.99), "cut_p99_ms")
	b.ReportMetric(wms, "watermarks/s")
	b.ReportMetric(wms*16, "watermark_records/s") // one per partition: 8 + 8
	b.Logf("interval %s: %d read-your-writes, %d cuts, %d changes seen by the views", interval, len(ryw), len(cuts), len(view))
}
