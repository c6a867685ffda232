package monitor

import (
	"encoding/json"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/topology"
)

func testTopo(t *testing.T) *topology.Topology {
	t.Helper()
	cfg, err := topology.Parse([]byte("kafka: {brokers: [\"k:1\"]}\npostgres: {url: x}\nentities: [{type: a, table: t, partitions: 2}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	return topology.New(cfg)
}

func ev(id int64, lsn codecs.LSN, idx uint32, op codecs.Op, v string) *codecs.Event {
	e := &codecs.Event{EntityType: "a", EntityID: codecs.IntKey(id), Op: op, CommitLSN: lsn, Position: codecs.Position{CommitLSN: lsn, Index: idx}}
	if op != codecs.OpDelete {
		e.After = codecs.Row{"id": json.RawMessage(`1`), "v": json.RawMessage(v)}
	}
	return e
}

func stateOf(e *codecs.Event) *codecs.State {
	next, _ := codecs.Apply(nil, e)
	return next
}

func kinds(as []Anomaly) []string {
	var out []string
	for _, a := range as {
		out = append(out, a.Kind)
	}
	return out
}

func TestCheckerHistoryIntegrity(t *testing.T) {
	c := NewChecker(testTopo(t), time.Second, time.Hour, 1_000_000)
	now := time.Now()
	feed := func(off int64, e *codecs.Event) []string { return kinds(c.History(off, e, now)) }
	if got := feed(0, ev(1, 10, 0, codecs.OpInsert, `1`)); got != nil {
		t.Errorf("first event: %v", got)
	}
	if got := feed(1, ev(2, 10, 1, codecs.OpInsert, `1`)); got != nil {
		t.Errorf("next in the transaction: %v", got)
	}
	if got := feed(2, ev(1, 10, 1, codecs.OpInsert, `1`)); len(got) != 1 || got[0] != Duplicate {
		t.Errorf("same position again: %v, want duplicate", got)
	}
	if got := feed(3, ev(3, 9, 0, codecs.OpInsert, `1`)); len(got) != 1 || got[0] != Reorder {
		t.Errorf("an earlier, unknown position: %v, want reorder", got)
	}
	if got := feed(4, ev(3, 20, 0, codecs.OpInsert, `1`)); got != nil {
		t.Errorf("a new transaction: %v", got)
	}
	if got := feed(5, ev(3, 20, 2, codecs.OpUpdate, `2`)); len(got) != 1 || got[0] != Gap {
		t.Errorf("index 2 after 0: %v, want gap", got)
	}
	if got := feed(6, ev(4, 30, 1, codecs.OpInsert, `1`)); len(got) != 1 || got[0] != Gap {
		t.Errorf("a transaction starting at 1: %v, want gap", got)
	}
}

func TestCheckerTables(t *testing.T) {
	c := NewChecker(testTopo(t), time.Second, time.Hour, 1_000_000)
	t0 := time.Now()
	e1 := ev(1, 10, 0, codecs.OpInsert, `1`)
	e2 := ev(1, 11, 0, codecs.OpUpdate, `2`)
	e3 := ev(2, 12, 0, codecs.OpInsert, `5`)
	for i, e := range []*codecs.Event{e1, e2, e3} {
		c.History(int64(i), e, t0)
	}
	table := func(key string, st *codecs.State) []string {
		return kinds(c.Table("a", "tbl", 0, 0, key, st, t0))
	}
	// The table applies e1 and e2: fine.
	if got := table("1", stateOf(e1)); got != nil {
		t.Errorf("e1: %v", got)
	}
	if got := table("1", stateOf(e2)); got != nil {
		t.Errorf("e2: %v", got)
	}
	// A record written by hand at e2's position with another value.
	bad := stateOf(e2)
	bad.Row = codecs.Row{"id": json.RawMessage(`1`), "v": json.RawMessage(`999`)}
	if got := table("1", bad); len(got) != 1 || got[0] != WrongValue {
		t.Errorf("wrong value at a known position: %v", got)
	}
	// A state at a position the history does not have.
	odd := stateOf(e1)
	odd.Position = codecs.Position{CommitLSN: 11, Index: 7}
	if got := table("1", odd); len(got) != 1 || got[0] != UnknownPosition {
		t.Errorf("unknown position: %v", got)
	}
	// Entity 2's table state never comes: stale after the bound.
	if s, _ := c.Stale(t0.Add(500 * time.Millisecond)); len(s) != 0 {
		t.Errorf("stale before the bound: %v", s)
	}
	s, _ := c.Stale(t0.Add(2 * time.Second))
	if len(s) != 1 || s[0].EntityID != "2" || s[0].Offset != 2 {
		t.Fatalf("stale = %+v, want entity 2 at offset 2", s)
	}
	// A table record ahead of the history waits for it.
	e4 := ev(2, 13, 0, codecs.OpUpdate, `6`)
	if got := table("2", stateOf(e4)); got != nil {
		t.Errorf("ahead of the history: %v, want it to wait", got)
	}
	if got := kinds(c.History(3, e4, t0)); got != nil {
		t.Errorf("history reaching the waiting record: %v", got)
	}
	if s, _ := c.Stale(t0.Add(2 * time.Second)); len(s) != 0 {
		t.Errorf("stale after the table caught up: %+v", s)
	}
	// Ahead of the history with a value the history never had.
	e5 := ev(2, 14, 0, codecs.OpUpdate, `7`)
	wrong := stateOf(e5)
	wrong.Row["v"] = json.RawMessage(`8`)
	table("2", wrong)
	if got := kinds(c.History(4, e5, t0)); len(got) != 1 || got[0] != WrongValue {
		t.Errorf("waiting record with a wrong value: %v", got)
	}
}

func TestCheckerUnchangedColumnsAndTruncate(t *testing.T) {
	c := NewChecker(testTopo(t), time.Second, time.Hour, 1_000_000)
	t0 := time.Now()
	e1 := ev(1, 10, 0, codecs.OpInsert, `1`)
	e1.After["blob"] = json.RawMessage(`"big"`)
	e2 := ev(1, 11, 0, codecs.OpUpdate, `2`) // blob unchanged, not sent
	e2.Unchanged = []string{"blob"}
	c.History(0, e1, t0)
	c.History(1, e2, t0)
	st, _ := codecs.Apply(stateOf(e1), e2)
	if got := kinds(c.Table("a", "tbl", 0, 0, "1", st, t0)); got != nil {
		t.Errorf("state with a kept TOASTed column: %v", got)
	}
	// A TRUNCATE marker reaches every pending event of its partition.
	e3 := ev(5, 12, 0, codecs.OpInsert, `1`)
	c.History(2, e3, t0)
	p := topology.PartitionOf("5", 2)
	c.Table("a", "tbl", p, 0, topology.TruncateKey(p, 2), &codecs.State{EntityType: "a", Truncated: true, Position: codecs.Position{CommitLSN: 13}}, t0)
	if s, _ := c.Stale(t0.Add(time.Hour)); len(s) != 0 {
		t.Errorf("stale after a truncate: %+v", s)
	}
}

func TestCheckerRebuildTombstoneNeverApplied(t *testing.T) {
	c := NewChecker(testTopo(t), time.Second, time.Minute, 1_000_000)
	t0 := time.Now()
	c.Begin(codecs.Position{CommitLSN: 5})
	// A table record at or before where the checker began is not checked.
	old := stateOf(ev(9, 5, 0, codecs.OpInsert, `1`))
	if got := kinds(c.Table("a", "tbl", 0, 0, "9", old, t0)); got != nil {
		t.Errorf("record from before the start: %v", got)
	}
	var evs []*codecs.Event
	for i := range 6 {
		e := ev(1, codecs.LSN(10+i), 0, codecs.OpUpdate, strconv.Itoa(i))
		evs = append(evs, e)
		c.History(int64(i), e, t0)
		c.Table("a", "tbl", 0, int64(i), "1", stateOf(e), t0)
	}
	// A rebuild writes every state again: all explained, none flagged.
	for i, e := range evs {
		if got := kinds(c.Table("a", "tbl", 0, int64(10+i), "1", stateOf(e), t0)); got != nil {
			t.Errorf("rewritten state %d: %v", i, got)
		}
	}
	// A delete, then (deleted state compacted away) only its tombstone.
	del := ev(2, 20, 0, codecs.OpDelete, ``)
	c.History(10, ev(2, 19, 0, codecs.OpInsert, `1`), t0)
	c.History(11, del, t0)
	c.Table("a", "tbl", 0, 20, "2", nil, t0)
	if s, _ := c.Stale(t0.Add(2 * time.Second)); len(s) != 0 {
		t.Errorf("stale after a tombstone: %+v", s)
	}
	// An event the table never reaches: stale, then never_applied after
	// remember, reported once.
	c.History(12, ev(3, 21, 0, codecs.OpInsert, `1`), t0)
	if s, never := c.Stale(t0.Add(2 * time.Second)); len(s) != 1 || len(never) != 0 {
		t.Errorf("after the bound: stale %+v, never %+v", s, never)
	}
	s, never := c.Stale(t0.Add(2 * time.Minute))
	if len(s) != 0 || len(never) != 1 || never[0].Kind != NeverApplied || never[0].EntityID != "3" {
		t.Errorf("after remember: stale %+v, never %+v", s, never)
	}
	if _, never := c.Stale(t0.Add(3 * time.Minute)); len(never) != 0 {
		t.Errorf("never_applied reported again: %+v", never)
	}
	if n := c.Tracked(); n != 0 {
		t.Errorf("remembers %d events after remember, want 0", n)
	}
	// Forgotten positions are not unknown.
	if got := kinds(c.Table("a", "tbl", 0, 30, "1", stateOf(evs[5]), t0.Add(3*time.Minute))); got != nil {
		t.Errorf("state at a forgotten position: %v", got)
	}
}

// TestCheckerForgetsPastMaxEvents feeds more events than the checker may
// remember: the oldest are forgotten early and counted, and neither a table
// record that applies one late nor the table never reaching one is
// reported; what is still remembered is checked as before.
func TestCheckerForgetsPastMaxEvents(t *testing.T) {
	c := NewChecker(testTopo(t), time.Second, time.Hour, 3)
	t0 := time.Now()
	var evs []*codecs.Event
	for i := range 5 {
		e := ev(int64(i+1), codecs.LSN(10+i), 0, codecs.OpInsert, `1`)
		evs = append(evs, e)
		if got := kinds(c.History(int64(i), e, t0)); got != nil {
			t.Fatalf("event %d: %v", i, got)
		}
		if i == 0 { // the table reaches entity 1 before it is forgotten
			if got := kinds(c.Table("a", "tbl", 0, 0, "1", stateOf(e), t0)); got != nil {
				t.Fatalf("entity 1: %v", got)
			}
		}
	}
	if settled, pending := c.Forgotten(); settled != 1 || pending != 1 {
		t.Errorf("Forgotten() = %d settled, %d pending; want 1 and 1 (entities 1 and 2)", settled, pending)
	}
	if n := c.Tracked(); n != 3 {
		t.Errorf("remembers %d events, want 3", n)
	}
	if len(c.entities) != 3 {
		t.Errorf("tracks %d entities, want 3 (those of the remembered events)", len(c.entities))
	}
	// Entity 2's event, applied after it was forgotten: not checked, not
	// reported; nor is a state at a forgotten position that no event had.
	if got := kinds(c.Table("a", "tbl", 0, 1, "2", stateOf(evs[1]), t0)); got != nil {
		t.Errorf("a forgotten event applied late: %v", got)
	}
	odd := stateOf(evs[1])
	odd.Position.Index = 9 // {10,9}: before the last forgotten position {11,0}
	odd.Position.CommitLSN = 10
	if got := kinds(c.Table("a", "tbl", 0, 2, "2", odd, t0)); got != nil {
		t.Errorf("a state at a forgotten position: %v", got)
	}
	// A remembered event is still checked, and an unexplained position
	// after the forgotten ones is still unknown.
	wrong := stateOf(evs[2])
	wrong.Row["v"] = json.RawMessage(`2`)
	if got := kinds(c.Table("a", "tbl", 0, 3, "3", wrong, t0)); len(got) != 1 || got[0] != WrongValue {
		t.Errorf("wrong value at a remembered position: %v", got)
	}
	unknown := stateOf(evs[3])
	unknown.Position.Index = 5
	if got := kinds(c.Table("a", "tbl", 0, 4, "4", unknown, t0)); len(got) != 1 || got[0] != UnknownPosition {
		t.Errorf("unexplained position after the forgotten ones: %v", got)
	}
	// Entities 4 and 5 never reach the table (3 did, wrongly): stale, then
	// never_applied. Entity 2, forgotten unreached, is neither.
	stale, _ := c.Stale(t0.Add(2 * time.Second))
	var staleIDs []string
	for _, s := range stale {
		staleIDs = append(staleIDs, s.EntityID)
	}
	if !slices.Equal(staleIDs, []string{"5"}) {
		t.Errorf("stale entities %v, want [5] (4 reached a position after its event)", staleIDs)
	}
	_, never := c.Stale(t0.Add(2 * time.Hour))
	for _, a := range never {
		if a.EntityID == "2" {
			t.Errorf("a forgotten event reported as %s", a.Kind)
		}
	}
	if len(never) != 1 || never[0].EntityID != "5" {
		t.Errorf("never applied: %+v, want entity 5 only", never)
	}
}

// TestCheckerMemoryBounded feeds a catch-up's worth of distinct entities,
// half of them reached by the table, half never: what the checker holds
// stays within its bounds throughout, and every event past them is counted.
func TestCheckerMemoryBounded(t *testing.T) {
	const maxEvents, n = 1000, 50_000
	c := NewChecker(testTopo(t), time.Second, time.Hour, maxEvents)
	t0 := time.Now()
	for i := range n {
		e := ev(int64(i+1), codecs.LSN(10+i), 0, codecs.OpInsert, `1`)
		now := t0.Add(time.Duration(i) * time.Millisecond)
		c.History(int64(i), e, now)
		if i%2 == 0 {
			c.Table("a", "tbl", 0, int64(i), strconv.Itoa(i+1), stateOf(e), now)
		}
		if i%1000 == 999 {
			c.Stale(now)
		}
		if len(c.byPos) > maxEvents || len(c.log) > maxEvents || len(c.entities) > maxEvents {
			t.Fatalf("after %d events: %d by position, %d in the log, %d entities; want at most %d each",
				i+1, len(c.byPos), len(c.log), len(c.entities), maxEvents)
		}
	}
	settled, pending := c.Forgotten()
	if settled+pending != n-maxEvents || settled != pending {
		t.Errorf("forgotten %d settled + %d pending, want %d, half each", settled, pending, n-maxEvents)
	}
}

// TestCheckerUndeclaredType: an event of a type the config does not declare
// is a history anomaly, holds its position, and is not tracked: no stale
// entity, no never_applied, whatever its type's name.
func TestCheckerUndeclaredType(t *testing.T) {
	c := NewChecker(testTopo(t), time.Second, time.Minute, 1_000_000)
	t0 := time.Now()
	forged := ev(1, 10, 0, codecs.OpInsert, `1`)
	forged.EntityType = "forged"
	got := c.History(0, forged, t0)
	if len(got) != 1 || got[0].Kind != UndeclaredType || got[0].EntityType != "forged" {
		t.Fatalf("undeclared type: %+v", got)
	}
	if got := kinds(c.History(1, forged, t0)); len(got) != 1 || got[0] != Duplicate {
		t.Errorf("its copy: %v, want duplicate", got)
	}
	trunc := ev(0, 11, 0, codecs.OpTruncate, ``)
	trunc.EntityType, trunc.After = "forged", nil
	if got := kinds(c.History(2, trunc, t0)); len(got) != 1 || got[0] != UndeclaredType {
		t.Errorf("undeclared truncate: %v", got)
	}
	// A table state claiming its position is unknown: it is not of "a".
	if got := kinds(c.Table("a", "tbl", 0, 0, "1", stateOf(ev(1, 10, 0, codecs.OpInsert, `1`)), t0)); len(got) != 1 || got[0] != UnknownPosition {
		t.Errorf("table state at the undeclared event's position: %v", got)
	}
	if len(c.entities) != 0 {
		t.Errorf("tracks %d entities, want 0", len(c.entities))
	}
	if s, never := c.Stale(t0.Add(time.Hour)); len(s) != 0 || len(never) != 0 {
		t.Errorf("stale %+v, never applied %+v; want none", s, never)
	}
}

// TestCheckerWaitingBounded: table records ahead of the history wait, at
// most maxWaiting of them; the oldest make room and are counted.
func TestCheckerWaitingBounded(t *testing.T) {
	c := NewChecker(testTopo(t), time.Second, time.Hour, 1_000_000)
	t0 := time.Now()
	c.Begin(codecs.Position{CommitLSN: 5})
	const extra = 10
	var first *codecs.Event
	for i := range maxWaiting + extra {
		// Wrong values: each one the history reaches is reported.
		e := ev(int64(i+1), codecs.LSN(10+i), 0, codecs.OpInsert, `1`)
		st := stateOf(e)
		st.Row["v"] = json.RawMessage(`2`)
		if i == 0 {
			first = e
		}
		if got := kinds(c.Table("a", "tbl", 0, int64(i), strconv.Itoa(i+1), st, t0)); got != nil {
			t.Fatalf("record %d ahead of the history: %v", i, got)
		}
	}
	if len(c.waiting) != maxWaiting || c.Dropped() != extra {
		t.Fatalf("%d waiting, %d dropped; want %d and %d", len(c.waiting), c.Dropped(), maxWaiting, extra)
	}
	// The first records were dropped: the history reaching them finds
	// nothing to check. The first kept one is checked when it is reached.
	if got := kinds(c.History(0, first, t0)); got != nil {
		t.Errorf("history reaching a dropped record: %v", got)
	}
	var found []string
	for i := 1; i <= extra; i++ {
		found = append(found, kinds(c.History(int64(i), ev(int64(i+1), codecs.LSN(10+i), 0, codecs.OpInsert, `1`), t0))...)
	}
	if len(found) != 1 || found[0] != WrongValue {
		t.Errorf("history reaching %d dropped records and a kept one: %v, want one wrong_value", extra-1, found)
	}
	if len(c.waiting) != maxWaiting-1 {
		t.Errorf("%d waiting after the history reached one kept record, want %d", len(c.waiting), maxWaiting-1)
	}
}
