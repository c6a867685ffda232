package codecs

import "time"

// The platform's central rule, in one place: which change a snapshot table
// applies to what it stores, which stored state a reader sees, and which
// stored state may finally go. The snapshot processors, the views and the
// history reader all ask these functions; none of them compares positions
// for itself.
//
// A table stores, per key, the State of the last change it applied. Each
// partition may also hold a truncate marker (a State with Truncated set):
// every entity state of the partition at or before the marker's position is
// gone, whatever the table still holds for it.

// Verdict is what a snapshot table does with a change, given what it
// stores for the change's key. See Judge.
type Verdict int

// The verdicts of Judge.
const (
	// Skip: the change is older than the stored state, or at or before
	// the partition's last TRUNCATE. Applying it would take the entity
	// back in time; the table keeps what it has.
	Skip Verdict = iota
	// Rewrite: the change is the stored state's own (same position),
	// delivered again. The table writes the stored state again: after a
	// crash its local copy may be ahead of the changelog, and only the
	// changelog reaches the views.
	Rewrite
	// Supersede: the change is after the stored state and after the
	// partition's last TRUNCATE: the table stores Apply(Base(stored,
	// truncatedAt), ev).
	Supersede
)

// String returns "skip", "rewrite" or "supersede".
func (v Verdict) String() string {
	switch v {
	case Skip:
		return "skip"
	case Rewrite:
		return "rewrite"
	case Supersede:
		return "supersede"
	}
	return "verdict(?)"
}

// Judge returns what a table does with ev, given stored, the value it
// holds under ev's key (nil if none), in a partition whose last TRUNCATE is
// at truncatedAt (the zero position if none).
//
// For an entity's change, stored is the entity's state; for a TRUNCATE,
// stored is the partition's truncate marker and truncatedAt its position.
//
//   - A change at exactly the position of a stored value that still holds
//     (see Holds) is a redelivery: Rewrite. A state the TRUNCATE removed is
//     not written again: the marker, redelivered in its turn, is what the
//     changelog needs.
//   - Any other change at or before truncatedAt, or before stored, is Skip.
//     A deleted state keeps its position (for topics.delete_grace), so an
//     older change delivered again cannot bring the entity back.
//   - Anything else is Supersede; this includes the snapshot rows of a
//     resumed initial copy, which only have to be after what is stored.
//
// Judge neither decodes nor checks ev's operation: the caller has routed
// truncates and entity changes apart.
func Judge(stored *State, ev *Event, truncatedAt Position) Verdict {
	switch {
	case stored.Holds(truncatedAt) && ev.Position.Compare(stored.Position) == 0:
		return Rewrite
	case ev.Position.Compare(truncatedAt) <= 0:
		return Skip
	case stored != nil && ev.Position.Compare(stored.Position) <= 0:
		return Skip
	}
	return Supersede
}

// Holds reports whether s still stands in a partition whose last TRUNCATE
// is at truncatedAt (zero if none): an entity's state, deleted or not,
// after the TRUNCATE, or the truncate marker itself (at its position). A
// nil state does not hold. A state that does not hold is gone: a reader
// does not see it, Judge does not rewrite it, Base does not build on it,
// and the sweep replaces it by a tombstone.
func (s *State) Holds(truncatedAt Position) bool {
	if s == nil {
		return false
	}
	c := s.Position.Compare(truncatedAt)
	return c > 0 || (s.Truncated && c == 0)
}

// Base is the state a superseding change is applied to (see Apply): stored,
// unless a TRUNCATE at truncatedAt removed it (then nil, as if the entity
// had never been stored).
func Base(stored *State, truncatedAt Position) *State {
	if !stored.Holds(truncatedAt) {
		return nil
	}
	return stored
}

// VisibleAfter reports whether a reader sees st, an entity's stored state,
// in a partition whose last TRUNCATE is at marker (zero if none): st is an
// entity (not a truncate marker), not deleted, and after the TRUNCATE. A
// nil state is not visible.
func VisibleAfter(marker Position, st *State) bool {
	return st.Holds(marker) && !st.Deleted && !st.Truncated && !st.Watermark
}

// Obsolete reports whether a table may replace st, the state it stores
// for an entity, by a Kafka tombstone at now: a TRUNCATE at truncatedAt
// removed it, or it is a delete applied at least grace
// (topics.delete_grace) ago, past the time an older change could still be
// delivered again. A truncate marker is never obsolete: it stands for
// every entity of its partition; nor is a watermark.
func (s *State) Obsolete(truncatedAt Position, now time.Time, grace time.Duration) bool {
	if s == nil || s.Truncated || s.Watermark {
		return false
	}
	return !s.Holds(truncatedAt) || (s.Deleted && now.Sub(s.AppliedTime) >= grace)
}
