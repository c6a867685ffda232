package history

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/syndtr/goleveldb/leveldb/util"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/internal/kread"
	"github.com/changes-dev/changes/topology"
)

// BenchmarkIndex measures the history index on a synthetic history on the
// local stack: CHANGES_BENCH_HISTORY_RECORDS changes (default 10,000,000)
// over 30 days, 1,000,000 accounts (and more inserted later) and 100,000
// orders, rows of about 200 bytes, a tenth of the account updates keeping
// their TOASTed note unchanged, orders truncated once. It reports:
//
//   - build: records/s indexing the whole history, and the index's size;
//   - entity: one account at 100 random moments (OffsetAt, then EntityAt),
//     p50 and p99, from the index, and of that EntityAt alone; and the
//     scan (Reader.EntityAt) for 3;
//   - type: all accounts at 3 offsets, from the index (TypeAt, and
//     TypeJSONAt writing each entity's line as `changes asof` does) and
//     from the scan (CHANGES_BENCH_TYPE_SCANS of them, default 3: each
//     scan reads the history from its start): 10,000 records after the
//     last checkpoint at or before the middle of the history, halfway
//     between two checkpoints three quarters in, and 1,000 records before
//     the end; with the time and CPU time of each, and for reference those
//     of reading the checkpoint's stored states once (copied, not decoded).
//
// CHANGES_BENCH_CHECKPOINT_EVERY sets IndexConfig.CheckpointEvery
// (default DefaultCheckpointEvery), so that a small history can have the
// checkpoints of a large one.
//
// The history topic is kept as bench-index-<records>.history and reused by
// the next run if it holds that many records (CHANGES_BENCH_DROP_TOPIC=1
// deletes it at the end); CHANGES_BENCH_INDEX_DIR keeps the index too.
// Run it alone, with the stack up:
//
//	go test -run '^$' -bench BenchmarkIndex -benchtime 1x -timeout 2h ./views/history/
func BenchmarkIndex(b *testing.B) {
	brokers := kafkaBrokers(b)
	n := int64(10_000_000)
	if v := os.Getenv("CHANGES_BENCH_HISTORY_RECORDS"); v != "" {
		var err error
		if n, err = strconv.ParseInt(v, 10, 64); err != nil || n < 1000 {
			b.Fatalf("CHANGES_BENCH_HISTORY_RECORDS=%q: want an integer of at least 1000", v)
		}
	}
	typeScans := 3 // of the type's moments, how many the scan answers too (minutes each)
	if v := os.Getenv("CHANGES_BENCH_TYPE_SCANS"); v != "" {
		var err error
		if typeScans, err = strconv.Atoi(v); err != nil {
			b.Fatalf("CHANGES_BENCH_TYPE_SCANS=%q: want an integer", v)
		}
	}
	ctx := context.Background()
	topic := benchHistory(b, brokers, n)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	r, err := New(Config{Kafka: topology.KafkaConfig{Brokers: brokers}, Topic: topic}, quiet)
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	bounds, err := r.Bounds(ctx)
	if err != nil {
		b.Fatal(err)
	}
	every := int64(DefaultCheckpointEvery)
	if v := os.Getenv("CHANGES_BENCH_CHECKPOINT_EVERY"); v != "" {
		var err error
		if every, err = strconv.ParseInt(v, 10, 64); err != nil || every < 1 {
			b.Fatalf("CHANGES_BENCH_CHECKPOINT_EVERY=%q: want a positive integer", v)
		}
	}
	dir := os.Getenv("CHANGES_BENCH_INDEX_DIR")
	if dir == "" {
		dir = b.TempDir()
	}
	x, err := OpenIndex(r, IndexConfig{Dir: dir, CheckpointEvery: every, Log: slog.New(slog.NewTextHandler(os.Stderr, nil))})
	if err != nil {
		b.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	from, start := max(x.Position(), 0), time.Now()
	go func() { done <- x.Run(runCtx) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			b.Errorf("Run: %v", err)
		}
		x.Close()
	}()
	built := func() {
		for x.Position() < bounds.End {
			time.Sleep(100 * time.Millisecond)
		}
	}
	b.Run("build", func(b *testing.B) {
		built()
		elapsed := time.Since(start)
		// The size on disk as goleveldb's compactions leave it in the
		// end: right after the build, it depends on which of them ran.
		uncompacted := dirSize(b, dir)
		if err := x.db.CompactRange(util.Range{}); err != nil {
			b.Fatal(err)
		}
		size := dirSize(b, dir)
		b.ReportMetric(float64(bounds.End-from)/elapsed.Seconds(), "records/s")
		b.ReportMetric(float64(size)/(1<<20), "MiB")
		b.ReportMetric(float64(size)/float64(bounds.End), "bytes/record")
		b.Logf("indexed %d records in %s: %.0f records/s; index %d MiB on disk once compacted (%d MiB before)", bounds.End-from, elapsed.Round(time.Second),
			float64(bounds.End-from)/elapsed.Seconds(), size>>20, uncompacted>>20)
	})
	rnd := mrand.New(mrand.NewPCG(1, 2))
	moment := func() time.Time {
		last, err := r.eventAt(ctx, bounds.End-1)
		if err != nil {
			b.Fatal(err)
		}
		span := last.CommitTime.Sub(bounds.StartTime)
		return bounds.StartTime.Add(time.Duration(rnd.Int64N(int64(span))))
	}
	b.Run("entity", func(b *testing.B) {
		built()
		var took, entityAt []time.Duration
		for i := range 100 {
			at, id := moment(), codecs.IntKey(1+rnd.Int64N(1_000_000))
			start := time.Now()
			end, err := r.OffsetAt(ctx, at)
			if err != nil {
				b.Fatal(err)
			}
			found := time.Now()
			st, err := x.EntityAt(ctx, "account", id, end, nil)
			if err != nil {
				b.Fatal(err)
			}
			took = append(took, time.Since(start))
			entityAt = append(entityAt, time.Since(found))
			if i < 3 {
				start := time.Now()
				want, err := r.EntityAt(ctx, "account", id, end, nil)
				if err != nil {
					b.Fatal(err)
				}
				scan := time.Since(start)
				if answer(entityJSON(st), nil) != answer(entityJSON(want), nil) {
					b.Fatalf("account %s at offset %d: the index and the scan differ", id, end)
				}
				b.ReportMetric(scan.Seconds(), fmt.Sprintf("s/scan-%d", i+1))
				b.Logf("account %s at offset %d: index %s, scan %s", id, end, took[i], scan.Round(time.Millisecond))
			}
		}
		slices.Sort(took)
		slices.Sort(entityAt)
		b.ReportMetric(float64(took[49].Microseconds())/1000, "ms/p50")
		b.ReportMetric(float64(took[98].Microseconds())/1000, "ms/p99")
		b.ReportMetric(float64(took[99].Microseconds())/1000, "ms/max")
		// Of which Index.EntityAt, the offset being known (at= an offset).
		b.ReportMetric(float64(entityAt[49].Microseconds())/1000, "ms/p50-entityat")
		b.ReportMetric(float64(entityAt[98].Microseconds())/1000, "ms/p99-entityat")
	})
	b.Run("type", func(b *testing.B) {
		built()
		n := bounds.End
		ends := []int64{n/2/every*every + 10_000, 3*n/4/every*every + every/2, n - 1000}
		for i, end := range ends {
			// The reference: the checkpoint's stored states read and
			// copied once, nothing decoded.
			start, cpu := time.Now(), cpuSeconds()
			read, stored := readCheckpoint(b, x, "account", end)
			b.ReportMetric(time.Since(start).Seconds(), fmt.Sprintf("s/read-%d", i+1))
			b.ReportMetric(cpuSeconds()-cpu, fmt.Sprintf("cpu-s/read-%d", i+1))
			b.Logf("the checkpoint before offset %d: %d states, %d MiB, read in %s (%.1f s of CPU)", end, read, stored>>20,
				time.Since(start).Round(time.Millisecond), cpuSeconds()-cpu)
			if i == 0 {
				// The other reference: as many records read from Kafka
				// and decoded, as a consumer reading the type's table
				// once (a view's bootstrap) does at least.
				start, cpu = time.Now(), cpuSeconds()
				readKafka(b, r, int64(read))
				b.ReportMetric(time.Since(start).Seconds(), "s/kafka-read")
				b.ReportMetric(cpuSeconds()-cpu, "cpu-s/kafka-read")
				b.Logf("%d records read from Kafka and decoded in %s (%.1f s of CPU)", read, time.Since(start).Round(time.Millisecond), cpuSeconds()-cpu)
			}

			// TypeJSONAt, each entity written as `changes asof` prints it;
			// before TypeAt, which leaves a million states to collect.
			start, cpu = time.Now(), cpuSeconds()
			w := bufio.NewWriterSize(io.Discard, 64<<10)
			entities, size := streamType(b, x, "account", end, w)
			stream, streamCPU := time.Since(start), cpuSeconds()-cpu
			b.ReportMetric(stream.Seconds(), fmt.Sprintf("s/stream-%d", i+1))
			b.ReportMetric(streamCPU, fmt.Sprintf("cpu-s/stream-%d", i+1))
			start, cpu = time.Now(), cpuSeconds()
			got, err := x.TypeAt(ctx, "account", end, nil)
			if err != nil {
				b.Fatal(err)
			}
			index, indexCPU := time.Since(start), cpuSeconds()-cpu
			b.ReportMetric(index.Seconds(), fmt.Sprintf("s/index-%d", i+1))
			b.ReportMetric(indexCPU, fmt.Sprintf("cpu-s/index-%d", i+1))
			indexSum := sha256.New()
			if i < typeScans {
				enc := json.NewEncoder(indexSum)
				for _, st := range got {
					if err := enc.Encode(EntityOf(st)); err != nil {
						b.Fatal(err)
					}
				}
			}
			got = nil // not kept through the next measures

			b.Logf("%d accounts at offset %d: TypeAt %s (%.1f s of CPU), TypeJSONAt %s (%.1f s of CPU, %d MiB of JSON)", entities, end,
				index.Round(time.Millisecond), indexCPU, stream.Round(time.Millisecond), streamCPU, size>>20)
			if i >= typeScans {
				continue
			}
			start = time.Now()
			want, err := r.TypeAt(ctx, "account", end, nil)
			if err != nil {
				b.Fatal(err)
			}
			scan := time.Since(start)
			b.ReportMetric(scan.Seconds(), fmt.Sprintf("s/scan-%d", i+1))
			b.Logf("%d accounts at offset %d: the scan %s", len(want), end, scan.Round(time.Millisecond))
			// The answers, as `changes asof` prints them, are the scan's.
			scanSum := sha256.New()
			enc := json.NewEncoder(scanSum)
			for _, st := range want {
				if err := enc.Encode(EntityOf(st)); err != nil {
					b.Fatal(err)
				}
			}
			want = nil
			streamSum := sha256.New()
			streamType(b, x, "account", end, streamSum)
			if !bytes.Equal(indexSum.Sum(nil), scanSum.Sum(nil)) || !bytes.Equal(streamSum.Sum(nil), scanSum.Sum(nil)) {
				b.Fatalf("accounts at offset %d: TypeAt, TypeJSONAt and the scan differ", end)
			}
		}
	})
}

