package history

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/topology"
)

// kafkaBrokers returns the local stack's brokers, or skips the test (fails
// it under CI=true: CI must never pass by skipping).
func kafkaBrokers(t testing.TB) []string {
	t.Helper()
	b := os.Getenv("CHANGES_KAFKA_BROKERS")
	if b == "" {
		msg := "the history index tests need Kafka: run `make stack-up && eval \"$(bash stack/stack.sh env)\"`"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return strings.Split(b, ",")
}

// testTopic creates a one-partition topic of its own for t and deletes it
// after the test.
func testTopic(t testing.TB, brokers []string, prefix string) string {
	t.Helper()
	var b [4]byte
	_, _ = rand.Read(b[:])
	topic := prefix + "-" + hex.EncodeToString(b[:]) + ".history"
	cfg := sarama.NewConfig()
	cfg.Version = sarama.V3_9_0_0
	admin, err := sarama.NewClusterAdmin(brokers, cfg)
	if err != nil {
		t.Fatalf("kafka admin at %v: %v", brokers, err)
	}
	// The records' timestamps are in the past: the broker's retention
	// must not delete them behind the test's back.
	forever := "-1"
	detail := &sarama.TopicDetail{NumPartitions: 1, ReplicationFactor: 1, ConfigEntries: map[string]*string{"retention.ms": &forever}}
	if err := admin.CreateTopic(topic, detail, false); err != nil {
		admin.Close()
		t.Fatalf("create topic %s: %v", topic, err)
	}
	t.Cleanup(func() {
		if err := admin.DeleteTopic(topic); err != nil {
			t.Logf("delete topic %s: %v", topic, err)
		}
		admin.Close()
	})
	return topic
}

// record is a history record to produce: an event, or raw bytes.
type record struct {
	key   string
	ev    *codecs.Event
	raw   []byte
	stamp time.Time
}

// produce appends recs to topic, in order, and returns the history's end.
func produce(t testing.TB, brokers []string, topic string, recs []record) {
	t.Helper()
	cfg := sarama.NewConfig()
	cfg.Version = sarama.V3_9_0_0
	cfg.Producer.Return.Successes = true
	cfg.Producer.RequiredAcks = sarama.WaitForAll
	cfg.Net.MaxOpenRequests = 1 // in order
	cfg.Producer.Flush.Frequency = 5 * time.Millisecond
	p, err := sarama.NewAsyncProducer(brokers, cfg)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		var first error
		for range recs {
			select {
			case <-p.Successes():
			case err := <-p.Errors():
				if first == nil {
					first = err
				}
			}
		}
		done <- first
	}()
	timeout := time.After(time.Minute)
	for _, r := range recs {
		v := r.raw
		if r.ev != nil {
			if v, err = (codecs.EventCodec{}).Encode(r.ev); err != nil {
				t.Fatalf("encode %+v: %v", r.ev, err)
			}
		}
		select {
		case p.Input() <- &sarama.ProducerMessage{Topic: topic, Key: sarama.StringEncoder(r.key), Value: sarama.ByteEncoder(v), Timestamp: r.stamp}:
		case <-timeout:
			t.Fatalf("producing %d records to %s took more than a minute", len(recs), topic)
		}
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("produce: %v", err)
		}
	case <-timeout:
		t.Fatalf("producing %d records to %s took more than a minute", len(recs), topic)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
}

// historyGen makes a random history of two types: accounts with integer
// ids (0 included, whose key is the type's truncate key) and notes with
// text ids, inserted, updated (some keeping TOASTed columns unchanged, some
// of which no earlier change gave), deleted, inserted again, truncated;
// with resync markers, watermarks, records that are not events, and a few
// records whose key does not name their event's entity.
type historyGen struct {
	rnd  *mrand.Rand
	lsn  codecs.LSN
	time time.Time
}

