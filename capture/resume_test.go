package capture

import (
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
	c := &Capture{tables: []table{{entityType: "a", idColumn: "id"}, {entityType: "b", idColumn: "id"}}, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	row := func(typ string, id int64, idx uint32) *codecs.Event {
		return &codecs.Event{EntityType: typ, EntityID: id, Op: codecs.OpSnapshot, CommitLSN: 99, Position: pos(99, idx)}
	}
	for _, tc := range []struct {
		name string
		rows []*codecs.Event
		want snapshotFrom
	}{
		{"nothing copied", nil, snapshotFrom{base: 99}},
		{"contiguous: after the last row", []*codecs.Event{row("a", 7, 5), row("a", 9, 6), row("b", 1, 7)},
			snapshotFrom{base: 99, index: 8, table: 1, after: 1, resuming: true}},
		{"a gap: after the row before it, new indices after the last", []*codecs.Event{row("a", 7, 5), row("a", 9, 6), row("a", 12, 9), row("b", 1, 10)},
			snapshotFrom{base: 99, index: 11, table: 0, after: 9, resuming: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var rows copiedRows
			for i := len(tc.rows) - 1; i >= 0; i-- {
				rows.see(tc.rows[i])
			}
			if got := c.resumeFrom(rows, 99); got != tc.want {
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
