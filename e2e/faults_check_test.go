package e2e

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/internal/dbcheck"
)

// This file is the fault suite's judge: pure functions, no I/O, so that unit
// tests (faults_check_unit_test.go) can show that every check fails on a
// history with a hole, a duplicate, a reorder, a phantom or a wrong value.

// entityKey names one entity.
type entityKey struct {
	typ string
	id  int64
}

func (k entityKey) String() string { return fmt.Sprintf("%s %d", k.typ, k.id) }

// step is one committed change of one entity, as the workload made it: every
// insert makes version 1, every update increments the version, a delete ends
// the entity (ids are never reused).
type step struct {
	op      codecs.Op // insert, update or delete
	version int64     // the version the change made; for a delete, the version deleted
	at      time.Time // when the workload saw the commit succeed
	// lo is the WAL insert position just before the transaction's commit:
	// its commit LSN is at or after lo.
	lo codecs.LSN
}

// foldCut is where a copy resumed after a kill during the initial snapshot
// started (the capture's state records it): every row after (typ, after) in
// copy order was copied as of lsn, and the stream leaves out the changes to
// those rows committed before lsn (capture/doc.go).
type foldCut struct {
	typ       string
	after     int64
	fromStart bool
	lsn       codecs.LSN
}

// folds reports whether the stream may leave step s of entity k out: the
// last cut whose position precedes the row copied it after s committed.
// typeOrder is the copy order of the types (the config's). A step whose
// commit may lie on either side of the cut may be left out or not.
func folds(cuts []foldCut, typeOrder []string, k entityKey, s step) bool {
	pos := func(typ string) int {
		for i, t := range typeOrder {
			if t == typ {
				return i
			}
		}
		return -1
	}
	var cut *foldCut
	for i := range cuts {
		c := &cuts[i]
		pk, pc := pos(k.typ), pos(c.typ)
		if pk > pc || pk == pc && (c.fromStart || k.id > c.after) {
			cut = c
		}
	}
	if cut == nil {
		return false
	}
	return s.lo < cut.lsn // committed before the cut, or possibly so
}

// ledger is what the workload committed, per entity in commit order. Every
// step was committed after the replication slot's consistent point, so every
// step must be streamed. base holds the entities that existed before the slot
// (the initial snapshot must carry them, at version 1).
type ledger struct {
	base  map[entityKey]bool
	steps map[entityKey][]step
	// cuts and typeOrder: where resumed copies of the snapshot started.
	cuts      []foldCut
	typeOrder []string
}

// histEvent is one history record as the checker sees it.
type histEvent struct {
	offset int64
	ev     *codecs.Event
}

// historyVerdict counts what the history got wrong. Every count is of
// changes (steps or history records), never of entities.
type historyVerdict struct {
	events     int // history records read
	lost       int // committed steps missing from the stream (or a base entity without a snapshot)
	duplicated int // records of a change the history already held
	reordered  int // records of a change that comes before one the history already held
	rewound    int // streamed changes older than the entity's snapshot event (a resumed snapshot)
	phantom    int // records of a change the workload never committed
	wrongFinal int // entities whose state at the history's end is not the database's
	// folded counts committed steps absent from the stream because a copy
	// resumed after a kill holds them: the row is after the cut's position
	// and the step committed before the cut's LSN. Not a failure; any other
	// missing step is lost.
	folded int
	// restated counts incremental snapshot events (changes snapshot) that
	// hold the entity's state as the history had it: not a failure.
	restated int
	// watermarks counts the progress watermarks read; one that a later
	// change contradicts (committed before the watermark's LSN, after it
	// in the history) counts as reordered.
	watermarks int
	// problems describes the first anomalies, with offsets, and faultAt
	// attributes each counted anomaly to a moment (the commit of the change).
	problems []string
	at       []anomaly
	shown    map[string]int // problems listed per kind
}

// anomaly is one counted problem at a moment, for attributing it to a fault.
type anomaly struct {
	kind string // lost, duplicated, reordered, rewound, phantom, wrong
	at   time.Time
}

func (v *historyVerdict) ok() bool {
	return v.lost == 0 && v.duplicated == 0 && v.reordered == 0 && v.rewound == 0 && v.phantom == 0 && v.wrongFinal == 0
}

const maxProblems = 8

func (v *historyVerdict) add(kind string, at time.Time, format string, args ...any) {
	switch kind {
	case "lost":
		v.lost++
	case "duplicated":
		v.duplicated++
	case "reordered":
		v.reordered++
	case "rewound":
		v.rewound++
	case "phantom":
		v.phantom++
	case "wrong":
		v.wrongFinal++
	}
	v.at = append(v.at, anomaly{kind, at})
	// The first few of each kind: one kind must not hide the others.
	if v.shown == nil {
		v.shown = map[string]int{}
	}
	if v.shown[kind] < maxProblems {
		v.shown[kind]++
		v.problems = append(v.problems, kind+": "+fmt.Sprintf(format, args...))
	}
}

