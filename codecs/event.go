package codecs

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Op is the kind of change an Event carries.
type Op string

// The operations. OpSnapshot is a row copied by a snapshot: by the initial
// snapshot, the entity's state as of the slot's start, before every
// streamed change; by an incremental snapshot (a table added later, or
// copied again on request), the entity's state as of its position in the
// history, which no change before it is newer than.
// OpTruncate carries no entity id: it empties the whole table of its entity
// type.
// OpResync is not a change: it marks where a resync after a lost
// replication slot began (changes capture --resync), carries no entity type
// and the integer id 0, and says in Resync which changes the history misses.
// The router skips it.
// OpWatermark is not a change either: it is the capture's progress
// watermark, saying that every transaction that committed before its
// CommitLSN is in the history before it, and every later change after it.
// It carries no entity type and the integer id 0; the router sends a copy
// to every partition of every type's events topic, and the snapshot
// processors keep the latest one per partition, so a view knows what it
// has applied (views.View.AppliedThrough).
const (
	OpSnapshot  Op = "snapshot"
	OpInsert    Op = "insert"
	OpUpdate    Op = "update"
	OpDelete    Op = "delete"
	OpTruncate  Op = "truncate"
	OpResync    Op = "resync"
	OpWatermark Op = "watermark"
)

// IsChange reports whether o changes an entity or a type's table: false for
// the markers OpResync and OpWatermark, which name no entity and which
// consumers of entities pass over.
func (o Op) IsChange() bool { return o != OpResync && o != OpWatermark }

// Valid reports whether o is one of the declared operations.
func (o Op) Valid() bool {
	switch o {
	case OpSnapshot, OpInsert, OpUpdate, OpDelete, OpTruncate, OpResync, OpWatermark:
		return true
	}
	return false
}

// Row maps column names to their values as JSON (see the package doc for the
// mapping of PostgreSQL types).
type Row map[string]json.RawMessage

// Decode unmarshals the row into v, a pointer to a struct whose json tags name
// the columns, or to a map.
func (r Row) Decode(v any) error {
	b, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encode row: %w", err)
	}
	return json.Unmarshal(b, v)
}

// Event is one committed change of one entity, as the capture appends it to
// the history topic and the router emits it to the entity type's topic.
type Event struct {
	// EntityType is the entity type the changed table is declared as.
	EntityType string `json:"type"`
	// EntityID is the key of the changed row; the integer 0 for OpTruncate.
	// It travels as "id", its canonical text (a JSON string, so JSON readers
	// in every language keep a 64-bit integer exact), and "id_kind", its
	// kind, left out for an integer.
	EntityID Key `json:"-"`
	// Op is the kind of change.
	Op Op `json:"op"`
	// After is the row after an insert or update.
	After Row `json:"after,omitempty"`
	// Before is the old row of an update or delete: the replica identity
	// columns by default, the whole row under REPLICA IDENTITY FULL.
	Before Row `json:"before,omitempty"`
	// Unchanged names the columns of After that PostgreSQL did not send
	// because their TOASTed value did not change. They keep their old value.
	Unchanged []string `json:"unchanged,omitempty"`
	// TxID is the PostgreSQL transaction id.
	TxID uint32 `json:"xid"`
	// CommitLSN is the LSN of the transaction's commit record.
	CommitLSN LSN `json:"commit_lsn"`
	// Position is the change's place in the history.
	Position Position `json:"position"`
	// CommitTime is when the transaction committed, by the database's clock.
	CommitTime time.Time `json:"commit_time"`
	// CaptureTime is when the capture decoded the change.
	CaptureTime time.Time `json:"capture_time"`
	// Resync is what an OpResync marker says; nil for every other op.
	Resync *Resync `json:"resync,omitempty"`
}

// Resync is what the marker of a resync says. The replication slot was
// lost (dropped, or its WAL removed), so the changes committed after After
// and before Until are not in the history one by one. The resync copies
// every table of Types again after the marker, by incremental snapshots:
// an entity whose state in the snapshot tables differs from its row gets
// an OpSnapshot event, one the database no longer has an OpDelete.
type Resync struct {
	// Slot is the new replication slot.
	Slot string `json:"slot"`
	// After is the position of the last change the history held before
	// the resync: the last one the lost slot streamed.
	After Position `json:"after"`
	// Until is where the new slot streams from: every change committed
	// from there on is in the history one by one again.
	Until LSN `json:"until"`
	// Types are the entity types copied again.
	Types []string `json:"types"`
}

