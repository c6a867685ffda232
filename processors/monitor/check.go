package monitor

import (
	"bytes"
	"fmt"
	"hash/fnv"
	"maps"
	"slices"
	"strconv"
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
)

// The kinds of inconsistency between a snapshot table and the history.
const (
	// WrongValue: the table holds a state at a position whose history event
	// says something else.
	WrongValue = "wrong_value"
	// UnknownPosition: the table holds a state at a position where the
	// history has no change of that entity.
	UnknownPosition = "unknown_position"
)

// Anomaly is a finding of the Checker.
type Anomaly struct {
	// Kind is Duplicate, Reorder, Gap, WrongValue or UnknownPosition.
	Kind       string
	EntityType string
	EntityID   int64
	Position   codecs.Position
	// Topic, Partition and Offset locate the record.
	Topic     string
	Partition int32
	Offset    int64
	// Detail explains, for logs.
	Detail string
}

func (a Anomaly) String() string {
	return fmt.Sprintf("%s: %s %d at %s (%s/%d@%d): %s", a.Kind, a.EntityType, a.EntityID, a.Position, a.Topic, a.Partition, a.Offset, a.Detail)
}

// Stale is an entity whose snapshot table has not reached its latest
// history event within the bound.
type Stale struct {
	EntityType string
	EntityID   int64
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
	id  int64
}

// expect is a history event of an entity, as the table should apply it.
type expect struct {
	pos       codecs.Position
	offset    int64
	hash      uint64
	unchanged []string // columns the table keeps from the previous state
	seen      time.Time
}

type entity struct {
	pending  []expect // not reached by the table yet, in position order
	applied  []expect // the last few the table reached, to check rewrites
	tablePos codecs.Position
	touched  time.Time
}

// unverified is a table record whose position the history has not reached
// yet.
type unverified struct {
	key   entityKey
	st    *codecs.State
	where Anomaly // topic, partition, offset
}

// Checker compares the history with the snapshot tables. It is fed the
// records of both, in each topic partition's order, and is not safe for
// concurrent use. It knows only what it was fed: history events from before
// its first one are not checked against the tables.
type Checker struct {
	bound    time.Duration
	remember time.Duration
	history  string

	started    bool
	first      codecs.Position // the first history position fed
	last       codecs.Position // the last history position fed
	recent     map[codecs.Position]struct{}
	recentLog  []codecs.Position // FIFO of recent, to bound it
	entities   map[entityKey]*entity
	waiting    []unverified
	partitions map[string]int // table partitions by entity type
}

// recentPositions is how many history positions the checker remembers to
// tell a duplicate from a reorder.
const recentPositions = 200_000

// NewChecker returns a Checker for topo; an entity is stale once its table
// is staleAfter behind a history event, and events are kept for remember.
func NewChecker(topo *topology.Topology, staleAfter, remember time.Duration) *Checker {
	partitions := map[string]int{}
	for _, e := range topo.Config().Entities {
		partitions[e.Type] = e.Partitions
	}
	return &Checker{
		partitions: partitions,
		bound:      staleAfter,
		remember:   remember,
		history:    string(topo.History()),
		recent:     map[codecs.Position]struct{}{},
		entities:   map[entityKey]*entity{},
	}
}

// History feeds the history record at offset, decoded as ev, seen at now.
// It returns the anomalies it finds: of the history itself, and of table
// records that were waiting for the history to reach their position.
func (c *Checker) History(offset int64, ev *codecs.Event, now time.Time) []Anomaly {
	var out []Anomaly
	where := Anomaly{EntityType: ev.EntityType, EntityID: ev.EntityID, Position: ev.Position, Topic: c.history, Offset: offset}
	if c.started {
		switch cmp := ev.Position.Compare(c.last); {
		case cmp <= 0:
			kind, detail := Reorder, "before the last position "+c.last.String()
			if _, dup := c.recent[ev.Position]; dup {
				kind, detail = Duplicate, "the history already holds this position"
			}
			where.Kind, where.Detail = kind, detail
			return append(out, where)
		case ev.Position.CommitLSN == c.last.CommitLSN && ev.Position.Index != c.last.Index+1:
			where.Kind, where.Detail = Gap, fmt.Sprintf("index %d follows %d in one transaction", ev.Position.Index, c.last.Index)
			out = append(out, where)
		case ev.Position.CommitLSN != c.last.CommitLSN && ev.Position.Index != 0:
			where.Kind, where.Detail = Gap, fmt.Sprintf("a transaction starts at index %d", ev.Position.Index)
			out = append(out, where)
		}
	} else {
		c.started, c.first = true, ev.Position
	}
	c.last = ev.Position
	c.recent[ev.Position] = struct{}{}
	c.recentLog = append(c.recentLog, ev.Position)
	if len(c.recentLog) > recentPositions {
		delete(c.recent, c.recentLog[0])
		c.recentLog = c.recentLog[1:]
	}
	if ev.Op != codecs.OpTruncate {
		k := entityKey{ev.EntityType, ev.EntityID}
		e := c.entities[k]
		if e == nil {
			e = &entity{}
			c.entities[k] = e
		}
		e.pending = append(e.pending, expect{pos: ev.Position, offset: offset, hash: eventHash(ev), unchanged: ev.Unchanged, seen: now})
		e.touched = now
	}
	// Table records that were ahead of the history can be checked now.
	keep := c.waiting[:0]
	for _, w := range c.waiting {
		if w.st.Position.Compare(c.last) > 0 {
			keep = append(keep, w)
			continue
		}
		if a, bad := c.table(w.key, w.st, w.where, now); bad {
			out = append(out, a)
		}
	}
	c.waiting = keep
	return out
}

