package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/jackc/pgx/v5"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/internal/kread"
	"github.com/changes-dev/changes/internal/platform"
	"github.com/changes-dev/changes/topology"
	"github.com/changes-dev/changes/views"
)

// platformRun is the whole platform and the views of every type, in process.
type platformRun struct {
	stop  func()
	views map[string]*views.View
}

// TestProcessorsUnderLoad drives 10,000+ random changes over three entity
// types through the platform, then checks that every type's table, read
// back from its topic by a view, equals the database; that a garbage record
// on the history goes to the dead-letter topic and changes nothing; and that
// redelivering the whole history (the router's offsets reset to the start)
// leaves every table as it was, without a single write.
func TestProcessorsUnderLoad(t *testing.T) {
	e := stack(t)
	if testing.Short() {
		t.Skip("10,000 changes")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	name := uniqueName("load")
	types := []string{"alpha", "beta", "gamma"}
	var entities []topology.EntityConfig
	var tables []string
	for i, typ := range types {
		table := name + "_" + typ
		tables = append(tables, table)
		entities = append(entities, topology.EntityConfig{Type: typ, Table: "public." + table, IDColumn: "id", Partitions: 2 + i})
	}
	cfg := testConfig(t, e, name, entities)
	topo := topology.New(cfg)
	cleanupStack(t, e, cfg, tables...)
	db, err := pgx.Connect(ctx, e.pgURL)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(context.Background())
	for _, table := range tables {
		execSQL(t, ctx, db, "create table "+table+" (id bigint primary key, n integer not null, note text)")
	}
	if err := platform.EnsureTopics(topo); err != nil {
		t.Fatal(err)
	}
	run := startPlatform(t, ctx, topo)
	waitSlotActive(t, ctx, db, cfg.Postgres.Slot)

	changes := 0
	rnd := rand.New(rand.NewPCG(7, 8))
	next := int64(0)
	for changes < 10000 {
		err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
			for range 1 + rnd.IntN(5) {
				table := tables[rnd.IntN(len(tables))]
				var sql string
				switch k := rnd.IntN(10); {
				case k < 4 || next < 50:
					next += 5
					sql = fmt.Sprintf("insert into %s select g, 0, 'new' from generate_series(%d, %d) g", table, next-4, next)
				case k < 8:
					lo := 1 + rnd.Int64N(next)
					sql = fmt.Sprintf("update %s set n = n + 1, note = 'upd' where id between %d and %d", table, lo, lo+3)
				default:
					lo := 1 + rnd.Int64N(next)
					sql = fmt.Sprintf("delete from %s where id between %d and %d", table, lo, lo+1)
				}
				tag, err := tx.Exec(ctx, sql)
				if err != nil {
					return err
				}
				changes += int(tag.RowsAffected())
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("%d changes committed over %d tables", changes, len(tables))
	waitViewsEqual(t, ctx, db, topo, run.views)

	// A record that is not an event, straight onto the history.
	producer, err := sarama.NewSyncProducer(cfg.Kafka.Brokers, saramaConfig(t, cfg.Kafka))
	if err != nil {
		t.Fatal(err)
	}
	defer producer.Close()
	garbage := []byte("\x00not an event\xff")
	if _, _, err := producer.SendMessage(&sarama.ProducerMessage{Topic: topo.History(), Key: sarama.StringEncoder("junk"), Value: sarama.ByteEncoder(garbage)}); err != nil {
		t.Fatal(err)
	}
	dead := readHistory(t, ctx, cfg, topo.DeadLetter(), 1)
	headers := map[string]string{}
	for _, h := range dead[0].Headers {
		headers[string(h.Key)] = string(h.Value)
	}
	if string(dead[0].Value) != string(garbage) || headers[codecs.HeaderSourceTopic] != topo.History() ||
		!strings.Contains(headers[codecs.HeaderDeadLetterReason], "decode event") {
		t.Fatalf("dead letter %q with headers %v; want the garbage bytes, its source and the decode error", dead[0].Value, headers)
	}
	waitViewsEqual(t, ctx, db, topo, run.views)

	// Full redelivery: stop, reset the router to the start of the history,
	// start. Nothing changes: an entity's latest change, delivered again at
	// its stored position, writes that same state again (the local copy may
	// be ahead of the changelog after a crash); every other change is
	// skipped. So the tables gain only repeats of the states they hold.
	run.stop()
	before := tableEnds(t, cfg, topo)
	resetGroup(t, cfg, topo.RouterGroup(), topo.History())
	started := time.Now()
	run = startPlatform(t, ctx, topo)
	waitGroupAtEnd(t, ctx, cfg, topo.RouterGroup(), topo.History())
	for _, typ := range types {
		waitGroupAtEnd(t, ctx, cfg, topo.SnapshotGroup(typ), topo.Events(typ))
	}
	t.Logf("redelivered the whole history in %s", time.Since(started).Round(time.Millisecond))
	after := tableEnds(t, cfg, topo)
	rewrites := onlyRepeats(t, ctx, cfg, before, after)
	t.Logf("redelivery rewrote %d states, each at the position the table already held", rewrites)
	waitViewsEqual(t, ctx, db, topo, run.views)
	// The watermarks delivered again are not written again: no table
	// holds a watermark before states it covers.
	marks, behind := checkTableWatermarks(t, ctx, cfg)
	if marks == 0 || len(behind) > 0 {
		t.Errorf("the snapshot tables hold %d watermarks and %d states behind one:\n  %s", marks, len(behind), strings.Join(behind[:min(len(behind), 10)], "\n  "))
	}
	// The check can fail: a state of an old change, written after the
	// watermarks, is one behind them.
	run.stop()
	old, err := (codecs.StateCodec{}).Encode(&codecs.State{EntityType: types[0], EntityID: codecs.IntKey(999999),
		Row: codecs.Row{"id": []byte("999999")}, Position: codecs.Position{CommitLSN: 1}, CommitTime: time.Now().UTC()})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := producer.SendMessage(&sarama.ProducerMessage{Topic: topo.Snapshot(types[0]), Key: sarama.StringEncoder("999999"), Value: sarama.ByteEncoder(old)}); err != nil {
		t.Fatal(err)
	}
	if _, behind := checkTableWatermarks(t, ctx, cfg); len(behind) != 1 {
		t.Errorf("a state of an old change after the watermarks: %d states behind one found, want 1: %v", len(behind), behind)
	}
}

// onlyRepeats checks that every table record written between before and
// after repeats the position of the key's previous record, and returns
// how many there are.
func onlyRepeats(t testing.TB, ctx context.Context, cfg *topology.Config, before, after map[string][]int64) int {
	t.Helper()
	client, err := topology.NewClient(cfg.Kafka)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	n := 0
	for topic, ends := range after {
		for p, end := range ends {
			last := map[string]codecs.Position{}
			err := kread.Range(ctx, client, topic, int32(p), 0, end, func(r *kread.Record) (bool, error) {
				if topology.IsWatermarkKey(string(r.Key)) {
					return true, nil // new watermarks keep coming
				}
				if r.Value == nil {
					delete(last, string(r.Key))
					return true, nil
				}
				st, err := (codecs.StateCodec{}).Decode(r.Value)
				if err != nil {
					return false, err
				}
				prev, seen := last[string(r.Key)]
				if r.Offset >= before[topic][p] {
					n++
					if !seen || prev != st.Position {
						t.Errorf("%s/%d offset %d: redelivery wrote key %s at %s, the table held %s (seen %v)", topic, p, r.Offset, r.Key, st.Position, prev, seen)
					}
				}
				last[string(r.Key)] = st.Position
				return true, nil
			})
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	return n
}

// tableEnds returns the end offsets of every partition of every snapshot table.
func tableEnds(t testing.TB, cfg *topology.Config, topo *topology.Topology) map[string][]int64 {
	t.Helper()
	client, err := topology.NewClient(cfg.Kafka)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	out := map[string][]int64{}
	for _, typ := range topo.EntityTypes() {
		topic := topo.Snapshot(typ)
		parts, err := client.Partitions(topic)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range parts {
			end, err := client.GetOffset(topic, p, sarama.OffsetNewest)
			if err != nil {
				t.Fatal(err)
			}
			out[topic] = append(out[topic], end)
		}
	}
	return out
}

// resetGroup commits the oldest offset of topic's partition 0 for group,
// which has no members.
func resetGroup(t testing.TB, cfg *topology.Config, group, topic string) {
	t.Helper()
	client, err := topology.NewClient(cfg.Kafka)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	oldest, err := client.GetOffset(topic, 0, sarama.OffsetOldest)
	if err != nil {
		t.Fatal(err)
	}
	om, err := sarama.NewOffsetManagerFromClient(group, client)
	if err != nil {
		t.Fatal(err)
	}
	pom, err := om.ManagePartition(topic, 0)
	if err != nil {
		t.Fatal(err)
	}
	pom.ResetOffset(oldest, "")
	pom.Close()
	om.Commit()
	if err := om.Close(); err != nil {
		t.Fatal(err)
	}
	admin, err := sarama.NewClusterAdminFromClient(client)
	if err != nil {
		t.Fatal(err)
	}
	res, err := admin.ListConsumerGroupOffsets(group, map[string][]int32{topic: {0}})
	if err != nil {
		t.Fatal(err)
	}
	if b := res.GetBlock(topic, 0); b == nil || b.Offset != oldest {
		t.Fatalf("group %s not reset to %d: %+v", group, oldest, b)
	}
}
