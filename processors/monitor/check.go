package monitor

import (
	"bytes"
	"fmt"
	"hash/fnv"
	"maps"
	"slices"
	"time"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/topology"
)

// The kinds of history anomaly.
const (
	// Duplicate: a position the history already holds.
	Duplicate = "duplicate"
	// Reorder: a position before the last one that the history does not hold.
	Reorder = "reorder"
	// Gap: a transaction's changes skip an index (positions inside a
	// transaction are consecutive, and a transaction starts at index 0).
	Gap = "gap"
	// UndeclaredType: an event of an entity type the config does not
	// declare (a forged record, or a capture with another config); the
	// router dead-letters it, so no table applies it. Its entity type is
	// never a metric label.
	UndeclaredType = "undeclared_type"
)

// The kinds of inconsistency between a snapshot table and the history.
const (
	// WrongValue: the table holds a state at a position whose history event
	// says something else.
	WrongValue = "wrong_value"
	// UnknownPosition: the table holds a state at a position where the
	// history has no change of that entity.
	UnknownPosition = "unknown_position"
	// NeverApplied: a history event the table did not reach within
	// monitor.remember; the entity was reported stale before.
	NeverApplied = "never_applied"
	// Undecodable: a record that does not decode (changes audit).
	Undecodable = "undecodable"
)

// Anomaly is a finding of the Checker.
type Anomaly struct {
	// Kind is Duplicate, Reorder, Gap, UndeclaredType, WrongValue,
	// UnknownPosition, NeverApplied or Undecodable.
	Kind       string
	EntityType string
	EntityID   string
	Position   codecs.Position
	// Topic, Partition and Offset locate the record.
	Topic     string
	Partition int32
	Offset    int64
	// Detail explains, for logs.
	Detail string
}

func (a Anomaly) String() string {
	return fmt.Sprintf("%s: %s %s at %s (%s/%d@%d): %s", a.Kind, a.EntityType, a.EntityID, a.Position, a.Topic, a.Partition, a.Offset, a.Detail)
}

// Stale is an entity whose snapshot table has not reached its latest
// history event within the bound.
type Stale struct {
	EntityType string
	EntityID   string
	// Position and Offset are those of the oldest history event the table
	// has not reached.
	Position codecs.Position
	Offset   int64
	// Since is when the checker saw that event.
	Since time.Time
	// TablePosition is the table's latest state of the entity, if seen.
	TablePosition codecs.Position
}

type entityKey struct {
	typ string
	id  string // the key's text: a type's keys are all of one kind
}

// event is a history event the checker remembers.
type event struct {
	key       entityKey
	pos       codecs.Position
	offset    int64
	op        codecs.Op
	hash      uint64   // of the state the event leads to
	unchanged []string // columns the table keeps from the previous state
	seen      time.Time
}

type entity struct {
	pending  []*event // not reached by the table yet, in position order
	tablePos codecs.Position
	touched  time.Time // when its latest history event was fed
}

// unverified is a table record whose position the history has not reached
// yet.
type unverified struct {
	key   entityKey
	st    *codecs.State
	where Anomaly // topic, partition, offset
}

// maxWaiting bounds the table records waiting for the history.
const maxWaiting = 100_000

// Checker compares the history with the snapshot tables. It is fed the
// records of both, in each topic partition's order, and is not safe for
// concurrent use. It remembers the history events of the last
// monitor.remember, at most monitor.remember_events of them (200 to 370
// bytes each): a table record is checked against the event at its
// position, and a record at a position after the first event fed, that no
// remembered event explains, is an UnknownPosition.
//
// Its memory is bounded whatever it is fed: the events by count, the
// entities it tracks by the events (an entity is dropped with the last
// of its events), the table records waiting for the history by
// maxWaiting, and events of undeclared entity types are not tracked.
type Checker struct {
	bound     time.Duration
	remember  time.Duration
	maxEvents int
	history   string

	started    bool
	first      codecs.Position // table records from here on must be explained
	last       codecs.Position // the last history position fed
	forgotten  codecs.Position // the last position dropped from byPos
	byPos      map[codecs.Position]*event
	log        []*event // byPos in the order fed, to forget the oldest
	entities   map[entityKey]*entity
	waiting    []unverified
	waitMin    codecs.Position // no waiting record is before it
	dropped    int             // waiting records dropped at maxWaiting
	early      [2]int          // events forgotten at maxEvents: [settled, pending]
	partitions map[string]int  // table partitions by declared entity type
}

