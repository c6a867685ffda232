package capture

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/IBM/sarama"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/internal/kread"
	"github.com/changes-dev/changes/topology"
)

// Snapshot states kept in the capture-state topic.
const (
	snapshotRunning = "running"
	snapshotDone    = "done"
)

// captureState is the capture's record per slot in the capture-state topic.
type captureState struct {
	Slot     string `json:"slot"`
	Snapshot string `json:"snapshot"`
	// Types are the entity types the snapshot copies or copied.
	Types []string `json:"types"`
	// Cuts are where resumed copies of an interrupted snapshot started, in
	// the order they were taken (see snapshotCut).
	Cuts []snapshotCut `json:"cuts,omitempty"`
	// Incremental are the incremental snapshots requested and not done,
	// the one being copied first.
	Incremental []incrementalSnapshot `json:"incremental,omitempty"`
	// SignalsThrough is the LSN of the last request or cancellation taken:
	// PostgreSQL may resend it after a restart.
	SignalsThrough codecs.LSN `json:"signals_through,omitempty"`
	// Resync is the marker of a resync that the history does not hold yet
	// (see createForResync).
	Resync  *resyncMarker `json:"resync,omitempty"`
	Updated time.Time     `json:"updated"`
}

// snapshotCut is where a resumed copy of an interrupted initial snapshot
// started and the exact point of the database it copied: every row after
// (Type, After) in copy order (tables in config order, keys ascending in
// the database's order of the key's unique index) was
// copied as of LSN, a temporary slot's consistent point, so it already
// holds every change committed before LSN. The stream, which starts at the
// slot's older consistent point, leaves those changes out for those rows:
// writing them after the copy would make the entity go back in time.
type snapshotCut struct {
	// Type is the entity type of the table the copy resumed in.
	Type string `json:"type"`
	// After is the last key copied before the cut in that table, when the
	// key is an integer (as every state before other key kinds held it);
	// with FromStart the copy started at the table's first row.
	After int64 `json:"after,string"`
	// AfterKey and AfterKind are the last key copied before the cut when it
	// is not an integer: its canonical text and kind. An integer key is
	// written to After alone, so states stay what they were for integer
	// keys, and a state without after_key is read as an integer After.
	AfterKey  string         `json:"after_key,omitempty"`
	AfterKind codecs.KeyKind `json:"after_kind,omitempty"`
	FromStart bool           `json:"from_start,omitempty"`
	// LSN is the consistent point of the copy's snapshot.
	LSN codecs.LSN `json:"lsn"`
}

// readState returns the latest state of slot, or the zero state when there
// is none. The topic is compacted and holds a record per slot, so reading it
// whole is cheap.
func readState(ctx context.Context, client sarama.Client, topic, slot string) (captureState, error) {
	var st captureState
	end, err := kread.End(client, topic, 0)
	if err != nil {
		return st, fmt.Errorf("capture state end offset: %w", err)
	}
	start, err := kread.Start(client, topic, 0)
	if err != nil {
		return st, fmt.Errorf("capture state start offset: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	err = kread.Range(ctx, client, topic, 0, start, end, func(r *kread.Record) (bool, error) {
		if string(r.Key) != slot {
			return true, nil
		}
		var next captureState
		if r.Value == nil {
			st = captureState{} // a tombstone forgets the slot
			return true, nil
		}
		if err := json.Unmarshal(r.Value, &next); err != nil {
			return false, fmt.Errorf("capture state at offset %d: %w", r.Offset, err)
		}
		st = next
		return true, nil
	})
	if err != nil {
		return st, fmt.Errorf("read capture state: %w", err)
	}
	return st, nil
}

// readSlotState reads the capture state of topo's slot with a client of its
// own.
func readSlotState(ctx context.Context, topo *topology.Topology) (captureState, error) {
	client, err := topology.NewClient(topo.Config().Kafka)
	if err != nil {
		return captureState{}, fmt.Errorf("kafka client: %w", err)
	}
	defer client.Close()
	return readState(ctx, client, topo.CaptureState(), topo.Config().Postgres.Slot)
}

