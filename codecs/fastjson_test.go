package codecs

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"
)

// fastEvents are events whose JSON form exercises the hand-written path:
// every key kind, escapes, HTML characters, U+2028, invalid UTF-8, raw
// values with spaces, nil values, zones other than UTC.
func fastEvents(t testing.TB) []*Event {
	t.Helper()
	uuid, err := UUIDKey("0B6F3D6E-1C2A-4F6B-9A51-2F3C4D5E6F70")
	if err != nil {
		t.Fatal(err)
	}
	lsn := LSN(0x16B374D848)
	base := func(k Key, op Op) *Event {
		return &Event{
			EntityType: "campaign", EntityID: k, Op: op, TxID: 750, CommitLSN: lsn,
			Position:    Position{CommitLSN: lsn, Index: 3},
			CommitTime:  time.Date(2026, 11, 25, 12, 0, 0, 654321000, time.UTC),
			CaptureTime: time.Date(2026, 11, 25, 12, 0, 0, 656000000, time.FixedZone("", 2*3600)),
		}
	}
	row := Row{
		"id": json.RawMessage(`9007199254740993`), "name": json.RawMessage(`"a <b> & \"c\" \u2028 é"`),
		"raw": json.RawMessage("\"line\u2028sep <x>\""), "spaced": json.RawMessage(`{ "a" : [1, 2 , {"b":null}] }`),
		"nil": nil, "deep": json.RawMessage(`[[[[{"x":[-0.5e+10,true,false]}]]]]`), "": json.RawMessage(`""`),
		"weird\tname<&>\u2029": json.RawMessage(`1`), "bad\xffutf8": json.RawMessage("\"\xfe\""),
	}
	var out []*Event
	for _, k := range []Key{IntKey(42), IntKey(-7), uuid, TextKey("a/b c%d <é>\u2028"), TextKey(""),
		CompositeKey(TextKey(`x","y`), IntKey(3))} {
		e := base(k, OpUpdate)
		e.After = row
		e.Before = Row{"id": json.RawMessage(`42`)}
		e.Unchanged = []string{"payload", "ü<>"}
		out = append(out, e)
		d := base(k, OpDelete)
		d.Before = Row{"id": json.RawMessage(`42`)}
		out = append(out, d)
		s := base(k, OpSnapshot)
		s.After = Row{"id": json.RawMessage(`42`)}
		out = append(out, s)
	}
	tr := base(Key{}, OpTruncate)
	tr.CommitTime = time.Time{}
	return append(out, tr)
}

// TestFastJSONWritesWhatEncodingJSONWrites: the hand-written encoders give
// encoding/json's bytes, and read them back as encoding/json does, taking
// the fast path for everything the platform writes.
func TestFastJSONWritesWhatEncodingJSONWrites(t *testing.T) {
	for _, e := range fastEvents(t) {
		want, err := json.Marshal(e.wire())
		if err != nil {
			t.Fatal(err)
		}
		got, err := appendEvent(nil, e, nil)
		if err != nil {
			t.Fatalf("appendEvent(%s %s): %v", e.Op, e.EntityID, err)
		}
		if string(got) != string(want) {
			t.Errorf("appendEvent:\n got %s\nwant %s", got, want)
		}
		checkEventDecoders(t, want, true)

		st, _ := Apply(nil, e)
		if st == nil {
			continue
		}
		st.AppliedTime = time.Date(2026, 11, 25, 12, 0, 1, 0, time.UTC)
		want, err = json.Marshal(st.wire())
		if err != nil {
			t.Fatal(err)
		}
		got, err = appendState(nil, st)
		if err != nil {
			t.Fatalf("appendState: %v", err)
		}
		if string(got) != string(want) {
			t.Errorf("appendState:\n got %s\nwant %s", got, want)
		}
		checkStateDecoders(t, want, true)
	}
	marker := &State{EntityType: "campaign", Truncated: true, Position: Position{CommitLSN: 1, Index: 0}}
	want, _ := json.Marshal(marker.wire())
	if got, err := appendState(nil, marker); err != nil || string(got) != string(want) {
		t.Errorf("appendState(marker) = %s, %v; want %s", got, err, want)
	}
	checkStateDecoders(t, want, true)
}

