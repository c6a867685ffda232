package history

import (
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