// NewChecker returns a Checker for topo: an entity is stale once its table
// is staleAfter behind one of its history events; events are remembered for
// remember, then an event the table has not reached is NeverApplied. At
// most maxEvents are remembered (at least 1): past it the oldest is
// forgotten early, and counted in Forgotten instead of ever being reported.
func NewChecker(topo *topology.Topology, staleAfter, remember time.Duration, maxEvents int) *Checker {
	partitions := map[string]int{}
	for _, e := range topo.Config().Entities {
		partitions[e.Type] = e.Partitions
	}
	return &Checker{
		partitions: partitions,
		bound:      staleAfter,
		remember:   remember,
		maxEvents:  max(maxEvents, 1),
		history:    topo.History(),
		byPos:      map[codecs.Position]*event{},
		entities:   map[entityKey]*entity{},
	}
}

// Begin tells the checker the history position it starts after (the last
// record when it starts reading): table records up to it are not checked.
func (c *Checker) Begin(after codecs.Position) {
	c.started = true
	c.last = after
	c.first = codecs.Position{CommitLSN: after.CommitLSN, Index: after.Index + 1}
}

// History feeds the history record at offset, decoded as ev, seen at now.
// It returns the anomalies it finds: of the history itself, and of table
// records that were waiting for the history to reach their position.
//
// A progress watermark (codecs.OpWatermark) is no change: it holds no
// entity and may repeat a position a change has too, so it is passed over.
func (c *Checker) History(offset int64, ev *codecs.Event, now time.Time) []Anomaly {
	if ev.Op == codecs.OpWatermark {
		return nil
	}
	var out []Anomaly
	where := Anomaly{EntityType: ev.EntityType, EntityID: ev.EntityID.String(), Position: ev.Position, Topic: c.history, Offset: offset}
	reordered := false
	if c.started {
		switch cmp := ev.Position.Compare(c.last); {
		case cmp == 0 || (cmp < 0 && c.byPos[ev.Position] != nil):
			where.Kind, where.Detail = Duplicate, "the history already holds this position"
			return append(out, where)
		case cmp < 0:
			// Remembered, so the table record that applies it is explained.
			where.Kind, where.Detail, reordered = Reorder, "before the last position "+c.last.String(), true
			out = append(out, where)
		case ev.Position.CommitLSN == c.last.CommitLSN && ev.Position.Index != c.last.Index+1:
			where.Kind, where.Detail = Gap, fmt.Sprintf("index %d follows %d in one transaction", ev.Position.Index, c.last.Index)
			out = append(out, where)
		case ev.Position.CommitLSN != c.last.CommitLSN && ev.Position.Index != 0 && ev.Op != codecs.OpSnapshot:
			// (A resumed initial snapshot goes on with the indices it had.)
			where.Kind, where.Detail = Gap, fmt.Sprintf("a transaction starts at index %d", ev.Position.Index)
			out = append(out, where)
		}
	} else {
		c.started, c.first = true, ev.Position
	}
	if !reordered {
		c.last = ev.Position
	}
	_, declared := c.partitions[ev.EntityType]
	if !declared && ev.Op != codecs.OpResync { // a resync marker names no entity
		where.Kind, where.Detail = UndeclaredType, "no entity type of this name is declared: the router dead-letters it"
		out = append(out, where)
	}
	// Remembered even when undeclared: it holds its position, so a copy of
	// it is a duplicate and a table state at it is unknown.
	e := &event{key: entityKey{ev.EntityType, ev.EntityID.String()}, pos: ev.Position, offset: offset, op: ev.Op,
		hash: eventHash(ev), unchanged: ev.Unchanged, seen: now}
	c.byPos[ev.Position] = e
	c.log = append(c.log, e)
	if ev.Op != codecs.OpTruncate && declared {
		ent := c.entities[e.key]
		if ent == nil {
			ent = &entity{}
			c.entities[e.key] = ent
		}
		i, _ := slices.BinarySearchFunc(ent.pending, e.pos, comparePos)
		ent.pending = slices.Insert(ent.pending, i, e)
		ent.touched = now
	}
	for len(c.log) > c.maxEvents {
		c.forgetEarly()
	}
	// Table records that were ahead of the history can be checked now.
	if len(c.waiting) == 0 || c.waitMin.Compare(c.last) > 0 {
		return out
	}
	keep := c.waiting[:0]
	var lowest codecs.Position
	for _, w := range c.waiting {
		if w.st.Position.Compare(c.last) > 0 {
			if len(keep) == 0 || w.st.Position.Compare(lowest) < 0 {
				lowest = w.st.Position
			}
			keep = append(keep, w)
			continue
		}
		if a, bad := c.table(w.key, w.st, w.where); bad {
			out = append(out, a)
		}
	}
	clear(c.waiting[len(keep):]) // the checked states, for the GC
	c.waiting, c.waitMin = keep, lowest
	return out
}

