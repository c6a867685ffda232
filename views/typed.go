package views

import (
	"context"
	"fmt"
	"iter"
	"math"
	"time"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/topology"
)

// Entity is one entity of a Typed view: its row decoded into T, with where
// it stands in the history.
type Entity[T any] struct {
	ID int64
	// Value is the row decoded into T (see codecs.Row.Decode).
	Value T
	// Position is the position of the entity's last change.
	Position codecs.Position
	// CommitTime is when that change was committed in PostgreSQL.
	CommitTime time.Time
}

// Typed is a View whose rows are decoded into T, a struct whose json tags
// name the table's columns (or a map). The View's own methods (Run,
// WaitRecovered, Status, Lag, Subscribe, Len) are promoted; Get, All and
// Range decode. The raw States stay available through the embedded View.
type Typed[T any] struct {
	*View
}

// NewTyped returns a Typed view of entityType's snapshot table.
func NewTyped[T any](topo *topology.Topology, entityType string, opts ...Option) (*Typed[T], error) {
	v, err := New(topo, entityType, opts...)
	if err != nil {
		return nil, err
	}
	return &Typed[T]{View: v}, nil
}

// Get returns the entity with id; ok is false if the view has none.
func (t *Typed[T]) Get(ctx context.Context, id int64) (e Entity[T], ok bool, err error) {
	st, err := t.View.Get(ctx, id)
	if err != nil || st == nil {
		return e, false, err
	}
	e, err = decodeEntity[T](t.entityType, st)
	return e, err == nil, err
}

// All iterates every entity in id order.
func (t *Typed[T]) All(ctx context.Context) iter.Seq2[Entity[T], error] {
	return t.Range(ctx, math.MinInt64, math.MaxInt64)
}

// Range iterates the entities with ids from first to last (both included)
// in id order; an error (a row that does not decode into T included) ends
// the iteration.
func (t *Typed[T]) Range(ctx context.Context, first, last int64) iter.Seq2[Entity[T], error] {
	return func(yield func(Entity[T], error) bool) {
		for st, err := range t.View.Range(ctx, first, last) {
			var e Entity[T]
			if err == nil {
				e, err = decodeEntity[T](t.entityType, st)
			}
			if !yield(e, err) || err != nil {
				return
			}
		}
	}
}

func decodeEntity[T any](entityType string, st *codecs.State) (Entity[T], error) {
	e := Entity[T]{ID: st.EntityID, Position: st.Position, CommitTime: st.CommitTime}
	if err := st.Row.Decode(&e.Value); err != nil {
		return e, fmt.Errorf("view %s: entity %d does not decode into %T: %w", entityType, st.EntityID, e.Value, err)
	}
	return e, nil
}