func (g *historyGen) next(n int) []record {
	var out []record
	for range n {
		g.lsn += codecs.LSN(1 + g.rnd.IntN(3))
		g.time = g.time.Add(time.Duration(1+g.rnd.IntN(3)) * time.Millisecond)
		ev := &codecs.Event{CommitLSN: g.lsn, Position: codecs.Position{CommitLSN: g.lsn, Index: uint32(g.rnd.IntN(2))},
			CommitTime: g.time, CaptureTime: g.time, TxID: uint32(g.lsn)}
		typ := "account"
		ev.EntityID = codecs.IntKey(int64(g.rnd.IntN(25)))
		if g.rnd.IntN(3) == 0 {
			typ = "note"
			ev.EntityID = codecs.TextKey([]string{"a", "b/c", "0", "ü", "long-one"}[g.rnd.IntN(5)])
		}
		ev.EntityType = typ
		key := typ + "/" + ev.EntityID.String()
		switch p := g.rnd.IntN(100); {
		case p < 2:
			out = append(out, record{key: "watermark", raw: []byte(`{"op":"watermark"}`), stamp: g.time})
			continue
		case p < 3:
			out = append(out, record{key: "resync/" + fmt.Sprint(g.lsn), stamp: g.time, ev: &codecs.Event{Op: codecs.OpResync, EntityID: codecs.IntKey(0),
				CommitLSN: g.lsn, Position: ev.Position, CommitTime: g.time, Resync: &codecs.Resync{Slot: "s", After: ev.Position, Until: g.lsn, Types: []string{typ}}}})
			continue
		case p < 4:
			out = append(out, record{key: key, raw: []byte("not an event"), stamp: g.time})
			continue
		case p < 5:
			ev.Op, ev.EntityID = codecs.OpTruncate, codecs.IntKey(0)
			key = typ + "/0"
		case p < 6 && typ == "note":
			ev.Op = codecs.OpTruncate // under the entity's key, not the type's
			ev.EntityID = codecs.IntKey(0)
		case p < 7:
			// A key that names another entity than its event.
			ev.Op, ev.After = codecs.OpInsert, codecs.Row{"name": json.RawMessage(`"stray"`)}
			key = typ + "/" + fmt.Sprint(g.rnd.IntN(3))
		case p < 20:
			ev.Op = codecs.OpDelete
		case p < 40:
			ev.Op = codecs.OpInsert
		case p < 45:
			ev.Op = codecs.OpSnapshot
		default:
			ev.Op = codecs.OpUpdate
		}
		if ev.Op != codecs.OpDelete && ev.Op != codecs.OpTruncate && ev.After == nil {
			ev.After = codecs.Row{"name": json.RawMessage(fmt.Sprintf(`"n%d"`, g.lsn))}
			switch g.rnd.IntN(4) {
			case 0:
				ev.After["blob"] = json.RawMessage(fmt.Sprintf(`{"big": %d}`, g.lsn))
			case 1:
				if ev.Op == codecs.OpUpdate {
					ev.Unchanged = []string{"blob"}
					if g.rnd.IntN(3) == 0 {
						ev.Unchanged = append(ev.Unchanged, "never")
					}
				}
			}
		}
		out = append(out, record{key: key, ev: ev, stamp: g.time})
	}
	return out
}

// answer is the JSON of an answer, or its error's text.
func answer(v any, err error) string {
	if err != nil {
		return "error: " + err.Error()
	}
	b, err := json.Marshal(v)
	if err != nil {
		return "marshal: " + err.Error()
	}
	return string(b)
}

func entityJSON(st *codecs.State) any {
	if st == nil {
		return nil
	}
	return EntityOf(st)
}

// typeAnswer is the JSON of a type's entities, or the error's text.
func typeAnswer(states []*codecs.State, err error) string {
	out := make([]Entity, 0, len(states))
	for _, st := range states {
		out = append(out, EntityOf(st))
	}
	return answer(out, err)
}

// typeJSONAt is Index.TypeJSONAt or Reader.TypeJSONAt.
type typeJSONAt func(ctx context.Context, entityType string, end int64, progress func(done, total int64), fn func(entity []byte) error) error

// streamAnswer is typeAnswer of what a TypeJSONAt hands on: json.Marshal
// of a list is its elements' JSON, joined by commas in brackets.
func streamAnswer(ctx context.Context, typeAt typeJSONAt, typ string, end int64) string {
	out := []byte{'['}
	err := typeAt(ctx, typ, end, nil, func(e []byte) error {
		if len(out) > 1 {
			out = append(out, ',')
		}
		out = append(out, e...)
		return nil
	})
	if err != nil {
		return "error: " + err.Error()
	}
	return string(append(out, ']'))
}

var testIDs = map[string][]codecs.Key{
	"account": {codecs.IntKey(0), codecs.IntKey(1), codecs.IntKey(2), codecs.IntKey(7), codecs.IntKey(24), codecs.IntKey(99), codecs.TextKey("3")},
	"note":    {codecs.TextKey("a"), codecs.TextKey("b/c"), codecs.TextKey("0"), codecs.TextKey("ü"), codecs.TextKey("long-one"), codecs.TextKey("none")},
}

