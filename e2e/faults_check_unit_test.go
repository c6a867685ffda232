package e2e

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/changes-dev/changes/codecs"
)

// The fault suite's checks must be able to fail: each case breaks a correct
// history the way a faulty capture would and expects exactly that count.
// These run without a stack.

// synthHistory returns the history a correct capture writes for l: one
// snapshot event per base entity at version 1, then every step in commit
// order, and the database rows that history ends with.
func synthHistory(l ledger) ([]histEvent, map[string]map[int64]codecs.Row) {
	var out []histEvent
	base := codecs.LSN(0x1000)
	db := map[string]map[int64]codecs.Row{}
	row := func(k entityKey, version int64) codecs.Row {
		return codecs.Row{"id": json.RawMessage(jsonInt(k.id)), "version": json.RawMessage(jsonInt(version)), "body": json.RawMessage(`"big"`)}
	}
	put := func(k entityKey, r codecs.Row) {
		if db[k.typ] == nil {
			db[k.typ] = map[int64]codecs.Row{}
		}
		if r == nil {
			delete(db[k.typ], k.id)
			return
		}
		db[k.typ][k.id] = r
	}
	var keys []entityKey
	for k := range l.base {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b entityKey) int { return int(a.id - b.id) })
	for i, k := range keys {
		r := row(k, 1)
		out = append(out, histEvent{int64(len(out)), &codecs.Event{EntityType: k.typ, EntityID: codecs.IntKey(k.id), Op: codecs.OpSnapshot, After: r,
			CommitLSN: base, Position: codecs.Position{CommitLSN: base, Index: uint32(i)}}})
		put(k, r)
	}
	type timed struct {
		k entityKey
		s step
	}
	var all []timed
	for k, steps := range l.steps {
		for _, s := range steps {
			all = append(all, timed{k, s})
		}
	}
	slices.SortFunc(all, func(a, b timed) int { return a.s.at.Compare(b.s.at) })
	for _, t := range all {
		lsn := t.s.lo
		ev := &codecs.Event{EntityType: t.k.typ, EntityID: codecs.IntKey(t.k.id), Op: t.s.op, CommitLSN: lsn, Position: codecs.Position{CommitLSN: lsn}, CommitTime: t.s.at}
		if t.s.op == codecs.OpDelete {
			ev.Before = codecs.Row{"id": json.RawMessage(jsonInt(t.k.id))}
			put(t.k, nil)
		} else {
			ev.After = row(t.k, t.s.version)
			if t.s.op == codecs.OpUpdate {
				// The TOASTed body did not change: not sent.
				delete(ev.After, "body")
				ev.Unchanged = []string{"body"}
			}
			put(t.k, row(t.k, t.s.version))
		}
		out = append(out, histEvent{int64(len(out)), ev})
	}
	return out, db
}

func jsonInt(n int64) string {
	b, _ := json.Marshal(n)
	return string(b)
}

// synthLedger: two base rows of "big" updated twice, one "acct" inserted,
// updated, deleted, one "acct" inserted and updated three times.
func synthLedger() ledger {
	t0 := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	l := ledger{
		base: map[entityKey]bool{{"big", 1}: true, {"big", 2}: true},
		steps: map[entityKey][]step{
			{"big", 1}:  {{op: codecs.OpUpdate, version: 2, at: at(1)}, {op: codecs.OpUpdate, version: 3, at: at(5)}},
			{"big", 2}:  {{op: codecs.OpUpdate, version: 2, at: at(2)}},
			{"acct", 7}: {{op: codecs.OpInsert, version: 1, at: at(3)}, {op: codecs.OpUpdate, version: 2, at: at(4)}, {op: codecs.OpDelete, version: 2, at: at(6)}},
			{"acct", 9}: {{op: codecs.OpInsert, version: 1, at: at(7)}, {op: codecs.OpUpdate, version: 2, at: at(8)}, {op: codecs.OpUpdate, version: 3, at: at(9)}, {op: codecs.OpUpdate, version: 4, at: at(10)}},
		},
		typeOrder: []string{"acct", "big"},
	}
	// Commit LSNs in commit order: the step at ms commits at synthLSN(ms).
	for k, steps := range l.steps {
		for i := range steps {
			ms := int(steps[i].at.Sub(t0) / time.Millisecond)
			steps[i].lo = synthLSN(ms)
		}
		l.steps[k] = steps
	}
	return l
}

