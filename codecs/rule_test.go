package codecs_test

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/changes-dev/changes/codecs"
)

// pos is position lsn:idx.
func pos(lsn codecs.LSN, idx uint32) codecs.Position {
	return codecs.Position{CommitLSN: lsn, Index: idx}
}

func entity(p codecs.Position) *codecs.State {
	return &codecs.State{EntityType: "account", EntityID: codecs.IntKey(1), Row: codecs.Row{"id": json.RawMessage(`1`)}, Position: p}
}

func deleted(p codecs.Position) *codecs.State {
	return &codecs.State{EntityType: "account", EntityID: codecs.IntKey(1), Deleted: true, Position: p}
}

func marker(p codecs.Position) *codecs.State {
	return &codecs.State{EntityType: "account", Truncated: true, Position: p}
}

func change(op codecs.Op, p codecs.Position) *codecs.Event {
	return &codecs.Event{EntityType: "account", EntityID: codecs.IntKey(1), Op: op, CommitLSN: p.CommitLSN, Position: p}
}

func TestJudge(t *testing.T) {
	zero := codecs.Position{}
	tests := []struct {
		name        string
		stored      *codecs.State
		ev          *codecs.Event
		truncatedAt codecs.Position
		want        codecs.Verdict
	}{
		{"first change of an entity", nil, change(codecs.OpInsert, pos(10, 0)), zero, codecs.Supersede},
		{"a later change", entity(pos(10, 0)), change(codecs.OpUpdate, pos(10, 1)), zero, codecs.Supersede},
		{"a later transaction", entity(pos(10, 5)), change(codecs.OpUpdate, pos(11, 0)), zero, codecs.Supersede},
		{"an older change", entity(pos(10, 1)), change(codecs.OpUpdate, pos(10, 0)), zero, codecs.Skip},
		{"an older transaction with a higher index", entity(pos(11, 0)), change(codecs.OpUpdate, pos(10, 9)), zero, codecs.Skip},
		{"the stored state's own change again", entity(pos(10, 1)), change(codecs.OpUpdate, pos(10, 1)), zero, codecs.Rewrite},
		{"a delete's own change again", deleted(pos(10, 1)), change(codecs.OpDelete, pos(10, 1)), zero, codecs.Rewrite},
		// A deleted state keeps its position: an older change cannot
		// bring the entity back.
		{"an older insert after a delete", deleted(pos(10, 1)), change(codecs.OpInsert, pos(10, 0)), zero, codecs.Skip},
		{"a newer insert after a delete", deleted(pos(10, 1)), change(codecs.OpInsert, pos(10, 2)), zero, codecs.Supersede},
		// Changes at or before the partition's last TRUNCATE.
		{"a change before the truncate, nothing stored", nil, change(codecs.OpInsert, pos(10, 0)), pos(20, 0), codecs.Skip},
		{"a change before the truncate, newer than the stored state", entity(pos(5, 0)), change(codecs.OpUpdate, pos(10, 0)), pos(20, 0), codecs.Skip},
		// The state the truncate removed is not written again, even
		// for its own change: the marker is what the changelog needs.
		{"a removed state's own change again", entity(pos(10, 0)), change(codecs.OpUpdate, pos(10, 0)), pos(20, 0), codecs.Skip},
		{"a removed state's own change, at the truncate's LSN", entity(pos(20, 0)), change(codecs.OpUpdate, pos(20, 0)), pos(20, 1), codecs.Skip},
		{"a change after the truncate, removed state stored", entity(pos(10, 0)), change(codecs.OpInsert, pos(30, 0)), pos(20, 0), codecs.Supersede},
		{"a change just after the truncate", nil, change(codecs.OpInsert, pos(20, 1)), pos(20, 0), codecs.Supersede},
		{"a state after the truncate, its own change again", entity(pos(30, 0)), change(codecs.OpUpdate, pos(30, 0)), pos(20, 0), codecs.Rewrite},
		{"a state after the truncate, an older change", entity(pos(30, 0)), change(codecs.OpUpdate, pos(25, 0)), pos(20, 0), codecs.Skip},
		// The snapshot rows of a resumed initial copy sit at the slot's
		// base LSN with indices after the rows already copied; a row
		// copied again after a gap is newer than its first copy.
		{"a resumed copy's row copied again", entity(pos(9, 3)), change(codecs.OpSnapshot, pos(9, 7)), zero, codecs.Supersede},
		{"a resumed copy's row after a streamed truncate", nil, change(codecs.OpSnapshot, pos(9, 7)), pos(12, 0), codecs.Skip},
		{"a snapshot row after a streamed change", entity(pos(12, 0)), change(codecs.OpSnapshot, pos(9, 7)), zero, codecs.Skip},
		// The truncate marker: stored is the marker, truncatedAt its position.
		{"the first truncate", nil, change(codecs.OpTruncate, pos(20, 0)), zero, codecs.Supersede},
		{"a later truncate", marker(pos(20, 0)), change(codecs.OpTruncate, pos(30, 0)), pos(20, 0), codecs.Supersede},
		{"the marker's own truncate again", marker(pos(20, 0)), change(codecs.OpTruncate, pos(20, 0)), pos(20, 0), codecs.Rewrite},
		{"an older truncate", marker(pos(20, 0)), change(codecs.OpTruncate, pos(15, 0)), pos(20, 0), codecs.Skip},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := codecs.Judge(tt.stored, tt.ev, tt.truncatedAt); got != tt.want {
				t.Errorf("Judge(stored at %v, change at %s, truncated at %s) = %s, want %s",
					positionOf(tt.stored), tt.ev.Position, tt.truncatedAt, got, tt.want)
			}
		})
	}
}

