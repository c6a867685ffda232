package e2e

import (
	"context"
	"fmt"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/jackc/pgx/v5"

	"github.com/changes-dev/changes/capture"
	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/internal/platform"
	"github.com/changes-dev/changes/topology"
)

// BenchmarkCapture measures the capture on the real stack (make bench-e2e):
//
//   - catch-up: changes committed while the capture was stopped, then drained;
//     changes/s is the capture's own throughput, PostgreSQL's WAL decoding
//     and Kafka's acks=all writes included.
//   - fixed-rate: 1000 single-row transactions per second for 5 s;
//     commit-to-history latency p50/p99/max, read from a consumer of the
//     history (the commit time travels in a header with microseconds).
//   - snapshot: rows/s of the initial snapshot of a 100000-row table, from
//     the capture's start to the last row read from the history.
//   - snapshot-workload: the same of the three tables of cmd/changes-bench's
//     workload, 34000 rows each (numeric, jsonb, 5 % TOASTed payloads).
//
// Each variant runs once whatever b.N is: the work is sized, not repeated.
func BenchmarkCapture(b *testing.B) {
	b.Run("catch-up", func(b *testing.B) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		f := newBenchFixture(b, ctx, "bench_catchup")
		stop := f.start(b, ctx)
		waitSlotActive(b, ctx, f.db, f.cfg.Postgres.Slot)
		// A streamed change in the history: the initial snapshot is done, so
		// the backlog below is streamed, not copied by a resumed snapshot
		// (which a stop during the snapshot made happen in some runs).
		execSQL(b, ctx, f.db, fmt.Sprintf("insert into %s select 0, md5('0'), 0, now()", f.table))
		readHistory(b, ctx, f.cfg, f.topo.History(), 1)
		if err := stop(); err != nil {
			b.Fatal(err)
		}
		const n = 100000
		// 1000 transactions of 100 rows: a realistic mix of sizes is a later
		// benchmark's job; this one measures the capture, not PostgreSQL.
		for i := 0; i < n; i += 100 {
			execSQL(b, ctx, f.db, fmt.Sprintf("insert into %s select g, md5(g::text), g * 1.5, now() from generate_series(%d, %d) g", f.table, i+1, i+100))
		}
		b.ResetTimer()
		start := time.Now()
		stop = f.start(b, ctx)
		readHistory(b, ctx, f.cfg, f.topo.History(), n+1)
		elapsed := time.Since(start)
		b.StopTimer()
		if err := stop(); err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(n)/elapsed.Seconds(), "changes/s")
		b.ReportMetric(0, "ns/op")
	})

	b.Run("fixed-rate", func(b *testing.B) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		f := newBenchFixture(b, ctx, "bench_rate")
		stop := f.start(b, ctx)
		defer stop()
		waitSlotActive(b, ctx, f.db, f.cfg.Postgres.Slot)
		const rate, seconds = 1000, 5
		latencies := make(chan time.Duration, rate*seconds)
		consumed := consumeHistory(b, ctx, f.cfg, f.topo.History(), rate*seconds, latencies)
		b.ResetTimer()
		tick := time.NewTicker(time.Second / rate)
		for i := 1; i <= rate*seconds; i++ {
			<-tick.C
			execSQL(b, ctx, f.db, fmt.Sprintf("insert into %s values (%d, 'x', 1, now())", f.table, i))
		}
		tick.Stop()
		<-consumed
		b.StopTimer()
		close(latencies)
		var d []time.Duration
		for l := range latencies {
			d = append(d, l)
		}
		slices.Sort(d)
		q := func(p float64) float64 {
			return float64(d[min(len(d)-1, int(p*float64(len(d))))].Microseconds()) / 1000
		}
		b.ReportMetric(q(.5), "p50-ms")
		b.ReportMetric(q(.99), "p99-ms")
		b.ReportMetric(float64(d[len(d)-1].Microseconds())/1000, "max-ms")
		b.ReportMetric(rate, "changes/s")
		b.ReportMetric(0, "ns/op")
	})

	b.Run("snapshot", func(b *testing.B) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		f := newBenchFixture(b, ctx, "bench_snap")
		const n = 100000
		execSQL(b, ctx, f.db, fmt.Sprintf("insert into %s select g, md5(g::text), g * 1.5, now() from generate_series(1, %d) g", f.table, n))
		benchSnapshot(b, ctx, f.cfg, f.topo, n)
	})

	// The tables of cmd/changes-bench's workload (workload.go): account by
	// a bigint, campaign by a uuid, creative by (tenant integer, name
	// text), with numeric, text, jsonb and a text payload that 5 % of the
	// rows fill with 8 KB PostgreSQL TOASTs, as the workload's updates do.
	b.Run("snapshot-workload", func(b *testing.B) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		const perTable = 34000
		cfg, topo := newWorkloadTablesFixture(b, ctx, "bench_snapw", perTable)
		benchSnapshot(b, ctx, cfg, topo, 3*perTable)
	})
}

// benchSnapshot starts a capture on a new slot and reports rows/s of its
// initial snapshot of n rows: from the capture's start (slot, topics and
// producers included) to the moment a reader of the history has the n-th
// row. It also reports the CPU the test process spent per row (the
// capture and that reader: a figure the machine's other load moves less
// than the wall time).
func benchSnapshot(b *testing.B, ctx context.Context, cfg *topology.Config, topo *topology.Topology, n int) {
	c, err := capture.New(topo, capture.WithLogger(testLogger(b)))
	if err != nil {
		b.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	b.ResetTimer()
	cpu0 := processCPU(b)
	start := time.Now()
	go func() { done <- c.Run(runCtx) }()
	last := waitHistory(b, ctx, cfg, topo.History(), n)
	elapsed := last.Sub(start)
	cpu := processCPU(b) - cpu0
	b.StopTimer()
	stop()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(n)/elapsed.Seconds(), "rows/s")
	b.ReportMetric(float64(cpu.Microseconds())/float64(n), "cpu-us/row")
	b.ReportMetric(0, "ns/op")
}