// cpuSeconds is the CPU time the process has used, user and system.
func cpuSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

// readCheckpoint reads the stored states of typ at the last checkpoint at
// or before end, copying each (into one buffer, not kept) and decoding
// none: what an answer from the checkpoint cannot do without.
func readCheckpoint(b *testing.B, x *Index, typ string, end int64) (states, size int) {
	snap, err := x.db.GetSnapshot()
	if err != nil {
		b.Fatal(err)
	}
	defer snap.Release()
	meta, _, err := x.meta(snap)
	if err != nil {
		b.Fatal(err)
	}
	checkpoint := min(end, meta.next) / x.every * x.every
	span := x.every * fullEvery
	var buf []byte
	err = x.mergeLayers(snap, typ, min(checkpoint/span*span, meta.full), checkpoint, func(entity, value []byte) error {
		buf = append(buf[:0], value...)
		states++
		size += len(buf)
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	return states, size
}

// readKafka reads the history's first n records and decodes each.
func readKafka(b *testing.B, r *Reader, n int64) {
	err := kread.RangeSized(context.Background(), r.client, r.topic, 0, 0, n, 8<<20, func(rec *kread.Record) (bool, error) {
		_, err := (codecs.EventCodec{}).Decode(rec.Value)
		return true, err
	})
	if err != nil {
		b.Fatal(err)
	}
}

// streamType writes what TypeJSONAt hands on to w, a line each.
func streamType(b *testing.B, x *Index, typ string, end int64, w io.Writer) (entities, size int) {
	err := x.TypeJSONAt(context.Background(), typ, end, nil, func(e []byte) error {
		entities++
		size += len(e) + 1
		if _, err := w.Write(e); err != nil {
			return err
		}
		_, err := w.Write([]byte{'\n'})
		return err
	})
	if err != nil {
		b.Fatal(err)
	}
	if f, ok := w.(interface{ Flush() error }); ok {
		if err := f.Flush(); err != nil {
			b.Fatal(err)
		}
	}
	return entities, size
}

// dirSize is the bytes of the files under dir.
func dirSize(b *testing.B, dir string) int64 {
	var size int64
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		info, err := d.Info()
		if err == nil {
			size += info.Size()
		}
		return err
	})
	if err != nil {
		b.Fatal(err)
	}
	return size
}

