package codecs_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/changes-dev/changes/codecs"
)

var (
	commitTime  = time.Date(2026, 11, 25, 20, 0, 0, 123456000, time.UTC)
	captureTime = time.Date(2026, 11, 25, 20, 0, 0, 125000000, time.UTC)
	commitLSN   = codecs.LSN(0x16B374D848)
)

// event returns a valid event of op; each call returns fresh maps, so a test
// may change it.
func event(op codecs.Op) *codecs.Event {
	e := &codecs.Event{
		EntityType:  "account",
		EntityID:    codecs.IntKey(42),
		Op:          op,
		TxID:        750,
		CommitLSN:   commitLSN,
		Position:    codecs.Position{CommitLSN: commitLSN, Index: 2},
		CommitTime:  commitTime,
		CaptureTime: captureTime,
	}
	switch op {
	case codecs.OpInsert:
		e.After = codecs.Row{"id": json.RawMessage(`42`), "name": json.RawMessage(`"acme"`)}
	case codecs.OpUpdate:
		e.After = codecs.Row{"id": json.RawMessage(`42`), "name": json.RawMessage(`"acme 2"`), "tags": json.RawMessage(`null`)}
		e.Before = codecs.Row{"id": json.RawMessage(`42`)}
		e.Unchanged = []string{"blob"}
	case codecs.OpDelete:
		e.Before = codecs.Row{"id": json.RawMessage(`42`)}
	case codecs.OpTruncate:
		e.EntityID = codecs.IntKey(0)
	}
	return e
}

func TestEventRoundTrip(t *testing.T) {
	big := event(codecs.OpInsert)
	big.EntityID = codecs.IntKey(1<<53 + 1) // not exact in a float64
	minID := event(codecs.OpDelete)
	minID.EntityID = codecs.IntKey(math.MinInt64)
	maxAll := event(codecs.OpUpdate)
	maxAll.EntityID = codecs.IntKey(math.MaxInt64)
	maxAll.TxID = math.MaxUint32
	maxAll.CommitLSN = math.MaxUint64
	maxAll.Position = codecs.Position{CommitLSN: math.MaxUint64, Index: math.MaxUint32}
	nested := event(codecs.OpInsert)
	nested.After["doc"] = json.RawMessage(`{"a":[1,2,{"b":null}],"c":"\u00e9\n"}`)
	nested.After["n"] = json.RawMessage(`"12345678901234567890.123456789"`)

	tests := []struct {
		name string
		e    *codecs.Event
	}{
		{"insert", event(codecs.OpInsert)},
		{"update", event(codecs.OpUpdate)},
		{"delete", event(codecs.OpDelete)},
		{"truncate", event(codecs.OpTruncate)},
		{"id above 2^53", big},
		{"min id", minID},
		{"max values", maxAll},
		{"nested values", nested},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := codecs.EventCodec{}.Encode(tt.e)
			if err != nil {
				t.Fatalf("Encode: %v", err)
			}
			got, err := codecs.EventCodec{}.Decode(b)
			if err != nil {
				t.Fatalf("Decode(%s): %v", b, err)
			}
			if !reflect.DeepEqual(got, tt.e) {
				t.Errorf("Decode(Encode(e))\n got %+v\nwant %+v", got, tt.e)
			}
		})
	}
}

func TestEventJSON(t *testing.T) {
	e := event(codecs.OpUpdate)
	e.EntityID = codecs.IntKey(1<<53 + 1)
	b, err := codecs.EventCodec{}.Encode(e)
	if err != nil {
		t.Fatal(err)
	}
	// The wire format is documented in doc.go; other languages read it.
	want := `{"type":"account","id":"9007199254740993","op":"update",` +
		`"after":{"id":42,"name":"acme 2","tags":null},"before":{"id":42},"unchanged":["blob"],` +
		`"xid":750,"commit_lsn":"16/B374D848","position":"00000016B374D848:00000002",` +
		`"commit_time":"2026-11-25T20:00:00.123456Z","capture_time":"2026-11-25T20:00:00.125Z"}`
	if string(b) != want {
		t.Errorf("Encode\n got %s\nwant %s", b, want)
	}
	if !strings.Contains(string(b), `"id":"9007199254740993"`) {
		t.Errorf("the id above 2^53 does not travel as a string: %s", b)
	}
	// A reader that decodes numbers as float64 still gets the exact id.
	var generic map[string]any
	if err := json.Unmarshal(b, &generic); err != nil {
		t.Fatal(err)
	}
	if generic["id"] != "9007199254740993" {
		t.Errorf("generic id = %#v", generic["id"])
	}
}

