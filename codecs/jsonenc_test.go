package codecs

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

// The hand-written encoders must write exactly what json.Marshal writes:
// the wire format was defined by it, and consumers may compare bytes.

// marshalEvent is how Encode wrote an event before it was written by hand.
func marshalEvent(e *Event) ([]byte, error) { return json.Marshal(e.wire()) }

// jsonSamples are strings and raw values that exercise every escape.
var jsonSamples = []string{
	"", "plain", `quo"te`, `back\slash`, "tab\tnl\ncr\rbs\bff\f", "\x00\x01\x1f\x7f",
	"<html>&amp;", "\u2028\u2029", "ü é 日本 🎉", "\xff\xfe", "a\xe2\x80", "\xe2\x80\xa8x", "\xed\xa0\x80",
	`{"a": [1, 2], "b": "x y"}`, "  [ true ,false , null ]  ", `"s <b> \u003c \" \\ "`, `{"k":"\u2028"}`,
	"{\"e\": \"\xe2\x80\xa9\"}", `12`, ` -0.5e+3 `, `{"a" : {"b" :[ ]}}`, `nul`, `{"a":}`, `"unterminated`,
	`[1,]`, "\"ctl\x01\"", `{"a":1}{}`,
}

func TestAppendStringIsMarshal(t *testing.T) {
	for _, s := range jsonSamples {
		want, _ := json.Marshal(s)
		if got := appendString(nil, s); string(got) != string(want) {
			t.Errorf("appendString(%q) = %s, json.Marshal: %s", s, got, want)
		}
		if got := appendString(nil, []byte(s)); string(got) != string(want) {
			t.Errorf("appendString([]byte(%q)) = %s, json.Marshal: %s", s, got, want)
		}
	}
}

func TestAppendRawIsMarshal(t *testing.T) {
	for _, s := range append(jsonSamples, "") {
		checkRaw(t, []byte(s))
	}
	checkRaw(t, nil)
}

func checkRaw(t *testing.T, v []byte) {
	t.Helper()
	want, wantErr := json.Marshal(json.RawMessage(v))
	got, err := appendRaw([]byte("prefix"), v)
	if (err != nil) != (wantErr != nil) {
		t.Fatalf("appendRaw(%q): error %v, json.Marshal: %v", v, err, wantErr)
	}
	if err == nil && string(got) != "prefix"+string(want) {
		t.Fatalf("appendRaw(%q) = %s, json.Marshal: %s", v, got[len("prefix"):], want)
	}
}

func FuzzAppendString(f *testing.F) {
	for _, s := range jsonSamples {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		want, _ := json.Marshal(s)
		if got := appendString(nil, s); string(got) != string(want) {
			t.Fatalf("appendString(%q) = %s, json.Marshal: %s", s, got, want)
		}
		checkRaw(t, []byte(s))
	})
}

func TestAppendHex(t *testing.T) {
	for _, v := range []uint64{0, 1, 0xA, 0xFFFFFFFF, 0x16B374D848, 1<<64 - 1} {
		for _, w := range []int{1, 8, 16} {
			want := fmt.Sprintf("%0*X", w, v)
			if got := string(appendHex(nil, v, w)); got != want {
				t.Errorf("appendHex(%#x, %d) = %s, want %s", v, w, got, want)
			}
		}
		if got, want := string(appendLSN(nil, LSN(v))), LSN(v).String(); got != want {
			t.Errorf("appendLSN(%#x) = %s, want %s", v, got, want)
		}
		p := Position{CommitLSN: LSN(v), Index: uint32(v)}
		if got, _ := p.AppendText(nil); string(got) != p.String() {
			t.Errorf("Position.AppendText = %s, want %s", got, p.String())
		}
	}
}

