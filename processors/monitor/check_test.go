package monitor

import (
	"encoding/json"
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
	e := &codecs.Event{EntityType: "a", EntityID: id, Op: op, CommitLSN: lsn, Position: codecs.Position{CommitLSN: lsn, Index: idx}}
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
	c := NewChecker(testTopo(t), time.Second, time.Hour)
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
	c := NewChecker(testTopo(t), time.Second, time.Hour)
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
	if len(s) != 1 || s[0].EntityID != 2 || s[0].Offset != 2 {
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
	c := NewChecker(testTopo(t), time.Second, time.Hour)
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
	c := NewChecker(testTopo(t), time.Second, time.Minute)
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
	if len(s) != 0 || len(never) != 1 || never[0].Kind != NeverApplied || never[0].EntityID != 3 {
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