func comparePos(p *event, pos codecs.Position) int { return p.pos.Compare(pos) }

// forget drops the oldest remembered event from byPos and log and returns
// it: a table record at its position or before is no longer checked.
func (c *Checker) forget() *event {
	e := c.log[0]
	c.log[0] = nil // the backing array outlives the reslice
	c.log = c.log[1:]
	if c.byPos[e.pos] == e {
		delete(c.byPos, e.pos)
	}
	if e.pos.Compare(c.forgotten) > 0 {
		c.forgotten = e.pos
	}
	return e
}

// forgetEarly forgets the oldest event before monitor.remember, at
// maxEvents. If the table has not reached it, it leaves its entity's
// pending list unreported (it could still be applied: only time would
// tell), and it is counted. An entity left with nothing pending is
// dropped too: its events are all forgotten, so nothing keeps it.
func (c *Checker) forgetEarly() {
	e := c.forget()
	pending := 0
	if ent := c.entities[e.key]; ent != nil {
		if i, found := slices.BinarySearchFunc(ent.pending, e.pos, comparePos); found && ent.pending[i] == e {
			ent.pending = slices.Delete(ent.pending, i, i+1)
			pending = 1
		}
		if len(ent.pending) == 0 {
			delete(c.entities, e.key)
		}
	}
	c.early[pending]++
}

// IsSnapshot reports whether pos is a remembered event of the initial
// snapshot: its commit time is when the copy started, not a commit.
func (c *Checker) IsSnapshot(pos codecs.Position) bool {
	e := c.byPos[pos]
	return e != nil && e.op == codecs.OpSnapshot
}

// Table feeds the record at partition/offset of entityType's snapshot table:
// key and st, its decoded value (nil for a tombstone).
func (c *Checker) Table(entityType string, topic string, partition int32, offset int64, key string, st *codecs.State, now time.Time) []Anomaly {
	id := key
	if st == nil {
		// A tombstone follows a deleted state: pending events up to the
		// entity's last delete are reached (its deleted state may have been
		// compacted away).
		if e := c.entities[entityKey{entityType, id}]; e != nil {
			last := -1
			for i, p := range e.pending {
				if p.op == codecs.OpDelete {
					last = i
				}
			}
			e.pending = slices.Delete(e.pending, 0, last+1)
		}
		return nil
	}
	where := Anomaly{EntityType: entityType, EntityID: st.EntityID.String(), Position: st.Position, Topic: topic, Partition: partition, Offset: offset}
	if st.Truncated {
		c.truncated(entityType, partition, st.Position)
		return nil
	}
	if st.Watermark {
		return nil // a partition's progress, not an entity
	}
	if id != st.EntityID.String() {
		where.Kind, where.Detail = UnknownPosition, fmt.Sprintf("key %q holds the state of entity %q", key, st.EntityID)
		return []Anomaly{where}
	}
	k := entityKey{entityType, id}
	if !c.started || st.Position.Compare(c.last) > 0 {
		// The history has not reached this position yet. The oldest
		// waiting record makes room: one at a position the history never
		// reaches (a forged one) does not stay forever.
		if len(c.waiting) >= maxWaiting {
			c.waiting[0] = unverified{}
			c.waiting = c.waiting[1:]
			c.dropped++
		}
		if len(c.waiting) == 0 || st.Position.Compare(c.waitMin) < 0 {
			c.waitMin = st.Position
		}
		c.waiting = append(c.waiting, unverified{key: k, st: st, where: where})
		return nil
	}
	if a, bad := c.table(k, st, where); bad {
		return []Anomaly{a}
	}
	return nil
}

// table checks a table record the history has reached.
func (c *Checker) table(k entityKey, st *codecs.State, where Anomaly) (Anomaly, bool) {
	// The entity is not touched: it lives as long as its history events,
	// so the entities tracked are bounded by the events remembered.
	if e := c.entities[k]; e != nil {
		if st.Position.Compare(e.tablePos) > 0 {
			e.tablePos = st.Position
		}
		n := 0
		for n < len(e.pending) && e.pending[n].pos.Compare(st.Position) <= 0 {
			n++
		}
		e.pending = slices.Delete(e.pending, 0, n)
	}
	ev := c.byPos[st.Position]
	switch {
	case ev == nil && st.Position.Compare(c.first) >= 0 && st.Position.Compare(c.forgotten) > 0:
		where.Kind, where.Detail = UnknownPosition, "the history has no change of this entity at this position"
		return where, true
	case ev == nil:
		return Anomaly{}, false // older than what the checker remembers
	case ev.key != k:
		where.Kind, where.Detail = UnknownPosition, fmt.Sprintf("the history event at this position (offset %d) is of %s %s", ev.offset, ev.key.typ, ev.key.id)
		return where, true
	case stateHash(st, ev.unchanged) != ev.hash:
		where.Kind, where.Detail = WrongValue, fmt.Sprintf("the state differs from the history event at offset %d", ev.offset)
		return where, true
	}
	return Anomaly{}, false
}