// benchHistory returns the topic of the benchmark's history of n records,
// producing it unless an earlier run left it whole.
func benchHistory(b *testing.B, brokers []string, n int64) string {
	topic := fmt.Sprintf("bench-index-%d.history", n)
	cfg := sarama.NewConfig()
	cfg.Version = sarama.V3_9_0_0
	client, err := sarama.NewClient(brokers, cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer client.Close()
	admin, err := sarama.NewClusterAdminFromClient(client)
	if err != nil {
		b.Fatal(err)
	}
	if os.Getenv("CHANGES_BENCH_DROP_TOPIC") == "1" {
		b.Cleanup(func() {
			a, err := sarama.NewClusterAdmin(brokers, cfg)
			if err == nil {
				_ = a.DeleteTopic(topic)
				a.Close()
			}
		})
	}
	if end, err := kread.End(client, topic, 0); err == nil && end == n {
		b.Logf("reusing %s (%d records)", topic, n)
		return topic
	}
	_ = admin.DeleteTopic(topic)
	forever := "-1"
	detail := &sarama.TopicDetail{NumPartitions: 1, ReplicationFactor: 1, ConfigEntries: map[string]*string{"retention.ms": &forever}}
	for try := 0; ; try++ {
		err := admin.CreateTopic(topic, detail, false)
		if err == nil {
			break
		}
		if try == 50 {
			b.Fatalf("create %s: %v", topic, err)
		}
		time.Sleep(200 * time.Millisecond) // the deletion is still under way
	}
	start := time.Now()
	produceBench(b, brokers, topic, n)
	b.Logf("produced %d records to %s in %s", n, topic, time.Since(start).Round(time.Second))
	return topic
}

// produceBench writes the synthetic history (see BenchmarkIndex).
func produceBench(b *testing.B, brokers []string, topic string, n int64) {
	cfg := sarama.NewConfig()
	cfg.Version = sarama.V3_9_0_0
	cfg.Producer.Return.Successes = true
	cfg.Producer.RequiredAcks = sarama.WaitForAll
	cfg.Net.MaxOpenRequests = 1 // in order
	// Batches of about 100 records (~45 KB), as a capture sends under a
	// steady load: an EntityAt reads the batch that holds its record.
	cfg.Producer.Flush.Messages = 100
	cfg.Producer.Flush.Frequency = 5 * time.Millisecond
	p, err := sarama.NewAsyncProducer(brokers, cfg)
	if err != nil {
		b.Fatal(err)
	}
	errs := make(chan error, 1)
	go func() {
		var first error
		for i := int64(0); i < n; i++ {
			select {
			case <-p.Successes():
			case err := <-p.Errors():
				if first == nil {
					first = err
				}
			}
		}
		errs <- first
	}()
	rnd := mrand.New(mrand.NewPCG(7, 11))
	const accounts, orders = 1_000_000, 100_000
	begin := time.Now().Add(-30 * 24 * time.Hour).Truncate(time.Second)
	step := 30 * 24 * time.Hour / time.Duration(n)
	nextAccount := int64(accounts + 1)
	note := func(i int64) json.RawMessage {
		return json.RawMessage(fmt.Sprintf(`"note %d: %s"`, i, "lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor"))
	}
	row := func(id, i int64, withNote bool) codecs.Row {
		r := codecs.Row{
			"id":      json.RawMessage(strconv.FormatInt(id, 10)),
			"name":    json.RawMessage(fmt.Sprintf(`"customer %d"`, id)),
			"email":   json.RawMessage(fmt.Sprintf(`"c%d@example.com"`, id)),
			"balance": json.RawMessage(fmt.Sprintf(`"%d.%02d"`, rnd.IntN(100000), rnd.IntN(100))),
			"status":  json.RawMessage(`"active"`),
		}
		if withNote {
			r["note"] = note(i)
		}
		return r
	}
	var buf []byte
	for i := int64(0); i < n; i++ {
		t := begin.Add(time.Duration(i) * step)
		lsn := codecs.LSN(0x1000000 + i*64)
		ev := &codecs.Event{CommitLSN: lsn, Position: codecs.Position{CommitLSN: lsn}, CommitTime: t, CaptureTime: t, TxID: uint32(i)}
		switch p := rnd.IntN(100); {
		case i < accounts:
			ev.EntityType, ev.EntityID, ev.Op, ev.After = "account", codecs.IntKey(i+1), codecs.OpSnapshot, row(i+1, i, true)
		case i < accounts+orders:
			id := i - accounts + 1
			ev.EntityType, ev.EntityID, ev.Op, ev.After = "order", codecs.IntKey(id), codecs.OpSnapshot, row(id, i, true)
		case i == n*2/3:
			ev.EntityType, ev.EntityID, ev.Op = "order", codecs.IntKey(0), codecs.OpTruncate
		case p < 5:
			ev.EntityType, ev.EntityID, ev.Op, ev.After = "account", codecs.IntKey(nextAccount), codecs.OpInsert, row(nextAccount, i, true)
			nextAccount++
		case p < 8:
			ev.EntityType, ev.EntityID, ev.Op = "account", codecs.IntKey(1+rnd.Int64N(nextAccount-1)), codecs.OpDelete
		case p < 15:
			id := 1 + rnd.Int64N(orders)
			ev.EntityType, ev.EntityID, ev.Op, ev.After = "order", codecs.IntKey(id), codecs.OpUpdate, row(id, i, true)
		default:
			id := 1 + rnd.Int64N(nextAccount-1)
			ev.EntityType, ev.EntityID, ev.Op = "account", codecs.IntKey(id), codecs.OpUpdate
			if rnd.IntN(10) == 0 {
				ev.After, ev.Unchanged = row(id, i, false), []string{"note"}
			} else {
				ev.After = row(id, i, true)
			}
		}
		key := ev.EntityType + "/" + ev.EntityID.String()
		if buf, err = (codecs.EventCodec{}).Encode(ev); err != nil {
			b.Fatal(err)
		}
		p.Input() <- &sarama.ProducerMessage{Topic: topic, Key: sarama.StringEncoder(key), Value: sarama.ByteEncoder(buf), Timestamp: t}
		if i > 0 && i%1_000_000 == 0 {
			b.Logf("produced %d records", i)
		}
	}
	if err := <-errs; err != nil {
		b.Fatalf("produce: %v", err)
	}
	if err := p.Close(); err != nil {
		b.Fatal(err)
	}
}
