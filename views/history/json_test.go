package history_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/views/history"
)

// The JSON `changes asof` prints and the query server answers: the id as
// a string, the entity absent when it did not exist.
func TestStateAtJSON(t *testing.T) {
	st := &codecs.State{
		EntityType: "account",
		EntityID:   codecs.IntKey(1 << 60),
		Row:        codecs.Row{"name": json.RawMessage(`"a"`)},
		Position:   codecs.Position{CommitLSN: 0x16B3748, Index: 2},
		CommitTime: time.Date(2026, 11, 25, 10, 5, 0, 0, time.UTC),
	}
	for _, c := range []struct {
		name string
		v    any
		want string
	}{
		{"entity", history.EntityOf(st),
			`{"type":"account","id":"1152921504606846976","row":{"name":"a"},"position":"00000000016B3748:00000002","commit_time":"2026-11-25T10:05:00Z"}`},
		{"state at", history.StateAtOf("account", codecs.IntKey(1<<60), "2026-11-25T10:06:00Z", 81, st),
			`{"type":"account","id":"1152921504606846976","at":"2026-11-25T10:06:00Z","history_offset":81,"entity":{"type":"account","id":"1152921504606846976","row":{"name":"a"},"position":"00000000016B3748:00000002","commit_time":"2026-11-25T10:05:00Z"}}`},
		{"no entity then", history.StateAtOf("account", codecs.IntKey(7), "12", 13, nil),
			`{"type":"account","id":"7","at":"12","history_offset":13}`},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := json.Marshal(c.v)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != c.want {
				t.Errorf("JSON\n got %s\nwant %s", got, c.want)
			}
		})
	}
}
