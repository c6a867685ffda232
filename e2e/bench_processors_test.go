package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/lovoo/goka"
	"github.com/lovoo/goka/codec"
	"github.com/lovoo/goka/storage"
	"github.com/syndtr/goleveldb/leveldb"
	lvlstorage "github.com/syndtr/goleveldb/leveldb/storage"
	"golang.org/x/sync/errgroup"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/internal/platform"
	"github.com/changes-dev/changes/processors"
	"github.com/changes-dev/changes/topology"
	"github.com/changes-dev/changes/views"
)

// BenchmarkProcessors measures the processors on the real broker (make
// bench-e2e), without PostgreSQL in the way: a history of 200000 events over
// two entity types (100000 entities, each inserted then updated) is written
// first; then
//
//   - route+apply: the router and both snapshot groups in one process drain
//     it; events/s is history events over the time until both groups have
//     committed the end of their events topics.
//   - view-live: a recovered view of b applies 50000 new states written by
//     another process, each told to an update hook.
//   - goka-floor: the same two hops with bare goka callbacks (see below).
//   - sarama-floor: the same two hops on bare sarama, without goka.
//   - restore: a new view reads one type's table from its topic until
//     recovered; records/s is table records over that time.
//
// Each variant runs once whatever b.N is: the work is sized, not repeated.
// cpu-s/1M-events (and -records) is the CPU time of the test process per
// million, the figure that depends least on how busy the machine is.
func BenchmarkProcessors(b *testing.B) {
	e := stack(b)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	name := uniqueName("bench_proc")
	cfg := testConfig(b, e, name, []topology.EntityConfig{
		{Type: "a", Table: "public.a", IDColumn: "id", Partitions: 4},
		{Type: "b", Table: "public.b", IDColumn: "id", Partitions: 4},
	})
	topo := topology.New(cfg)
	b.Cleanup(func() { deleteTopics(b, cfg) })
	if err := platform.EnsureTopics(topo); err != nil {
		b.Fatal(err)
	}
	const entities = 100000
	writeHistory(b, cfg, topo, entities)
	events := 2 * entities

	b.Run("route+apply", func(b *testing.B) {
		runCtx, stop := context.WithCancel(ctx)
		done := make(chan error, 1)
		start, cpuStart := time.Now(), cpuTime(b)
		go func() { done <- processors.Run(runCtx, topo, processors.WithLogger(testLogger(b))) }()
		// The router first: until it is done, the events topics are not complete.
		waitGroupAtEnd(b, ctx, cfg, topo.RouterGroup(), topo.History())
		for _, typ := range topo.EntityTypes() {
			waitGroupAtEnd(b, ctx, cfg, topo.SnapshotGroup(typ), topo.Events(typ))
		}
		elapsed := time.Since(start)
		stop()
		if err := <-done; err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(events)/elapsed.Seconds(), "events/s")
		// CPU time barely depends on how busy the machine is; wall time does.
		b.ReportMetric((cpuTime(b)-cpuStart).Seconds()/float64(events)*1e6, "cpu-s/1M-events")
		b.ReportMetric(0, "ns/op")
	})

	b.Run("view-live", func(b *testing.B) { benchLiveView(b, ctx, cfg, topo, "b", entities/2) })

	// goka's floor on this machine: the same two hops (a stream in, a
	// record emitted per record; then a table written per record) with
	// nothing of the platform's in the callbacks, on the same client
	// settings, and the table's local copy in memory: goka's and sarama's
	// messaging alone. What route+apply costs above it is the platform's
	// (and its disk).
	b.Run("goka-floor", func(b *testing.B) {
		scratch := uniqueName("bench_floor")
		emitted := goka.Stream(scratch + ".emitted")
		kcfg, err := topology.SaramaConfig(cfg.Kafka)
		if err != nil {
			b.Fatal(err)
		}
		tmc := goka.NewTopicManagerConfig()
		tmc.Table.Replication, tmc.Stream.Replication = 1, 1
		tmc.CreateTopicTimeout = 30 * time.Second
		opts := []goka.ProcessorOption{
			// goleveldb on memory, not goka's MemoryBuilder, which sorts
			// every key on every Set.
			goka.WithStorageBuilder(func(string, int32) (storage.Storage, error) {
				db, err := leveldb.Open(lvlstorage.NewMemStorage(), nil)
				if err != nil {
					return nil, err
				}
				return storage.New(db)
			}),
			goka.WithProducerBuilder(goka.ProducerBuilderWithConfig(kcfg)),
			goka.WithConsumerGroupBuilder(goka.ConsumerGroupBuilderWithConfig(kcfg)),
			goka.WithConsumerSaramaBuilder(goka.SaramaConsumerBuilderWithConfig(kcfg)),
			goka.WithTopicManagerBuilder(goka.TopicManagerBuilderWithConfig(kcfg, tmc)),
		}
		tm, err := goka.TopicManagerBuilderWithConfig(kcfg, tmc)(cfg.Kafka.Brokers)
		if err != nil {
			b.Fatal(err)
		}
		if err := tm.EnsureStreamExists(string(emitted), 4); err != nil {
			b.Fatal(err)
		}
		tm.Close()
		b.Cleanup(func() {
			if admin, err := sarama.NewClusterAdmin(cfg.Kafka.Brokers, kcfg); err == nil {
				admin.DeleteTopic(string(emitted))
				admin.DeleteTopic(scratch + ".table-table")
				admin.Close()
			}
		})
		hop1 := goka.DefineGroup(goka.Group(scratch+".emit"),
			goka.Input(goka.Stream(topo.History()), new(codec.Bytes), func(gctx goka.Context, msg any) {
				gctx.Emit(emitted, gctx.Key(), msg, goka.WithCtxEmitHeaders(gctx.Headers()))
			}),
			goka.Output(emitted, new(codec.Bytes)))
		hop2 := goka.DefineGroup(goka.Group(scratch+".table"),
			goka.Input(emitted, new(codec.Bytes), func(gctx goka.Context, msg any) {
				_ = gctx.Value()
				gctx.SetValue(msg)
			}),
			goka.Persist(new(codec.Bytes)))
		runCtx, stop := context.WithCancel(ctx)
		defer stop()
		start, cpuStart := time.Now(), cpuTime(b)
		var g errgroup.Group
		for _, def := range []*goka.GroupGraph{hop1, hop2} {
			p, err := goka.NewProcessor(cfg.Kafka.Brokers, def, opts...)
			if err != nil {
				b.Fatal(err)
			}
			g.Go(func() error { return p.Run(runCtx) })
		}
		waitGroupAtEnd(b, ctx, cfg, string(hop1.Group()), topo.History())
		waitGroupAtEnd(b, ctx, cfg, string(hop2.Group()), string(emitted))
		elapsed := time.Since(start)
		stop()
		if err := g.Wait(); err != nil && !errors.Is(err, context.Canceled) {
			b.Fatal(err)
		}
		b.ReportMetric(float64(events)/elapsed.Seconds(), "events/s")
		b.ReportMetric((cpuTime(b)-cpuStart).Seconds()/float64(events)*1e6, "cpu-s/1M-events")
		b.ReportMetric(0, "ns/op")
	})

	// sarama's floor: the same two hops on bare sarama (a consumer group
	// per hop, the async producer, the table in goleveldb on memory), no
	// goka. goka-floor minus this is what goka's per-record machinery
	// costs. Offsets are marked when a record is handed to the producer,
	// not when the broker acknowledged it: less work than goka does, so a
	// floor.
	b.Run("sarama-floor", func(b *testing.B) {
		scratch := uniqueName("bench_sfloor")
		emitted, changelog := scratch+".emitted", scratch+".changelog"
		kcfg, err := topology.SaramaConfig(cfg.Kafka)
		if err != nil {
			b.Fatal(err)
		}
		kcfg.Producer.Return.Successes = false
		admin, err := sarama.NewClusterAdmin(cfg.Kafka.Brokers, kcfg)
		if err != nil {
			b.Fatal(err)
		}
		for _, topic := range []string{emitted, changelog} {
			if err := admin.CreateTopic(topic, &sarama.TopicDetail{NumPartitions: 4, ReplicationFactor: 1}, false); err != nil {
				b.Fatal(err)
			}
		}
		b.Cleanup(func() {
			admin.DeleteTopic(emitted)
			admin.DeleteTopic(changelog)
			admin.Close()
		})
		producer, err := sarama.NewAsyncProducer(cfg.Kafka.Brokers, kcfg)
		if err != nil {
			b.Fatal(err)
		}
		var failed atomic.Value
		go func() {
			for e := range producer.Errors() {
				failed.Store(e.Err)
			}
		}()
		db, err := leveldb.Open(lvlstorage.NewMemStorage(), nil)
		if err != nil {
			b.Fatal(err)
		}
		defer db.Close()
		forward := func(topic string, m *sarama.ConsumerMessage) {
			hdrs := make([]sarama.RecordHeader, len(m.Headers))
			for i, h := range m.Headers {
				hdrs[i] = *h
			}
			producer.Input() <- &sarama.ProducerMessage{Topic: topic, Key: sarama.ByteEncoder(m.Key), Value: sarama.ByteEncoder(m.Value), Headers: hdrs}
		}
		hop1 := floorHandler(func(m *sarama.ConsumerMessage) { forward(emitted, m) })
		hop2 := floorHandler(func(m *sarama.ConsumerMessage) {
			_, _ = db.Get(m.Key, nil)
			if err := db.Put(m.Key, m.Value, nil); err != nil {
				failed.Store(err)
			}
			forward(changelog, m)
		})
		runCtx, stop := context.WithCancel(ctx)
		defer stop()
		start, cpuStart := time.Now(), cpuTime(b)
		var g errgroup.Group
		for _, hop := range []struct {
			group, topic string
			h            floorHandler
		}{{scratch + ".emit", topo.History(), hop1}, {scratch + ".table", emitted, hop2}} {
			cg, err := sarama.NewConsumerGroup(cfg.Kafka.Brokers, hop.group, kcfg)
			if err != nil {
				b.Fatal(err)
			}
			g.Go(func() error {
				defer cg.Close()
				for runCtx.Err() == nil {
					if err := cg.Consume(runCtx, []string{hop.topic}, hop.h); err != nil && runCtx.Err() == nil {
						return err
					}
				}
				return nil
			})
		}
		waitGroupAtEnd(b, ctx, cfg, scratch+".emit", topo.History())
		waitGroupAtEnd(b, ctx, cfg, scratch+".table", emitted)
		elapsed := time.Since(start)
		stop()
		if err := g.Wait(); err != nil {
			b.Fatal(err)
		}
		producer.Close()
		if err, _ := failed.Load().(error); err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(events)/elapsed.Seconds(), "events/s")
		b.ReportMetric((cpuTime(b)-cpuStart).Seconds()/float64(events)*1e6, "cpu-s/1M-events")
		b.ReportMetric(0, "ns/op")
	})

	b.Run("restore", func(b *testing.B) {
		v, err := views.New(topo, "a", views.WithLogger(testLogger(b)), views.WithStorageDir(b.TempDir()))
		if err != nil {
			b.Fatal(err)
		}
		runCtx, stop := context.WithCancel(ctx)
		done := make(chan error, 1)
		start, cpuStart := time.Now(), cpuTime(b)
		go func() { done <- v.Run(runCtx) }()
		if err := v.WaitRecovered(ctx); err != nil {
			b.Fatal(err)
		}
		elapsed := time.Since(start)
		n, err := v.Len()
		stop()
		<-done
		if err != nil || n != entities/2 {
			b.Fatalf("restored %d entities (%v), want %d", n, err, entities/2)
		}
		// Each entity's insert and update are in the changelog until compaction.
		records := 0
		for p := range int32(4) {
			client, _ := topology.NewClient(cfg.Kafka)
			end, _ := client.GetOffset(topo.Snapshot("a"), p, sarama.OffsetNewest)
			client.Close()
			records += int(end)
		}
		b.ReportMetric(float64(records)/elapsed.Seconds(), "records/s")
		b.ReportMetric((cpuTime(b)-cpuStart).Seconds()/float64(records)*1e6, "cpu-s/1M-records")
		b.ReportMetric(0, "ns/op")
	})
}