// waitHistory reads the history until it holds n records and returns when
// the n-th arrived; a record more within a second fails b.
func waitHistory(b testing.TB, ctx context.Context, cfg *topology.Config, topic string, n int) time.Time {
	consumer, err := sarama.NewConsumer(cfg.Kafka.Brokers, saramaConfig(b, cfg.Kafka))
	if err != nil {
		b.Fatal(err)
	}
	defer consumer.Close()
	pc, err := consumer.ConsumePartition(topic, 0, sarama.OffsetOldest)
	if err != nil {
		b.Fatal(err)
	}
	defer pc.Close()
	var last time.Time
	for got := 0; got < n; got++ {
		select {
		case <-pc.Messages():
			last = time.Now()
		case err := <-pc.Errors():
			b.Fatal(err)
		case <-ctx.Done():
			b.Fatalf("history has %d records, want %d", got, n)
		}
	}
	select {
	case m := <-pc.Messages():
		b.Fatalf("history has a record more than the %d rows, at offset %d", n, m.Offset)
	case <-time.After(time.Second):
	}
	return last
}

// processCPU is the user and system CPU time this process has used.
func processCPU(b testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// newWorkloadTablesFixture creates the three tables of cmd/changes-bench's
// workload, each with perTable rows, and a config that captures them.
func newWorkloadTablesFixture(b testing.TB, ctx context.Context, prefix string, perTable int) (*topology.Config, *topology.Topology) {
	e := stack(b)
	name := uniqueName(prefix)
	keys := []struct {
		typ, columns, primaryKey, values string
		keyColumns                       []string
	}{
		{"account", "id bigint", "id", "g", nil},
		{"campaign", "id uuid", "id", "md5(g::text)::uuid", nil},
		{"creative", "tenant integer, name text", "tenant, name", "(g % 16)::integer, 'creative/' || g", []string{"tenant", "name"}},
	}
	var entities []topology.EntityConfig
	var tables []string
	for _, k := range keys {
		table := name + "_" + k.typ
		tables = append(tables, table)
		ec := topology.EntityConfig{Type: k.typ, Table: "public." + table, Partitions: 1, KeyColumnNames: k.keyColumns}
		if k.keyColumns == nil {
			ec.IDColumn = "id"
		}
		entities = append(entities, ec)
	}
	cfg := testConfig(b, e, name, entities)
	cleanupStack(b, e, cfg, tables...)
	db, err := pgx.Connect(ctx, e.pgURL)
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close(context.Background())
	for i, k := range keys {
		// The schema of cmd/changes-bench/workload.go.
		execSQL(b, ctx, db, fmt.Sprintf(`create table %s (%s, seq bigint not null, label text not null, budget numeric(14,2) not null,
			status text not null, attrs jsonb, payload text, updated_at timestamptz not null default now(), primary key (%s))`,
			tables[i], k.columns, k.primaryKey))
		// The workload's inserts: a label, a budget, a small document; 5 %
		// carry an 8 KB payload of random hex that PostgreSQL TOASTs.
		execSQL(b, ctx, db, fmt.Sprintf(`insert into %s (%s, seq, label, budget, status, attrs, payload)
			select %s, g, '%s ' || g, (g * 7919 %% 100000) + 0.25, (array['active','paused','archived'])[g %% 3 + 1],
				jsonb_build_object('k', g %% 1000, 'tags', jsonb_build_array('a', 'b')),
				case when g %% 20 = 0 then (select string_agg(md5(g::text || r::text), '') from generate_series(1, 256) r) end
			from generate_series(1, %d) g`, tables[i], k.primaryKey, k.values, k.typ, perTable))
	}
	execSQL(b, ctx, db, "analyze")
	topo := topology.New(cfg)
	if err := platform.EnsureTopics(topo); err != nil {
		b.Fatal(err)
	}
	return cfg, topo
}

func newBenchFixture(b testing.TB, ctx context.Context, prefix string) *captureFixture {
	return newCaptureFixture(b, ctx, prefix, "id bigint primary key, name text, score numeric, at timestamptz")
}

// consumeHistory reads n records from the history's current end and sends
// each one's commit-to-consumer latency; the returned channel closes after n.
func consumeHistory(b testing.TB, ctx context.Context, cfg *topology.Config, topic string, n int, out chan<- time.Duration) <-chan struct{} {
	consumer, err := sarama.NewConsumer(cfg.Kafka.Brokers, saramaConfig(b, cfg.Kafka))
	if err != nil {
		b.Fatal(err)
	}
	pc, err := consumer.ConsumePartition(topic, 0, sarama.OffsetNewest)
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer consumer.Close()
		defer pc.Close()
		for i := 0; i < n; i++ {
			select {
			case m := <-pc.Messages():
				received := time.Now()
				for _, h := range m.Headers {
					if string(h.Key) == codecs.HeaderCommitTime {
						if at, err := time.Parse(time.RFC3339Nano, string(h.Value)); err == nil {
							out <- received.Sub(at)
						}
					}
				}
			case <-ctx.Done():
				return
			}
		}
	}()
	return done
}
