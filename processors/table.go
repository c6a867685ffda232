package processors

import (
	"fmt"

	"github.com/changes-dev/changes/codecs"
)

// tableCodec is the snapshot processor's codec for its group table. goka
// panics when a table value does not decode (the processor then restarts,
// meets the same record, and never gets past it); a stored record that is
// not a State (written to the table topic by something other than the
// platform) is read as no state instead, counted in
// changes_snapshot_bad_states_total and logged: the entity's next change
// writes a good state over it.
type tableCodec struct {
	entityType string
	o          *options
}

func (c tableCodec) Encode(v any) ([]byte, error) {
	st, ok := v.(*codecs.State)
	if !ok {
		return nil, fmt.Errorf("snapshot table: encode %T, want *codecs.State", v)
	}
	return codecs.StateCodec{}.Encode(st)
}

func (c tableCodec) Decode(b []byte) (any, error) {
	st, err := codecs.StateCodec{}.Decode(b)
	if err != nil {
		c.o.metrics.badStates.WithLabelValues(c.entityType).Inc()
		c.o.log.Warn("a stored state does not decode: treated as absent; the entity's next change writes a good one",
			"entity_type", c.entityType, "bytes", len(b), "err", err)
		return (*codecs.State)(nil), nil
	}
	return st, nil
}

// stateOverhead bounds what a State's JSON adds to its row's keys and
// values: field names, type, id, position and times, and the record's key
// and headers in the changelog.
const stateOverhead = 1024

// tooLarge reports whether st would exceed maxBytes as a table record, and
// its size when it does. The row's size is summed first; only a state near
// the limit is encoded to measure it exactly.
func tooLarge(st *codecs.State, maxBytes int) (int, bool) {
	estimate := stateOverhead + len(st.EntityType)
	for k, v := range st.Row {
		estimate += len(k) + len(v) + 4
	}
	if estimate < maxBytes-stateOverhead {
		return 0, false
	}
	b, err := codecs.StateCodec{}.Encode(st)
	if err != nil {
		return 0, false // Encode fails again in goka, loudly
	}
	size := len(b) + len(st.EntityType) + 64 // key and record framing
	return size, size > maxBytes
}