// Validate checks the fields every consumer relies on.
func (e *Event) Validate() error {
	if e.Op == OpResync || e.Resync != nil {
		return e.validateResync()
	}
	if e.Op == OpWatermark {
		return e.validateWatermark()
	}
	switch {
	case e.EntityType == "":
		return errors.New("type is empty")
	case e.EntityID.Validate() != nil:
		return e.EntityID.Validate()
	case !e.Op.Valid():
		return fmt.Errorf("op %q is not snapshot, insert, update, delete, truncate, resync or watermark", e.Op)
	case e.Position.IsZero():
		return errors.New("position is zero")
	case e.Position.CommitLSN != e.CommitLSN:
		return fmt.Errorf("position %s is not at commit_lsn %s", e.Position, e.CommitLSN)
	// An empty After is omitted by Encode (omitempty), so it must be as
	// invalid as a missing one, or Decode would reject what Encode wrote.
	case (e.Op == OpSnapshot || e.Op == OpInsert || e.Op == OpUpdate) && len(e.After) == 0:
		return fmt.Errorf("%s without after", e.Op)
	}
	return nil
}

// validateResync checks a resync marker.
func (e *Event) validateResync() error {
	switch {
	case e.Op != OpResync:
		return fmt.Errorf("a %s event with a resync marker", e.Op)
	case e.Resync == nil:
		return errors.New("a resync event without its marker")
	case e.EntityType != "" || e.EntityID != IntKey(0):
		return errors.New("a resync event names an entity")
	case len(e.After) > 0 || len(e.Before) > 0:
		return errors.New("a resync event has a row")
	case e.Position.IsZero():
		return errors.New("position is zero")
	case e.Position.CommitLSN != e.CommitLSN:
		return fmt.Errorf("position %s is not at commit_lsn %s", e.Position, e.CommitLSN)
	}
	return nil
}

// validateWatermark checks a progress watermark.
func (e *Event) validateWatermark() error {
	switch {
	case e.EntityType != "" || e.EntityID != IntKey(0):
		return errors.New("a watermark names an entity")
	case len(e.After) > 0 || len(e.Before) > 0 || len(e.Unchanged) > 0:
		return errors.New("a watermark has a row")
	case e.Position != Position{CommitLSN: e.CommitLSN}:
		return fmt.Errorf("a watermark's position %s is not its commit_lsn %s", e.Position, e.CommitLSN)
	case e.CommitLSN == 0:
		return errors.New("a watermark's commit_lsn is zero")
	}
	return nil
}

// eventFields is Event without its methods, so its JSON methods can use
// encoding/json for every field but the key.
type eventFields Event

// eventJSON is an Event as JSON: its fields, and the key as "id" and
// "id_kind".
//
// "type" and "id" come first, as the wire format has always written them
// (the outer EntityType hides the embedded one, which stays empty), and
// "id_kind" last: views tell a state's key kind from the end of its JSON.
type eventJSON struct {
	EntityType string  `json:"type"`
	ID         *string `json:"id"`
	eventFields
	IDKind KeyKind `json:"id_kind,omitempty"`
}

// wire is e as JSON.
func (e *Event) wire() eventJSON {
	id := e.EntityID.String()
	return eventJSON{e.EntityType, &id, eventFields(*e), e.EntityID.Kind()}
}

// event is the Event w holds; an "id" that is not a key of its "id_kind" is
// an error.
func (w *eventJSON) event() (*Event, error) {
	key, err := wireKey(w.ID, w.IDKind)
	if err != nil {
		return nil, err
	}
	e := Event(w.eventFields)
	e.EntityType, e.EntityID = w.EntityType, key
	return &e, nil
}

// MarshalJSON implements json.Marshaler.
func (e Event) MarshalJSON() ([]byte, error) { return appendEvent(nil, &e, nil) }