// benchLiveView measures a view applying records as they come (the path of
// a running service, and of changes-bench's catch-up), not restoring: a
// view of typ, recovered, gets n new states written by another process (so
// the CPU measured is the view's alone), each told to an update hook as a
// service's would be.
func benchLiveView(b *testing.B, ctx context.Context, cfg *topology.Config, topo *topology.Topology, typ string, n int) {
	var applied atomic.Int64
	v, err := views.New(topo, typ, views.WithLogger(testLogger(b)), views.WithStorageDir(b.TempDir()),
		views.WithUpdateHook(func(u views.Update) {
			if !u.Recovering {
				applied.Add(1)
			}
		}))
	if err != nil {
		b.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- v.Run(runCtx) }()
	defer func() {
		stop()
		<-done
	}()
	if err := v.WaitRecovered(ctx); err != nil {
		b.Fatal(err)
	}
	start, cpuStart := time.Now(), cpuTime(b)
	cmd := exec.CommandContext(ctx, os.Args[0])
	cmd.Env = append(os.Environ(), produceStatesEnv+"="+strings.Join([]string{
		strings.Join(cfg.Kafka.Brokers, ","), topo.Snapshot(typ), typ, strconv.Itoa(n)}, ";"))
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("producer process: %v\n%s", err, out)
	}
	for applied.Load() < int64(n) {
		if ctx.Err() != nil {
			b.Fatalf("the view applied %d of %d records", applied.Load(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
	elapsed := time.Since(start)
	b.ReportMetric(float64(n)/elapsed.Seconds(), "records/s")
	b.ReportMetric((cpuTime(b)-cpuStart).Seconds()/float64(n)*1e6, "cpu-s/1M-records")
	b.ReportMetric(0, "ns/op")
}

// produceStatesEnv makes the test binary a producer process for
// benchLiveView (see TestMain): "brokers;topic;type;n".
const produceStatesEnv = "CHANGES_E2E_PRODUCE_STATES"

// produceStates writes n states of new entities of typ to topic, as the
// snapshot processor writes them, and returns the process's exit code.
func produceStates(spec string) int {
	parts := strings.Split(spec, ";")
	if len(parts) != 4 {
		fmt.Fprintf(os.Stderr, "%s=%q: want brokers;topic;type;n\n", produceStatesEnv, spec)
		return 2
	}
	n, err := strconv.Atoi(parts[3])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	kcfg := topology.KafkaConfig{Brokers: strings.Split(parts[0], ","), MaxRecordBytes: 1 << 20}
	sc, err := topology.SaramaConfig(kcfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	producer, err := sarama.NewAsyncProducer(kcfg.Brokers, sc)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	go func() {
		for range producer.Successes() {
		}
	}()
	now := time.Now().UTC()
	for i := range n {
		id := int64(10_000_000 + i)
		lsn := codecs.LSN(1 << 40)
		st := &codecs.State{EntityType: parts[2], EntityID: codecs.IntKey(id),
			Row:      codecs.Row{"id": json.RawMessage(strconv.FormatInt(id, 10)), "v": json.RawMessage(`1`), "name": json.RawMessage(`"entity ` + strconv.FormatInt(id, 10) + `"`)},
			Position: codecs.Position{CommitLSN: lsn, Index: uint32(i)}, CommitTime: now, AppliedTime: now}
		value, err := codecs.StateCodec{}.Encode(st)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		producer.Input() <- &sarama.ProducerMessage{Topic: parts[1], Key: sarama.StringEncoder(st.EntityID.String()), Value: sarama.ByteEncoder(value)}
	}
	if err := producer.Close(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// writeHistory writes an insert and an update for each of n entities,
// alternating between types a and b, straight to the history topic.
func writeHistory(b testing.TB, cfg *topology.Config, topo *topology.Topology, n int) {
	b.Helper()
	producer, err := sarama.NewAsyncProducer(cfg.Kafka.Brokers, saramaConfig(b, cfg.Kafka))
	if err != nil {
		b.Fatal(err)
	}
	go func() {
		for range producer.Successes() {
		}
	}()
	now := time.Now().UTC()
	var index uint32
	emit := func(typ string, id int64, op codecs.Op, v int) {
		lsn := codecs.LSN(1000 + uint64(index/4))
		row := codecs.Row{"id": json.RawMessage(strconv.FormatInt(id, 10)), "v": json.RawMessage(strconv.Itoa(v)), "name": json.RawMessage(`"entity ` + strconv.FormatInt(id, 10) + `"`)}
		ev := &codecs.Event{EntityType: typ, EntityID: codecs.IntKey(id), Op: op, After: row, CommitLSN: lsn,
			Position: codecs.Position{CommitLSN: lsn, Index: index % 4}, CommitTime: now, CaptureTime: now}
		index++
		value, err := codecs.EventCodec{}.Encode(ev)
		if err != nil {
			b.Fatal(err)
		}
		// As the capture writes it: the router routes by key and op header.
		producer.Input() <- &sarama.ProducerMessage{Topic: topo.History(), Key: sarama.StringEncoder(fmt.Sprintf("%s/%d", typ, id)), Value: sarama.ByteEncoder(value),
			Headers: []sarama.RecordHeader{
				{Key: []byte(codecs.HeaderEntityType), Value: []byte(typ)},
				{Key: []byte(codecs.HeaderOp), Value: []byte(op)},
				{Key: []byte(codecs.HeaderPosition), Value: []byte(ev.Position.String())},
				{Key: []byte(codecs.HeaderCommitTime), Value: []byte(now.Format(time.RFC3339Nano))},
				{Key: []byte(codecs.HeaderCaptureTime), Value: []byte(now.Format(time.RFC3339Nano))},
			}}
	}
	for id := int64(1); id <= int64(n); id++ {
		typ := []string{"a", "b"}[id%2]
		emit(typ, id, codecs.OpInsert, 0)
		emit(typ, id, codecs.OpUpdate, 1)
	}
	// Close returns every error the producer had: a lost record fails here,
	// not later as a wrong count.
	if err := producer.Close(); err != nil {
		b.Fatal(err)
	}
}

// cpuTime is the CPU time (user and system) this process has used so far.
func cpuTime(b testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// floorHandler handles each message of a claim with its function, then
// marks it: sarama-floor's consumer group handler.
type floorHandler func(*sarama.ConsumerMessage)

func (floorHandler) Setup(sarama.ConsumerGroupSession) error   { return nil }
func (floorHandler) Cleanup(sarama.ConsumerGroupSession) error { return nil }

func (h floorHandler) ConsumeClaim(s sarama.ConsumerGroupSession, c sarama.ConsumerGroupClaim) error {
	for m := range c.Messages() {
		h(m)
		s.MarkMessage(m, "")
	}
	return nil
}
