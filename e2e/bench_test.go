package e2e

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/changes-dev/changes/codecs"
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
//   - snapshot: rows/s of the initial snapshot of a 100000-row table.
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
		b.ResetTimer()
		start := time.Now()
		stop := f.start(b, ctx)
		readHistory(b, ctx, f.cfg, f.topo.History(), n)
		elapsed := time.Since(start)
		b.StopTimer()
		if err := stop(); err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(n)/elapsed.Seconds(), "rows/s")
		b.ReportMetric(0, "ns/op")
	})
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