// appendEvent appends the JSON of e, the bytes json.Marshal writes for
// e.wire(), without its reflection; after, when not nil, is written as
// "after" in place of e.After: a row RowEncoder encoded.
func appendEvent(dst []byte, e *Event, after []byte) ([]byte, error) {
	var err error
	dst = append(dst, `{"type":`...)
	dst = appendString(dst, e.EntityType)
	dst = append(dst, `,"id":`...)
	dst = appendString(dst, e.EntityID.String())
	dst = append(dst, `,"op":`...)
	dst = appendString(dst, string(e.Op))
	switch {
	case after != nil:
		dst = append(dst, `,"after":`...)
		dst = append(dst, after...)
	case len(e.After) > 0:
		dst = append(dst, `,"after":`...)
		if dst, err = appendRow(dst, e.After); err != nil {
			return nil, fmt.Errorf("after: %w", err)
		}
	}
	if len(e.Before) > 0 {
		dst = append(dst, `,"before":`...)
		if dst, err = appendRow(dst, e.Before); err != nil {
			return nil, fmt.Errorf("before: %w", err)
		}
	}
	if len(e.Unchanged) > 0 {
		dst = append(dst, `,"unchanged":[`...)
		for i, col := range e.Unchanged {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = appendString(dst, col)
		}
		dst = append(dst, ']')
	}
	dst = append(dst, `,"xid":`...)
	dst = appendUint(dst, uint64(e.TxID))
	dst = append(dst, `,"commit_lsn":"`...)
	dst = appendLSN(dst, e.CommitLSN)
	dst = append(dst, `","position":"`...)
	dst = e.Position.appendText(dst)
	dst = append(dst, `","commit_time":"`...)
	if dst, err = e.CommitTime.AppendText(dst); err != nil {
		return nil, fmt.Errorf("commit_time: %w", err)
	}
	dst = append(dst, `","capture_time":"`...)
	if dst, err = e.CaptureTime.AppendText(dst); err != nil {
		return nil, fmt.Errorf("capture_time: %w", err)
	}
	dst = append(dst, '"')
	if e.Resync != nil {
		marker, err := json.Marshal(e.Resync)
		if err != nil {
			return nil, fmt.Errorf("resync: %w", err)
		}
		dst = append(dst, `,"resync":`...)
		dst = append(dst, marker...)
	}
	if kind := e.EntityID.Kind(); kind != KeyInteger {
		if int(kind) >= len(kindNames) {
			return nil, fmt.Errorf("key kind %d is unknown", kind)
		}
		dst = append(dst, `,"id_kind":"`...)
		dst = append(dst, kindNames[kind]...)
		dst = append(dst, '"')
	}
	return append(dst, '}'), nil
}

// UnmarshalJSON implements json.Unmarshaler; an "id" that is not a key of
// its "id_kind" is an error.
func (e *Event) UnmarshalJSON(b []byte) error {
	var w eventJSON
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	v, err := w.event()
	if err == nil {
		*e = *v
	}
	return err
}

// EventCodec encodes and decodes Events as JSON. Decode rejects anything that
// is not a valid event (see Event.Validate), so a consumer never acts on half
// a record. Both write and read the platform's form of the JSON by hand,
// several times faster than encoding/json, and give encoding/json whatever
// else a record holds (see fastjson.go): the bytes written and the values
// read are the same.
type EventCodec struct{}

// Encode implements Codec. It writes what encoding/json writes for the
// event's JSON form, by hand (see appendEvent), about ten times as fast.
func (EventCodec) Encode(e *Event) ([]byte, error) {
	if e == nil {
		return nil, errors.New("encode event: nil")
	}
	if err := e.Validate(); err != nil {
		return nil, fmt.Errorf("encode event: %w", err)
	}
	b, err := appendEvent(make([]byte, 0, e.sizeHint()), e, nil)
	if err != nil {
		return nil, fmt.Errorf("encode event: %w", err)
	}
	return b, nil
}

// sizeHint is about the length of e's JSON form, so Encode allocates once.
func (e *Event) sizeHint() int {
	n := 256 + len(e.EntityType) + len(e.EntityID.String())
	for _, r := range []Row{e.After, e.Before} {
		for k, v := range r {
			n += len(k) + len(v) + 4
		}
	}
	for _, c := range e.Unchanged {
		n += len(c) + 3
	}
	return n
}

// AppendWithAfter appends to dst what Encode returns for e with the row
// after, encoded by a RowEncoder, as its After: the initial snapshot
// encodes its rows straight from PostgreSQL's text, with no Row in
// between. e.After must be nil; the errors are Encode's.
func (EventCodec) AppendWithAfter(dst []byte, e *Event, after []byte) ([]byte, error) {
	switch {
	case e == nil:
		return dst, errors.New("encode event: nil")
	case e.After != nil:
		return dst, errors.New("encode event: both After and an encoded after")
	case len(after) < len("{}"):
		return dst, fmt.Errorf("encode event: %s without after", e.Op)
	}
	// Validate sees the row as present: a placeholder, never encoded.
	v := *e
	v.After = placeholderRow
	if err := v.Validate(); err != nil {
		return dst, fmt.Errorf("encode event: %w", err)
	}
	out, err := appendEvent(dst, e, after)
	if err != nil {
		return dst, fmt.Errorf("encode event: %w", err)
	}
	return out, nil
}