func TestEventJSONOmitsAbsentRows(t *testing.T) {
	b, err := codecs.EventCodec{}.Encode(event(codecs.OpTruncate))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"after", "before", "unchanged"} {
		if v, ok := m[k]; ok {
			t.Errorf("truncate event has %q: %s", k, v)
		}
	}
	if string(m["id"]) != `"0"` {
		t.Errorf(`truncate id = %s, want "0"`, m["id"])
	}
}

// validJSON is a valid delete event; the decode error cases edit it.
const validJSON = `{"type":"account","id":"42","op":"delete","before":{"id":42},"xid":750,` +
	`"commit_lsn":"16/B374D848","position":"00000016B374D848:00000002",` +
	`"commit_time":"2026-11-25T20:00:00.123456Z","capture_time":"2026-11-25T20:00:00.125Z"}`

func TestEventDecodeAcceptsValidJSON(t *testing.T) {
	for name, in := range map[string]string{
		"compact":           validJSON,
		"trailing newline":  validJSON + "\n",
		"surrounding space": " \t\r\n" + validJSON + " \n",
		// New fields from a newer producer do not break older consumers.
		"unknown field": strings.Replace(validJSON, `{`, `{"future":1,`, 1),
	} {
		t.Run(name, func(t *testing.T) {
			e, err := codecs.EventCodec{}.Decode([]byte(in))
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if want := event(codecs.OpDelete); !reflect.DeepEqual(e, want) {
				t.Errorf("Decode\n got %+v\nwant %+v", e, want)
			}
		})
	}
}

func TestEventDecodeErrors(t *testing.T) {
	edit := func(old, new string) string {
		if !strings.Contains(validJSON, old) {
			panic("validJSON has no " + old)
		}
		return strings.Replace(validJSON, old, new, 1)
	}
	tests := []struct {
		name, in string
	}{
		{"empty", ""},
		{"invalid json", `{"type":`},
		{"not an object", `[1,2]`},
		{"null", `null`},
		{"trailing document", validJSON + ` {}`},
		{"trailing garbage", validJSON + `x`},
		{"trailing brace", validJSON + `}`},
		{"trailing bracket", validJSON + `]`},
		{"trailing brace after space", validJSON + "\n}"},
		{"missing type", edit(`"type":"account",`, ``)},
		{"empty type", edit(`"type":"account"`, `"type":""`)},
		{"bad op", edit(`"op":"delete"`, `"op":"upsert"`)},
		{"missing op", edit(`"op":"delete",`, ``)},
		{"zero position", edit(`"00000016B374D848:00000002"`, `"0000000000000000:00000000"`)},
		{"missing position", edit(`"position":"00000016B374D848:00000002",`, ``)},
		{"position not at commit_lsn", edit(`"commit_lsn":"16/B374D848"`, `"commit_lsn":"16/B374D849"`)},
		{"insert without after", edit(`"op":"delete"`, `"op":"insert"`)},
		{"update without after", edit(`"op":"delete"`, `"op":"update"`)},
		{"insert with null after", edit(`"op":"delete"`, `"op":"insert","after":null`)},
		// Encode omits an empty after, so accepting it here would let Encode
		// write an insert that Decode rejects.
		{"insert with empty after", edit(`"op":"delete"`, `"op":"insert","after":{}`)},
		{"id as a number", edit(`"id":"42"`, `"id":42`)},
		{"id not an integer", edit(`"id":"42"`, `"id":"4.2"`)},
		{"id out of range", edit(`"id":"42"`, `"id":"9223372036854775808"`)},
		{"bad commit_lsn", edit(`"commit_lsn":"16/B374D848"`, `"commit_lsn":"16"`)},
		{"bad position", edit(`"00000016B374D848:00000002"`, `"16/B374D848"`)},
		{"bad time", edit(`"2026-11-25T20:00:00.125Z"`, `"yesterday"`)},
		{"negative xid", edit(`"xid":750`, `"xid":-1`)},
		{"row not an object", edit(`"before":{"id":42}`, `"before":[42]`)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, err := codecs.EventCodec{}.Decode([]byte(tt.in))
			if err == nil {
				t.Fatalf("Decode(%s) = %+v, want an error", tt.in, e)
			}
			if e != nil {
				t.Errorf("Decode returned %+v with the error, want nil", e)
			}
		})
	}
}

