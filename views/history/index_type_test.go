package history

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/topology"
)

// richRow is a row with every kind of value a codecs.Row holds: numbers
// past float64's precision, strings with escapes, HTML characters, U+2028
// and non-ASCII, JSON documents with spaces, null, booleans, an empty
// column name and names that need escapes.
func richRow(n int) codecs.Row {
	return codecs.Row{
		"id":                   json.RawMessage(`9007199254740993`),
		"f":                    json.RawMessage(`-0.5e+10`),
		"name":                 json.RawMessage(`"a <b> & \"c\" \u2028 é` + string(rune('a'+n%26)) + `"`),
		"raw":                  json.RawMessage("\"line\u2028sep <x>\""),
		"doc":                  json.RawMessage(`{ "a" : [1, 2 , {"b":null}], "h": "<&>" }`),
		"nil":                  json.RawMessage(`null`),
		"ok":                   json.RawMessage(`true`),
		"":                     json.RawMessage(`""`),
		"weird\tname<&>\u2029": json.RawMessage(`[ ]`),
		"blob":                 json.RawMessage(`"toasted ` + string(rune('A'+n%26)) + `"`),
	}
}

// TestEntityJSONIsMarshal: the JSON TypeJSONAt hands on is json.Marshal's
// of EntityOf, for the states the replay makes (appendEntity) and for the
// states the index stores (appendSplitEntity), of every key kind and value.
func TestEntityJSONIsMarshal(t *testing.T) {
	uuid, err := codecs.UUIDKey("0B6F3D6E-1C2A-4F6B-9A51-2F3C4D5E6F70")
	if err != nil {
		t.Fatal(err)
	}
	times := []time.Time{
		time.Date(2026, 11, 25, 12, 0, 0, 654321000, time.UTC), {},
		time.Date(2026, 11, 25, 12, 0, 0, 0, time.FixedZone("", 5*3600+1800)),
	}
	var states []*codecs.State
	for i, id := range []codecs.Key{codecs.IntKey(0), codecs.IntKey(-7), codecs.IntKey(1 << 62), uuid,
		codecs.TextKey("a/b c%d <é>\u2028\"q\""), codecs.TextKey(""), codecs.CompositeKey(codecs.TextKey(`x","y`), codecs.IntKey(3))} {
		pos := codecs.Position{CommitLSN: codecs.LSN(0x16B374D848 + i), Index: uint32(i)}
		ev := &codecs.Event{EntityType: "thing<&>", EntityID: id, Op: codecs.OpInsert, After: richRow(i), Position: pos,
			CommitLSN: pos.CommitLSN, CommitTime: times[i%len(times)]}
		st, _ := codecs.Apply(nil, ev)
		states = append(states, st)
		// An update that keeps the TOASTed blob, and one that keeps a
		// column no earlier change gave.
		up := *ev
		up.Op, up.After, up.Unchanged = codecs.OpUpdate, codecs.Row{"id": json.RawMessage(`1`)}, []string{"blob", "never"}
		kept, missing := codecs.Apply(st, &up)
		if len(missing) != 1 || string(kept.Row["blob"]) != string(st.Row["blob"]) {
			t.Fatalf("Apply kept %v, missing %v", kept.Row, missing)
		}
		states = append(states, kept)
	}
	states = append(states, &codecs.State{EntityType: "t", EntityID: codecs.IntKey(1), Row: codecs.Row{}, Position: codecs.Position{CommitLSN: 1}},
		// Not valid for StateCodec: json.Marshal writes it.
		&codecs.State{EntityType: "t", EntityID: codecs.IntKey(2), Position: codecs.Position{CommitLSN: 1}},
		&codecs.State{EntityType: "t", EntityID: codecs.IntKey(3), Row: codecs.Row{"a": json.RawMessage(`1`)}},
		// json.Marshal cannot write a time after the year 9999.
		&codecs.State{EntityType: "t", EntityID: codecs.IntKey(4), Row: codecs.Row{}, Position: codecs.Position{CommitLSN: 1},
			CommitTime: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)})
	for _, st := range states {
		want, werr := json.Marshal(EntityOf(st))
		got, gerr := appendEntity([]byte("x"), st)
		switch {
		case werr != nil && gerr == nil:
			t.Errorf("appendEntity(%+v) wrote %s; json.Marshal: %v", st, got, werr)
		case werr == nil && (gerr != nil || string(got) != "x"+string(want)):
			t.Errorf("appendEntity(%+v)\n got %s (%v)\nwant x%s", st, got, gerr, want)
		}
		// A state the replay left without its row: written with the row's
		// JSON, what DecodeWithoutRows hands on.
		if st.Row != nil {
			row, err := json.Marshal(st.Row)
			if err != nil {
				t.Fatal(err)
			}
			bare := *st
			bare.Row = codecs.Row{}
			scratch := []byte("scratch")
			got, gerr := appendEntityWithRow([]byte("x"), &scratch, &bare, row)
			switch {
			case werr != nil && gerr == nil:
				t.Errorf("appendEntityWithRow(%+v) wrote %s; json.Marshal: %v", st, got, werr)
			case werr == nil && (gerr != nil || string(got) != "x"+string(want)):
				t.Errorf("appendEntityWithRow(%+v)\n got %s (%v)\nwant x%s", st, got, gerr, want)
			}
		}
		// As the index stores it: decoded and encoded again.
		b, err := (codecs.StateCodec{}).Encode(st)
		if err != nil {
			continue
		}
		stored, err := (codecs.StateCodec{}).Decode(b)
		if err != nil {
			t.Fatal(err)
		}
		if b, err = (codecs.StateCodec{}).Encode(stored); err != nil {
			t.Fatal(err)
		}
		split, ok := codecs.SplitState(b)
		if !ok {
			t.Fatalf("SplitState(%s) gave up", b)
		}
		if want, err = json.Marshal(EntityOf(stored)); err != nil {
			t.Fatal(err)
		}
		if got := appendSplitEntity(nil, split); string(got) != string(want) {
			t.Errorf("appendSplitEntity(%s)\n got %s\nwant %s", b, got, want)
		}
	}
}

