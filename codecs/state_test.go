package codecs_test

import (
	"encoding/json"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/changes-dev/changes/codecs"
)

func state() *codecs.State {
	return &codecs.State{
		EntityType:  "account",
		EntityID:    codecs.IntKey(1<<53 + 1),
		Row:         codecs.Row{"id": json.RawMessage(`9007199254740993`), "name": json.RawMessage(`"acme"`), "n": json.RawMessage(`null`)},
		Position:    codecs.Position{CommitLSN: commitLSN, Index: 2},
		CommitTime:  commitTime,
		AppliedTime: commitTime.Add(3 * time.Millisecond),
	}
}

func TestStateRoundTrip(t *testing.T) {
	emptyRow := state()
	emptyRow.Row = codecs.Row{} // a table of only... an id would still be a column, but the codec allows it
	extremes := state()
	extremes.EntityID = codecs.IntKey(math.MinInt64)
	extremes.Position = codecs.Position{CommitLSN: math.MaxUint64, Index: math.MaxUint32}
	tests := []struct {
		name string
		s    *codecs.State
	}{
		{"typical", state()},
		{"empty row", emptyRow},
		{"extremes", extremes},
		{"watermark", &codecs.State{EntityType: "account", Watermark: true, Position: codecs.Position{CommitLSN: 0x3000},
			CommitTime: time.Date(2026, 12, 2, 3, 0, 0, 0, time.UTC), AppliedTime: time.Date(2026, 12, 2, 3, 0, 1, 0, time.UTC)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := codecs.StateCodec{}.Encode(tt.s)
			if err != nil {
				t.Fatalf("Encode: %v", err)
			}
			got, err := codecs.StateCodec{}.Decode(b)
			if err != nil {
				t.Fatalf("Decode(%s): %v", b, err)
			}
			if !reflect.DeepEqual(got, tt.s) {
				t.Errorf("Decode(Encode(s))\n got %+v\nwant %+v", got, tt.s)
			}
			// The hand-written JSON is what encoding/json writes.
			if want, err := json.Marshal(tt.s); err != nil || string(want) != string(b) {
				t.Errorf("Encode wrote\n%s\nencoding/json writes\n%s (%v)", b, want, err)
			}
		})
	}
}

func TestDeletedState(t *testing.T) {
	del := state()
	del.Row, del.Deleted = nil, true
	b, err := codecs.StateCodec{}.Encode(del)
	if err != nil {
		t.Fatal(err)
	}
	got, err := codecs.StateCodec{}.Decode(b)
	if err != nil || !reflect.DeepEqual(got, del) {
		t.Fatalf("Decode(Encode(deleted)) = %+v, %v", got, err)
	}
	withRow := state()
	withRow.Deleted = true
	if _, err := (codecs.StateCodec{}).Encode(withRow); err == nil {
		t.Error("a deleted state with a row was encoded")
	}
}

func TestStateJSON(t *testing.T) {
	b, err := codecs.StateCodec{}.Encode(state())
	if err != nil {
		t.Fatal(err)
	}
	want := `{"type":"account","id":"9007199254740993","row":{"id":9007199254740993,"n":null,"name":"acme"},` +
		`"position":"00000016B374D848:00000002","commit_time":"2026-11-25T20:00:00.123456Z","applied_time":"2026-11-25T20:00:00.126456Z"}`
	if string(b) != want {
		t.Errorf("Encode\n got %s\nwant %s", b, want)
	}
}

const validStateJSON = `{"type":"account","id":"42","row":{"id":42},"position":"00000016B374D848:00000002","commit_time":"2026-11-25T20:00:00.123456Z"}`

func TestStateDecodeErrors(t *testing.T) {
	edit := func(old, new string) string {
		if !strings.Contains(validStateJSON, old) {
			panic("validStateJSON has no " + old)
		}
		return strings.Replace(validStateJSON, old, new, 1)
	}
	if _, err := (codecs.StateCodec{}).Decode([]byte(validStateJSON + "\n")); err != nil {
		t.Fatalf("the base document does not decode: %v", err)
	}
	tests := []struct{ name, in string }{
		{"empty", ""},
		{"invalid json", `{"type"`},
		{"null", `null`},
		{"trailing document", validStateJSON + `{}`},
		{"trailing brace", validStateJSON + `}`},
		{"trailing bracket", validStateJSON + ` ]`},
		{"missing type", edit(`"type":"account",`, ``)},
		{"missing row", edit(`"row":{"id":42},`, ``)},
		{"null row", edit(`"row":{"id":42}`, `"row":null`)},
		{"row not an object", edit(`"row":{"id":42}`, `"row":"x"`)},
		{"zero position", edit(`00000016B374D848:00000002`, `0000000000000000:00000000`)},
		{"missing position", edit(`"position":"00000016B374D848:00000002",`, ``)},
		{"bad position", edit(`00000016B374D848:00000002`, `16/B374D848`)},
		{"id as a number", edit(`"id":"42"`, `"id":42`)},
		{"bad time", edit(`2026-11-25T20:00:00.123456Z`, `2026-11-25`)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := codecs.StateCodec{}.Decode([]byte(tt.in))
			if err == nil || s != nil {
				t.Errorf("Decode(%s) = %+v, %v; want nil and an error", tt.in, s, err)
			}
		})
	}
}