func TestEventEncodeErrors(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(e *codecs.Event)
		want   string
	}{
		{"empty type", func(e *codecs.Event) { e.EntityType = "" }, "type is empty"},
		{"bad op", func(e *codecs.Event) { e.Op = "INSERT" }, `op "INSERT"`},
		{"zero position", func(e *codecs.Event) { e.Position, e.CommitLSN = codecs.Position{}, 0 }, "position is zero"},
		{"position not at commit_lsn", func(e *codecs.Event) { e.CommitLSN++ }, "not at commit_lsn"},
		{"insert without after", func(e *codecs.Event) { e.Op, e.After = codecs.OpInsert, nil }, "insert without after"},
		{"update without after", func(e *codecs.Event) { e.Op, e.After = codecs.OpUpdate, nil }, "update without after"},
		{"update with empty after", func(e *codecs.Event) { e.After = codecs.Row{} }, "update without after"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := event(codecs.OpUpdate)
			tt.mutate(e)
			if err := e.Validate(); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Validate() = %v, want an error containing %q", err, tt.want)
			}
			b, err := codecs.EventCodec{}.Encode(e)
			if err == nil {
				t.Errorf("Encode = %s, want an error", b)
			}
		})
	}
	t.Run("nil", func(t *testing.T) {
		if _, err := (codecs.EventCodec{}).Encode(nil); err == nil {
			t.Error("Encode(nil) succeeded")
		}
	})
}

func TestOpValid(t *testing.T) {
	tests := []struct {
		op   codecs.Op
		want bool
	}{
		{codecs.OpInsert, true},
		{codecs.OpUpdate, true},
		{codecs.OpDelete, true},
		{codecs.OpTruncate, true},
		{"", false},
		{"Insert", false},
		{"upsert", false},
	}
	for _, tt := range tests {
		t.Run(string(tt.op), func(t *testing.T) {
			if got := tt.op.Valid(); got != tt.want {
				t.Errorf("Op(%q).Valid() = %v, want %v", tt.op, got, tt.want)
			}
		})
	}
}

func TestRowDecode(t *testing.T) {
	row := codecs.Row{
		"id":    json.RawMessage(`9007199254740993`),
		"name":  json.RawMessage(`"acme"`),
		"score": json.RawMessage(`1.5`),
		"note":  json.RawMessage(`null`),
		"extra": json.RawMessage(`true`),
	}
	t.Run("struct", func(t *testing.T) {
		var got struct {
			ID    int64   `json:"id"`
			Name  string  `json:"name"`
			Score float64 `json:"score"`
			Note  *string `json:"note"`
		}
		if err := row.Decode(&got); err != nil {
			t.Fatal(err)
		}
		if got.ID != 9007199254740993 || got.Name != "acme" || got.Score != 1.5 || got.Note != nil {
			t.Errorf("Decode = %+v", got)
		}
	})
	t.Run("map", func(t *testing.T) {
		var got map[string]any
		if err := row.Decode(&got); err != nil {
			t.Fatal(err)
		}
		if len(got) != len(row) || got["extra"] != true || got["note"] != nil {
			t.Errorf("Decode = %v", got)
		}
	})
	t.Run("type mismatch", func(t *testing.T) {
		var got struct {
			Name int `json:"name"`
		}
		if err := row.Decode(&got); err == nil {
			t.Errorf("Decode of a string into an int succeeded: %+v", got)
		}
	})
	t.Run("invalid raw value", func(t *testing.T) {
		var got map[string]any
		if err := (codecs.Row{"x": json.RawMessage(`{`)}).Decode(&got); err == nil {
			t.Error("Decode of an invalid raw value succeeded")
		}
	})
}

