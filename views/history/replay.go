package history

import (
	"fmt"
	"maps"
	"slices"

	"github.com/changes-dev/changes/codecs"
)

// replay rebuilds the entities of one type from the history's changes,
// applied in history order by the rule of the snapshot tables
// (codecs.Judge, codecs.Base, codecs.VisibleAfter): what it holds after a
// change is what the type's table held then, as a view saw it.
type replay struct {
	// states holds each entity's last state that still holds (see
	// codecs.State.Holds), deleted ones included unless dropDeleted.
	states      map[codecs.Key]*codecs.State
	truncatedAt codecs.Position // the type's last TRUNCATE so far
	// dropDeleted forgets a deleted entity at once instead of keeping its
	// position: a table keeps it for topics.delete_grace against an older
	// change delivered again, but the history holds every position once, in
	// order, and a replay of a whole type must not grow with every entity
	// ever deleted.
	dropDeleted bool
	// rows holds the JSON of the row of each state applyWithoutRow left
	// without its row: decodeRows decodes it.
	rows map[codecs.Key][]byte
}

func newReplay(dropDeleted bool) *replay {
	return &replay{states: map[codecs.Key]*codecs.State{}, dropDeleted: dropDeleted}
}

// apply applies ev, a change of the replayed type. For an entity's change
// that supersedes its state, it returns the state the change was applied
// to (nil if none held) and the unchanged columns that state had no value
// for (see codecs.Apply), and applied is true.
func (r *replay) apply(ev *codecs.Event) (base *codecs.State, missing []string, applied bool) {
	if ev.Op == codecs.OpTruncate {
		if ev.Position.Compare(r.truncatedAt) > 0 {
			r.truncatedAt = ev.Position
		}
		maps.DeleteFunc(r.states, func(id codecs.Key, st *codecs.State) bool {
			if st.Holds(r.truncatedAt) {
				return false
			}
			delete(r.rows, id)
			return true
		})
		return nil, nil, false
	}
	cur := r.states[ev.EntityID]
	if codecs.Judge(cur, ev, r.truncatedAt) != codecs.Supersede {
		return nil, nil, false
	}
	base = codecs.Base(cur, r.truncatedAt)
	next, missing := codecs.Apply(base, ev)
	if next == nil || (r.dropDeleted && next.Deleted) {
		delete(r.states, ev.EntityID)
	} else {
		r.states[ev.EntityID] = next
	}
	return base, missing, true
}

// applyWithoutRow is apply for ev decoded without its rows (see
// codecs.EventCodec.DecodeWithoutRows), after the JSON of its after. It
// decodes no row where it can help it: a change that keeps no column
// unchanged leaves the state it makes without its row (an empty Row) until
// decodeRows, and a later change that supersedes it before that spares the
// row's decoding altogether. A change that keeps columns unchanged reads
// the row it applies to, so that row, and its own, are decoded at once.
// Call decodeRows before entity or entities.
func (r *replay) applyWithoutRow(ev *codecs.Event, after []byte) error {
	if ev.Op == codecs.OpTruncate {
		r.apply(ev)
		return nil
	}
	id := ev.EntityID
	if len(ev.Unchanged) > 0 && after != nil {
		if err := r.decodeRow(id); err != nil {
			return err
		}
		row, err := codecs.DecodeRow(after)
		if err != nil {
			return fmt.Errorf("%s %s at %s: %w", ev.EntityType, id, ev.Position, err)
		}
		ev.After = row
		r.apply(ev)
		ev.After = nil // the replay does not keep the event's row
		return nil
	}
	if _, _, applied := r.apply(ev); applied {
		if st := r.states[id]; st != nil && after != nil && !st.Deleted {
			if r.rows == nil {
				r.rows = map[codecs.Key][]byte{}
			}
			r.rows[id] = after
		} else {
			delete(r.rows, id)
		}
	}
	return nil
}

// decodeRow decodes the row applyWithoutRow left undecoded in the state
// of entity id, if any.
func (r *replay) decodeRow(id codecs.Key) error {
	b, ok := r.rows[id]
	if !ok {
		return nil
	}
	delete(r.rows, id)
	st := r.states[id]
	if st == nil {
		return nil
	}
	row, err := codecs.DecodeRow(b)
	if err != nil {
		return fmt.Errorf("%s %s at %s: %w", st.EntityType, id, st.Position, err)
	}
	st.Row = row
	return nil
}

// decodeRows decodes every row applyWithoutRow left undecoded.
func (r *replay) decodeRows() error {
	for id := range r.rows {
		if err := r.decodeRow(id); err != nil {
			return err
		}
	}
	return nil
}

// entity is the state of entity id a reader sees, or nil.
func (r *replay) entity(id codecs.Key) *codecs.State {
	if st := r.states[id]; codecs.VisibleAfter(r.truncatedAt, st) {
		return st
	}
	return nil
}

// entities are the entities a reader sees, in id order.
func (r *replay) entities() []*codecs.State {
	out := make([]*codecs.State, 0, len(r.states))
	for _, id := range slices.SortedFunc(maps.Keys(r.states), codecs.Key.Compare) {
		if st := r.entity(id); st != nil {
			out = append(out, st)
		}
	}
	return out
}
