package history

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"

	"github.com/changes-dev/changes/codecs"
)

func change(op codecs.Op, id int64, lsn codecs.LSN, row string, unchanged ...string) *codecs.Event {
	ev := &codecs.Event{EntityType: "account", EntityID: codecs.IntKey(id), Op: op, CommitLSN: lsn,
		Position: codecs.Position{CommitLSN: lsn}, Unchanged: unchanged}
	if row != "" {
		if err := json.Unmarshal([]byte(row), &ev.After); err != nil {
			panic(err)
		}
	}
	return ev
}

func name(st *codecs.State) string {
	if st == nil {
		return "<none>"
	}
	var r struct {
		Name string `json:"name"`
	}
	st.Row.Decode(&r)
	return r.Name
}

// TestReplay: a replay of the history holds what the type's snapshot table
// held, as a view sees it: the last change of each entity, deletes and
// TRUNCATEs hiding what they removed, and unchanged TOASTed columns kept.
func TestReplay(t *testing.T) {
	for _, dropDeleted := range []bool{false, true} {
		rp := newReplay(dropDeleted)
		steps := []struct {
			ev   *codecs.Event
			want map[int64]string // what a reader sees after it
		}{
			{change(codecs.OpSnapshot, 1, 10, `{"id": 1, "name": "a", "blob": "x"}`), map[int64]string{1: "a"}},
			{change(codecs.OpInsert, 2, 11, `{"id": 2, "name": "b"}`), map[int64]string{1: "a", 2: "b"}},
			{change(codecs.OpUpdate, 1, 12, `{"id": 1, "name": "a2"}`, "blob"), map[int64]string{1: "a2", 2: "b"}},
			{change(codecs.OpDelete, 2, 13, ""), map[int64]string{1: "a2"}},
			{change(codecs.OpTruncate, 0, 14, ""), map[int64]string{}},
			{change(codecs.OpInsert, 1, 15, `{"id": 1, "name": "a3"}`), map[int64]string{1: "a3"}},
			{change(codecs.OpInsert, 2, 16, `{"id": 2, "name": "b2"}`), map[int64]string{1: "a3", 2: "b2"}},
		}
		for i, s := range steps {
			rp.apply(s.ev)
			got := map[int64]string{}
			for _, st := range rp.entities() {
				id, _ := st.EntityID.Int()
				got[id] = name(st)
			}
			if len(got) != len(s.want) {
				t.Fatalf("dropDeleted=%v, after step %d (%s of %s): %v, want %v", dropDeleted, i, s.ev.Op, s.ev.EntityID, got, s.want)
			}
			for id, n := range s.want {
				if got[id] != n || name(rp.entity(codecs.IntKey(id))) != n {
					t.Fatalf("dropDeleted=%v, after step %d (%s of %s): %v, want %v", dropDeleted, i, s.ev.Op, s.ev.EntityID, got, s.want)
				}
			}
		}
		if st := rp.entity(codecs.IntKey(1)); st == nil || st.Row["blob"] != nil {
			t.Errorf("dropDeleted=%v: entity 1 after the TRUNCATE kept a column from before it: %v", dropDeleted, st)
		}
	}
}

// TestReplayBaseAndMissing: an unchanged TOASTed column takes the value of
// the state the change applies to; with no such state (never seen, or
// removed by a TRUNCATE) the column is missing and the base is nil, which
// EntityAt turns into ErrOlderThanHistory when retention cut the history.
func TestReplayBaseAndMissing(t *testing.T) {
	rp := newReplay(false)
	if base, missing, ok := rp.apply(change(codecs.OpUpdate, 1, 10, `{"id": 1}`, "blob")); !ok || base != nil || !slices.Equal(missing, []string{"blob"}) {
		t.Errorf("first change: base %v, missing %v, applied %v; want no base and blob missing", base, missing, ok)
	}
	rp.apply(change(codecs.OpUpdate, 1, 11, `{"id": 1, "blob": "x"}`))
	if base, missing, ok := rp.apply(change(codecs.OpUpdate, 1, 12, `{"id": 1}`, "blob")); !ok || base == nil || len(missing) != 0 {
		t.Errorf("with a base: base %v, missing %v, applied %v; want the stored state and nothing missing", base, missing, ok)
	}
	rp.apply(change(codecs.OpTruncate, 0, 13, ""))
	if base, missing, ok := rp.apply(change(codecs.OpUpdate, 1, 14, `{"id": 1}`, "blob")); !ok || base != nil || len(missing) != 1 {
		t.Errorf("after a TRUNCATE: base %v, missing %v, applied %v; want no base", base, missing, ok)
	}
	// A change that is not after the entity's last one, or is at or before
	// the TRUNCATE, is skipped as a table skips it.
	for _, ev := range []*codecs.Event{change(codecs.OpUpdate, 1, 14, `{"id": 1, "name": "again"}`), change(codecs.OpInsert, 2, 13, `{"id": 2}`)} {
		if _, _, ok := rp.apply(ev); ok {
			t.Errorf("%s of %s at %s applied; want it skipped", ev.Op, ev.EntityID, ev.Position)
		}
	}
	if rp.entity(codecs.IntKey(2)) != nil {
		t.Error("an insert at the TRUNCATE's position is visible")
	}
}