// MissingSnapshotTypes returns the entity types topo declares that the
// finished initial snapshot of its slot did not copy, as the capture-state
// topic records it: the types whose tables Run copies by incremental
// snapshots at its next start, their existing rows not being in the
// history yet. It returns none when the topic has no finished snapshot of
// the slot (a new slot takes a snapshot of every declared type). The
// capture-state topic must exist.
func MissingSnapshotTypes(ctx context.Context, topo *topology.Topology) ([]string, error) {
	st, err := readSlotState(ctx, topo)
	if err != nil || st.Snapshot != snapshotDone {
		return nil, err
	}
	return missingTypes(st.Types, topo.EntityTypes()), nil
}

// SnapshotStatus is an incremental snapshot that is requested and not done,
// as the capture-state topic records it (its progress at most once a
// second).
type SnapshotStatus struct {
	// ID is the request's LSN, "added-<type>-<n>" for a type declared
	// after the slot's initial snapshot, or "resync-<type>-<n>" for a
	// resync's copy (changes capture --resync).
	ID string
	// EntityType is the type whose table is copied.
	EntityType string
	// From and To bound the keys copied ("" none).
	From, To string
	// After is the last key of the last chunk recorded ("" none yet):
	// progress is recorded at most once a second.
	After string
	// Chunks and Rows are what is in Kafka: rows the stream changed while
	// their chunk was copied are not counted (their changes are there).
	Chunks, Rows int64
	// Requested is when the capture took the request.
	Requested time.Time
	// Resync says the copy is a resync's: Same counts the rows equal to
	// the snapshot tables (not written); once the table is copied,
	// Deleting is set, After is the last key of the tables looked up in
	// the database, and Deleted counts the deletes written.
	Resync, Deleting bool
	Same, Deleted    int64
}

// PendingSnapshots returns the incremental snapshots of topo's slot that
// are requested and not done, the one being copied first. The
// capture-state topic must exist.
func PendingSnapshots(ctx context.Context, topo *topology.Topology) ([]SnapshotStatus, error) {
	st, err := readSlotState(ctx, topo)
	if err != nil {
		return nil, err
	}
	out := make([]SnapshotStatus, len(st.Incremental))
	for i, s := range st.Incremental {
		out[i] = SnapshotStatus{ID: s.ID, EntityType: s.Type, From: s.From, To: s.To, After: s.After,
			Chunks: s.Chunks, Rows: s.Rows, Requested: s.Requested,
			Resync: s.Resync, Deleting: s.Deleting, Same: s.Same, Deleted: s.Deleted}
	}
	return out, nil
}

// writeState records st; it returns once Kafka has it.
func writeState(client sarama.Client, topic string, st captureState) error {
	producer, err := sarama.NewSyncProducerFromClient(client)
	if err != nil {
		return fmt.Errorf("capture state producer: %w", err)
	}
	defer producer.Close()
	st.Updated = time.Now().UTC()
	value, err := json.Marshal(st)
	if err != nil {
		return err
	}
	_, _, err = producer.SendMessage(&sarama.ProducerMessage{Topic: topic, Key: sarama.StringEncoder(st.Slot), Value: sarama.ByteEncoder(value)})
	if err != nil {
		return fmt.Errorf("write capture state: %w", err)
	}
	return nil
}

// setAfter records k as the last key copied before the cut.
func (c *snapshotCut) setAfter(k codecs.Key) {
	if id, ok := k.Int(); ok {
		c.After, c.AfterKey, c.AfterKind = id, "", codecs.KeyInteger
		return
	}
	c.After, c.AfterKey, c.AfterKind = 0, k.String(), k.Kind()
}

// afterKey returns the last key copied before the cut.
func (c snapshotCut) afterKey() (codecs.Key, error) {
	if c.AfterKey == "" && c.AfterKind == codecs.KeyInteger {
		return codecs.IntKey(c.After), nil
	}
	return codecs.ParseKey(c.AfterKind, c.AfterKey)
}
