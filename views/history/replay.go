package history

import (
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
		maps.DeleteFunc(r.states, func(_ codecs.Key, st *codecs.State) bool { return !st.Holds(r.truncatedAt) })
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