// TestReplayKeys: entities of any key kind replay apart, listed in the
// order of codecs.Key.Compare (text bytewise: "10" before "9").
func TestReplayKeys(t *testing.T) {
	rp := newReplay(false)
	keyed := func(op codecs.Op, k codecs.Key, lsn codecs.LSN, row string) *codecs.Event {
		ev := change(op, 0, lsn, row)
		ev.EntityID = k
		return ev
	}
	keys := []codecs.Key{codecs.TextKey("9"), codecs.TextKey("10"), codecs.TextKey("a/b"), codecs.TextKey(""), codecs.TextKey("ü")}
	for i, k := range keys {
		rp.apply(keyed(codecs.OpInsert, k, codecs.LSN(10+i), `{"name": "`+k.String()+`"}`))
	}
	rp.apply(keyed(codecs.OpDelete, codecs.TextKey("a/b"), 20, ""))
	var got []string
	for _, st := range rp.entities() {
		if st.EntityID.Kind() != codecs.KeyText || name(st) != st.EntityID.String() {
			t.Errorf("entity %s %q holds %q", st.EntityID.Kind(), st.EntityID, name(st))
		}
		got = append(got, st.EntityID.String())
	}
	if want := []string{"", "10", "9", "ü"}; !slices.Equal(got, want) {
		t.Errorf("entities %q, want %q", got, want)
	}
	if rp.entity(codecs.IntKey(9)) != nil || rp.entity(codecs.TextKey("9")) == nil {
		t.Error("the text key 9 and the integer key 9 are not told apart")
	}
	rp.apply(change(codecs.OpTruncate, 0, 21, ""))
	if n := len(rp.entities()); n != 0 {
		t.Errorf("%d entities after a TRUNCATE", n)
	}
}

// TestReplayWithoutRows: a replay of events decoded without their rows
// (applyWithoutRow, then decodeRows) holds what a replay of the whole
// events holds, whatever the order of inserts, updates keeping columns
// unchanged, deletes, truncates and changes delivered again, and wherever
// the rows are decoded in between.
func TestReplayWithoutRows(t *testing.T) {
	rnd := rand.New(rand.NewPCG(1, 2))
	for round := range 300 {
		full, lazy := newReplay(round%2 == 0), newReplay(round%2 == 0)
		var events []*codecs.Event
		for i := range 40 {
			id := int64(1 + rnd.IntN(4))
			lsn := codecs.LSN(10 + i)
			if rnd.IntN(8) == 0 && i > 0 { // a change delivered again
				lsn = codecs.LSN(10 + rnd.IntN(i))
			}
			row := fmt.Sprintf(`{"id": %d, "name": "n%d", "blob": "b%d"}`, id, i, i)
			var ev *codecs.Event
			switch rnd.IntN(6) {
			case 0:
				ev = change(codecs.OpInsert, id, lsn, row)
			case 1, 2:
				ev = change(codecs.OpUpdate, id, lsn, fmt.Sprintf(`{"id": %d, "name": "n%d"}`, id, i), "blob")
			case 3:
				ev = change(codecs.OpUpdate, id, lsn, row)
			case 4:
				ev = change(codecs.OpDelete, id, lsn, "")
			default:
				if rnd.IntN(3) == 0 {
					ev = change(codecs.OpTruncate, 0, lsn, "")
				} else {
					ev = change(codecs.OpSnapshot, id, lsn, row)
				}
			}
			events = append(events, ev)
			b, err := codecs.EventCodec{}.Encode(ev)
			if err != nil {
				t.Fatal(err)
			}
			head, after, err := codecs.EventCodec{}.DecodeWithoutRows(b)
			if err != nil {
				t.Fatal(err)
			}
			full.apply(ev)
			if err := lazy.applyWithoutRow(head, after); err != nil {
				t.Fatal(err)
			}
			if rnd.IntN(5) == 0 || i == 39 {
				if err := lazy.decodeRows(); err != nil {
					t.Fatal(err)
				}
				if got, want := lazy.entities(), full.entities(); !reflect.DeepEqual(got, want) {
					t.Fatalf("round %d, after %d events %v:\n without rows %v\n        whole %v", round, i+1, events, got, want)
				}
			}
		}
	}
}