// eventSeeds are valid events the capture could write, and hand-written
// documents that Decode accepts but that are not in the form Encode writes.
func eventSeeds(f *testing.F) {
	for _, op := range []codecs.Op{codecs.OpInsert, codecs.OpUpdate, codecs.OpDelete, codecs.OpTruncate} {
		b, err := codecs.EventCodec{}.Encode(event(op))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	for _, edit := range [][2]string{
		{"", ""},
		{`"before":{"id":42}`, `"before":{}`},
		{`"before":{"id":42}`, `"before":{"id":42},"unchanged":[]`},
		{`"before":{"id":42}`, `"before":{"id": [1, 2.50, {"a" : "<b>\u00e9"}]}`},
		{`"before":{"id":42}`, "\"before\":{\"id\":\"\u2028\\ud800\"}"},
		{`"op":"delete"`, `"op":"insert","after":{}`},
		{`2026-11-25T20:00:00.125Z`, `2026-11-25T20:00:00.125+00:00`},
		{`2026-11-25T20:00:00.125Z`, `0000-01-01T00:00:00+01:00`},
		{`2026-11-25T20:00:00.125Z`, `9999-12-31T23:59:59.9999999999-23:59`},
		{`"id":"42"`, `"id":"-0"`},
		{`"type"`, `"TYPE"`},
	} {
		f.Add([]byte(strings.Replace(validJSON, edit[0], edit[1], 1)))
	}
	f.Add([]byte(validJSON + "}"))
	f.Add([]byte(`{}`))
}

// FuzzEventCodec checks that Decode never panics, that whatever it accepts
// Encode writes back with the same meaning, and that what Encode writes
// decodes to exactly the same value. The first round trip may change the
// representation of a hand-written document (see sameEvent), never its
// meaning.
func FuzzEventCodec(f *testing.F) {
	eventSeeds(f)
	c := codecs.EventCodec{}
	f.Fuzz(func(t *testing.T, data []byte) {
		e, err := c.Decode(data)
		if err != nil {
			if e != nil {
				t.Fatalf("Decode returned %+v with error %v", e, err)
			}
			return
		}
		b, err := c.Encode(e)
		if err != nil {
			t.Fatalf("Decode(%q) = %+v, which Encode rejects: %v", data, e, err)
		}
		if j, err := json.Marshal(e); err != nil || !bytes.Equal(j, b) {
			t.Fatalf("Encode differs from encoding/json for e from %q:\n    Encode %s\nencoding/json %s (%v)", data, b, j, err)
		}
		e2, err := c.Decode(b)
		if err != nil {
			t.Fatalf("Decode(Encode(e)) for e from %q: %v\nencoded: %s", data, err, b)
		}
		if diff := sameEvent(e, e2); diff != "" {
			t.Fatalf("Decode(Encode(e)) changed %s; e from %q, encoded %s", diff, data, b)
		}
		b2, err := c.Encode(e2)
		if err != nil {
			t.Fatalf("Encode(Decode(Encode(e))): %v", err)
		}
		if string(b2) != string(b) {
			t.Fatalf("Encode is not stable:\n first %s\nsecond %s", b, b2)
		}
		e3, err := c.Decode(b2)
		if err != nil || !reflect.DeepEqual(e3, e2) {
			t.Fatalf("Decode(Encode(v)) != v for v = %#v\n got %#v, %v", e2, e3, err)
		}
	})
}

// sameEvent reports how a and b differ in meaning, or "" if they do not:
// times are compared as instants, rows as JSON values, and a missing row or
// list is the same as an empty one.
func sameEvent(a, b *codecs.Event) string {
	switch {
	case a.EntityType != b.EntityType || a.EntityID != b.EntityID || a.Op != b.Op || a.TxID != b.TxID:
		return fmt.Sprintf("identity: %s/%s/%s/%d vs %s/%s/%s/%d", a.EntityType, a.EntityID, a.Op, a.TxID, b.EntityType, b.EntityID, b.Op, b.TxID)
	case a.CommitLSN != b.CommitLSN || a.Position != b.Position:
		return fmt.Sprintf("position: %s %s vs %s %s", a.CommitLSN, a.Position, b.CommitLSN, b.Position)
	case !a.CommitTime.Equal(b.CommitTime) || !a.CaptureTime.Equal(b.CaptureTime):
		return fmt.Sprintf("times: %s %s vs %s %s", a.CommitTime, a.CaptureTime, b.CommitTime, b.CaptureTime)
	case !slices.Equal(a.Unchanged, b.Unchanged):
		return fmt.Sprintf("unchanged: %q vs %q", a.Unchanged, b.Unchanged)
	}
	if d := sameRow(a.After, b.After); d != "" {
		return "after: " + d
	}
	if d := sameRow(a.Before, b.Before); d != "" {
		return "before: " + d
	}
	return ""
}

func sameRow(a, b codecs.Row) string {
	if len(a) != len(b) {
		return fmt.Sprintf("%d columns vs %d", len(a), len(b))
	}
	for k, va := range a {
		vb, ok := b[k]
		if !ok {
			return fmt.Sprintf("column %q missing", k)
		}
		ja, errA := jsonValue(va)
		jb, errB := jsonValue(vb)
		if errA != nil || errB != nil || !reflect.DeepEqual(ja, jb) {
			return fmt.Sprintf("column %q: %s vs %s", k, va, vb)
		}
	}
	return ""
}

// jsonValue decodes raw keeping numbers as written, so 1 and 1.0 differ
// and no digit is lost to float64.
func jsonValue(raw json.RawMessage) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	err := dec.Decode(&v)
	return v, err
}

