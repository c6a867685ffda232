package history

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/changes-dev/changes/codecs"
)

// Entity is the JSON of one entity's state: what the query server answers
// for an entity and `changes asof` prints, one per line, for a type. The id
// is a JSON string, so that JavaScript's numbers do not round it.
type Entity struct {
	Type       string          `json:"type"`
	ID         string          `json:"id"`
	Row        codecs.Row      `json:"row"`
	Position   codecs.Position `json:"position"`
	CommitTime time.Time       `json:"commit_time"`
}

// EntityOf is the JSON of st.
func EntityOf(st *codecs.State) Entity {
	return Entity{Type: st.EntityType, ID: st.EntityID.String(), Row: st.Row, Position: st.Position, CommitTime: st.CommitTime}
}

// StateAt is the JSON of a point-in-time read of one entity: what
// /v1/history/{type}/{id}?at= answers and `changes asof --id` prints.
type StateAt struct {
	Type string `json:"type"`
	ID   string `json:"id"`
	// At echoes the asked time or offset.
	At string `json:"at"`
	// HistoryOffset is the first history offset not included.
	HistoryOffset int64 `json:"history_offset"`
	// Entity is the state then; absent if the entity did not exist.
	Entity *Entity `json:"entity,omitempty"`
}

// StateAtOf is the JSON of the state st (nil: the entity did not exist) of
// the entity typ/id, read at at: the history up to end, exclusive.
func StateAtOf(typ string, id codecs.Key, at string, end int64, st *codecs.State) StateAt {
	out := StateAt{Type: typ, ID: id.String(), At: at, HistoryOffset: end}
	if st != nil {
		e := EntityOf(st)
		out.Entity = &e
	}
	return out
}

// appendEntity appends the JSON of EntityOf(st), as json.Marshal writes it,
// or returns json.Marshal's error. It writes st as StateCodec does (which
// writes what encoding/json writes, without its reflection) and takes the
// members an Entity has from that.
func appendEntity(dst []byte, st *codecs.State) ([]byte, error) {
	if b, err := (codecs.StateCodec{}).Encode(st); err == nil {
		if s, ok := codecs.SplitState(b); ok {
			return appendSplitEntity(dst, s), nil
		}
	}
	b, err := json.Marshal(EntityOf(st))
	if err != nil {
		return dst, fmt.Errorf("encode %s %s: %w", st.EntityType, st.EntityID, err)
	}
	return append(dst, b...), nil
}

// appendEntityWithRow is appendEntity for st with the row row, the JSON
// object of a Row (as codecs.EventCodec.DecodeWithoutRows hands an after
// on); st.Row is not read (see codecs.StateCodec.AppendWithRow). It writes the state's JSON to
// *scratch on the way, which must not share dst's memory.
func appendEntityWithRow(dst []byte, scratch *[]byte, st *codecs.State, row []byte) ([]byte, error) {
	b, err := (codecs.StateCodec{}).AppendWithRow((*scratch)[:0], st, row)
	if err == nil {
		*scratch = b
		if s, ok := codecs.SplitState(b); ok {
			return appendSplitEntity(dst, s), nil
		}
	}
	// What AppendWithRow refuses, or writes in another layout, is
	// appendEntity's to write or refuse.
	r, derr := codecs.DecodeRow(row)
	if derr != nil {
		return dst, fmt.Errorf("encode %s %s: %w", st.EntityType, st.EntityID, derr)
	}
	v := *st
	v.Row = r
	return appendEntity(dst, &v)
}

// appendSplitEntity appends the JSON of the Entity of the state s is the
// JSON of: its members, in Entity's order, as StateCodec wrote them, which
// is as json.Marshal writes them (for a state StateCodec decoded and
// encoded again, as the index stores them: see codecs.SplitState).
func appendSplitEntity(dst []byte, s codecs.StateJSON) []byte {
	dst = append(dst, `{"type":`...)
	dst = append(dst, s.Type...)
	dst = append(dst, `,"id":`...)
	dst = append(dst, s.ID...)
	dst = append(dst, `,"row":`...)
	dst = append(dst, s.Row...)
	dst = append(dst, `,"position":"`...)
	dst, _ = s.Position.AppendText(dst)
	dst = append(dst, `","commit_time":`...)
	dst = append(dst, s.CommitTime...)
	return append(dst, '}')
}
