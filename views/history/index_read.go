package history

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/syndtr/goleveldb/leveldb/util"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/internal/kread"
)

// ErrIndexMismatch: the index says a change is at an offset where the
// history holds something else. The index was not built from this
// history (a topic deleted and created again under the same name while
// the server was down); delete its directory and let it be built again.
var ErrIndexMismatch = errors.New("the history index does not match the history")

// EntityAt is Reader.EntityAt answered from the index: the same state, or
// the same error, for the same arguments. It reads the index for the
// offsets it holds and the history for the rest: the entity's changes after
// Position, and the change that set the entity's state (with the earlier
// ones whose values its unchanged columns kept), a record each. An index
// not built from this history is ErrIndexMismatch.
func (x *Index) EntityAt(ctx context.Context, entityType string, id codecs.Key, end int64, current CurrentFunc) (*codecs.State, error) {
	release, err := x.acquire()
	if err != nil {
		return nil, err
	}
	defer release()
	snap, err := x.db.GetSnapshot()
	if err != nil {
		return nil, fmt.Errorf("history index: %w", err)
	}
	defer snap.Release()
	meta, found, err := x.meta(snap)
	if err != nil {
		return nil, err
	}
	// The history's start is read after the snapshot is taken: what the
	// snapshot lacks below it, a sweep removed because retention had.
	b, err := x.r.Bounds(ctx)
	if err != nil {
		return nil, err
	}
	if !found || meta.prunedTo > b.Start {
		return x.r.EntityAt(ctx, entityType, id, end, current)
	}
	x.m.answers.WithLabelValues("entity").Inc()
	src := entitySource{
		list: func(ctx context.Context, typ string, id codecs.Key, from, to int64) ([]Change, error) {
			return x.changes(ctx, snap, meta.next, typ, id, from, to)
		},
		settle: func(ctx context.Context, st *codecs.State, trail map[*codecs.State]step) (*codecs.State, error) {
			return x.settle(ctx, meta.next, st, trail)
		},
	}
	return x.r.entityAt(ctx, b, entityType, id, end, current, src)
}

// changes lists what Reader.Changes lists, from the index below next and
// from the history from next on. The index's events carry what the replay
// judges by, not their rows.
func (x *Index) changes(ctx context.Context, snap dbReader, next int64, typ string, id codecs.Key, from, to int64) ([]Change, error) {
	var out []Change
	text := id.String()
	if upTo := min(to, next); from < upTo {
		ids := map[codecs.KeyKind]codecs.Key{}
		it := snap.NewIterator(&util.Range{Start: entryKey(typ, text, from), Limit: entryKey(typ, text, upTo)}, nil)
		for it.Next() {
			ev, err := decodeEntry(typ, ids, text, it.Value())
			if err != nil {
				it.Release()
				return nil, err
			}
			out = append(out, Change{Offset: keyOffset(it.Key()), Event: ev})
		}
		it.Release()
		if err := it.Error(); err != nil {
			return nil, fmt.Errorf("history index: %w", err)
		}
		n := len(out)
		it = snap.NewIterator(&util.Range{Start: truncKey(typ, from), Limit: truncKey(typ, upTo)}, nil)
		for it.Next() {
			typeWide, pos, err := decodeTrunc(it.Value())
			if err != nil {
				it.Release()
				return nil, err
			}
			if typeWide {
				out = append(out, Change{Offset: keyOffset(it.Key()), Event: &codecs.Event{EntityType: typ,
					EntityID: codecs.IntKey(0), Op: codecs.OpTruncate, CommitLSN: pos.CommitLSN, Position: pos}})
			}
		}
		it.Release()
		if err := it.Error(); err != nil {
			return nil, fmt.Errorf("history index: %w", err)
		}
		if len(out) > n && n > 0 {
			slices.SortFunc(out, func(a, b Change) int { return cmp.Compare(a.Offset, b.Offset) })
		}
	}
	if to > next {
		tail, err := x.r.Changes(ctx, typ, id, max(from, next), to)
		if err != nil {
			return nil, err
		}
		out = append(out, tail...)
	}
	return out, nil
}

// settle reads the rows of the state the replay of the index's entries
// arrived at: the change that made st, and before it each change whose
// values st's unchanged columns kept, applied in order. The changes before
// next came from the index, without their rows: it reads those records.
func (x *Index) settle(ctx context.Context, next int64, st *codecs.State, trail map[*codecs.State]step) (*codecs.State, error) {
	s, ok := trail[st]
	if !ok {
		return nil, fmt.Errorf("history index: the replay's state of %s %s has no trail", st.EntityType, st.EntityID)
	}
	chain := []step{s}
	for len(s.event.Unchanged) > 0 && s.base != nil && !s.base.Deleted {
		if s, ok = trail[s.base]; !ok {
			return nil, fmt.Errorf("history index: the replay's state of %s %s has no trail", st.EntityType, st.EntityID)
		}
		chain = append(chain, s)
	}
	var out *codecs.State
	for i := len(chain) - 1; i >= 0; i-- {
		want := chain[i]
		ev := want.event
		if want.offset < next {
			var err error
			if ev, err = x.r.eventAt(ctx, want.offset); err != nil {
				return nil, err
			}
			if ev.Position != want.event.Position || ev.Op != want.event.Op || ev.EntityID != want.event.EntityID {
				return nil, fmt.Errorf("%w: offset %d holds %s of %s %s at %s; the index says %s of %s at %s", ErrIndexMismatch, want.offset,
					ev.Op, ev.EntityType, ev.EntityID, ev.Position, want.event.Op, want.event.EntityID, want.event.Position)
			}
		}
		// The chain's first change has no base to take values from (or
		// takes none): applying it to nothing gives the replay's row.
		out, _ = codecs.Apply(out, ev)
	}
	return out, nil
}

// eventAt reads the event at offset off of the history: a fetch of the
// batch that holds it.
func (r *Reader) eventAt(ctx context.Context, off int64) (*codecs.Event, error) {
	rd := kread.New(r.client, r.topic, 0, off)
	rd.SetFetchMaxBytes(smallFetch)
	for rd.Offset() <= off {
		recs, err := rd.Fetch(ctx, 500*time.Millisecond)
		if errors.Is(err, kread.ErrOffsetOutOfRange) {
			return nil, fmt.Errorf("%w: retention removed offset %d while it was being read; ask again", ErrBeforeHistory, off)
		}
		if err != nil {
			return nil, fmt.Errorf("history: %w", err)
		}
		for _, rec := range recs {
			if rec.Offset < off {
				continue
			}
			if rec.Offset > off {
				break
			}
			ev, err := (codecs.EventCodec{}).Decode(rec.Value)
			if err != nil {
				return nil, fmt.Errorf("%w: history offset %d is not an event: %w", ErrIndexMismatch, off, err)
			}
			return ev, nil
		}
	}
	return nil, fmt.Errorf("%w: history offset %d holds no committed record", ErrIndexMismatch, off)
}
