package history

import (
	"bytes"
	"context"
	"fmt"
	"slices"

	"github.com/changes-dev/changes/codecs"
)

// TypeAt is Reader.TypeAt answered from the index: every entity of
// entityType after the history's changes before offset end, in id order.
// It reads the states of the last checkpoint at or before end that the
// index holds, then replays the history from there (at most
// CheckpointEvery records, plus what the index has not read yet).
//
// Where the history starts at offset 0 it answers what Reader.TypeAt
// answers. Where retention removed the start, Reader.TypeAt cannot answer
// (ErrOlderThanHistory), but an index that read the history from offset 0
// can, for any end from its first checkpoint at or after the history's
// start; before that checkpoint, and from an index that did not read the
// history from offset 0, the answer is ErrOlderThanHistory too.
//
// It decodes every state of the answer; TypeJSONAt, which hands on each
// entity's JSON instead, decodes none that the replay after the checkpoint
// leaves as stored.
func (x *Index) TypeAt(ctx context.Context, entityType string, end int64, progress func(done, total int64)) ([]*codecs.State, error) {
	var out []*codecs.State
	err := x.walkType(ctx, entityType, end, progress, func(e typeEntity) error {
		st := e.state
		switch {
		case st == nil:
			var err error
			if st, err = decodeVersion(e.key, e.stored); err != nil {
				return err
			}
		case e.row != nil:
			row, err := codecs.DecodeRow(e.row)
			if err != nil {
				return fmt.Errorf("history index: %s %s: %w", st.EntityType, st.EntityID, err)
			}
			st.Row = row
		}
		out = append(out, st)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// TypeJSONAt answers what TypeAt answers, entity by entity: it calls fn
// with the JSON of each entity's Entity (what json.Marshal writes of
// EntityOf(st), without a newline), in id order, and returns fn's first
// error, or its own. The bytes are fn's only until it returns. An entity
// the replay after the checkpoint did not change is written from the bytes
// the index stores, and one it changed from the JSON of the row of the
// last change applied to it, as the history holds it; neither is decoded
// unless a change keeps columns unchanged or the history's row is not in
// encoding/json's form: a type of a million entities takes about the time of
// reading its checkpoint once plus reading the history after it, where
// TypeAt builds a map of every row and the caller's encoding walks it
// again. An entity whose JSON encoding/json cannot write (a commit time
// after the year 9999) is json.Marshal's error. TypeJSONAt is safe for
// concurrent use, as TypeAt is.
func (x *Index) TypeJSONAt(ctx context.Context, entityType string, end int64, progress func(done, total int64), fn func(entity []byte) error) error {
	var buf, scratch []byte
	return x.walkType(ctx, entityType, end, progress, func(e typeEntity) error {
		switch {
		case e.state == nil:
			buf = appendSplitEntity(buf[:0], e.split)
		case e.row != nil:
			var err error
			if buf, err = appendEntityWithRow(buf[:0], &scratch, e.state, e.row); err != nil {
				return err
			}
		default:
			var err error
			if buf, err = appendEntity(buf[:0], e.state); err != nil {
				return err
			}
		}
		return fn(buf)
	})
}

// typeEntity is an entity of walkType's answer: the state the replay made
// (state, and if it left the state without its row, the row's JSON), or
// the checkpoint's state as the index stores it (stored, under the
// entity's entityKey key, and split; state is nil).
type typeEntity struct {
	state  *codecs.State
	row    []byte
	key    []byte
	stored []byte
	split  codecs.StateJSON
}

// walkType calls fn with each entity of TypeAt's answer, in id order. The
// entities the replay of the history after the checkpoint did not change
// are passed on as the index stores them, and only their position and
// flags are read; the others are replayed one by one, from their
// checkpoint state (decoded only if a change keeps a column unchanged, the
// one case in which codecs.Apply reads it).
//
// The replay of one entity at a time is the replay of the type: a change
// of an entity reads and writes that entity's state alone, and a truncate
// raises the type's truncate position and removes the states it no longer
// holds, which each entity's replay does before its next change and at
// the end.
func (x *Index) walkType(ctx context.Context, entityType string, end int64, progress func(done, total int64), fn func(typeEntity) error) error {
	release, err := x.acquire()
	if err != nil {
		return err
	}
	defer release()
	snap, err := x.db.GetSnapshot()
	if err != nil {
		return fmt.Errorf("history index: %w", err)
	}
	defer snap.Release()
	meta, found, err := x.meta(snap)
	if err != nil {
		return err
	}
	b, err := x.r.Bounds(ctx)
	if err != nil {
		return err
	}
	if !found || !meta.states {
		states, err := x.r.TypeAt(ctx, entityType, end, progress)
		if err != nil {
			return err
		}
		for _, st := range states {
			if err := fn(typeEntity{state: st}); err != nil {
				return err
			}
		}
		return nil
	}
	end = min(end, b.End)
	checkpoint := min(end, meta.next) / x.every * x.every
	if checkpoint < b.Start {
		return fmt.Errorf("%w: the history starts at offset %d (retention %s), and the index's first checkpoint after it is at offset %d, after %d",
			ErrOlderThanHistory, b.Start, b.Retention, (b.Start+x.every-1)/x.every*x.every, end)
	}
	x.m.answers.WithLabelValues("type").Inc()
	// The type's last truncate before the checkpoint: the checkpoint holds
	// no state it removed.
	var truncatedAt codecs.Position
	if checkpoint > 0 {
		if truncatedAt, err = truncatedBefore(snap, entityType, checkpoint); err != nil {
			return err
		}
	}
	tail, err := x.r.readTail(ctx, entityType, checkpoint, end, truncatedAt, progress)
	if err != nil {
		return err
	}
	changed := tail.sorted()
	rp := newReplay(true)
	trunc := &codecs.Event{EntityType: entityType, EntityID: codecs.IntKey(0), Op: codecs.OpTruncate}
	// replayed passes on the state of te after its changes, from base,
	// its state at the checkpoint (nil: none; stored and split: as
	// stored).
	replayed := func(te *tailEntity, base *codecs.State, stored []byte, split codecs.StateJSON) error {
		clear(rp.states)
		clear(rp.rows)
		rp.truncatedAt = truncatedAt
		if base.Holds(truncatedAt) {
			rp.states[te.id] = base
		}
		raise := func(to codecs.Position) {
			if to.Compare(rp.truncatedAt) > 0 {
				trunc.Position, trunc.CommitLSN = to, to.CommitLSN
				rp.apply(trunc)
			}
		}
		for _, c := range te.changes {
			raise(c.truncatedAt)
			if err := rp.applyWithoutRow(c.ev, c.after); err != nil {
				return fmt.Errorf("history index: %w", err)
			}
		}
		raise(tail.truncatedAt)
		row := rp.rows[te.id] // the row of a state the replay left without it
		switch st := rp.entity(te.id); {
		case st == nil:
			return nil
		case st == base && stored != nil && split.Type != nil:
			return fn(typeEntity{key: te.key, stored: stored, split: split})
		default:
			return fn(typeEntity{state: st, row: row})
		}
	}
	next := 0 // the first of changed not passed on yet
	if checkpoint > 0 {
		span := x.every * fullEvery
		err = x.mergeLayers(snap, entityType, min(checkpoint/span*span, meta.full), checkpoint, func(entity, value []byte) error {
			for ; next < len(changed) && bytes.Compare(changed[next].key, entity) < 0; next++ {
				if err := replayed(changed[next], nil, nil, codecs.StateJSON{}); err != nil {
					return err
				}
			}
			split, ok := codecs.SplitState(value)
			if next < len(changed) && bytes.Equal(changed[next].key, entity) {
				te := changed[next]
				next++
				var base *codecs.State
				if ok && !te.unchanged {
					// Judge and Base read the position and the flags, and
					// Apply reads nothing of a state whose change keeps
					// no column unchanged.
					base = &codecs.State{EntityType: entityType, EntityID: te.id, Position: split.Position,
						Deleted: split.Deleted, Truncated: split.Truncated, Watermark: split.Watermark}
				} else {
					split = codecs.StateJSON{}
					var err error
					if base, err = decodeVersion(entity, value); err != nil {
						return err
					}
				}
				return replayed(te, base, value, split)
			}
			if !ok {
				st, err := decodeVersion(entity, value)
				if err != nil || !codecs.VisibleAfter(tail.truncatedAt, st) {
					return err
				}
				return fn(typeEntity{state: st})
			}
			flags := codecs.State{Position: split.Position, Deleted: split.Deleted, Truncated: split.Truncated, Watermark: split.Watermark}
			if !codecs.VisibleAfter(tail.truncatedAt, &flags) {
				return nil
			}
			return fn(typeEntity{key: entity, stored: value, split: split})
		})
		if err != nil {
			return err
		}
	}
	for ; next < len(changed); next++ {
		if err := replayed(changed[next], nil, nil, codecs.StateJSON{}); err != nil {
			return err
		}
	}
	return nil
}

// typeTail is the changes of a type after a checkpoint, by entity.
type typeTail struct {
	entities map[codecs.Key]*tailEntity
	// truncatedAt is the type's last truncate after the changes.
	truncatedAt codecs.Position
}

// tailEntity is the changes of one entity after a checkpoint.
type tailEntity struct {
	id        codecs.Key
	key       []byte // id as entityKey writes it
	changes   []tailChange
	unchanged bool // a change keeps columns unchanged
}

// tailChange is a change, decoded without its rows, the JSON of its after
// (codecs.EventCodec.DecodeWithoutRows), and the type's last truncate
// before it. The tail is held until the checkpoint is read: the JSON of
// the rows takes a fraction of the memory of their Rows, and the replay
// decodes a row only where a change keeps columns unchanged, or TypeAt
// answers it.
type tailChange struct {
	ev          *codecs.Event
	after       []byte
	truncatedAt codecs.Position
}

// readTail reads the changes of entityType in [from, to), grouped by
// entity, its truncates folded into the positions each change is applied
// after (replay.apply's rule: a truncate raises the position, never
// lowers it), from truncatedAt, the last before from.
func (r *Reader) readTail(ctx context.Context, entityType string, from, to int64, truncatedAt codecs.Position, progress func(done, total int64)) (*typeTail, error) {
	t := &typeTail{entities: map[codecs.Key]*tailEntity{}, truncatedAt: truncatedAt}
	err := r.replayType(ctx, entityType, from, to, progress, func(ev *codecs.Event, after []byte) error {
		if ev.Op == codecs.OpTruncate {
			if ev.Position.Compare(t.truncatedAt) > 0 {
				t.truncatedAt = ev.Position
			}
			return nil
		}
		te := t.entities[ev.EntityID]
		if te == nil {
			te = &tailEntity{id: ev.EntityID}
			t.entities[ev.EntityID] = te
		}
		te.changes = append(te.changes, tailChange{ev: ev, after: after, truncatedAt: t.truncatedAt})
		te.unchanged = te.unchanged || len(ev.Unchanged) > 0
		return nil
	})
	return t, err
}

// sorted is t's entities in id order (their entityKeys' order).
func (t *typeTail) sorted() []*tailEntity {
	out := make([]*tailEntity, 0, len(t.entities))
	for _, te := range t.entities {
		te.key = entityKey(nil, te.id)
		out = append(out, te)
	}
	slices.SortFunc(out, func(a, b *tailEntity) int { return bytes.Compare(a.key, b.key) })
	return out
}