// truncated applies a TRUNCATE marker: the partition's entities of the
// type are reached up to at.
func (c *Checker) truncated(entityType string, partition int32, at codecs.Position) {
	for k, e := range c.entities {
		if k.typ != entityType || len(e.pending) == 0 {
			continue
		}
		if n, ok := c.partitions[k.typ]; ok && topology.PartitionOf(k.id, n) != partition {
			continue
		}
		n := 0
		for n < len(e.pending) && e.pending[n].pos.Compare(at) <= 0 {
			n++
		}
		e.pending = slices.Delete(e.pending, 0, n)
	}
}

// Stale lists the entities whose table is behind a history event seen more
// than the bound before now. It forgets what is older than remember: a
// pending event then comes back as a NeverApplied anomaly.
func (c *Checker) Stale(now time.Time) ([]Stale, []Anomaly) {
	for len(c.log) > 0 && now.Sub(c.log[0].seen) > c.remember {
		c.forget()
	}
	var stale []Stale
	var never []Anomaly
	for k, e := range c.entities {
		for len(e.pending) > 0 && now.Sub(e.pending[0].seen) > c.remember {
			p := e.pending[0]
			never = append(never, Anomaly{Kind: NeverApplied, EntityType: k.typ, EntityID: k.id, Position: p.pos, Topic: c.history, Offset: p.offset,
				Detail: fmt.Sprintf("the table did not reach this history event within %s", c.remember)})
			e.pending = e.pending[1:]
		}
		if len(e.pending) > 0 && now.Sub(e.pending[0].seen) > c.bound {
			stale = append(stale, Stale{EntityType: k.typ, EntityID: k.id, Position: e.pending[0].pos, Offset: e.pending[0].offset,
				Since: e.pending[0].seen, TablePosition: e.tablePos})
		}
		if len(e.pending) == 0 && now.Sub(e.touched) > c.remember {
			delete(c.entities, k)
		}
	}
	slices.SortFunc(stale, func(a, b Stale) int { return a.Position.Compare(b.Position) })
	slices.SortFunc(never, func(a, b Anomaly) int { return a.Position.Compare(b.Position) })
	return stale, never
}

// Tracked is how many history events the checker remembers.
func (c *Checker) Tracked() int { return len(c.byPos) }

// Dropped is how many table records were dropped unchecked because too many
// waited for the history.
func (c *Checker) Dropped() int { return c.dropped }

// Forgotten is how many history events were forgotten before
// monitor.remember because maxEvents were remembered. Settled: nothing
// waited for them (the table had reached them, or no table applies them:
// a truncate, an undeclared type); a later table record at their position
// is not checked. Pending: the table had not reached them yet; whether it
// ever does is not reported.
func (c *Checker) Forgotten() (settled, pending int) { return c.early[0], c.early[1] }

// eventHash is the hash of the state ev leads to, over the columns ev
// carries (a delete: the deleted marker).
func eventHash(ev *codecs.Event) uint64 {
	if ev.Op == codecs.OpDelete {
		return deletedHash
	}
	return rowHash(ev.After, nil)
}

// stateHash is the hash of st over its row's columns but those unchanged.
func stateHash(st *codecs.State, unchanged []string) uint64 {
	if st.Deleted {
		return deletedHash
	}
	return rowHash(st.Row, unchanged)
}

var deletedHash = func() uint64 { h := fnv.New64a(); h.Write([]byte("\x00deleted")); return h.Sum64() }()

func rowHash(row codecs.Row, skip []string) uint64 {
	h := fnv.New64a()
	for _, col := range slices.Sorted(maps.Keys(row)) {
		if slices.Contains(skip, col) {
			continue
		}
		h.Write([]byte(col))
		h.Write([]byte{0})
		h.Write(bytes.TrimSpace(row[col]))
		h.Write([]byte{0})
	}
	return h.Sum64()
}
