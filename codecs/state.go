package codecs

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// State is the latest known state of one entity: the value of its key in the
// snapshot table of its type. A deleted entity keeps a State with Deleted set
// and no row for a grace period, so a redelivered older change cannot bring
// it back; then the processor replaces it with a Kafka tombstone. Readers
// treat a deleted State as no entity (views do).
type State struct {
	// EntityType and EntityID identify the entity.
	// The key travels as in Event: "id" and "id_kind".
	EntityType string `json:"type"`
	EntityID   Key    `json:"-"`
	// Row is the entity's row as of Position; nil when Deleted.
	Row Row `json:"row"`
	// Deleted marks an entity whose last change was a delete.
	Deleted bool `json:"deleted,omitempty"`
	// Truncated marks a truncate marker, not an entity: it is stored under
	// its partition's truncate key (topology.TruncateKey), and every entity
	// of that partition with an earlier Position is gone. Its EntityID is 0.
	Truncated bool `json:"truncated,omitempty"`
	// Watermark marks a progress watermark, not an entity: it is stored
	// under its partition's watermark key (topology.WatermarkKey), and the
	// partition holds every change committed before Position.CommitLSN
	// (see OpWatermark). Its EntityID is 0.
	Watermark bool `json:"watermark,omitempty"`
	// Position is the position of the last change applied. The snapshot
	// processor ignores any change at or before it, which makes applying a
	// redelivered change a no-op.
	Position Position `json:"position"`
	// CommitTime is the commit time of the last change applied.
	CommitTime time.Time `json:"commit_time"`
	// AppliedTime is when the snapshot processor applied it.
	AppliedTime time.Time `json:"applied_time"`
}

// Validate checks the fields every reader relies on.
func (s *State) Validate() error {
	switch {
	case s.EntityType == "":
		return errors.New("type is empty")
	case s.EntityID.Validate() != nil:
		return s.EntityID.Validate()
	case s.Row == nil && !s.Deleted && !s.Truncated && !s.Watermark:
		return errors.New("row is missing")
	case s.Row != nil && s.Deleted:
		return errors.New("a deleted state has a row")
	case s.Truncated && (s.Row != nil || s.Deleted || s.EntityID != Key{}):
		return errors.New("a truncate marker has a row, an id or a delete")
	case s.Watermark && (s.Row != nil || s.Deleted || s.Truncated || s.EntityID != Key{}):
		return errors.New("a watermark has a row, an id, a delete or a truncate")
	case s.Position.IsZero():
		return errors.New("position is zero")
	}
	return nil
}

// stateFields is State without its methods (see eventFields).
type stateFields State

// stateJSON is a State as JSON, its key as "id" and "id_kind".
//
// "type" and "id" come first, as the wire format has always written them
// (the outer EntityType hides the embedded one, which stays empty), and
// "id_kind" last: views tell a state's key kind from the end of its JSON.
type stateJSON struct {
	EntityType string  `json:"type"`
	ID         *string `json:"id"`
	stateFields
	IDKind KeyKind `json:"id_kind,omitempty"`
}

// wire is s as JSON.
func (s *State) wire() stateJSON {
	id := s.EntityID.String()
	return stateJSON{s.EntityType, &id, stateFields(*s), s.EntityID.Kind()}
}

// state is the State w holds; an "id" that is not a key of its "id_kind" is
// an error.
func (w *stateJSON) state() (*State, error) {
	key, err := wireKey(w.ID, w.IDKind)
	if err != nil {
		return nil, err
	}
	s := State(w.stateFields)
	s.EntityType, s.EntityID = w.EntityType, key
	return &s, nil
}

// MarshalJSON implements json.Marshaler.
func (s State) MarshalJSON() ([]byte, error) { return json.Marshal(s.wire()) }

// UnmarshalJSON implements json.Unmarshaler; an "id" that is not a key of
// its "id_kind" is an error.
func (s *State) UnmarshalJSON(b []byte) error {
	var w stateJSON
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	v, err := w.state()
	if err == nil {
		*s = *v
	}
	return err
}

// StateCodec encodes and decodes States as JSON, as EventCodec does Events.
type StateCodec struct{}

// Encode implements Codec.
func (StateCodec) Encode(s *State) ([]byte, error) {
	if s != nil && s.Validate() == nil {
		if b, err := appendState(make([]byte, 0, 256+rowSize(s.Row)), s); err == nil {
			return b, nil
		}
	}
	return encodeValid("state", s, (*State).wire)
}

// AppendWithRow appends to dst what Encode returns for s with the row row
// as its Row, where row is the JSON object of a Row (as
// EventCodec.DecodeWithoutRows hands an after on); s.Row is not read. A
// reader that passes rows on without decoding them, as the history index
// does, writes a state with it: a row in the form encoding/json writes a
// Row in (the capture's rows) is checked and copied, any other decoded and
// written again. The errors are Encode's, and a row that does not decode.
func (c StateCodec) AppendWithRow(dst []byte, s *State, row []byte) ([]byte, error) {
	if s == nil {
		return dst, errors.New("encode state: nil")
	}
	if row == nil {
		return dst, errors.New("encode state: no row")
	}
	v := *s
	v.Row = placeholderRow // Validate sees the row as present
	if err := v.Validate(); err == nil && canonicalRow(row) {
		if out, err := appendStateWithRow(dst, s, row); err == nil {
			return out, nil
		}
	}
	// Encode says what is wrong, or writes what encoding/json writes.
	r, err := DecodeRow(row)
	if err != nil {
		return dst, fmt.Errorf("encode state: %w", err)
	}
	v.Row = r
	b, err := c.Encode(&v)
	if err != nil {
		return dst, err
	}
	return append(dst, b...), nil
}

// Decode implements Codec.
func (StateCodec) Decode(b []byte) (*State, error) {
	if s, ok := decodeState(b); ok {
		return s, nil
	}
	return decodeValid("state", b, (*stateJSON).state)
}

// Apply returns the state of ev's entity after ev, given cur, its state
// before (nil if none): a delete gives a deleted state; a snapshot, insert
// or update gives ev's row, where each unchanged TOASTed column takes cur's
// value. missing lists the unchanged columns cur had no value for (they are
// left out of the row). Apply does not check positions, and a truncate is
// not an entity's change: it returns nil for one. AppliedTime is left zero.
func Apply(cur *State, ev *Event) (next *State, missing []string) {
	switch ev.Op {
	case OpDelete:
		return &State{EntityType: ev.EntityType, EntityID: ev.EntityID, Deleted: true,
			Position: ev.Position, CommitTime: ev.CommitTime}, nil
	case OpSnapshot, OpInsert, OpUpdate:
		row := make(Row, len(ev.After)+len(ev.Unchanged))
		for k, v := range ev.After {
			row[k] = v
		}
		for _, col := range ev.Unchanged {
			if cur != nil && !cur.Deleted {
				if v, ok := cur.Row[col]; ok {
					row[col] = v
					continue
				}
			}
			missing = append(missing, col)
		}
		return &State{EntityType: ev.EntityType, EntityID: ev.EntityID, Row: row,
			Position: ev.Position, CommitTime: ev.CommitTime}, missing
	}
	return nil, nil
}