func TestStateEncodeErrors(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(s *codecs.State)
		want   string
	}{
		{"empty type", func(s *codecs.State) { s.EntityType = "" }, "type is empty"},
		{"nil row", func(s *codecs.State) { s.Row = nil }, "row is missing"},
		{"zero position", func(s *codecs.State) { s.Position = codecs.Position{} }, "position is zero"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := state()
			tt.mutate(s)
			if err := s.Validate(); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Validate() = %v, want an error containing %q", err, tt.want)
			}
			if b, err := (codecs.StateCodec{}).Encode(s); err == nil {
				t.Errorf("Encode = %s, want an error", b)
			}
		})
	}
	t.Run("nil", func(t *testing.T) {
		if _, err := (codecs.StateCodec{}).Encode(nil); err == nil {
			t.Error("Encode(nil) succeeded")
		}
	})
}

// FuzzStateCodec is FuzzEventCodec for states.
func FuzzStateCodec(f *testing.F) {
	b, err := codecs.StateCodec{}.Encode(state())
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Add([]byte(validStateJSON))
	f.Add([]byte(validStateJSON + "]"))
	f.Add([]byte(strings.Replace(validStateJSON, `{"id":42}`, `{ "id" : 42, "h": "<&>" }`, 1)))
	f.Add([]byte(strings.Replace(validStateJSON, `{"id":42}`, `{}`, 1)))
	f.Add([]byte(strings.Replace(validStateJSON, `Z"`, `+00:00"`, 1)))
	c := codecs.StateCodec{}
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := c.Decode(data)
		if err != nil {
			if s != nil {
				t.Fatalf("Decode returned %+v with error %v", s, err)
			}
			return
		}
		b, err := c.Encode(s)
		if err != nil {
			t.Fatalf("Decode(%q) = %+v, which Encode rejects: %v", data, s, err)
		}
		s2, err := c.Decode(b)
		if err != nil {
			t.Fatalf("Decode(Encode(s)) for s from %q: %v\nencoded: %s", data, err, b)
		}
		switch {
		case s.EntityType != s2.EntityType || s.EntityID != s2.EntityID || s.Position != s2.Position:
			t.Fatalf("identity changed: %+v vs %+v", s, s2)
		case !s.CommitTime.Equal(s2.CommitTime):
			t.Fatalf("commit time changed: %s vs %s", s.CommitTime, s2.CommitTime)
		}
		if d := sameRow(s.Row, s2.Row); d != "" {
			t.Fatalf("row changed: %s", d)
		}
		b2, err := c.Encode(s2)
		if err != nil || string(b2) != string(b) {
			t.Fatalf("Encode is not stable: %s then %s, %v", b, b2, err)
		}
		s3, err := c.Decode(b2)
		if err != nil || !reflect.DeepEqual(s3, s2) {
			t.Fatalf("Decode(Encode(v)) != v for v = %#v\n got %#v, %v", s2, s3, err)
		}
		// AppendWithRow, given the row's JSON and no Row, writes what
		// Encode writes, after what dst holds.
		if s.Row != nil {
			row, err := json.Marshal(s.Row)
			if err != nil {
				t.Fatal(err)
			}
			bare := *s
			bare.Row = nil
			got, err := c.AppendWithRow([]byte("x"), &bare, row)
			if err != nil || string(got) != "x"+string(b) {
				t.Fatalf("AppendWithRow(%s) = %s, %v; Encode: %s", row, got, err, b)
			}
		}
	})
}

// TestStateAppendWithRow: AppendWithRow refuses what Encode refuses.
func TestStateAppendWithRow(t *testing.T) {
	c := codecs.StateCodec{}
	deleted := state()
	deleted.Row, deleted.Deleted = nil, true
	for name, s := range map[string]*codecs.State{"nil": nil, "deleted": deleted, "no type": {EntityID: codecs.IntKey(1)}} {
		if b, err := c.AppendWithRow(nil, s, []byte(`{"id":1}`)); err == nil {
			t.Errorf("%s: AppendWithRow wrote %s", name, b)
		}
	}
	if b, err := c.AppendWithRow(nil, state(), []byte(`{"id":`)); err == nil {
		t.Errorf("a row that is not JSON: AppendWithRow wrote %s", b)
	}
	want, err := c.Encode(state())
	if err != nil {
		t.Fatal(err)
	}
	row, _ := json.Marshal(state().Row)
	if got, err := c.AppendWithRow(nil, state(), row); err != nil || string(got) != string(want) {
		t.Errorf("AppendWithRow = %s, %v; want %s", got, err, want)
	}
}
