package views

import (
	"context"
	"fmt"
	"iter"
	"time"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/topology"
)

// Entity is one entity of a Typed view: its row decoded into T, with where
// it stands in the history.
type Entity[T any] struct {
	// ID is the id of an entity whose key is an integer; 0 for other keys.
	ID int64
	// Key is the entity's key, of any kind.
	Key codecs.Key
	// Value is the row decoded into T (see codecs.Row.Decode).
	Value T
	// Position is the position of the entity's last change.
	Position codecs.Position
	// CommitTime is when that change was committed in PostgreSQL.
	CommitTime time.Time
}

// Typed is a View whose rows are decoded into T, a struct whose json tags
// name the table's columns (or a map). The View's own methods (Run,
// WaitRecovered, Status, Lag, Len) are promoted; Get, All, Range, Each and
// Subscribe decode. The raw States stay available through the embedded
// View (t.View.Subscribe, t.View.Each).
type Typed[T any] struct {
	*View
}

// NewTyped returns a Typed view of entityType's snapshot table in topo's
// deployment (see New).
func NewTyped[T any](topo *topology.Topology, entityType string, opts ...Option) (*Typed[T], error) {
	v, err := New(topo, entityType, opts...)
	if err != nil {
		return nil, err
	}
	return &Typed[T]{View: v}, nil
}

// OpenTyped returns a Typed view of the table cfg describes (see Open).
func OpenTyped[T any](cfg Config, opts ...Option) (*Typed[T], error) {
	v, err := Open(cfg, opts...)
	if err != nil {
		return nil, err
	}
	return &Typed[T]{View: v}, nil
}

// Get returns the entity with id; ok is false if the view has none.
func (t *Typed[T]) Get(ctx context.Context, id int64, opts ...ReadOption) (e Entity[T], ok bool, err error) {
	st, err := t.View.Get(ctx, id, opts...)
	if err != nil || st == nil {
		return e, false, err
	}
	e, err = decodeEntity[T](t.entityType, st)
	return e, err == nil, err
}

// GetKey is Get by a key of any kind (see View.GetKey).
func (t *Typed[T]) GetKey(ctx context.Context, k codecs.Key, opts ...ReadOption) (e Entity[T], ok bool, err error) {
	st, err := t.View.GetKey(ctx, k, opts...)
	if err != nil || st == nil {
		return e, false, err
	}
	e, err = decodeEntity[T](t.entityType, st)
	return e, err == nil, err
}

// All iterates every entity in key order.
func (t *Typed[T]) All(ctx context.Context) iter.Seq2[Entity[T], error] {
	return typedSeq[T](t.entityType, t.View.All(ctx))
}

// RangeKeys iterates the entities with keys from first to last, both
// included, in the order of View.RangeKeys.
func (t *Typed[T]) RangeKeys(ctx context.Context, first, last codecs.Key) iter.Seq2[Entity[T], error] {
	return typedSeq[T](t.entityType, t.View.RangeKeys(ctx, first, last))
}

// typedSeq decodes the states of seq into entities.
func typedSeq[T any](entityType string, seq iter.Seq2[*codecs.State, error]) iter.Seq2[Entity[T], error] {
	return func(yield func(Entity[T], error) bool) {
		for st, err := range seq {
			var e Entity[T]
			if err == nil {
				e, err = decodeEntity[T](entityType, st)
			}
			if !yield(e, err) || err != nil {
				return
			}
		}
	}
}

// Range iterates the entities with ids from first to last (both included)
// in id order; an error (a row that does not decode into T included) ends
// the iteration.
func (t *Typed[T]) Range(ctx context.Context, first, last int64) iter.Seq2[Entity[T], error] {
	return typedSeq[T](t.entityType, t.View.Range(ctx, first, last))
}

// Each calls fn for every entity in id order until fn returns an error,
// which Each returns; a row that does not decode into T ends it with an
// error too.
func (t *Typed[T]) Each(fn func(Entity[T]) error) error {
	for e, err := range t.All(context.Background()) {
		if err != nil {
			return err
		}
		if err := fn(e); err != nil {
			return err
		}
	}
	return nil
}

// Change is one update of a Typed view: the Update, and the entity after
// it decoded into T.
type Change[T any] struct {
	Update
	// Entity is the entity after the change; nil when it is gone (its
	// Update's State is nil) or its row does not decode into T.
	Entity *Entity[T]
}

// TypedSubscription is a Subscription to a Typed view: Changes decodes its
// updates. C, Err and Close are the Subscription's.
type TypedSubscription[T any] struct {
	*Subscription
	entityType string
}

// Subscribe returns a subscription to every update the view applies from
// now on, as View.Subscribe does, whose Changes decode the entities.
func (t *Typed[T]) Subscribe(buffer int) *TypedSubscription[T] {
	return &TypedSubscription[T]{Subscription: t.View.Subscribe(buffer), entityType: t.entityType}
}

// Changes iterates the subscription's updates with their entity decoded,
// until the subscription's channel is closed (Err says why) or ctx is
// done. An update whose row does not decode into T comes with the error
// (and its Update); the iteration goes on if the loop does. Leaving the
// loop early leaves the subscription open: Close it, or iterate again.
func (s *TypedSubscription[T]) Changes(ctx context.Context) iter.Seq2[Change[T], error] {
	return func(yield func(Change[T], error) bool) {
		for {
			var u Update
			select {
			case <-ctx.Done():
				return
			case next, ok := <-s.C():
				if !ok {
					return
				}
				u = next
			}
			c := Change[T]{Update: u}
			var err error
			if u.State != nil {
				var e Entity[T]
				if e, err = decodeEntity[T](s.entityType, u.State); err == nil {
					c.Entity = &e
				}
			}
			if !yield(c, err) {
				return
			}
		}
	}
}

func decodeEntity[T any](entityType string, st *codecs.State) (Entity[T], error) {
	id, _ := st.EntityID.Int()
	e := Entity[T]{ID: id, Key: st.EntityID, Position: st.Position, CommitTime: st.CommitTime}
	if err := st.Row.Decode(&e.Value); err != nil {
		return e, fmt.Errorf("view %s: entity %s does not decode into %T: %w", entityType, st.EntityID, e.Value, err)
	}
	return e, nil
}