// TestFastJSONLeavesTheRestToEncodingJSON: documents that are valid but not
// in the platform's form, and documents that are not valid, decode exactly
// as encoding/json decodes them.
func TestFastJSONLeavesTheRestToEncodingJSON(t *testing.T) {
	e := fastEvents(t)[0]
	b, err := json.Marshal(e.wire())
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	for _, edit := range [][2]string{
		{`"type":"campaign"`, `"TYPE":"campaign"`},
		{`"type":"campaign"`, `"type":"camp\u0061ign"`},
		{`"type":"campaign"`, `"type":"campaign","type":"other"`},
		{`"type":"campaign"`, `"type":"campaign","unknown":[1,2]`},
		{`"op":"update"`, `"op":null`},
		{`"xid":750`, `"xid":7.5e2`},
		{`"xid":750`, `"xid":-0`},
		{`"xid":750`, `"xid":4294967296`},
		{`"xid":750`, `"xid":"750"`},
		{`"xid":750`, `"xid" : 750 `},
		{`"id":"42"`, `"id":null`},
		{`"id":"42"`, `"id":"042"`},
		{`"after":{`, `"after":{"id":1,`},
		{`"after":{`, `"after" : { "z" : 1 ,`},
		{`"after":{`, `"after":{"x":01,`},
		{`"after":{`, `"after":{"x":[1,],`},
		{`"after":{`, `"after":{"x":"\x01",`},
		{`"after":{`, `"after":{"x":tru,`},
		{`"after":{`, `"after":{"\u0078":1,`},
		{`"after":{`, `"after":{"zz":1,`},
		{`"op":"update"`, `"op":"watermark","before":{"a":1},"type":"","after":null,"x":0`},
		{`"after":{`, `"after" : { "name" : "a<b", "tags" : [1, 2] , "z":{"b":1,"a":2},`},
		{`"after":{`, `"after":{"a":"<\u00e9\u2028",`},
		{`"after":{`, `"after":{"a\u0026":1,`},
		{`"after":{`, `"after":{"a\xff":1,`},
		{`"after":{`, `"after":{"a":{"z":1,"b":[1, 2]},`},
		{`"after":{`, `"after":{"x":1,"x":2,`},
		{`"after":{`, `"after":[],"x":{`},
		{`"op":"update"`, `"op":"delete","before":{"id":1},"after":{}`},
		{`"op":"update"`, `"op":"delete","before":null,"after":null,"x":1`},
		{`"op":"update"`, `"op":"update","before":[1,{"a":"\u2028"}]`},
		{`"op":"update"`, `"op":"update","before":{"a":1`},
		{`"unchanged":[`, `"unchanged":[1,`},
		{`"unchanged":[`, `"unchanged":["\u00fc",`},
		{`Z"`, `+00:00"`},
		{`Z"`, `z"`},
		{`"position":"`, `"position":" `},
	} {
		if !strings.Contains(doc, edit[0]) {
			t.Fatalf("%q is not in %s", edit[0], doc)
		}
		checkEventDecoders(t, []byte(strings.Replace(doc, edit[0], edit[1], 1)), false)
	}
	for _, d := range []string{"", "null", "{}", "[]", doc + "}", doc + " ", " " + doc, doc[:len(doc)-1], `{"type":"a"}`} {
		checkEventDecoders(t, []byte(d), false)
	}
}

// checkEventDecoders fails unless decodeEvent agrees with encoding/json on
// b, and, if fast, took the fast path.
func checkEventDecoders(t testing.TB, b []byte, fast bool) {
	t.Helper()
	want, werr := decodeValid("event", b, (*eventJSON).event)
	got, ok := decodeEvent(b)
	switch {
	case fast && !ok:
		t.Errorf("decodeEvent gave up on %s (encoding/json: %v)", b, werr)
	case ok && werr != nil:
		t.Errorf("decodeEvent accepted %s, which encoding/json refuses: %v", b, werr)
	case ok && !reflect.DeepEqual(got, want):
		t.Errorf("decodeEvent(%s)\n = %#v\nencoding/json: %#v", b, got, want)
	}
	checkDecodeWithoutRows(t, b)
}

// TestDecodeWithoutRowsDeep: a value nested deeper than encoding/json
// reads (which the hand-written decoder reads) decodes without rows as it
// decodes with them.
func TestDecodeWithoutRowsDeep(t *testing.T) {
	deep := strings.Repeat("[", 10001) + " " + strings.Repeat("]", 10001)
	b := []byte(`{"type":"account","id":"1","op":"insert","after":{"a":` + deep + `},"xid":0,"commit_lsn":"0/10","position":"0000000000000010:00000000","commit_time":"2024-01-01T00:00:00Z","capture_time":"2024-01-01T00:00:00Z"}`)
	if _, err := (EventCodec{}).Decode(b); err != nil {
		t.Fatal(err)
	}
	checkDecodeWithoutRows(t, b)
}

