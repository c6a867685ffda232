package capture

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"testing"

	"github.com/changes-dev/changes/codecs"
)

func pos(lsn codecs.LSN, i uint32) codecs.Position { return codecs.Position{CommitLSN: lsn, Index: i} }

func TestResentWritten(t *testing.T) {
	r := &resent{held: map[codecs.LSN][]span{}}
	for _, p := range []codecs.Position{pos(200, 0), pos(100, 2), pos(100, 0)} { // newest first, as readBack visits
		r.add(p)
	}
	for _, c := range []struct {
		p       codecs.Position
		written bool
		gap     bool
	}{
		{pos(100, 0), true, false},
		{pos(100, 1), false, true}, // missing although later changes are there
		{pos(100, 2), true, false},
		{pos(200, 0), true, false},
		{pos(200, 1), false, false}, // after the history's end: write it
		{pos(300, 0), false, false},
	} {
		got, hole := r.written(c.p)
		if got != c.written || hole != c.gap {
			t.Errorf("written(%s) = %v, hole %v; want %v, hole %v", c.p, got, hole, c.written, c.gap)
		}
	}
	empty := &resent{held: map[codecs.LSN][]span{}}
	if got, hole := empty.written(pos(1, 0)); got || hole {
		t.Errorf("empty history: written = %v, hole %v", got, hole)
	}
}

func TestResumeFrom(t *testing.T) {
	se := &session{tables: []table{intTable("s", "a", "a", "id"), intTable("s", "b", "b", "id")}, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	row := func(typ string, id int64, idx uint32) *codecs.Event {
		return &codecs.Event{EntityType: typ, EntityID: codecs.IntKey(id), Op: codecs.OpSnapshot, CommitLSN: 99, Position: pos(99, idx)}
	}
	for _, tc := range []struct {
		name string
		rows []*codecs.Event
		want snapshotFrom
	}{
		{"nothing copied", nil, snapshotFrom{base: 99}},
		{"contiguous: after the last row", []*codecs.Event{row("a", 7, 5), row("a", 9, 6), row("b", 1, 7)},
			snapshotFrom{base: 99, index: 8, table: 1, after: codecs.IntKey(1), resuming: true}},
		{"a gap: after the row before it, new indices after the last", []*codecs.Event{row("a", 7, 5), row("a", 9, 6), row("a", 12, 9), row("b", 1, 10)},
			snapshotFrom{base: 99, index: 11, table: 0, after: codecs.IntKey(9), resuming: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var rows copiedRows
			for i := len(tc.rows) - 1; i >= 0; i-- {
				rows.see(tc.rows[i])
			}
			if got, err := se.resumeFrom(rows, 99); err != nil || got != tc.want {
				t.Errorf("resumeFrom = %+v, want %+v", got, tc.want)
			}
		})
	}
}

// TestResentHoldsSpans: a resent transaction of a million changes costs one
// span, not a million entries.
func TestResentHoldsSpans(t *testing.T) {
	r := &resent{held: map[codecs.LSN][]span{}}
	const n = 1_000_000
	for i := n - 1; i >= 0; i-- {
		r.add(pos(500, uint32(i)))
	}
	if got := len(r.held[500]); got != 1 {
		t.Fatalf("%d spans for one contiguous transaction, want 1", got)
	}
	for _, i := range []uint32{0, 1, n / 2, n - 1} {
		if done, hole := r.written(pos(500, i)); !done || hole {
			t.Errorf("written(500/%d) = %v, hole %v", i, done, hole)
		}
	}
	if done, hole := r.written(pos(500, n)); done || hole {
		t.Errorf("after the end: written = %v, hole %v", done, hole)
	}
}

// TestCutsCover: a change is left out when the latest cut its row comes
// after copied the row at a later LSN.
func TestCutsCover(t *testing.T) {
	ctx := context.Background()
	se := &session{tables: []table{intTable("s", "a", "a", "id"), intTable("s", "b", "b", "id"), intTable("s", "c", "c", "id")}}
	cs, err := se.resolveCuts([]snapshotCut{
		{Type: "a", After: 100, LSN: 1000}, // first resume: a after 100 onwards, as of 1000
		{Type: "b", After: 50, LSN: 2000},  // second: b after 50 onwards, as of 2000
		{Type: "a", After: 300, LSN: 3000}, // a gap took the third back into a
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		table int
		id    int64
		lsn   codecs.LSN
		want  bool
	}{
		{0, 100, 10, false}, // copied by the first copy, streamed from the start
		{0, 101, 999, true}, // copied as of 1000 by the first resume
		{0, 101, 1000, false},
		{0, 301, 2999, true}, // copied again as of 3000
		{0, 301, 3000, false},
		{1, 10, 2500, true}, // b is after a's cut at 300: copied as of 3000
		{2, 1, 2999, true},
		{2, 1, 4000, false}, // after every cut
	} {
		if got, err := cs.covers(ctx, tc.table, codecs.IntKey(tc.id), tc.lsn); err != nil || got != tc.want {
			t.Errorf("covers(%d, %d, %s) = %v, want %v", tc.table, tc.id, tc.lsn, got, tc.want)
		}
	}
	from, err := se.resolveCuts([]snapshotCut{{Type: "a", FromStart: true, LSN: 500}})
	if err != nil {
		t.Fatal(err)
	}
	if yes, _ := from.covers(ctx, 0, codecs.IntKey(1), 499); !yes {
		t.Error("a copy from the start of the first table covers every row before its LSN")
	}
	if yes, _ := from.covers(ctx, 0, codecs.IntKey(1), 500); yes {
		t.Error("a copy from the start of the first table covers every row before its LSN")
	}
	if yes, _ := (*cuts)(nil).covers(ctx, 0, codecs.IntKey(1), 1); yes {
		t.Error("no cuts cover nothing")
	}
	if _, err := se.resolveCuts([]snapshotCut{{Type: "gone", LSN: 1}}); !errors.Is(err, ErrSetup) {
		t.Errorf("a cut in an undeclared type: %v, want ErrSetup", err)
	}
}
