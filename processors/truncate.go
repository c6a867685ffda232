package processors

import (
	"sync"

	"github.com/changes-dev/changes/codecs"
)

// truncations caches, per partition of a snapshot table, the position of
// the last TRUNCATE (the zero position if none): every entity state at or
// before it is gone. The marker lives in the table under the partition's
// truncate key, so it survives restarts; the cache is filled from there the
// first time a partition asks.
type truncations struct {
	mu      sync.Mutex
	at_     map[int32]codecs.Position // at most one per declared partition
	get     func(key string) (*codecs.State, error)
	markers []string // topology.TruncateKeys of the declared partitions
}

func newTruncations(get func(string) (*codecs.State, error), markers []string) *truncations {
	return &truncations{at_: map[int32]codecs.Position{}, get: get, markers: markers}
}

// at returns the position of partition p's last TRUNCATE.
func (t *truncations) at(p int32) (codecs.Position, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if pos, ok := t.at_[p]; ok {
		return pos, nil
	}
	if int(p) >= len(t.markers) {
		// A partition the type does not declare has no marker.
		return codecs.Position{}, nil
	}
	st, err := t.get(t.markers[p])
	if err != nil {
		return codecs.Position{}, err
	}
	var pos codecs.Position
	if st != nil && st.Truncated {
		pos = st.Position
	}
	t.at_[p] = pos
	return pos, nil
}

// reset forgets the cached markers, after a rebalance.
func (t *truncations) reset() {
	t.mu.Lock()
	clear(t.at_)
	t.mu.Unlock()
}

func (t *truncations) set(p int32, pos codecs.Position) {
	t.mu.Lock()
	t.at_[p] = pos
	t.mu.Unlock()
}

// truncatedAt is at, with an unreadable marker taken as none; for the sweep
// and for ignoring a stored state, where erring toward keeping is safe.
func truncatedAt(t *truncations, p int32) codecs.Position {
	pos, _ := t.at(p)
	return pos
}