// TestEventEncodeMatchesJSON holds Encode, written by hand, to the bytes
// encoding/json writes for the same event (Event.MarshalJSON), on the values
// where the two could part: escapes, HTML characters, U+2028, invalid UTF-8,
// raw values that need compacting, numbers, times with zones.
func TestEventEncodeMatchesJSON(t *testing.T) {
	raws := []string{
		`42`, `-0`, `0.5`, `-1.25e+10`, `1E-7`, `9007199254740993`, `true`, `false`, `null`,
		`"plain"`, `"caf\u00e9 \"q\" \\ \/ \b\f\n\r\t"`, `"<b>&amp;</b>"`, `"\u003cb\u003e"`,
		"\"line\u2028sep\u2029\"", "\"raw \xe2\x80\xa8 sep\"", "\"bad \xff utf8\"", `"é ü 日本"`,
		`{"a": 1, "b": [1, 2.50, {"c" : "<d>"}]}`, `[ ]`, ` 42 `, `{"k":"v"}`, `"x"`,
		`{"geo":["US","DE"],"max_cpm":17}`, `""`,
	}
	names := []string{"id", "a<b>", "tab\tname", "é", "\u2028", "bad\xffname", `q"uote`, "back\\slash", "ctl\x01"}
	for i, raw := range raws {
		e := event(codecs.OpUpdate)
		e.After["v"] = json.RawMessage(raw)
		e.Before[names[i%len(names)]] = json.RawMessage(raw)
		e.Unchanged = []string{names[i%len(names)], "blob"}
		e.EntityType = names[(i+1)%len(names)]
		e.CommitTime = time.Date(2026, 1, 2, 3, 4, 5, i*1000, time.FixedZone("x", (i-12)*3600+i*60))
		e.CaptureTime = time.Date(1+i*400, 12, 31, 23, 59, 59, 999999999, time.UTC)
		if i%3 == 0 {
			e.EntityID = codecs.TextKey("k/" + names[i%len(names)])
		}
		if i%4 == 1 {
			e.EntityID, _ = codecs.UUIDKey("0b6f3d6e-1c2a-4f6b-9a51-2f3c4d5e6f70")
		}
		if i%5 == 2 {
			e.EntityID = codecs.CompositeKey(codecs.IntKey(int64(i)), codecs.TextKey(names[i%len(names)]))
		}
		t.Run(fmt.Sprintf("%d %s", i, raw), func(t *testing.T) {
			want, werr := json.Marshal(e)
			got, gerr := codecs.EventCodec{}.Encode(e)
			if (werr != nil) != (gerr != nil) || !bytes.Equal(got, want) {
				t.Errorf("Encode:\n got %s (%v)\nwant %s (%v)", got, gerr, want, werr)
			}
		})
	}
	for _, raw := range []string{``, `{`, `01`, `1.`, `.5`, `+1`, `"open`, `"bad \x"`, `"\u12"`, `tru`, `nul`, `1 2`, `"a" "b"`, "\"ctl \x01\""} {
		e := event(codecs.OpUpdate)
		e.After["v"] = json.RawMessage(raw)
		if b, err := (codecs.EventCodec{}).Encode(e); err == nil {
			t.Errorf("Encode with raw value %q = %s, want an error (encoding/json: %v)", raw, b, func() error { _, err := json.Marshal(e); return err }())
		}
	}
}