// TestTypeJSONAtValues: at every offset of a history of rich rows, updates
// that keep TOASTed columns, deletes, entities inserted again and
// truncates, Index.TypeJSONAt (checkpoints every few records) and
// Reader.TypeJSONAt write what json.Marshal writes of the scan's answer.
func TestTypeJSONAtValues(t *testing.T) {
	brokers := kafkaBrokers(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	topic := testTopic(t, brokers, "index-json")
	ids := []codecs.Key{codecs.TextKey("a/b"), codecs.TextKey("<é>"), codecs.TextKey(`"q"`), codecs.TextKey("z"), codecs.TextKey("0")}
	lsn := codecs.LSN(100)
	at := time.Date(2026, 11, 1, 0, 0, 0, 0, time.FixedZone("", 3600))
	var recs []record
	add := func(op codecs.Op, id codecs.Key, unchanged ...string) {
		lsn += 3
		at = at.Add(1234567 * time.Nanosecond)
		ev := &codecs.Event{EntityType: "thing", EntityID: id, Op: op, CommitLSN: lsn, Position: codecs.Position{CommitLSN: lsn, Index: 1},
			CommitTime: at, CaptureTime: at, Unchanged: unchanged}
		key := "thing/" + id.String()
		switch op {
		case codecs.OpTruncate:
			ev.EntityID, key = codecs.IntKey(0), "thing/0"
		case codecs.OpDelete:
		default:
			ev.After = richRow(len(recs))
			for _, c := range unchanged {
				delete(ev.After, c)
			}
		}
		recs = append(recs, record{key: key, ev: ev, stamp: at})
	}
	for _, id := range ids {
		add(codecs.OpSnapshot, id)
	}
	add(codecs.OpUpdate, ids[0], "blob", "doc")
	add(codecs.OpUpdate, ids[1])
	add(codecs.OpDelete, ids[2])
	add(codecs.OpUpdate, ids[3], "blob")
	add(codecs.OpInsert, ids[2])
	add(codecs.OpUpdate, ids[0], "blob")
	add(codecs.OpTruncate, codecs.Key{})
	add(codecs.OpUpdate, ids[4], "blob") // its blob is gone with the truncate
	add(codecs.OpInsert, ids[1])
	add(codecs.OpUpdate, ids[1], "blob", "")
	add(codecs.OpDelete, ids[3])
	add(codecs.OpInsert, ids[3])
	add(codecs.OpUpdate, ids[0])
	add(codecs.OpDelete, ids[4])
	produce(t, brokers, topic, recs)

	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	r, err := New(Config{Kafka: topology.KafkaConfig{Brokers: brokers}, Topic: topic}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for _, every := range []int64{3, 4, 5, 100} {
		x, err := OpenIndex(r, IndexConfig{Dir: t.TempDir(), CheckpointEvery: every})
		if err != nil {
			t.Fatal(err)
		}
		rctx, stop := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- x.Run(rctx) }()
		for x.Position() < int64(len(recs)) {
			if ctx.Err() != nil {
				t.Fatalf("the index reached offset %d of %d", x.Position(), len(recs))
			}
			time.Sleep(20 * time.Millisecond)
		}
		for end := int64(0); end <= int64(len(recs)); end++ {
			want := typeAnswer(r.TypeAt(ctx, "thing", end, nil))
			if got := streamAnswer(ctx, x.TypeJSONAt, "thing", end); got != want {
				t.Errorf("every %d, end %d: TypeJSONAt\n  %s\nthe scan\n  %s", every, end, got, want)
			}
			if got := streamAnswer(ctx, r.TypeJSONAt, "thing", end); got != want {
				t.Errorf("end %d: Reader.TypeJSONAt\n  %s\nthe scan\n  %s", end, got, want)
			}
			if got := typeAnswer(x.TypeAt(ctx, "thing", end, nil)); got != want {
				t.Errorf("every %d, end %d: TypeAt\n  %s\nthe scan\n  %s", every, end, got, want)
			}
		}
		stop()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		x.Close()
	}
}