func synthLSN(ms int) codecs.LSN { return codecs.LSN(0x1000 + 0x100*(ms+1)) }

func TestFaultCheckerCatches(t *testing.T) {
	find := func(h []histEvent, typ string, id int64, op codecs.Op, version int64) int {
		for i, e := range h {
			if e.ev.EntityType == typ && e.ev.EntityID == codecs.IntKey(id) && e.ev.Op == op && (op == codecs.OpDelete || versionOf(e.ev.After) == version) {
				return i
			}
		}
		t.Fatalf("no %s %d %s %d in the synthetic history", typ, id, op, version)
		return -1
	}
	renumber := func(h []histEvent) []histEvent {
		for i := range h {
			h[i].offset = int64(i)
		}
		return h
	}
	cases := []struct {
		name   string
		break_ func(h []histEvent, l *ledger) []histEvent
		want   historyVerdict // only the counts are compared
	}{
		{"correct history", func(h []histEvent, _ *ledger) []histEvent { return h }, historyVerdict{}},
		{"hole in the middle", func(h []histEvent, _ *ledger) []histEvent {
			i := find(h, "acct", 9, codecs.OpUpdate, 3)
			return renumber(slices.Delete(h, i, i+1))
		}, historyVerdict{lost: 1}},
		{"last change lost", func(h []histEvent, _ *ledger) []histEvent {
			i := find(h, "acct", 9, codecs.OpUpdate, 4)
			return renumber(slices.Delete(h, i, i+1))
		}, historyVerdict{lost: 1, wrongFinal: 1}},
		{"insert lost", func(h []histEvent, _ *ledger) []histEvent {
			i := find(h, "acct", 7, codecs.OpInsert, 1)
			return renumber(slices.Delete(h, i, i+1))
		}, historyVerdict{lost: 1}},
		{"snapshot row lost", func(h []histEvent, _ *ledger) []histEvent {
			i := find(h, "big", 2, codecs.OpSnapshot, 1)
			return renumber(slices.Delete(h, i, i+1))
		}, historyVerdict{lost: 1, wrongFinal: 1}}, // the unchanged body is unknown
		{"duplicated transaction", func(h []histEvent, _ *ledger) []histEvent {
			i := find(h, "big", 1, codecs.OpUpdate, 2)
			return renumber(slices.Insert(h, i+2, h[i]))
		}, historyVerdict{duplicated: 1}},
		{"redelivered at the end", func(h []histEvent, _ *ledger) []histEvent {
			i := find(h, "acct", 9, codecs.OpUpdate, 4)
			return renumber(append(h, h[i]))
		}, historyVerdict{duplicated: 1}},
		{"two changes swapped", func(h []histEvent, _ *ledger) []histEvent {
			i, j := find(h, "acct", 9, codecs.OpUpdate, 2), find(h, "acct", 9, codecs.OpUpdate, 3)
			h[i], h[j] = h[j], h[i]
			return renumber(h)
		}, historyVerdict{reordered: 1}},
		{"transactions of two entities swapped", func(h []histEvent, _ *ledger) []histEvent {
			i, j := find(h, "big", 2, codecs.OpUpdate, 2), find(h, "acct", 7, codecs.OpInsert, 1)
			h[i], h[j] = h[j], h[i]
			return renumber(h)
		}, historyVerdict{reordered: 1}},
		{"snapshot after a streamed change", func(h []histEvent, _ *ledger) []histEvent {
			i := find(h, "big", 1, codecs.OpSnapshot, 1)
			s := h[i]
			h = slices.Delete(h, i, i+1)
			j := find(h, "big", 1, codecs.OpUpdate, 2)
			return renumber(slices.Insert(h, j+1, s))
		}, historyVerdict{reordered: 1, wrongFinal: 1}}, // the unchanged body is unknown
		{"rolled-back change in the history", func(h []histEvent, _ *ledger) []histEvent {
			e := *h[len(h)-1].ev
			e.Op, e.After, e.Position = codecs.OpUpdate, codecs.Row{"version": json.RawMessage("99")}, codecs.Position{CommitLSN: e.CommitLSN + 1}
			e.CommitLSN++
			return renumber(append(h, histEvent{ev: &e}))
		}, historyVerdict{phantom: 1}},
		{"wrong value", func(h []histEvent, _ *ledger) []histEvent {
			i := find(h, "acct", 9, codecs.OpInsert, 1)
			e := *h[i].ev
			e.After = codecs.Row{"id": e.After["id"], "version": e.After["version"], "body": json.RawMessage(`"truncated"`)}
			h[i].ev = &e
			return h
		}, historyVerdict{wrongFinal: 1}}, // carried through the unchanged body
		{"deleted entity still there", func(h []histEvent, _ *ledger) []histEvent {
			i := find(h, "acct", 7, codecs.OpDelete, 0)
			return renumber(slices.Delete(h, i, i+1))
		}, historyVerdict{lost: 1, wrongFinal: 1}},
		{"resumed snapshot rewinds", func(h []histEvent, _ *ledger) []histEvent {
			// The copy after a crash took big 1 at version 3; its updates to 2
			// and 3 are streamed after it.
			i := find(h, "big", 1, codecs.OpSnapshot, 1)
			e := *h[i].ev
			e.After = codecs.Row{"id": e.After["id"], "version": json.RawMessage("3"), "body": e.After["body"]}
			h[i].ev = &e
			return h
		}, historyVerdict{rewound: 2}},
		{"incremental snapshot restates", func(h []histEvent, _ *ledger) []histEvent {
			// big 1 copied again after its update to 3, twice (a copy
			// resumed after a kill copies its last chunks again).
			i := find(h, "big", 1, codecs.OpUpdate, 3)
			return renumber(slices.Insert(h, i+1, restate(h[i], 3, 1), restate(h[i], 3, 2)))
		}, historyVerdict{restated: 2}},
		{"incremental snapshot older than the history", func(h []histEvent, _ *ledger) []histEvent {
			i := find(h, "big", 1, codecs.OpUpdate, 3)
			return renumber(slices.Insert(h, i+1, restate(h[i], 2, 1)))
		}, historyVerdict{rewound: 1}},
		{"incremental snapshot ahead of the history", func(h []histEvent, _ *ledger) []histEvent {
			i := find(h, "big", 1, codecs.OpUpdate, 2)
			return renumber(slices.Insert(h, i+1, restate(h[i], 3, 1)))
		}, historyVerdict{reordered: 1}},
		{"resumed copy folds", func(h []histEvent, l *ledger) []histEvent {
			// A copy resumed from big's first row, cut after big 1's update
			// to 2 committed: it took big 1 at version 2, the stream left
			// that update out.
			l.cuts = []foldCut{{typ: "big", fromStart: true, lsn: synthLSN(1) + 1}}
			i := find(h, "big", 1, codecs.OpSnapshot, 1)
			e := *h[i].ev
			e.After = codecs.Row{"id": e.After["id"], "version": json.RawMessage("2"), "body": e.After["body"]}
			h[i].ev = &e
			j := find(h, "big", 1, codecs.OpUpdate, 2)
			return renumber(slices.Delete(h, j, j+1))
		}, historyVerdict{folded: 1}},
		{"resumed copy folds one too many", func(h []histEvent, l *ledger) []histEvent {
			// Version 3 committed after the cut: it must be streamed.
			l.cuts = []foldCut{{typ: "big", fromStart: true, lsn: synthLSN(1) + 1}}
			i := find(h, "big", 1, codecs.OpSnapshot, 1)
			e := *h[i].ev
			e.After = codecs.Row{"id": e.After["id"], "version": json.RawMessage("2"), "body": e.After["body"]}
			h[i].ev = &e
			for _, ver := range []int64{2, 3} {
				j := find(h, "big", 1, codecs.OpUpdate, ver)
				h = slices.Delete(h, j, j+1)
			}
			return renumber(h)
		}, historyVerdict{folded: 1, lost: 1, wrongFinal: 1}},
		{"a change before the cut to a row the copy does not cover", func(h []histEvent, l *ledger) []histEvent {
			// The copy resumed after big 1: big 1's update is not its to fold.
			l.cuts = []foldCut{{typ: "big", after: 1, lsn: synthLSN(1) + 1}}
			j := find(h, "big", 1, codecs.OpUpdate, 2)
			return renumber(slices.Delete(h, j, j+1))
		}, historyVerdict{lost: 1}},
		{"watermarks after each transaction", func(h []histEvent, _ *ledger) []histEvent {
			// (The initial snapshot's rows are one transaction.)
			var out []histEvent
			for _, e := range h {
				out = append(out, e)
				if e.ev.Op != codecs.OpSnapshot {
					out = append(out, watermarkAfter(e))
				}
			}
			return renumber(out)
		}, historyVerdict{watermarks: 10}}, // one per streamed change
		{"a change after a watermark past its commit", func(h []histEvent, _ *ledger) []histEvent {
			last := h[len(h)-1]
			return renumber(slices.Insert(h, len(h)-1, watermarkAfter(last)))
		}, historyVerdict{watermarks: 1, reordered: 1}},
		{"a row deleted before the cut", func(h []histEvent, l *ledger) []histEvent {
			// acct 7 lived and died before a copy resumed from acct's first
			// row: the history never shows it.
			l.cuts = []foldCut{{typ: "acct", fromStart: true, lsn: synthLSN(6) + 1}}
			for _, s := range []struct {
				op codecs.Op
				v  int64
			}{{codecs.OpInsert, 1}, {codecs.OpUpdate, 2}, {codecs.OpDelete, 0}} {
				j := find(h, "acct", 7, s.op, s.v)
				h = slices.Delete(h, j, j+1)
			}
			return renumber(h)
		}, historyVerdict{folded: 3}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			l := synthLedger()
			h, db := synthHistory(l)
			h = c.break_(h, &l)
			got := checkFaultHistory(l, h, db)
			got.events, got.problems, got.at, got.shown = 0, nil, nil, nil
			c.want.problems = nil
			if got.lost != c.want.lost || got.duplicated != c.want.duplicated || got.reordered != c.want.reordered ||
				got.rewound != c.want.rewound || got.phantom != c.want.phantom || got.wrongFinal != c.want.wrongFinal || got.folded != c.want.folded ||
				got.restated != c.want.restated || got.watermarks != c.want.watermarks {
				v := checkFaultHistory(l, h, db)
				t.Errorf("got lost %d duplicated %d reordered %d rewound %d phantom %d wrong %d folded %d watermarks %d, want lost %d duplicated %d reordered %d rewound %d phantom %d wrong %d folded %d watermarks %d\n  %s",
					got.lost, got.duplicated, got.reordered, got.rewound, got.phantom, got.wrongFinal, got.folded, got.watermarks,
					c.want.lost, c.want.duplicated, c.want.reordered, c.want.rewound, c.want.phantom, c.want.wrongFinal, c.want.folded, c.want.watermarks,
					strings.Join(v.problems, "\n  "))
			}
		})
	}
}

// watermarkAfter is a progress watermark just after h's transaction.
func watermarkAfter(h histEvent) histEvent {
	lsn := h.ev.CommitLSN + 8
	return histEvent{h.offset, &codecs.Event{Op: codecs.OpWatermark, CommitLSN: lsn, Position: codecs.Position{CommitLSN: lsn}, CommitTime: h.ev.CommitTime}}
}

// restate is an incremental snapshot event of h's entity at version ver,
// n positions after h: a whole row (the synthetic rows' body is "big"),
// at that version.
func restate(h histEvent, ver int64, n uint32) histEvent {
	e := *h.ev
	e.Op, e.TxID, e.Unchanged = codecs.OpSnapshot, 99, nil
	e.After = codecs.Row{"id": e.After["id"], "version": json.RawMessage(jsonInt(ver)), "body": json.RawMessage(`"big"`)}
	e.Position.Index += n
	return histEvent{h.offset, &e}
}