// FuzzEventEncodeMatchesJSON checks that Encode writes exactly what
// encoding/json writes for the event, and fails where it fails, whatever the
// raw values, column names, type and unchanged names.
func FuzzEventEncodeMatchesJSON(f *testing.F) {
	f.Add("id", []byte(`42`), "account", int64(0))
	f.Add("a<b>", []byte(`"<x> & \u2028"`), "t\u2028", int64(3600))
	f.Add("n", []byte(`{"a" : [1, 2.5e3, "\u00e9"]}`), "\xff", int64(-7200))
	f.Add("n", []byte("\"\xe2\x80\xa9\""), "x", int64(1))
	f.Add("n", []byte(`-0.0E+00`), "x", int64(0))
	f.Fuzz(func(t *testing.T, name string, raw []byte, typ string, offset int64) {
		e := event(codecs.OpUpdate)
		e.After[name] = json.RawMessage(raw)
		e.Before[name] = json.RawMessage(raw)
		e.Unchanged = []string{name, typ}
		e.EntityType = typ
		e.CommitTime = time.Unix(offset*997, offset).In(time.FixedZone("f", int(offset%(30*3600))))
		e.EntityID = codecs.TextKey(typ)
		if e.Validate() != nil {
			return
		}
		want, werr := json.Marshal(e)
		got, gerr := codecs.EventCodec{}.Encode(e)
		if (werr != nil) != (gerr != nil) || (werr == nil && !bytes.Equal(got, want)) {
			t.Fatalf("Encode:\n got %s (%v)\nwant %s (%v)", got, gerr, want, werr)
		}
	})
}

