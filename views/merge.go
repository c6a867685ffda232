package views

import (
	"bytes"
	"container/heap"
	"errors"
	"fmt"

	"github.com/syndtr/goleveldb/leveldb/iterator"

	"github.com/changes-dev/changes/codecs"
)

// merged walks the entity keys of every partition in id order: a k-way merge
// of the partitions' sorted iterators.
type merged struct {
	h       partHeap
	cur     *partIter
	started bool
	errs    []error
	all     []*partIter
}

type partIter struct {
	it iterator.Iterator
	at codecs.Position // the partition's TRUNCATE position
	st *store          // acquired; released with the iterator
}

type partHeap []*partIter

func (h partHeap) Len() int           { return len(h) }
func (h partHeap) Less(i, j int) bool { return bytes.Compare(h[i].it.Key(), h[j].it.Key()) < 0 }
func (h partHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *partHeap) Push(x any)        { *h = append(*h, x.(*partIter)) }
func (h *partHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// merge opens an iterator over the keys in [first, last] of every
// partition; nil bounds are the first and the last key of all.
func (v *View) merge(first, last *codecs.Key) (*merged, error) {
	m := &merged{}
	for p := range v.stores {
		st := v.stores[p].Load()
		if st == nil || !st.acquire() {
			m.release()
			return nil, fmt.Errorf("view %s: partition %d: %w", v.entityType, p, ErrNotRunning)
		}
		m.all = append(m.all, &partIter{it: st.entities(first, last), at: st.truncatedAt(), st: st})
	}
	return m, nil
}

func (m *merged) next() bool {
	if !m.started {
		m.started = true
		for _, pi := range m.all {
			if pi.it.Next() {
				m.h = append(m.h, pi)
			} else if err := pi.it.Error(); err != nil {
				m.errs = append(m.errs, err)
			}
		}
		heap.Init(&m.h)
	} else if m.cur != nil {
		if m.cur.it.Next() {
			heap.Push(&m.h, m.cur)
		} else if err := m.cur.it.Error(); err != nil {
			m.errs = append(m.errs, err)
		}
	}
	m.cur = nil
	if len(m.errs) > 0 || m.h.Len() == 0 {
		return false
	}
	m.cur = heap.Pop(&m.h).(*partIter)
	return true
}

func (m *merged) value() []byte                { return m.cur.it.Value() }
func (m *merged) truncatedAt() codecs.Position { return m.cur.at }
func (m *merged) key() codecs.Key {
	k, _ := keyOfLocal(m.cur.it.Key())
	return k
}
func (m *merged) err() error { return errors.Join(m.errs...) }

func (m *merged) release() {
	for _, pi := range m.all {
		pi.it.Release()
		pi.st.release()
	}
}