// randomEvent is an event with random fields, valid or not.
func randomEvent(r *rand.Rand) *Event {
	pick := func() string { return jsonSamples[r.IntN(len(jsonSamples))] }
	row := func() Row {
		switch r.IntN(4) {
		case 0:
			return nil
		case 1:
			return Row{}
		}
		out := Row{}
		for range 1 + r.IntN(40) { // past appendRow's 32 keys on the stack
			var v json.RawMessage
			switch r.IntN(5) {
			case 0:
				v = nil
			case 1:
				v = json.RawMessage(pick())
			default:
				b, _ := json.Marshal(pick())
				v = b
			}
			out[pick()+fmt.Sprint(r.IntN(50))] = v
		}
		return out
	}
	keys := []Key{IntKey(0), IntKey(r.Int64() - r.Int64()), TextKey(pick()), CompositeKey(TextKey(pick()), IntKey(7)), {kind: KeyKind(9), text: "x"}}
	uuid, _ := UUIDKey("0B6F3D6E-1C2A-4F6B-9A51-2F3C4D5E6F70")
	keys = append(keys, uuid)
	times := []time.Time{
		time.Date(2026, 11, 25, 20, 0, 0, 123456000, time.UTC), time.Unix(r.Int64N(1<<35), r.Int64N(1e9)).UTC(),
		time.Unix(r.Int64N(1<<35), 0).In(time.FixedZone("x", 5*3600+1800)), {}, time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(2026, 1, 1, 0, 0, 0, 0, time.FixedZone("far", 30*3600)),
	}
	var unchanged []string
	if r.IntN(2) == 0 {
		unchanged = []string{}
		for range r.IntN(3) {
			unchanged = append(unchanged, pick())
		}
	}
	lsn := LSN(r.Uint64() >> r.IntN(64))
	return &Event{
		EntityType: pick(), EntityID: keys[r.IntN(len(keys))], Op: []Op{OpSnapshot, OpInsert, "weird<op>"}[r.IntN(3)],
		After: row(), Before: row(), Unchanged: unchanged, TxID: r.Uint32(), CommitLSN: lsn,
		Position:   Position{CommitLSN: lsn, Index: r.Uint32() >> r.IntN(32)},
		CommitTime: times[r.IntN(len(times))], CaptureTime: times[r.IntN(len(times))],
	}
}

func TestAppendEventIsMarshal(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 20000 {
		e := randomEvent(r)
		want, wantErr := marshalEvent(e)
		got, err := appendEvent(nil, e, nil)
		if (err != nil) != (wantErr != nil) {
			t.Fatalf("event %d %+v: error %v, json.Marshal: %v", i, e, err, wantErr)
		}
		if err == nil && string(got) != string(want) {
			t.Fatalf("event %d:\n got %s\nwant %s", i, got, want)
		}
		if wantErr != nil {
			continue
		}
		// Encode is appendEvent for a valid event; MarshalJSON always.
		if m, err := json.Marshal(e); err != nil || string(m) != string(want) {
			t.Fatalf("event %d: json.Marshal(Event) = %s, %v\nwant %s", i, m, err, want)
		}
		if e.Validate() == nil {
			enc, err := EventCodec{}.Encode(e)
			if err != nil || string(enc) != string(want) {
				t.Fatalf("event %d: Encode = %s, %v\nwant %s", i, enc, err, want)
			}
		}
	}
}

// textValues are PostgreSQL text values of the types ColumnValue maps.
var textValues = []struct {
	oid  uint32
	text string
}{
	{oidInt8, "-9223372036854775808"}, {oidInt8, "9223372036854775807"}, {oidInt8, "9223372036854775808"},
	{oidInt4, "+1"}, {oidInt2, "007"}, {oidInt2, "0"}, {oidInt2, "-0"}, {oidInt8, "-"}, {oidInt8, ""}, {oidOID, "4294967295"},
	{oidInt8, "1e3"}, {oidInt8, "12a"}, {oidInt8, "1234567890123456789"}, {oidInt8, "-1234567890123456789"},
	{oidFloat8, "1.5"}, {oidFloat8, "NaN"}, {oidFloat4, "-Infinity"}, {oidFloat8, "1e+100"}, {oidFloat8, ".5"}, {oidFloat8, "inf"},
	{oidBool, "t"}, {oidBool, "f"}, {oidBool, "true"},
	{oidJSON, `{"a": [1, 2], "h": "<b>&"}`}, {oidJSONB, `"x"`}, {oidJSONB, `{"a": }`}, {oidJSONB, "{\"s\": \"\xe2\x80\xa8\"}"},
	{1700, "12345678901234567890.123456789"}, {17, `\xdeadbeef`}, {25, "ü\"\n<&>"}, {25, "\xff\xfe"}, {1184, "2026-12-01 18:05:25.591347+00"},
}

