package codecs

import (
	"encoding/json"
	"testing"
	"time"
)

// splitStates are states as StateCodec writes them, of every key kind,
// with rows that need escapes, deleted, a truncate marker, a watermark.
func splitStates(t testing.TB) [][]byte {
	t.Helper()
	var out [][]byte
	add := func(st *State) {
		b, err := (StateCodec{}).Encode(st)
		if err != nil {
			t.Fatalf("encode %+v: %v", st, err)
		}
		out = append(out, b)
	}
	for _, e := range fastEvents(t) {
		if st, _ := Apply(nil, e); st != nil {
			st.AppliedTime = time.Date(2026, 11, 25, 12, 0, 1, 0, time.FixedZone("", -3*3600))
			add(st)
			add(&State{EntityType: e.EntityType, EntityID: e.EntityID, Deleted: true, Position: e.Position, CommitTime: e.CommitTime})
		}
	}
	pos := Position{CommitLSN: 0xABCDEF0123, Index: 0xFFFFFFFF}
	add(&State{EntityType: "t", Truncated: true, Position: pos})
	add(&State{EntityType: "t", Watermark: true, Position: pos})
	add(&State{EntityType: "t", EntityID: TextKey(`"deleted":true`), Row: Row{"position": json.RawMessage(`"0000000000000001:00000001"`)}, Position: pos})
	add(&State{EntityType: "t", EntityID: IntKey(1), Row: Row{}, Position: pos})
	return out
}

// checkSplit checks SplitState(b) against what StateCodec.Decode reads from
// b, and, where b is what Encode writes of that (a state decoded and
// encoded again, as the history index stores them), against what
// encoding/json writes of it. Encode writes a byte of invalid UTF-8 in a
// column's name as \ufffd, which decodes to U+FFFD, which encoding/json
// writes as it is: a decoded row's names are valid UTF-8.
func checkSplit(t *testing.T, b []byte, mustSplit bool) {
	t.Helper()
	s, ok := SplitState(b)
	st, err := (StateCodec{}).Decode(b)
	switch {
	case mustSplit && (!ok || err != nil):
		t.Fatalf("SplitState(%s): ok %v, Decode: %v", b, ok, err)
	case !ok || err != nil:
		return
	}
	marshal := func(v any) string {
		j, err := json.Marshal(v)
		if err != nil {
			return "error: " + err.Error()
		}
		return string(j)
	}
	if s.Position != st.Position || s.Deleted != st.Deleted || s.Truncated != st.Truncated || s.Watermark != st.Watermark ||
		s.IDKind != st.EntityID.Kind() {
		t.Fatalf("SplitState(%s) = %+v; Decode: %+v", b, s, st)
	}
	if canon, err := (StateCodec{}).Encode(st); err != nil || string(canon) != string(b) {
		return
	}
	for _, c := range []struct {
		name string
		got  []byte
		want any
	}{
		{"type", s.Type, st.EntityType}, {"id", s.ID, st.EntityID.String()}, {"row", s.Row, st.Row},
		{"commit_time", s.CommitTime, st.CommitTime}, {"applied_time", s.AppliedTime, st.AppliedTime},
	} {
		if want := marshal(c.want); string(c.got) != want {
			t.Errorf("SplitState(%s): %s %s, encoding/json writes %s", b, c.name, c.got, want)
		}
	}
}

// TestSplitState: the members SplitState cuts out of what StateCodec
// writes are what encoding/json writes of the decoded state's fields.
func TestSplitState(t *testing.T) {
	for _, b := range splitStates(t) {
		checkSplit(t, b, true)
		// The index stores states decoded and encoded again.
		st, err := (StateCodec{}).Decode(b)
		if err != nil {
			t.Fatal(err)
		}
		again, err := (StateCodec{}).Encode(st)
		if err != nil {
			t.Fatal(err)
		}
		if st, err = (StateCodec{}).Decode(again); err != nil {
			t.Fatal(err)
		}
		if canon, err := (StateCodec{}).Encode(st); err != nil || string(canon) != string(again) {
			t.Fatalf("a state decoded and encoded twice changed: %s, then %s (%v)", again, canon, err)
		}
		checkSplit(t, again, true)
	}
	for _, b := range []string{
		``, `{}`, `null`,
		`{"type":"t","id":"1","row":{},"position":"0000000000000001:00000001","commit_time":"0001-01-01T00:00:00Z"}`,
		`{"type":"t","id":"1","row":{},"position":"0000000000000001:0000001","commit_time":"0001-01-01T00:00:00Z","applied_time":"0001-01-01T00:00:00Z"}`,
		`{"type":"t","id":"1","row":{},"position":"000000000000000g:00000001","commit_time":"0001-01-01T00:00:00Z","applied_time":"0001-01-01T00:00:00Z"}`,
		`{"type":"t","id":"1","row":{} ,"position":"0000000000000001:00000001","commit_time":"0001-01-01T00:00:00Z","applied_time":"0001-01-01T00:00:00Z"}`,
		`{"type":"t","id":"1","row":nul,"position":"0000000000000001:00000001","commit_time":"0001-01-01T00:00:00Z","applied_time":"0001-01-01T00:00:00Z"}`,
		`{"id":"1","type":"t","row":{},"position":"0000000000000001:00000001","commit_time":"0001-01-01T00:00:00Z","applied_time":"0001-01-01T00:00:00Z"}`,
		`{"type":"t","id":"1","row":{},"position":"0000000000000001:00000001","commit_time":"0001-01-01T00:00:00Z","applied_time":"0001-01-01T00:00:00Z","id_kind":"integer"}`,
		`{"type":"t","id":"1","row":{},"position":"0000000000000001:00000001","commit_time":"0001-01-01T00:00:00Z","applied_time":"0001-\u01-01T00:00:00Z"}`,
	} {
		if s, ok := SplitState([]byte(b)); ok {
			t.Errorf("SplitState(%s) = %+v, want it to give up", b, s)
		}
	}
}

// FuzzSplitState: SplitState never panics; what it splits agrees with
// Decode; and of what Encode writes, it cuts encoding/json's bytes.
func FuzzSplitState(f *testing.F) {
	for _, b := range splitStates(f) {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		checkSplit(t, b, false)
		st, err := (StateCodec{}).Decode(b)
		if err != nil {
			return
		}
		if again, err := (StateCodec{}).Encode(st); err == nil {
			checkSplit(t, again, true)
		}
	})
}