// compareEntities asks EntityAt of the reader and of the index for every
// test id at n random ends in [from, to], and fails on the first answer
// that differs.
func compareEntities(t *testing.T, ctx context.Context, rnd *mrand.Rand, r *Reader, x *Index, from, to int64, n int, current CurrentFunc) (answered map[string]int) {
	t.Helper()
	answered = map[string]int{}
	for range n {
		end := from + rnd.Int64N(to-from+1)
		for typ, ids := range testIDs {
			for _, id := range ids {
				wst, werr := r.EntityAt(ctx, typ, id, end, current)
				want := answer(entityJSON(wst), werr)
				st, err := x.EntityAt(ctx, typ, id, end, current)
				if got := answer(entityJSON(st), err); got != want {
					t.Fatalf("%s %s at end %d: the index answers\n  %s\nthe scan\n  %s", typ, id, end, got, want)
				}
				switch {
				case err != nil:
					answered["error"]++
				case st == nil:
					answered["none"]++
				default:
					answered["state"]++
				}
			}
		}
	}
	return answered
}

// TestIndexMatchesScan: the index answers EntityAt and TypeAt as the scan
// of the history does, at random moments of a random history, before and
// after retention removed its start, after a restart, and after a sweep.
func TestIndexMatchesScan(t *testing.T) {
	brokers := kafkaBrokers(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	topic := testTopic(t, brokers, "index-test")
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rnd := mrand.New(mrand.NewPCG(seed, 17))
	gen := &historyGen{rnd: rnd, lsn: 1000, time: time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)}
	produce(t, brokers, topic, gen.next(3000))

	// The history holds records that are not events on purpose: each scan
	// would warn of each.
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	var openEvery func(int64) (*Index, func())
	r, err := New(Config{Kafka: topology.KafkaConfig{Brokers: brokers}, Topic: topic, Retention: time.Hour}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	dir := t.TempDir()
	const every = 97
	open := func() (*Index, func()) { return openEvery(every) }
	openEvery = func(every int64) (*Index, func()) {
		x, err := OpenIndex(r, IndexConfig{Dir: dir, CheckpointEvery: every})
		if err != nil {
			t.Fatal(err)
		}
		x.sweepEvery = 100 * time.Millisecond
		rctx, stop := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- x.Run(rctx) }()
		return x, func() {
			stop()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
			if err := x.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		}
	}
	waitIndexed := func(x *Index) int64 {
		t.Helper()
		b, err := r.Bounds(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for x.Position() < b.End {
			if ctx.Err() != nil {
				t.Fatalf("the index reached offset %d of %d", x.Position(), b.End)
			}
			time.Sleep(20 * time.Millisecond)
		}
		return b.End
	}

	x, closeIndex := open()
	// Before the index has read anything, it answers too (from the history).
	compareEntities(t, ctx, rnd, r, x, 0, 3000, 2, nil)
	end := waitIndexed(x)
	got := compareEntities(t, ctx, rnd, r, x, 0, end, 25, nil)
	t.Logf("entity answers from offset 0: %v", got)
	if got["state"] == 0 || got["none"] == 0 {
		t.Errorf("the random history gave no states or no absent entities: %v", got)
	}
	typeAnswers := map[int64]map[string]string{} // end -> type -> scan answer
	for range 15 {
		end := rnd.Int64N(end + 1)
		typeAnswers[end] = map[string]string{}
		for typ := range testIDs {
			want := typeAnswer(r.TypeAt(ctx, typ, end, nil))
			if got := typeAnswer(x.TypeAt(ctx, typ, end, nil)); got != want {
				t.Fatalf("%s at end %d: the index answers\n  %s\nthe scan\n  %s", typ, end, got, want)
			}
			if got := streamAnswer(ctx, x.TypeJSONAt, typ, end); got != want {
				t.Fatalf("%s at end %d: the index's TypeJSONAt answers\n  %s\nthe scan\n  %s", typ, end, got, want)
			}
			typeAnswers[end][typ] = want
		}
	}

	// A restart resumes, and indexes what came meanwhile.
	closeIndex()
	produce(t, brokers, topic, gen.next(1000))
	x, closeIndex = open()
	end = waitIndexed(x)
	compareEntities(t, ctx, rnd, r, x, 0, end, 20, nil)

	// Another checkpoint interval rebuilds the index, and answers alike;
	// so does the first one again.
	closeIndex()
	x, closeIndex = openEvery(50)
	waitIndexed(x)
	compareEntities(t, ctx, rnd, r, x, 0, end, 5, nil)
	for e := range typeAnswers {
		for typ, want := range typeAnswers[e] {
			if got := typeAnswer(x.TypeAt(ctx, typ, e, nil)); got != want {
				t.Fatalf("%s at end %d, checkpoints every 50: the index answers\n  %s\nthe scan\n  %s", typ, e, got, want)
			}
			if got := streamAnswer(ctx, x.TypeJSONAt, typ, e); got != want {
				t.Fatalf("%s at end %d, checkpoints every 50: the index's TypeJSONAt answers\n  %s\nthe scan\n  %s", typ, e, got, want)
			}
		}
	}
	closeIndex()
	x, closeIndex = open()
	waitIndexed(x)

	// Retention removes the start: the answers that depend on it become
	// errors, or the view's word, alike; the index sweeps what it removed.
	cut := int64(1234)
	deleteRecords(t, brokers, topic, cut)
	current := func(ctx context.Context, id codecs.Key) (*codecs.State, error) {
		return &codecs.State{EntityType: "any", EntityID: id, Row: codecs.Row{"from": json.RawMessage(`"the view"`)}, Position: codecs.Position{CommitLSN: 1}}, nil
	}
	got = compareEntities(t, ctx, rnd, r, x, cut, end, 20, current)
	t.Logf("entity answers after retention: %v", got)
	deadline := time.Now().Add(30 * time.Second)
	for {
		meta, _, err := x.meta(x.db)
		if err != nil {
			t.Fatal(err)
		}
		if meta.prunedTo == cut {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the index did not sweep: pruned to %d, the history starts at %d", meta.prunedTo, cut)
		}
		time.Sleep(50 * time.Millisecond)
	}
	compareEntities(t, ctx, rnd, r, x, cut, end, 20, current)
	it := x.db.NewIterator(nil, nil)
	for it.Next() {
		switch k := it.Key(); k[0] {
		case entryTag:
			if keyOffset(k) < cut {
				t.Errorf("the sweep left the entry of offset %d, before the start at %d", keyOffset(k), cut)
			}
		case pointerTag:
			// Every pointer names a version that is there, as a
			// version or in the full checkpoints after it.
			p, err := decodePointer(it.Value())
			if err != nil {
				t.Fatal(err)
			}
			if p.position == nil {
				continue
			}
			meta, _, err := x.meta(x.db)
			if err != nil {
				t.Fatal(err)
			}
			typ, entity, _ := bytes.Cut(k[2:], []byte{0})
			id, err := parseEntityKey(entity)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := x.versionAt(x.db, string(typ), id, p.checkpoint, meta.full); err != nil {
				t.Errorf("the pointer %q names a version the index does not hold: %v", k, err)
			}
		}
	}
	it.Release()
	// The scan cannot answer for a type any more; the index, which read the
	// history from offset 0, answers what the scan answered before, from
	// its first checkpoint after the start.
	firstCheckpoint := (cut + every - 1) / every * every
	for e, byType := range typeAnswers {
		for typ, want := range byType {
			got := typeAnswer(x.TypeAt(ctx, typ, e, nil))
			if streamed := streamAnswer(ctx, x.TypeJSONAt, typ, e); streamed != got {
				t.Fatalf("%s at end %d after retention: TypeJSONAt answers\n  %s\nTypeAt\n  %s", typ, e, streamed, got)
			}
			if e >= firstCheckpoint && got != want {
				t.Fatalf("%s at end %d after retention: the index answers\n  %s\nthe scan answered\n  %s", typ, e, got, want)
			}
			if e < firstCheckpoint && !strings.Contains(got, ErrOlderThanHistory.Error()) {
				t.Fatalf("%s at end %d, before the first checkpoint after retention: %s, want ErrOlderThanHistory", typ, e, got)
			}
		}
	}
	if !x.KeepsTypes() {
		t.Error("an index that read the history from offset 0 says it keeps no checkpoints of the types")
	}
	closeIndex()
	if x.KeepsTypes() {
		t.Error("a closed index says it keeps checkpoints of the types")
	}
	// An index built after retention removed the start keeps none, and
	// answers a type as the scan does (the query server then scans, and
	// says so).
	dir = t.TempDir()
	late, closeLate := open()
	defer closeLate()
	waitIndexed(late)
	if late.KeepsTypes() {
		t.Error("an index built after retention removed the history's start says it keeps checkpoints of the types")
	}
	types := map[string]bool{}
	for _, byType := range typeAnswers {
		for typ := range byType {
			types[typ] = true
		}
	}
	if len(types) == 0 {
		t.Fatal("no type was asked")
	}
	for typ := range types {
		if got, want := typeAnswer(late.TypeAt(ctx, typ, end, nil)), typeAnswer(r.TypeAt(ctx, typ, end, nil)); got != want {
			t.Errorf("%s at end %d from an index without checkpoints: %s; the scan: %s", typ, end, got, want)
		}
	}
}

// deleteRecords moves topic's log start to offset, as retention does.
func deleteRecords(t testing.TB, brokers []string, topic string, offset int64) {
	t.Helper()
	cfg := sarama.NewConfig()
	cfg.Version = sarama.V3_9_0_0
	admin, err := sarama.NewClusterAdmin(brokers, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	if err := admin.DeleteRecords(topic, map[int32]int64{0: offset}); err != nil {
		t.Fatalf("delete the records of %s before %d: %v", topic, offset, err)
	}
}
