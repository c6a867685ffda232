package e2e

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/changes-dev/changes/capture"
	"github.com/changes-dev/changes/internal/platform"
	"github.com/changes-dev/changes/topology"
	"github.com/changes-dev/changes/views"
)

// BenchmarkIncrementalSnapshot measures an incremental snapshot of a
// 1,000,000-row table (bigint key, text, numeric, timestamptz) while a
// workload updates another table at 1,000 changes/s, one row per
// transaction: the platform (capture and processors) and a view of the
// live type run in this process. First without the big table declared
// (before); then with it declared, which starts its incremental snapshot
// at the capture's start (during). Reported: the copy's rows/s, from the
// platform's start until no snapshot is pending (every chunk in the
// history); the live type's commit-to-view latency p50/p99 before and
// during the copy, and the time after the copy until the view is back
// under 100 ms (the processors catching up with the copied rows, which
// share the single history partition with the live changes).
func BenchmarkIncrementalSnapshot(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	e := stack(b)
	name := uniqueName("bench_incr")
	big, live := name+"_big", name+"_live"
	liveType := topology.EntityConfig{Type: "live", Table: "public." + live, IDColumn: "id", Partitions: 4}
	cfg := testConfig(b, e, name, []topology.EntityConfig{liveType})
	cleanupStack(b, e, cfg, big, live)
	pool, err := pgxpool.New(ctx, e.pgURL)
	if err != nil {
		b.Fatal(err)
	}
	defer pool.Close()
	const rows, liveRows, rate = 1_000_000, 10_000, 1000
	for _, sql := range []string{
		fmt.Sprintf("create table %s (id bigint primary key, name text, score numeric, at timestamptz)", big),
		fmt.Sprintf("insert into %s select g, 'row ' || g, g * 1.5, now() from generate_series(1, %d) g", big, rows),
		fmt.Sprintf("create table %s (id bigint primary key, n int not null)", live),
		fmt.Sprintf("insert into %s select g, 0 from generate_series(1, %d) g", live, liveRows),
	} {
		if _, err := pool.Exec(ctx, sql); err != nil {
			b.Fatalf("%s: %v", sql, err)
		}
	}

	// The live workload: rate single-row updates a second, throughout.
	work, stopWork := context.WithCancel(ctx)
	var writer sync.WaitGroup
	writer.Go(func() {
		tick := time.NewTicker(time.Second / rate)
		defer tick.Stop()
		for i := 0; work.Err() == nil; i++ {
			<-tick.C
			go pool.Exec(work, fmt.Sprintf("update %s set n = n + 1 where id = %d", live, 1+i%liveRows))
		}
	})
	defer func() { stopWork(); writer.Wait() }()

	var mu sync.Mutex
	var latencies []time.Duration
	hook := views.WithUpdateHook(func(u views.Update) {
		if u.Recovering || u.State == nil {
			return
		}
		mu.Lock()
		latencies = append(latencies, time.Since(u.State.CommitTime))
		mu.Unlock()
	})
	take := func() []time.Duration {
		mu.Lock()
		defer mu.Unlock()
		d := latencies
		latencies = nil
		slices.Sort(d)
		return d
	}
	q := func(d []time.Duration, p float64) float64 {
		if len(d) == 0 {
			return 0
		}
		return float64(d[min(len(d)-1, int(p*float64(len(d))))].Microseconds()) / 1000
	}
	run := func(cfg *topology.Config) (stop func()) {
		topo := topology.New(cfg)
		if err := platform.EnsureTopics(topo); err != nil {
			b.Fatal(err)
		}
		runCtx, stopRun := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- platform.Run(runCtx, topo, platform.All, testLogger(b), nil, nil) }()
		view, err := views.New(topo, "live", views.WithLogger(testLogger(b)), views.WithStorageDir(b.TempDir()), hook)
		if err != nil {
			b.Fatal(err)
		}
		viewDone := make(chan error, 1)
		go func() { viewDone <- view.Run(runCtx) }()
		return func() {
			stopRun()
			if err := <-done; err != nil {
				b.Errorf("platform: %v", err)
			}
			if err := <-viewDone; err != nil {
				b.Errorf("view: %v", err)
			}
		}
	}

	// Before: the big table is not declared.
	stop := run(cfg)
	time.Sleep(10 * time.Second) // the slot, the groups, the view: settled
	take()
	time.Sleep(15 * time.Second)
	before := take()
	stop()

	// During: declared; its incremental snapshot starts with the capture.
	cfg2 := *cfg
	cfg2.Entities = []topology.EntityConfig{liveType, {Type: "big", Table: "public." + big, IDColumn: "id", Partitions: 4}}
	topo2 := topology.New(&cfg2)
	b.ResetTimer()
	started := time.Now()
	stop = run(&cfg2)
	defer stop()
	take()
	for {
		time.Sleep(200 * time.Millisecond)
		if time.Since(started) < 2*time.Second {
			continue
		}
		pending, err := capture.PendingSnapshots(ctx, topo2)
		if err != nil {
			b.Fatal(err)
		}
		if len(pending) == 0 {
			break
		}
	}
	copied := time.Since(started)
	during := take()
	// After: until the live view's changes arrive within 100 ms again.
	var settled time.Duration
	for settled == 0 {
		time.Sleep(time.Second)
		d := take()
		if len(d) > 0 && q(d, .99) < 100 {
			settled = time.Since(started) - copied
		}
		if ctx.Err() != nil {
			b.Fatal("the live view never got back under 100 ms")
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(rows)/copied.Seconds(), "rows/s")
	b.ReportMetric(q(before, .5), "before-p50-ms")
	b.ReportMetric(q(before, .99), "before-p99-ms")
	b.ReportMetric(q(during, .5), "during-p50-ms")
	b.ReportMetric(q(during, .99), "during-p99-ms")
	b.ReportMetric(settled.Seconds(), "settle-s")
	b.ReportMetric(0, "ns/op")
}