// checkDecodeWithoutRows fails unless DecodeWithoutRows and DecodeRow
// agree with Decode on b.
func checkDecodeWithoutRows(t testing.TB, b []byte) {
	t.Helper()
	want, werr := EventCodec{}.Decode(b)
	got, after, gerr := EventCodec{}.DecodeWithoutRows(b)
	if (gerr != nil) != (werr != nil) {
		t.Fatalf("DecodeWithoutRows(%s): %v; Decode: %v", b, gerr, werr)
	}
	if werr != nil {
		return
	}
	if got.After != nil || got.Before != nil {
		t.Fatalf("DecodeWithoutRows(%s) left rows: %#v", b, got)
	}
	if (after == nil) != (want.After == nil) {
		t.Fatalf("DecodeWithoutRows(%s): after %q; Decode's After %#v", b, after, want.After)
	}
	if after != nil {
		row, err := DecodeRow(after)
		if err != nil {
			t.Fatalf("DecodeRow(%s) of %s: %v", after, b, err)
		}
		// The Row Decode gives; where only encoding/json decodes the
		// event, the same but for its values' spacing.
		if _, fast := decodeEvent(b); fast && !reflect.DeepEqual(row, want.After) {
			t.Fatalf("DecodeRow(%s) = %#v; Decode's After %#v", after, row, want.After)
		}
		w, werr := json.Marshal(want.After)
		g, gerr := json.Marshal(row)
		if (werr != nil) != (gerr != nil) || string(g) != string(w) {
			t.Fatalf("DecodeRow(%s) = %#v, written %s (%v); Decode's After written %s (%v)", after, row, g, gerr, w, werr)
		}
	}
	got.After, want.After, want.Before = nil, nil, nil
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("DecodeWithoutRows(%s)\n = %#v\nDecode: %#v", b, got, want)
	}
}

// checkStateDecoders is checkEventDecoders for states.
func checkStateDecoders(t testing.TB, b []byte, fast bool) {
	t.Helper()
	want, werr := decodeValid("state", b, (*stateJSON).state)
	got, ok := decodeState(b)
	switch {
	case fast && !ok:
		t.Errorf("decodeState gave up on %s (encoding/json: %v)", b, werr)
	case ok && werr != nil:
		t.Errorf("decodeState accepted %s, which encoding/json refuses: %v", b, werr)
	case ok && !reflect.DeepEqual(got, want):
		t.Errorf("decodeState(%s)\n = %#v\nencoding/json: %#v", b, got, want)
	}
}

// FuzzFastEvent: for any input, the hand-written decoder agrees with
// encoding/json or gives up; for what decodes, the hand-written encoder
// writes encoding/json's bytes.
func FuzzFastEvent(f *testing.F) {
	for _, e := range fastEvents(f) {
		b, err := json.Marshal(e.wire())
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		checkEventDecoders(t, b, false)
		e, err := decodeValid("event", b, (*eventJSON).event)
		if err != nil {
			return
		}
		want, werr := json.Marshal(e.wire())
		got, gerr := appendEvent(nil, e, nil)
		if werr == nil && gerr == nil && string(got) != string(want) {
			t.Fatalf("appendEvent:\n got %s\nwant %s", got, want)
		}
		if werr != nil && gerr == nil {
			t.Fatalf("appendEvent wrote %s; encoding/json: %v", got, werr)
		}
	})
}

// FuzzFastState is FuzzFastEvent for states.
func FuzzFastState(f *testing.F) {
	for _, e := range fastEvents(f) {
		if st, _ := Apply(nil, e); st != nil {
			b, err := json.Marshal(st.wire())
			if err != nil {
				f.Fatal(err)
			}
			f.Add(b)
			d := &State{EntityType: e.EntityType, EntityID: e.EntityID, Deleted: true, Position: e.Position}
			b, _ = json.Marshal(d.wire())
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		checkStateDecoders(t, b, false)
		s, err := decodeValid("state", b, (*stateJSON).state)
		if err != nil {
			return
		}
		want, werr := json.Marshal(s.wire())
		got, gerr := appendState(nil, s)
		if werr == nil && gerr == nil && string(got) != string(want) {
			t.Fatalf("appendState:\n got %s\nwant %s", got, want)
		}
		if werr != nil && gerr == nil {
			t.Fatalf("appendState wrote %s; encoding/json: %v", got, werr)
		}
	})
}