func positionOf(st *codecs.State) string {
	if st == nil {
		return "none"
	}
	return st.Position.String()
}

func TestHoldsAndVisibleAfter(t *testing.T) {
	zero := codecs.Position{}
	tests := []struct {
		name           string
		st             *codecs.State
		truncatedAt    codecs.Position
		holds, visible bool
	}{
		{"nothing stored", nil, zero, false, false},
		{"an entity, no truncate", entity(pos(10, 0)), zero, true, true},
		{"a deleted entity, no truncate", deleted(pos(10, 0)), zero, true, false},
		{"an entity after the truncate", entity(pos(20, 1)), pos(20, 0), true, true},
		{"an entity at the truncate's position", entity(pos(20, 0)), pos(20, 0), false, false},
		{"an entity before the truncate", entity(pos(19, 9)), pos(20, 0), false, false},
		{"a deleted entity after the truncate", deleted(pos(30, 0)), pos(20, 0), true, false},
		{"a deleted entity before the truncate", deleted(pos(10, 0)), pos(20, 0), false, false},
		{"the truncate marker", marker(pos(20, 0)), pos(20, 0), true, false},
		{"an older truncate marker", marker(pos(10, 0)), pos(20, 0), false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.st.Holds(tt.truncatedAt); got != tt.holds {
				t.Errorf("Holds(%s) = %v, want %v", tt.truncatedAt, got, tt.holds)
			}
			if got := codecs.VisibleAfter(tt.truncatedAt, tt.st); got != tt.visible {
				t.Errorf("VisibleAfter(%s) = %v, want %v", tt.truncatedAt, got, tt.visible)
			}
			base := codecs.Base(tt.st, tt.truncatedAt)
			if want := tt.st; !tt.holds {
				if base != nil {
					t.Errorf("Base = %+v, want nil for a state that does not hold", base)
				}
			} else if base != want {
				t.Errorf("Base = %+v, want the stored state", base)
			}
		})
	}
}

func TestObsolete(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	const grace = time.Hour
	applied := func(st *codecs.State, ago time.Duration) *codecs.State {
		st.AppliedTime = now.Add(-ago)
		return st
	}
	tests := []struct {
		name        string
		st          *codecs.State
		truncatedAt codecs.Position
		want        bool
	}{
		{"nothing stored", nil, codecs.Position{}, false},
		{"an entity", applied(entity(pos(10, 0)), 48*time.Hour), codecs.Position{}, false},
		{"a delete within its grace", applied(deleted(pos(10, 0)), grace-time.Nanosecond), codecs.Position{}, false},
		{"a delete at the end of its grace", applied(deleted(pos(10, 0)), grace), codecs.Position{}, true},
		{"an entity the truncate removed", applied(entity(pos(10, 0)), 0), pos(20, 0), true},
		{"an entity at the truncate's position", applied(entity(pos(20, 0)), 0), pos(20, 0), true},
		{"an entity after the truncate", applied(entity(pos(20, 1)), 0), pos(20, 0), false},
		{"a delete the truncate removed, within its grace", applied(deleted(pos(10, 0)), 0), pos(20, 0), true},
		{"the truncate marker", applied(marker(pos(20, 0)), 48*time.Hour), pos(20, 0), false},
		{"an older marker", applied(marker(pos(10, 0)), 48*time.Hour), pos(20, 0), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.st.Obsolete(tt.truncatedAt, now, grace); got != tt.want {
				t.Errorf("Obsolete(%s, grace %s) = %v, want %v", tt.truncatedAt, grace, got, tt.want)
			}
		})
	}
}

// A snapshot table's step for one change: Judge, then Apply on Base.
func ExampleJudge() {
	stored := &codecs.State{EntityType: "account", EntityID: codecs.IntKey(42), Deleted: true,
		Position: codecs.Position{CommitLSN: 0x200, Index: 1}}
	truncatedAt := codecs.Position{} // no TRUNCATE yet
	for _, ev := range []*codecs.Event{
		{EntityType: "account", EntityID: codecs.IntKey(42), Op: codecs.OpInsert, CommitLSN: 0x100, Position: codecs.Position{CommitLSN: 0x100}},
		{EntityType: "account", EntityID: codecs.IntKey(42), Op: codecs.OpDelete, CommitLSN: 0x200, Position: codecs.Position{CommitLSN: 0x200, Index: 1}},
		{EntityType: "account", EntityID: codecs.IntKey(42), Op: codecs.OpInsert, CommitLSN: 0x300, Position: codecs.Position{CommitLSN: 0x300},
			After: codecs.Row{"id": json.RawMessage(`42`)}},
	} {
		v := codecs.Judge(stored, ev, truncatedAt)
		fmt.Printf("%s at %s: %s\n", ev.Op, ev.Position, v)
		if v == codecs.Supersede {
			stored, _ = codecs.Apply(codecs.Base(stored, truncatedAt), ev)
		}
	}
	fmt.Println("visible:", codecs.VisibleAfter(truncatedAt, stored))
	// Output:
	// insert at 0000000000000100:00000000: skip
	// delete at 0000000000000200:00000001: rewrite
	// insert at 0000000000000300:00000000: supersede
	// visible: true
}
