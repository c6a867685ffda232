package codecs_test

import (
	"encoding/json"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/changes-dev/changes/codecs"
)

func mustUUID(t testing.TB, s string) codecs.Key {
	t.Helper()
	k, err := codecs.UUIDKey(s)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestParseKeyCanonical(t *testing.T) {
	long := strings.Repeat("x", codecs.MaxKeyBytes)
	tests := []struct {
		kind codecs.KeyKind
		text string
		want codecs.Key
	}{
		{codecs.KeyInteger, "0", codecs.IntKey(0)},
		{codecs.KeyInteger, "42", codecs.IntKey(42)},
		{codecs.KeyInteger, "-7", codecs.IntKey(-7)},
		{codecs.KeyInteger, "9223372036854775807", codecs.IntKey(9223372036854775807)},
		{codecs.KeyInteger, "-9223372036854775808", codecs.IntKey(-9223372036854775808)},
		{codecs.KeyUUID, "0b6f3d6e-1c2a-4f6b-9a51-2f3c4d5e6f70", mustUUID(t, "0b6f3d6e-1c2a-4f6b-9a51-2f3c4d5e6f70")},
		{codecs.KeyText, "", codecs.TextKey("")},
		{codecs.KeyText, "42", codecs.TextKey("42")},
		{codecs.KeyText, "a/b c%2F ü \"q\"", codecs.TextKey("a/b c%2F ü \"q\"")},
		{codecs.KeyText, long, codecs.TextKey(long)},
		{codecs.KeyComposite, `["acme","42"]`, codecs.CompositeKey(codecs.TextKey("acme"), codecs.IntKey(42))},
		{codecs.KeyComposite, `["",""]`, codecs.CompositeKey(codecs.TextKey(""), codecs.TextKey(""))},
		{codecs.KeyComposite, `["a\"b","c\\d","\n\u001f","ü","` + "\u2028" + `"]`,
			codecs.CompositeKey(codecs.TextKey("a\"b"), codecs.TextKey(`c\d`), codecs.TextKey("\n\x1f"), codecs.TextKey("ü"), codecs.TextKey("\u2028"))},
	}
	for _, tt := range tests {
		got, err := codecs.ParseKey(tt.kind, tt.text)
		if err != nil {
			t.Errorf("ParseKey(%s, %q): %v", tt.kind, tt.text, err)
			continue
		}
		if got != tt.want || got.Kind() != tt.kind || got.String() != tt.text {
			t.Errorf("ParseKey(%s, %q) = %s %q, want %s %q", tt.kind, tt.text, got.Kind(), got, tt.want.Kind(), tt.want)
		}
		if err := got.Validate(); err != nil {
			t.Errorf("%q.Validate: %v", got, err)
		}
	}
	if k := codecs.IntKey(0); k != (codecs.Key{}) || k.String() != "0" {
		t.Errorf("IntKey(0) = %#v %q, want the zero Key, \"0\"", k, k)
	}
	if id, ok := codecs.IntKey(-5).Int(); !ok || id != -5 {
		t.Errorf("IntKey(-5).Int() = %d, %v", id, ok)
	}
	if _, ok := codecs.TextKey("5").Int(); ok {
		t.Error("TextKey(\"5\").Int() is ok")
	}
	if codecs.TextKey("42") == codecs.IntKey(42) {
		t.Error("text key 42 == integer key 42")
	}
}

func TestParseKeyRefuses(t *testing.T) {
	tests := []struct {
		kind codecs.KeyKind
		text string
	}{
		{codecs.KeyInteger, ""},
		{codecs.KeyInteger, "042"},
		{codecs.KeyInteger, "+1"},
		{codecs.KeyInteger, "-0"},
		{codecs.KeyInteger, "00"},
		{codecs.KeyInteger, " 1"},
		{codecs.KeyInteger, "1.0"},
		{codecs.KeyInteger, "x"},
		{codecs.KeyInteger, "9223372036854775808"},
		{codecs.KeyUUID, "0B6F3D6E-1C2A-4F6B-9A51-2F3C4D5E6F70"},
		{codecs.KeyUUID, "0b6f3d6e1c2a4f6b9a512f3c4d5e6f70"},
		{codecs.KeyUUID, "{0b6f3d6e-1c2a-4f6b-9a51-2f3c4d5e6f70}"},
		{codecs.KeyUUID, "0b6f3d6e-1c2a-4f6b-9a51-2f3c4d5e6f7"},
		{codecs.KeyUUID, "0b6f3d6e-1c2a-4f6b-9a51-2f3c4d5e6f7g"},
		{codecs.KeyUUID, ""},
		{codecs.KeyText, "\xff"},
		{codecs.KeyText, "a\xc3"},
		{codecs.KeyText, strings.Repeat("x", codecs.MaxKeyBytes+1)},
		{codecs.KeyComposite, `["acme", "42"]`},
		{codecs.KeyComposite, ` ["acme","42"]`},
		{codecs.KeyComposite, `["acme","42"] `},
		{codecs.KeyComposite, `["acme"]`},
		{codecs.KeyComposite, `[]`},
		{codecs.KeyComposite, `null`},
		{codecs.KeyComposite, `"acme"`},
		{codecs.KeyComposite, `["acme",42]`},
		{codecs.KeyComposite, `["acme",null]`},
		{codecs.KeyComposite, `["a\u0041","b"]`}, // A escaped
		{codecs.KeyComposite, `["a\/","b"]`},     // / escaped
		{codecs.KeyComposite, `["\u000A","b"]`},  // \n as \u, uppercase
		{codecs.KeyComposite, `["\u001F","b"]`},  // uppercase hex
		{codecs.KeyComposite, `["\u00fc","b"]`},  // ü escaped
		{codecs.KeyComposite, `["\u2028","b"]`},  // U+2028 escaped
		{codecs.KeyComposite, "[\"\xff\",\"b\"]"},
		{codecs.KeyComposite, `["a","b"`},
		{codecs.KeyComposite, `["` + strings.Repeat("x", codecs.MaxKeyBytes) + `","b"]`},
		{codecs.KeyKind(9), "1"},
	}
	for _, tt := range tests {
		if k, err := codecs.ParseKey(tt.kind, tt.text); err == nil {
			t.Errorf("ParseKey(%s, %q) = %q, want an error", tt.kind, tt.text, k)
		}
	}
}

func TestUUIDKeyNormalises(t *testing.T) {
	const want = "0b6f3d6e-1c2a-4f6b-9a51-2f3c4d5e6f70"
	for _, s := range []string{
		want,
		"0B6F3D6E-1C2A-4F6B-9A51-2F3C4D5E6F70",
		"0b6f3d6e1c2a4f6b9a512f3c4d5e6f70",
		"0B6F3D6E1C2A4F6B9A512F3C4D5E6F70",
		"0b6F3d6E-1c2A-4f6B-9a51-2F3c4D5e6F70",
	} {
		k, err := codecs.UUIDKey(s)
		if err != nil || k.String() != want || k.Kind() != codecs.KeyUUID {
			t.Errorf("UUIDKey(%q) = %s %q, %v; want uuid %q", s, k.Kind(), k, err, want)
		}
	}
	for _, s := range []string{"", "0b6f3d6e", "0b6f3d6e-1c2a-4f6b-9a51-2f3c4d5e6f70-", "0b6f3d6e-1c2a-4f6b-9a51-2f3c4d5e6f7z", "0b6f3d6e-1c2a-4f6b-9a51-2f3c4d5e6f70a"} {
		if k, err := codecs.UUIDKey(s); err == nil {
			t.Errorf("UUIDKey(%q) = %q, want an error", s, k)
		}
	}
}

func textParts(parts ...string) codecs.Key {
	keys := make([]codecs.Key, len(parts))
	for i, p := range parts {
		keys[i] = codecs.TextKey(p)
	}
	return codecs.CompositeKey(keys...)
}

func TestCompositeKeyRFC8785(t *testing.T) {
	u := mustUUID(t, "0B6F3D6E1C2A4F6B9A512F3C4D5E6F70")
	tests := []struct {
		key  codecs.Key
		want string
	}{
		{codecs.CompositeKey(codecs.TextKey("acme"), codecs.IntKey(42)), `["acme","42"]`},
		{codecs.CompositeKey(codecs.IntKey(-1), codecs.IntKey(0), u), `["-1","0","0b6f3d6e-1c2a-4f6b-9a51-2f3c4d5e6f70"]`},
		{textParts(`a"b`, `c\d`), `["a\"b","c\\d"]`},
		{textParts("a,b", "[x]", "p/q"), `["a,b","[x]","p/q"]`},
		{textParts("\b\t\n\f\r", "x"), `["\b\t\n\f\r","x"]`},
		{textParts("\x00\x01\x1f\x7f", "\x0b"), `["\u0000\u0001\u001f` + "\x7f" + `","\u000b"]`},
		{textParts("ü€😀", "\u2028\u2029"), "[\"ü€😀\",\"\u2028\u2029\"]"},
		{textParts("<&>", "'"), `["<&>","'"]`},
		{textParts("", ""), `["",""]`},
	}
	for _, tt := range tests {
		if tt.key.Kind() != codecs.KeyComposite || tt.key.String() != tt.want {
			t.Errorf("composite key = %s %s, want %s", tt.key.Kind(), tt.key, tt.want)
		}
		if err := tt.key.Validate(); err != nil {
			t.Errorf("%s.Validate: %v", tt.key, err)
		}
		// What JSON.stringify gives: json.Marshal without HTML escaping,
		// apart from U+2028/9 which Go escapes and RFC 8785 does not.
		var parts []string
		if err := json.Unmarshal([]byte(tt.key.String()), &parts); err != nil {
			t.Errorf("%s is not JSON: %v", tt.key, err)
		} else if !slices.Equal(parts, tt.key.Parts()) {
			t.Errorf("%s: JSON reads %q, Parts %q", tt.key, parts, tt.key.Parts())
		}
	}
}

func TestCompositeKeyInjective(t *testing.T) {
	lists := [][]string{
		{"a,b", "c"}, {"a", "b,c"}, {"a", "b", "c"},
		{`a"`, "b"}, {"a", `"b`}, {`a","b`, "c"}, {"a", `","b`},
		{`a\`, "b"}, {"a", `\b`}, {`a\"`, "b"},
		{"", "a"}, {"a", ""}, {"", "", ""},
		{"[a", "b]"}, {"[a", "b", "]"},
		{"\n", "x"}, {`\n`, "x"},
	}
	seen := map[codecs.Key][]string{}
	for _, parts := range lists {
		k := textParts(parts...)
		if prev, ok := seen[k]; ok {
			t.Errorf("%q and %q give the same key %s", prev, parts, k)
		}
		seen[k] = parts
		if got := k.Parts(); !slices.Equal(got, parts) {
			t.Errorf("%s.Parts() = %q, want %q", k, got, parts)
		}
	}
	if textParts("a,b").String() == textParts("a", "b").String() {
		t.Error(`["a,b"] and ["a","b"] give the same text`)
	}
	if codecs.IntKey(1).Parts() != nil || codecs.TextKey("[\"a\",\"b\"]").Parts() != nil {
		t.Error("Parts of a key that is not composite is not nil")
	}
}

func TestKeyCompare(t *testing.T) {
	u1 := mustUUID(t, "00000000-0000-0000-0000-000000000001")
	u2 := mustUUID(t, "0000000a-0000-0000-0000-000000000000")
	ordered := []codecs.Key{
		codecs.IntKey(-9223372036854775808), codecs.IntKey(-5), codecs.IntKey(0), codecs.IntKey(3), codecs.IntKey(10), codecs.IntKey(9223372036854775807),
		u1, u2,
		codecs.TextKey(""), codecs.TextKey("10"), codecs.TextKey("9"), codecs.TextKey("A"), codecs.TextKey("a"), codecs.TextKey("a b"), codecs.TextKey("ab"), codecs.TextKey("ü"),
		textParts("a", "b", "c"), textParts("a", "b"), textParts("ab", "c"), // JSON text: "," < "]"
	}
	for i, a := range ordered {
		for j, b := range ordered {
			want := 0
			if i < j {
				want = -1
			} else if i > j {
				want = 1
			}
			if got := a.Compare(b); got != want {
				t.Errorf("%s %q Compare %s %q = %d, want %d", a.Kind(), a, b.Kind(), b, got, want)
			}
		}
	}
}

func TestKeyKindText(t *testing.T) {
	for _, k := range []codecs.KeyKind{codecs.KeyInteger, codecs.KeyUUID, codecs.KeyText, codecs.KeyComposite} {
		b, err := k.MarshalText()
		if err != nil {
			t.Fatal(err)
		}
		var back codecs.KeyKind
		if err := back.UnmarshalText(b); err != nil || back != k || string(b) != k.String() {
			t.Errorf("%s: MarshalText %q, back %s, %v", k, b, back, err)
		}
	}
	var k codecs.KeyKind
	if err := k.UnmarshalText([]byte("Text")); err == nil {
		t.Error(`UnmarshalText("Text") is not an error`)
	}
	if _, err := codecs.KeyKind(7).MarshalText(); err == nil {
		t.Error("MarshalText of kind 7 is not an error")
	}
}

func keysOfEachKind(t *testing.T) []codecs.Key {
	return []codecs.Key{
		codecs.IntKey(9007199254740993),
		codecs.IntKey(0),
		mustUUID(t, "0b6f3d6e-1c2a-4f6b-9a51-2f3c4d5e6f70"),
		codecs.TextKey("a/b c \"ü\""),
		codecs.TextKey(""),
		codecs.CompositeKey(codecs.TextKey("acme"), codecs.IntKey(42)),
	}
}

func TestEventKeyJSON(t *testing.T) {
	for _, k := range keysOfEachKind(t) {
		e := event(codecs.OpInsert)
		e.EntityID = k
		b, err := codecs.EventCodec{}.Encode(e)
		if err != nil {
			t.Fatalf("%s %q: %v", k.Kind(), k, err)
		}
		checkKeyJSON(t, b, k)
		got, err := codecs.EventCodec{}.Decode(b)
		if err != nil {
			t.Fatalf("Decode(%s): %v", b, err)
		}
		if !reflect.DeepEqual(got, e) {
			t.Errorf("Decode(Encode(e))\n got %+v\nwant %+v", got, e)
		}
	}
}

func TestStateKeyJSON(t *testing.T) {
	for _, k := range keysOfEachKind(t) {
		s := state()
		s.EntityID = k
		b, err := codecs.StateCodec{}.Encode(s)
		if err != nil {
			t.Fatalf("%s %q: %v", k.Kind(), k, err)
		}
		checkKeyJSON(t, b, k)
		got, err := codecs.StateCodec{}.Decode(b)
		if err != nil {
			t.Fatalf("Decode(%s): %v", b, err)
		}
		if !reflect.DeepEqual(got, s) {
			t.Errorf("Decode(Encode(s))\n got %+v\nwant %+v", got, s)
		}
	}
}

// checkKeyJSON checks the key's fields of an encoded event or state: "id"
// its text after "type", "id_kind" its kind, left out for an integer and
// else the last field (views read it from the end).
func checkKeyJSON(t *testing.T, b []byte, k codecs.Key) {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	if m["id"] != k.String() {
		t.Errorf("%s: id = %#v, want %q", b, m["id"], k)
	}
	idJSON, _ := json.Marshal(k.String())
	if !strings.HasPrefix(string(b), `{"type":"account","id":`+string(idJSON)+`,`) {
		t.Errorf("%s does not start with type and id", b)
	}
	kind, has := m["id_kind"]
	switch {
	case k.Kind() == codecs.KeyInteger && has:
		t.Errorf("%s: id_kind of an integer key", b)
	case k.Kind() != codecs.KeyInteger && kind != k.Kind().String():
		t.Errorf("%s: id_kind = %#v, want %q", b, kind, k.Kind())
	case k.Kind() != codecs.KeyInteger && !strings.HasSuffix(string(b), `,"id_kind":"`+k.Kind().String()+`"}`):
		t.Errorf("%s: id_kind is not last", b)
	}
}

func TestKeyJSONOldAndBad(t *testing.T) {
	const rest = `"op":"insert","after":{"id":42},"xid":1,"commit_lsn":"0/10","position":"0000000000000010:00000000","commit_time":"2026-11-25T20:00:00Z","capture_time":"2026-11-25T20:00:00Z"`
	decode := func(fields string) (*codecs.Event, error) {
		return codecs.EventCodec{}.Decode([]byte(`{"type":"a",` + fields + rest + `}`))
	}
	if e, err := decode(`"id":"42",`); err != nil || e.EntityID != codecs.IntKey(42) {
		t.Errorf("old-format event: %+v, %v; want integer key 42", e, err)
	}
	if e, err := decode(`"id":"42","id_kind":"integer",`); err != nil || e.EntityID != codecs.IntKey(42) {
		t.Errorf("id_kind integer: %+v, %v; want integer key 42", e, err)
	}
	if e, err := decode(`"id":"x","id_kind":"text",`); err != nil || e.EntityID != codecs.TextKey("x") {
		t.Errorf("text event: %+v, %v; want text key x", e, err)
	}
	if e, err := decode(`"id":"42","id_kind":"text",`); err != nil || e.EntityID != codecs.TextKey("42") {
		t.Errorf("text event 42: %+v, %v; want text key 42", e, err)
	}
	for _, bad := range []string{
		``,                            // no id
		`"id":null,`,                  // no id either
		`"id":42,`,                    // a number
		`"id":"x",`,                   // not an integer
		`"id":"042",`,                 // not canonical
		`"id":"42","id_kind":"Text",`, // unknown kind
		`"id":"42","id_kind":"",`,     // unknown kind
		`"id":"42","id_kind":2,`,      // a number
		`"id":"0B6F3D6E-1C2A-4F6B-9A51-2F3C4D5E6F70","id_kind":"uuid",`,
		`"id":"[\"a\"]","id_kind":"composite",`,
		`"id":"\\u00ff","id_kind":"composite",`,
	} {
		if e, err := decode(bad); err == nil {
			t.Errorf("event with %s decodes: %+v", bad, e)
		}
	}

	const stateRest = `"row":{"id":1},"position":"0000000000000010:00000000","commit_time":"2026-11-25T20:00:00Z","applied_time":"2026-11-25T20:00:00Z"`
	if s, err := (codecs.StateCodec{}).Decode([]byte(`{"type":"a","id":"42",` + stateRest + `}`)); err != nil || s.EntityID != codecs.IntKey(42) {
		t.Errorf("old-format state: %+v, %v", s, err)
	}
	if s, err := (codecs.StateCodec{}).Decode([]byte(`{"type":"a","id":"x","id_kind":"text",` + stateRest + `}`)); err != nil || s.EntityID != codecs.TextKey("x") {
		t.Errorf("text state: %+v, %v", s, err)
	}
	for _, bad := range []string{`{"type":"a",` + stateRest + `}`, `{"type":"a","id":"x","id_kind":"bogus",` + stateRest + `}`, `{"type":"a","id":"x",` + stateRest + `}`} {
		if s, err := (codecs.StateCodec{}).Decode([]byte(bad)); err == nil {
			t.Errorf("state %s decodes: %+v", bad, s)
		}
	}
}

func FuzzCompositeKey(f *testing.F) {
	f.Add("acme", "42", "")
	f.Add(`a"`, `\b`, "\u2028")
	f.Add("a,b", "\x00\x1f", "ü")
	f.Fuzz(func(t *testing.T, a, b, c string) {
		for _, parts := range [][]string{{a, b}, {a, b, c}, {c, a}} {
			valid := true
			for _, p := range parts {
				valid = valid && codecs.TextKey(p).Validate() == nil
			}
			if !valid {
				continue
			}
			k := textParts(parts...)
			if got := k.Parts(); !slices.Equal(got, parts) {
				t.Fatalf("%q -> %s -> %q", parts, k, got)
			}
			back, err := codecs.ParseKey(codecs.KeyComposite, k.String())
			if len(k.String()) <= codecs.MaxKeyBytes && (err != nil || back != k) {
				t.Fatalf("ParseKey(%s) = %q, %v", k, back, err)
			}
		}
	})
}