// placeholderRow stands for an encoded row when AppendWithAfter validates.
var placeholderRow = Row{"": nil}

// Decode implements Codec.
func (EventCodec) Decode(b []byte) (*Event, error) {
	if e, ok := decodeEvent(b); ok {
		return e, nil
	}
	return decodeValid("event", b, (*eventJSON).event)
}

// DecodeWithoutRows decodes b as Decode does, and fails where it fails,
// but leaves the rows out: the event's After and Before are nil, and after
// is a copy of the JSON of the row After would hold, as b holds it (nil
// where After would be nil), for DecodeRow when the row is needed. A
// reader that holds many events and needs the rows of few of them, as the
// history index does when it replays a type, spends neither the time nor
// the memory of a map per row, and can write a row it does not decode
// (StateCodec.AppendWithRow writes the capture's rows, which are in
// encoding/json's form, as they are). An event in a form only
// encoding/json decodes has its after written again as encoding/json
// writes the Row: DecodeRow then gives that Row with its values compacted.
func (c EventCodec) DecodeWithoutRows(b []byte) (ev *Event, after []byte, err error) {
	if e, after, ok := decodeEventRows(b, false); ok {
		return e, after, nil
	}
	e, err := c.Decode(b)
	if err != nil {
		return nil, nil, err
	}
	if e.After != nil {
		if after, err = appendRow(nil, e.After); err != nil {
			return nil, nil, fmt.Errorf("decode event: after: %w", err)
		}
	}
	e.After, e.Before = nil, nil
	return e, after, nil
}

// DecodeRow decodes the JSON of a row, as DecodeWithoutRows hands it on,
// into the Row Decode would have given the event (see DecodeWithoutRows
// for the one exception). The Row's values are slices of b, but for a row
// only encoding/json decodes.
func DecodeRow(b []byte) (Row, error) {
	r := reader{b: b}
	if row, ok := r.row(); ok && row != nil && r.end() {
		return row, nil
	}
	var row Row
	if err := strictUnmarshal(b, &row); err != nil {
		return nil, fmt.Errorf("decode row: %w", err)
	}
	if row == nil {
		return nil, errors.New("decode row: null")
	}
	return row, nil
}

// wireKey is the key of a record's "id" and "id_kind".
func wireKey(id *string, kind KeyKind) (Key, error) {
	if id == nil {
		return Key{}, errNoKey
	}
	return ParseKey(kind, *id)
}

// validated is a pointer to a type whose values can check themselves.
type validated[T any] interface {
	*T
	Validate() error
}

// encodeValid marshals the JSON form of v, wire(v), if v is valid; kind
// names it in errors.
func encodeValid[T any, P validated[T], W any](kind string, v P, wire func(P) W) ([]byte, error) {
	if v == nil {
		return nil, fmt.Errorf("encode %s: nil", kind)
	}
	if err := v.Validate(); err != nil {
		return nil, fmt.Errorf("encode %s: %w", kind, err)
	}
	return json.Marshal(wire(v))
}

// decodeValid unmarshals b strictly into its JSON form W, converts it with
// value and returns the value only if it is valid.
func decodeValid[W any, T any, P validated[T]](kind string, b []byte, value func(*W) (P, error)) (P, error) {
	var w W
	if err := strictUnmarshal(b, &w); err != nil {
		return nil, fmt.Errorf("decode %s: %w", kind, err)
	}
	v, err := value(&w)
	if err != nil {
		return nil, fmt.Errorf("decode %s: %w", kind, err)
	}
	if err := v.Validate(); err != nil {
		return nil, fmt.Errorf("decode %s: %w", kind, err)
	}
	return v, nil
}

// strictUnmarshal rejects trailing data after the JSON document.
// json.Unmarshal checks the whole input; a json.Decoder with More would miss
// a stray '}' or ']' after the document.
func strictUnmarshal(b []byte, v any) error {
	return json.Unmarshal(b, v)
}
