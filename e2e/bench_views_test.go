package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/internal/platform"
	"github.com/changes-dev/changes/topology"
	"github.com/changes-dev/changes/views"
	"github.com/changes-dev/changes/views/history"
)

// BenchmarkView measures what a service sees of a large view: a snapshot
// table of CHANGES_BENCH_VIEW_ENTITIES entities (default 1,000,000; 8
// partitions, ~330-byte states) written straight to its topic, then
//
//   - bootstrap: `changes serve` started on an empty storage directory, until
//     /readyz answers 200: records/s, and the process's peak and final
//     resident memory (VmHWM, VmRSS);
//   - restart: the same process started again on its directory: seconds to
//     ready and resident memory;
//   - get: View.Get of random ids in process, on that directory: latency
//     percentiles and rate, one goroutine and two.
func BenchmarkView(b *testing.B) {
	e := stack(b)
	n := 1_000_000
	if s := os.Getenv("CHANGES_BENCH_VIEW_ENTITIES"); s != "" {
		var err error
		if n, err = strconv.Atoi(s); err != nil || n < 1 {
			b.Fatalf("CHANGES_BENCH_VIEW_ENTITIES=%q: want a positive integer", s)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	name := uniqueName("benchview")
	cfg := testConfig(b, e, name, []topology.EntityConfig{{Type: "v", Table: "public." + name, IDColumn: "id", Partitions: 8}})
	topo := topology.New(cfg)
	cleanupStack(b, e, cfg)
	if err := platform.EnsureTopics(topo); err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	writeTable(b, cfg, topo, n)
	b.Logf("wrote %d states to %s in %.1fs", n, topo.Snapshot("v"), time.Since(start).Seconds())
	configPath := writeConfig(b, cfg)

	var readySeconds float64
	b.Run("bootstrap", func(b *testing.B) {
		for range b.N {
			os.RemoveAll(cfg.Storage)
			st := runServe(b, ctx, configPath)
			readySeconds = st.ready.Seconds()
			b.ReportMetric(float64(n)/st.ready.Seconds(), "records/s")
			b.ReportMetric(st.ready.Seconds(), "s-to-ready")
			b.ReportMetric(st.peakMiB, "peak-RSS-MiB")
			b.ReportMetric(st.rssMiB, "RSS-MiB")
			b.ReportMetric(0, "ns/op")
		}
	})
	b.Run("restart", func(b *testing.B) {
		for range b.N {
			st := runServe(b, ctx, configPath) // reopens the bootstrap's directory
			b.ReportMetric(st.ready.Seconds(), "s-to-ready")
			if readySeconds > 0 {
				b.ReportMetric(readySeconds/st.ready.Seconds(), "x-faster")
			}
			b.ReportMetric(st.peakMiB, "peak-RSS-MiB")
			b.ReportMetric(0, "ns/op")
		}
	})
	b.Run("get", func(b *testing.B) {
		v, err := views.New(topo, "v", views.WithStorageDir(cfg.Storage+"/serve"), views.WithLogger(testLogger(b)))
		if err != nil {
			b.Fatal(err)
		}
		vctx, stop := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- v.Run(vctx) }()
		defer func() { stop(); <-done }()
		if err := v.WaitRecovered(ctx); err != nil {
			b.Fatal(err)
		}
		if got, err := v.Len(); err != nil || got != n {
			b.Fatalf("view holds %d entities (%v), want %d", got, err, n)
		}
		for range b.N {
			for _, workers := range []int{1, 2} {
				const gets = 200_000
				lat := make([][]time.Duration, workers)
				start := time.Now()
				errc := make(chan error, workers)
				for w := range workers {
					go func() {
						rnd := rand.New(rand.NewPCG(uint64(w), 1))
						l := make([]time.Duration, 0, gets/workers)
						for range gets / workers {
							id := 1 + rnd.Int64N(int64(n))
							t0 := time.Now()
							st, err := v.Get(ctx, id)
							l = append(l, time.Since(t0))
							if err != nil || st == nil || st.EntityID != codecs.IntKey(id) {
								errc <- fmt.Errorf("Get(%d) = %v, %v", id, st, err)
								return
							}
						}
						lat[w] = l
						errc <- nil
					}()
				}
				for range workers {
					if err := <-errc; err != nil {
						b.Fatal(err)
					}
				}
				elapsed := time.Since(start)
				all := slices.Concat(lat...)
				slices.Sort(all)
				pct := func(p float64) float64 { return float64(all[int(p*float64(len(all)-1))].Nanoseconds()) / 1000 }
				suffix := fmt.Sprintf("-%dg", workers)
				b.ReportMetric(float64(gets)/elapsed.Seconds(), "gets/s"+suffix)
				b.ReportMetric(pct(0.5), "p50-µs"+suffix)
				b.ReportMetric(pct(0.99), "p99-µs"+suffix)
				b.ReportMetric(pct(0.999), "p99.9-µs"+suffix)
			}
			b.ReportMetric(0, "ns/op")
		}
	})
}

type serveStats struct {
	ready           time.Duration
	peakMiB, rssMiB float64
}

// runServe starts `changes serve`, waits for /readyz, reads its memory and
// stops it with SIGTERM.
func runServe(b *testing.B, ctx context.Context, configPath string) serveStats {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cmd, _, stderr := command(ctx, b, map[string]string{"CHANGES_SERVE_LISTEN": addr}, "serve", "--config", configPath)
	start := time.Now()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		if err := cmd.Wait(); err != nil {
			b.Errorf("changes serve: %v\n%s", err, stderr)
		}
	}()
	lastLog := time.Now()
	for {
		resp, err := http.Get("http://" + addr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Since(lastLog) > 5*time.Second {
			b.Logf("waiting for the view: %.0fs, %.0f MiB resident", time.Since(start).Seconds(), procMiB(b, cmd.Process.Pid, "VmRSS"))
			lastLog = time.Now()
		}
		if ctx.Err() != nil || cmd.ProcessState != nil {
			b.Fatalf("changes serve never became ready\n%s", stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}
	st := serveStats{ready: time.Since(start)}
	st.peakMiB = procMiB(b, cmd.Process.Pid, "VmHWM")
	st.rssMiB = procMiB(b, cmd.Process.Pid, "VmRSS")
	b.Logf("ready after %.2fs; peak %.0f MiB, now %.0f MiB resident", st.ready.Seconds(), st.peakMiB, st.rssMiB)
	return st
}

// procMiB reads a memory field of /proc/pid/status in MiB.
func procMiB(b *testing.B, pid int, field string) float64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for line := range strings.Lines(string(raw)) {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
			return kb / 1024
		}
	}
	b.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

// writeTable writes n entity states straight to the snapshot table of type
// "v", as the snapshot processor would, with progress.
func writeTable(b *testing.B, cfg *topology.Config, topo *topology.Topology, n int) {
	b.Helper()
	scfg := saramaConfig(b, cfg.Kafka)
	scfg.Producer.Flush.Frequency = 5 * time.Millisecond // bulk load: batch
	scfg.Producer.Flush.Bytes = 1 << 20
	producer, err := sarama.NewAsyncProducer(cfg.Kafka.Brokers, scfg)
	if err != nil {
		b.Fatal(err)
	}
	go func() {
		for range producer.Successes() {
		}
	}()
	now := time.Now().UTC()
	last := time.Now()
	for id := int64(1); id <= int64(n); id++ {
		row := codecs.Row{
			"id":         json.RawMessage(strconv.FormatInt(id, 10)),
			"name":       json.RawMessage(`"entity number ` + strconv.FormatInt(id, 10) + `"`),
			"budget":     json.RawMessage(`"12345.67"`),
			"status":     json.RawMessage(`"active"`),
			"owner_id":   json.RawMessage(strconv.FormatInt(id%997, 10)),
			"updated_at": json.RawMessage(`"` + now.Format(time.RFC3339Nano) + `"`),
		}
		st := &codecs.State{EntityType: "v", EntityID: codecs.IntKey(id), Row: row,
			Position: codecs.Position{CommitLSN: codecs.LSN(1000 + id)}, CommitTime: now, AppliedTime: now}
		value, err := codecs.StateCodec{}.Encode(st)
		if err != nil {
			b.Fatal(err)
		}
		producer.Input() <- &sarama.ProducerMessage{Topic: topo.Snapshot("v"), Key: sarama.StringEncoder(strconv.FormatInt(id, 10)), Value: sarama.ByteEncoder(value)}
		if time.Since(last) > 5*time.Second {
			b.Logf("writing the table: %d of %d", id, n)
			last = time.Now()
		}
	}
	if err := producer.Close(); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkHistory measures point-in-time reads on a history of 400,000
// changes (200,000 entities of two types, an insert and an update each):
// the full replay of one type (changes asof --type) in history records/s,
// and one entity's state at the end (changes asof --id, the query server's
// ?at=), which reads the whole history too.
func BenchmarkHistory(b *testing.B) {
	e := stack(b)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	name := uniqueName("benchhist")
	cfg := testConfig(b, e, name, []topology.EntityConfig{
		{Type: "a", Table: "public." + name + "_a", IDColumn: "id", Partitions: 4},
		{Type: "b", Table: "public." + name + "_b", IDColumn: "id", Partitions: 4},
	})
	topo := topology.New(cfg)
	cleanupStack(b, e, cfg)
	if err := platform.EnsureTopics(topo); err != nil {
		b.Fatal(err)
	}
	const entities = 200_000
	writeHistory(b, cfg, topo, entities)
	h, err := history.Open(topo, testLogger(b))
	if err != nil {
		b.Fatal(err)
	}
	defer h.Close()
	bounds, err := h.Bounds(ctx)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("type-at", func(b *testing.B) {
		for range b.N {
			start := time.Now()
			states, err := h.TypeAt(ctx, "a", bounds.End, nil)
			if err != nil || len(states) != entities/2 {
				b.Fatalf("TypeAt: %d states, %v; want %d", len(states), err, entities/2)
			}
			b.ReportMetric(float64(bounds.End)/time.Since(start).Seconds(), "records/s")
			b.ReportMetric(0, "ns/op")
		}
	})
	b.Run("entity-at", func(b *testing.B) {
		for range b.N {
			start := time.Now()
			st, err := h.EntityAt(ctx, "a", codecs.IntKey(2), bounds.End, nil)
			if err != nil || st == nil {
				b.Fatalf("EntityAt: %v, %v", st, err)
			}
			b.ReportMetric(time.Since(start).Seconds()*1000, "ms")
			b.ReportMetric(float64(bounds.End)/time.Since(start).Seconds(), "records/s")
			b.ReportMetric(0, "ns/op")
		}
	})
}