// Table feeds the record at partition/offset of entityType's snapshot table:
// key and st, its decoded value (nil for a tombstone).
func (c *Checker) Table(entityType string, topic string, partition int32, offset int64, key string, st *codecs.State, now time.Time) []Anomaly {
	if st == nil {
		return nil // a tombstone ends an entity that was reported deleted
	}
	where := Anomaly{EntityType: entityType, EntityID: st.EntityID, Position: st.Position, Topic: topic, Partition: partition, Offset: offset}
	if st.Truncated {
		c.truncated(entityType, partition, st.Position)
		return nil
	}
	id, err := strconv.ParseInt(key, 10, 64)
	if err != nil || id != st.EntityID {
		where.Kind, where.Detail = UnknownPosition, fmt.Sprintf("key %q holds the state of entity %d", key, st.EntityID)
		return []Anomaly{where}
	}
	k := entityKey{entityType, id}
	if !c.started || st.Position.Compare(c.last) > 0 {
		// The history has not reached this position yet (or nothing was fed).
		c.waiting = append(c.waiting, unverified{key: k, st: st, where: where})
		return nil
	}
	if a, bad := c.table(k, st, where, now); bad {
		return []Anomaly{a}
	}
	return nil
}

// table checks a table record the history has reached.
func (c *Checker) table(k entityKey, st *codecs.State, where Anomaly, now time.Time) (Anomaly, bool) {
	e := c.entities[k]
	if e == nil {
		if st.Position.Compare(c.first) >= 0 {
			where.Kind, where.Detail = UnknownPosition, "the history has no change of this entity since the monitor started"
			return where, true
		}
		return Anomaly{}, false // from before what the checker saw
	}
	e.touched = now
	if st.Position.Compare(e.tablePos) > 0 {
		e.tablePos = st.Position
	}
	var ex *expect
	for i := range e.pending {
		if e.pending[i].pos == st.Position {
			ex = &e.pending[i]
		}
	}
	for i := range e.applied {
		if e.applied[i].pos == st.Position {
			ex = &e.applied[i]
		}
	}
	var found expect
	if ex != nil {
		found = *ex
	}
	// Every pending event up to this position is applied now.
	n := 0
	for n < len(e.pending) && e.pending[n].pos.Compare(st.Position) <= 0 {
		n++
	}
	e.applied = append(e.applied, e.pending[:n]...)
	e.pending = slices.Delete(e.pending, 0, n)
	if len(e.applied) > 4 {
		e.applied = slices.Delete(e.applied, 0, len(e.applied)-4)
	}
	switch {
	case ex == nil && st.Position.Compare(c.first) >= 0:
		where.Kind, where.Detail = UnknownPosition, "the history has no change of this entity at this position"
		return where, true
	case ex == nil:
		return Anomaly{}, false
	case stateHash(st, found.unchanged) != found.hash:
		where.Kind, where.Detail = WrongValue, fmt.Sprintf("the state differs from the history event at offset %d", found.offset)
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
		if n, ok := c.partitions[k.typ]; ok && topology.PartitionOf(strconv.FormatInt(k.id, 10), n) != partition {
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
// than the bound before now, and forgets what is older than remember.
func (c *Checker) Stale(now time.Time) []Stale {
	var out []Stale
	for k, e := range c.entities {
		if len(e.pending) > 0 && now.Sub(e.pending[0].seen) > c.bound {
			out = append(out, Stale{EntityType: k.typ, EntityID: k.id, Position: e.pending[0].pos, Offset: e.pending[0].offset,
				Since: e.pending[0].seen, TablePosition: e.tablePos})
		}
		if len(e.pending) == 0 && now.Sub(e.touched) > c.remember {
			delete(c.entities, k)
		}
	}
	slices.SortFunc(out, func(a, b Stale) int { return a.Position.Compare(b.Position) })
	return out
}

// Tracked is how many entities the checker holds.
func (c *Checker) Tracked() int { return len(c.entities) }

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
