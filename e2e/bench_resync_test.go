package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/changes-dev/changes/capture"
	"github.com/changes-dev/changes/internal/platform"
	"github.com/changes-dev/changes/topology"
)

// BenchmarkResync measures a resync (changes capture --resync) of a
// 1,000,000-row table after its slot was dropped and, meanwhile, 1 % of
// its rows were updated and 0.1 % deleted: the processors run in this
// process throughout; the capture's initial snapshot is applied first.
// Reported: the rows the resync compared per second, from the capture's
// start until no copy is pending (the wait for the processors to apply the
// history and the delete search included), and what it wrote: rows that
// differ, and deletes.
func BenchmarkResync(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	e := stack(b)
	name := uniqueName("bench_resync")
	big := name + "_big"
	cfg := testConfig(b, e, name, []topology.EntityConfig{{Type: "big", Table: "public." + big, IDColumn: "id", Partitions: 4}})
	cleanupStack(b, e, cfg, big)
	pool, err := pgxpool.New(ctx, e.pgURL)
	if err != nil {
		b.Fatal(err)
	}
	defer pool.Close()
	const rows = 1_000_000
	for _, sql := range []string{
		fmt.Sprintf("create table %s (id bigint primary key, name text, score numeric, at timestamptz)", big),
		fmt.Sprintf("insert into %s select g, 'row ' || g, g * 1.5, now() from generate_series(1, %d) g", big, rows),
	} {
		if _, err := pool.Exec(ctx, sql); err != nil {
			b.Fatalf("%s: %v", sql, err)
		}
	}
	topo := topology.New(cfg)
	if err := platform.EnsureTopics(topo); err != nil {
		b.Fatal(err)
	}
	log := testLogger(b)
	procCtx, stopProcs := context.WithCancel(ctx)
	procDone := make(chan error, 1)
	go func() { procDone <- platform.Run(procCtx, topo, platform.Parts{Processors: true}, log, nil, nil) }()
	defer func() { stopProcs(); <-procDone }()
	f := &captureFixture{e: e, cfg: cfg, topo: topo}
	stop := f.start(b, ctx)
	b.Logf("initial snapshot of %d rows; waiting for the processors to apply it", rows)
	waitGroupAtEnd(b, ctx, cfg, topo.RouterGroup(), topo.History())
	waitGroupAtEnd(b, ctx, cfg, topo.SnapshotGroup("big"), topo.Events("big"))
	if err := stop(); err != nil {
		b.Fatal(err)
	}
	for _, sql := range []string{
		fmt.Sprintf("select pg_drop_replication_slot('%s')", cfg.Postgres.Slot),
		fmt.Sprintf("update %s set score = score + 1 where id %% 100 = 7", big),
		fmt.Sprintf("delete from %s where id %% 1000 = 3", big),
	} {
		if _, err := pool.Exec(ctx, sql); err != nil {
			b.Fatalf("%s: %v", sql, err)
		}
	}

	b.ResetTimer()
	reg := prometheus.NewRegistry()
	started := time.Now()
	stop = f.start(b, ctx, capture.WithResync(), capture.WithRegisterer(reg))
	defer stop()
	for time.Since(started) < 2*time.Second {
		time.Sleep(200 * time.Millisecond)
	}
	for {
		pending, err := capture.PendingSnapshots(ctx, topo)
		if err != nil {
			b.Fatal(err)
		}
		if len(pending) == 0 {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	took := time.Since(started)
	b.StopTimer()
	same := counterOf(b, reg, "changes_capture_resync_same_rows_total", "big")
	written := counterOf(b, reg, "changes_capture_incremental_snapshot_rows_total", "big")
	deletes := counterOf(b, reg, "changes_capture_resync_deletes_total", "big")
	b.ReportMetric(float64(rows)/took.Seconds(), "rows/s")
	b.ReportMetric(took.Seconds(), "resync-s")
	b.ReportMetric(same, "same-rows")
	b.ReportMetric(written, "written-rows")
	b.ReportMetric(deletes, "deletes")
	b.ReportMetric(0, "ns/op")
}