// versionOf reads the version column of a row; -1 if there is none.
func versionOf(r codecs.Row) int64 {
	raw, ok := r["version"]
	if !ok {
		return -1
	}
	v, err := strconv.ParseInt(strings.Trim(string(raw), `"`), 10, 64)
	if err != nil {
		return -1
	}
	return v
}

// checkFaultHistory compares the history, read from its start, with the ledger
// and with the database's final rows (by type, then id):
//   - along the topic, positions strictly increase;
//   - per entity, at most one snapshot event of the initial snapshot, before
//     every streamed change; an incremental snapshot's event (changes
//     snapshot, with a transaction id) holds exactly the state the history
//     holds at its place: older is rewound, newer reordered;
//   - per entity, the streamed changes are exactly the committed steps after
//     the snapshot's version (all of them without a snapshot), in commit
//     order: none missing (lost), none twice (duplicated), none after a later
//     one (reordered), none that was never committed (phantom); a streamed
//     change at or before the snapshot's version is rewound (the entity's
//     state goes back in time); a change committed before the cut of a copy
//     resumed after a kill, to a row that copy covers, is folded (left out);
//   - per entity, the state the history ends with (unchanged TOASTed columns
//     carried over) equals the database row, value by value, or both are absent.
func checkFaultHistory(l ledger, events []histEvent, db map[string]map[int64]codecs.Row) historyVerdict {
	var v historyVerdict
	events = checkWatermarks(&v, events)
	v.events = len(events)
	byEntity := map[entityKey][]histEvent{}
	var last codecs.Position
	var lastOffset int64 = -1
	flagged := map[int64]bool{} // offsets already counted by the per-entity check
	for _, h := range events {
		k := entityKey{h.ev.EntityType, idOf(h.ev.EntityID)}
		byEntity[k] = append(byEntity[k], h)
	}
	keys := map[entityKey]bool{}
	for k := range byEntity {
		keys[k] = true
	}
	for k := range l.steps {
		keys[k] = true
	}
	for k := range l.base {
		keys[k] = true
	}
	for typ, rows := range db {
		for id := range rows {
			keys[entityKey{typ, id}] = true
		}
	}
	sorted := make([]entityKey, 0, len(keys))
	for k := range keys {
		sorted = append(sorted, k)
	}
	sort.Slice(sorted, func(i, j int) bool {
		if sorted[i].typ != sorted[j].typ {
			return sorted[i].typ < sorted[j].typ
		}
		return sorted[i].id < sorted[j].id
	})
	for _, k := range sorted {
		checkEntity(&v, k, l, byEntity[k], db, flagged)
	}
	for _, h := range events {
		if lastOffset >= 0 && h.ev.Position.Compare(last) <= 0 && !flagged[h.offset] {
			v.add("reordered", h.ev.CommitTime, "history offset %d: position %s does not follow %s at offset %d", h.offset, h.ev.Position, last, lastOffset)
		}
		if h.ev.Position.Compare(last) > 0 {
			last, lastOffset = h.ev.Position, h.offset
		}
	}
	return v
}

// checkWatermarks checks the history's progress watermarks: every change
// after a watermark in the history committed at or after its LSN (all
// before it committed earlier, or a view that applied the watermark would
// say it holds a change it lacks). It returns the events without them.
func checkWatermarks(v *historyVerdict, events []histEvent) []histEvent {
	changes := make([]histEvent, 0, len(events))
	var mark codecs.LSN
	markOffset := int64(-1)
	for _, h := range events {
		if h.ev.Op == codecs.OpWatermark {
			v.watermarks++
			if h.ev.CommitLSN > mark {
				mark, markOffset = h.ev.CommitLSN, h.offset
			}
			continue
		}
		if h.ev.Op.IsChange() && h.ev.CommitLSN < mark {
			v.add("reordered", h.ev.CommitTime, "history offset %d: a change committed at %s follows the watermark at %s (offset %d)", h.offset, h.ev.CommitLSN, mark, markOffset)
		}
		changes = append(changes, h)
	}
	return changes
}