func TestRowEncoderIsTextRow(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for range 20000 {
		n := 1 + r.IntN(12)
		names, oids, values := make([]string, n), make([]uint32, n), make([][]byte, n)
		for k := range n {
			names[k] = jsonSamples[r.IntN(len(jsonSamples))] + fmt.Sprint(r.IntN(8)) // duplicates too
			v := textValues[r.IntN(len(textValues))]
			oids[k], values[k] = v.oid, []byte(v.text)
			if r.IntN(8) == 0 {
				values[k] = nil
			}
		}
		checkRowEncoder(t, names, oids, values)
	}
}

func checkRowEncoder(t *testing.T, names []string, oids []uint32, values [][]byte) {
	t.Helper()
	row, wantErr := TextRow(names, oids, values)
	var want []byte
	if wantErr == nil {
		var err error
		if want, err = json.Marshal(row); err != nil {
			t.Fatalf("json.Marshal(TextRow(%q, %v, %q)): %v", names, oids, values, err)
		}
	}
	enc, err := NewRowEncoder(names, oids)
	if err != nil {
		t.Fatal(err)
	}
	got, err := enc.Append([]byte("x"), values)
	if (err != nil) != (wantErr != nil) {
		t.Fatalf("Append(%q, %v, %q): error %v, TextRow: %v", names, oids, values, err, wantErr)
	}
	if err != nil {
		if string(got) != "x" {
			t.Fatalf("Append failed and changed dst: %q", got)
		}
		return
	}
	if string(got) != "x"+string(want) {
		t.Fatalf("Append(%q, %v, %q)\n got %s\nwant %s", names, oids, values, got[1:], want)
	}
}

func FuzzRowEncoder(f *testing.F) {
	for _, v := range textValues {
		f.Add(v.oid, []byte(v.text), "name")
	}
	f.Fuzz(func(t *testing.T, oid uint32, text []byte, name string) {
		checkRowEncoder(t, []string{name, "id"}, []uint32{oid, oidInt8}, [][]byte{text, []byte("1")})
	})
}

func TestAppendWithAfter(t *testing.T) {
	enc, err := NewRowEncoder([]string{"id", "name", "doc"}, []uint32{oidInt8, 25, oidJSONB})
	if err != nil {
		t.Fatal(err)
	}
	values := [][]byte{[]byte("42"), []byte("a <b>"), []byte(`{"x": [1, 2]}`)}
	row, err := TextRow([]string{"id", "name", "doc"}, []uint32{oidInt8, 25, oidJSONB}, values)
	if err != nil {
		t.Fatal(err)
	}
	after, err := enc.Append(nil, values)
	if err != nil {
		t.Fatal(err)
	}
	lsn := LSN(0x16B374D848)
	e := &Event{EntityType: "item", EntityID: IntKey(42), Op: OpSnapshot, CommitLSN: lsn,
		Position: Position{CommitLSN: lsn, Index: 7}, CommitTime: time.Now().UTC(), CaptureTime: time.Now().UTC()}
	got, err := EventCodec{}.AppendWithAfter([]byte("x"), e, after)
	if err != nil {
		t.Fatal(err)
	}
	withRow := *e
	withRow.After = row
	want, err := EventCodec{}.Encode(&withRow)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "x"+string(want) {
		t.Fatalf("AppendWithAfter\n got %s\nwant %s", got[1:], want)
	}
	bad := *e
	bad.EntityType = ""
	for _, c := range []struct {
		e     *Event
		after []byte
		want  string
	}{
		{&bad, after, "type is empty"},
		{&withRow, after, "both After"},
		{e, nil, "without after"},
		{nil, after, "nil"},
	} {
		got, err := EventCodec{}.AppendWithAfter([]byte("x"), c.e, c.after)
		if err == nil || !strings.Contains(err.Error(), c.want) || string(got) != "x" {
			t.Errorf("AppendWithAfter: %q, %v; want an error with %q and dst unchanged", got, err, c.want)
		}
	}
}