func TestResyncMarker(t *testing.T) {
	at := codecs.Position{CommitLSN: 0x2000, Index: 0}
	marker := &codecs.Event{
		Op: codecs.OpResync, TxID: 0, CommitLSN: at.CommitLSN, Position: at,
		CommitTime: time.Date(2026, 12, 2, 3, 0, 0, 0, time.UTC), CaptureTime: time.Date(2026, 12, 2, 3, 0, 1, 0, time.UTC),
		Resync: &codecs.Resync{Slot: "changes", After: codecs.Position{CommitLSN: 0x1000, Index: 3}, Until: 0x2001, Types: []string{"a", "b"}},
	}
	raw, err := codecs.EventCodec{}.Encode(marker)
	if err != nil {
		t.Fatal(err)
	}
	got, err := codecs.EventCodec{}.Decode(raw)
	if err != nil {
		t.Fatalf("decode %s: %v", raw, err)
	}
	if !reflect.DeepEqual(got, marker) {
		t.Fatalf("round trip of %s:\n got %+v\nwant %+v", raw, got, marker)
	}
	var viaJSON codecs.Event
	if err := json.Unmarshal(raw, &viaJSON); err != nil || !reflect.DeepEqual(&viaJSON, marker) {
		t.Fatalf("encoding/json of %s: %+v, %v", raw, viaJSON, err)
	}
	for name, bad := range map[string]func(e *codecs.Event){
		"no marker":       func(e *codecs.Event) { e.Resync = nil },
		"an entity type":  func(e *codecs.Event) { e.EntityType = "a" },
		"an entity id":    func(e *codecs.Event) { e.EntityID = codecs.IntKey(7) },
		"a row":           func(e *codecs.Event) { e.After = codecs.Row{"id": json.RawMessage("1")} },
		"another op":      func(e *codecs.Event) { e.Op = codecs.OpUpdate },
		"a zero position": func(e *codecs.Event) { e.Position, e.CommitLSN = codecs.Position{}, 0 },
	} {
		e := *marker
		bad(&e)
		if _, err := (codecs.EventCodec{}).Encode(&e); err == nil {
			t.Errorf("a resync marker with %s encoded", name)
		}
	}
}

func TestWatermark(t *testing.T) {
	at := codecs.Position{CommitLSN: 0x3000}
	wm := &codecs.Event{
		Op: codecs.OpWatermark, CommitLSN: at.CommitLSN, Position: at,
		CommitTime: time.Date(2026, 12, 2, 3, 0, 0, 0, time.UTC), CaptureTime: time.Date(2026, 12, 2, 3, 0, 1, 0, time.UTC),
	}
	raw, err := codecs.EventCodec{}.Encode(wm)
	if err != nil {
		t.Fatal(err)
	}
	got, err := codecs.EventCodec{}.Decode(raw)
	if err != nil {
		t.Fatalf("decode %s: %v", raw, err)
	}
	if !reflect.DeepEqual(got, wm) {
		t.Fatalf("round trip of %s:\n got %+v\nwant %+v", raw, got, wm)
	}
	var viaJSON codecs.Event
	if err := json.Unmarshal(raw, &viaJSON); err != nil || !reflect.DeepEqual(&viaJSON, wm) {
		t.Fatalf("encoding/json of %s: %+v, %v", raw, viaJSON, err)
	}
	if wm.Op.IsChange() || codecs.OpResync.IsChange() || !codecs.OpTruncate.IsChange() {
		t.Error("IsChange: markers are not changes, a truncate is")
	}
	for name, bad := range map[string]func(e *codecs.Event){
		"an entity type":   func(e *codecs.Event) { e.EntityType = "a" },
		"an entity id":     func(e *codecs.Event) { e.EntityID = codecs.IntKey(7) },
		"a row":            func(e *codecs.Event) { e.After = codecs.Row{"id": json.RawMessage("1")} },
		"an index":         func(e *codecs.Event) { e.Position.Index = 1 },
		"a zero position":  func(e *codecs.Event) { e.Position, e.CommitLSN = codecs.Position{}, 0 },
		"a resync marker":  func(e *codecs.Event) { e.Resync = &codecs.Resync{Slot: "s"} },
		"another position": func(e *codecs.Event) { e.Position.CommitLSN++ },
	} {
		e := *wm
		bad(&e)
		if _, err := (codecs.EventCodec{}).Encode(&e); err == nil {
			t.Errorf("a watermark with %s encoded", name)
		}
	}
}