func checkEntity(v *historyVerdict, k entityKey, l ledger, hs []histEvent, db map[string]map[int64]codecs.Row, flagged map[int64]bool) {
	steps := l.steps[k]
	// Each streamed change is found by its op and version: versions of an
	// entity are unique (ids are never reused), and it is deleted at most once.
	index := func(op codecs.Op, version int64) int {
		for i, s := range steps {
			if s.op == op && (op == codecs.OpDelete || s.version == version) {
				return i
			}
		}
		return -1
	}
	stepAt := func(i int) time.Time { return steps[i].at }
	firstAt := time.Time{}
	if len(steps) > 0 {
		firstAt = steps[0].at
	}
	matched := make([]bool, len(steps))
	lastIdx := -1 // the latest step streamed so far
	snapSeen := false
	snapIdx := -2        // the step the snapshot's state is (-1: the base state, -2: none)
	var state codecs.Row // the entity's state by the history
	exists := false
	for _, h := range hs {
		ev := h.ev
		switch ev.Op {
		case codecs.OpSnapshot:
			ver := versionOf(ev.After)
			if ev.TxID != 0 {
				// An incremental snapshot's row (it is written in the
				// transaction of its high watermark; the initial snapshot's
				// have no transaction id): it must restate the state the
				// history holds, neither older nor ahead of it.
				cur := versionOf(state)
				switch {
				case !exists:
					v.add("phantom", ev.CommitTime, "%s: incremental snapshot event at offset %d (version %d) of an entity the history holds no state of", k, h.offset, ver)
					flagged[h.offset] = true
				case ver < cur:
					v.add("rewound", ev.CommitTime, "%s: incremental snapshot event at offset %d holds version %d, the history version %d", k, h.offset, ver, cur)
					flagged[h.offset] = true
				case ver > cur:
					v.add("reordered", ev.CommitTime, "%s: incremental snapshot event at offset %d holds version %d before the history's change to it (at version %d)", k, h.offset, ver, cur)
					flagged[h.offset] = true
				case dbcheck.DiffRow(ev.After, state) != "":
					v.add("phantom", ev.CommitTime, "%s: incremental snapshot event at offset %d: %s", k, h.offset, dbcheck.DiffRow(ev.After, state))
					flagged[h.offset] = true
				default:
					v.restated++
				}
				continue
			}
			seen := snapSeen
			snapSeen = true
			switch {
			case seen:
				v.add("duplicated", ev.CommitTime, "%s: second snapshot event at offset %d", k, h.offset)
				flagged[h.offset] = true
				continue
			case lastIdx >= 0:
				v.add("reordered", ev.CommitTime, "%s: snapshot event at offset %d after its streamed changes", k, h.offset)
				flagged[h.offset] = true
				continue
			case l.base[k] && ver == 1:
				snapIdx = -1
			default:
				snapIdx = index(codecs.OpUpdate, ver)
				if ver == 1 {
					snapIdx = index(codecs.OpInsert, 1)
				}
				if snapIdx < 0 {
					v.add("phantom", ev.CommitTime, "%s: snapshot event at offset %d has version %d, never committed", k, h.offset, ver)
					flagged[h.offset] = true
					continue
				}
			}
		case codecs.OpInsert, codecs.OpUpdate, codecs.OpDelete:
			ver := versionOf(ev.After)
			i := index(ev.Op, ver)
			switch {
			case i < 0:
				v.add("phantom", ev.CommitTime, "%s: %s of version %d at offset %d was never committed", k, ev.Op, ver, h.offset)
				flagged[h.offset] = true
				continue
			case matched[i]:
				v.add("duplicated", stepAt(i), "%s: %s of version %d at offset %d is in the history already", k, ev.Op, ver, h.offset)
				flagged[h.offset] = true
				continue
			case i < lastIdx:
				v.add("reordered", stepAt(i), "%s: %s of version %d at offset %d comes after a later change", k, ev.Op, ver, h.offset)
				flagged[h.offset] = true
				matched[i] = true
				continue
			case i <= snapIdx:
				v.add("rewound", stepAt(i), "%s: %s of version %d at offset %d follows a snapshot of version %d", k, ev.Op, ver, h.offset, steps[snapIdx].version)
			}
			matched[i] = true
			lastIdx = i
		default:
			continue // a truncate is not part of this workload
		}
		// The state by the history: the row after the change, with the
		// unchanged TOASTed columns of the previous state.
		if ev.Op == codecs.OpDelete {
			state, exists = nil, false
			continue
		}
		next := codecs.Row{}
		for c, val := range ev.After {
			next[c] = val
		}
		for _, c := range ev.Unchanged {
			next[c] = state[c]
		}
		state, exists = next, true
	}
	if l.base[k] && !snapSeen && !hasDelete(steps) && !(len(steps) > 0 && folds(l.cuts, l.typeOrder, k, steps[len(steps)-1])) {
		v.add("lost", firstAt, "%s: existed before the slot, no snapshot event", k)
	}
	for i, m := range matched {
		if !m && folds(l.cuts, l.typeOrder, k, steps[i]) {
			// A copy resumed after a kill holds this change (or the row's
			// absence): the stream leaves it out (capture/doc.go).
			v.folded++
			continue
		}
		if !m {
			v.add("lost", stepAt(i), "%s: %s of version %d committed at %s is not in the history", k, steps[i].op, steps[i].version, steps[i].at.Format("15:04:05.000"))
		}
	}
	row, inDB := db[k.typ][k.id]
	at := firstAt
	if len(steps) > 0 {
		at = steps[len(steps)-1].at
	}
	switch {
	case inDB && !exists:
		v.add("wrong", at, "%s: in the database (version %d), absent at the history's end", k, versionOf(row))
	case !inDB && exists:
		v.add("wrong", at, "%s: absent from the database, version %d at the history's end", k, versionOf(state))
	case inDB:
		if d := dbcheck.DiffRow(row, state); d != "" {
			v.add("wrong", at, "%s: at the history's end %s", k, d)
		}
	}
}

func hasDelete(steps []step) bool {
	for _, s := range steps {
		if s.op == codecs.OpDelete {
			return true
		}
	}
	return false
}
