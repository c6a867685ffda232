package processors

import (
	"encoding/json"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/changes-dev/changes/codecs"
)

// TestTableCodecReadsBadStatesAsAbsent: a table record that is not a State
// must not panic goka's Value() (the processor would restart into it
// forever); it reads as no state, counted.
func TestTableCodecReadsBadStatesAsAbsent(t *testing.T) {
	m, err := newMetrics(nil)
	if err != nil {
		t.Fatal(err)
	}
	o := &options{metrics: m, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	c := tableCodec{entityType: "account", o: o}
	for _, raw := range []string{"not json", `{"type": ""}`, `{"type":"account","id":"1"}`} {
		v, err := c.Decode([]byte(raw))
		if err != nil {
			t.Fatalf("Decode(%q) = %v", raw, err)
		}
		if st, ok := v.(*codecs.State); !ok || st != nil {
			t.Errorf("Decode(%q) = %#v, want a nil *codecs.State", raw, v)
		}
	}
	if n := testutil.ToFloat64(o.metrics.badStates.WithLabelValues("account")); n != 3 {
		t.Errorf("changes_snapshot_bad_states_total = %v, want 3", n)
	}
	good := &codecs.State{EntityType: "account", EntityID: codecs.IntKey(1), Row: codecs.Row{"id": json.RawMessage("1")}, Position: codecs.Position{CommitLSN: 5}}
	b, err := c.Encode(good)
	if err != nil {
		t.Fatal(err)
	}
	if v, err := c.Decode(b); err != nil || v.(*codecs.State).EntityID != codecs.IntKey(1) {
		t.Errorf("a good state: %v, %v", v, err)
	}
}

func TestTooLarge(t *testing.T) {
	row := func(n int) *codecs.State {
		return &codecs.State{EntityType: "account", EntityID: codecs.IntKey(1), Position: codecs.Position{CommitLSN: 5},
			Row: codecs.Row{"id": json.RawMessage("1"), "blob": json.RawMessage(`"` + strings.Repeat("x", n) + `"`)}}
	}
	const limit = 100_000
	for _, c := range []struct {
		n    int
		over bool
	}{{10, false}, {limit - 5000, false}, {limit, true}, {3 * limit, true}} {
		size, over := tooLarge(row(c.n), limit)
		if over != c.over {
			t.Errorf("a %d-byte value: tooLarge = %d, %v; want %v", c.n, size, over, c.over)
		}
		if over && size <= limit {
			t.Errorf("a %d-byte value: size %d reported over %d", c.n, size, limit)
		}
	}
}
