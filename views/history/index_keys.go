package history

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/internal/promreg"
)

// entryPrefix is the prefix of the entries of entity id (its key's text)
// of typ.
func entryPrefix(typ, id string) []byte {
	b := make([]byte, 0, 4+len(typ)+len(id)+offsetBytes)
	b = append(b, entryTag, 0)
	b = append(b, typ...)
	b = append(b, 0)
	b = append(b, id...)
	return append(b, 0)
}

func entryKey(typ, id string, off int64) []byte {
	return binary.BigEndian.AppendUint64(entryPrefix(typ, id), uint64(off))
}

func truncPrefix(typ string) []byte {
	b := make([]byte, 0, 3+len(typ)+offsetBytes)
	b = append(b, truncTag, 0)
	b = append(b, typ...)
	return append(b, 0)
}

func truncKey(typ string, off int64) []byte {
	return binary.BigEndian.AppendUint64(truncPrefix(typ), uint64(off))
}

// versionTypePrefix is the prefix of every version of typ's entities.
func versionTypePrefix(typ string) []byte {
	b := make([]byte, 0, 3+len(typ))
	b = append(b, versionTag, 0)
	b = append(b, typ...)
	return append(b, 0)
}

// versionPrefix is the prefix of the versions of entity id of typ; ids of
// the same text and another kind are other entities, as in the replay.
func versionPrefix(typ string, id codecs.Key) []byte {
	s := id.String()
	b := append(versionTypePrefix(typ), byte(id.Kind()))
	b = append(b, s...)
	return append(b, 0)
}

// pointerKey is the key of the pointer to the last version of the entity
// whose version prefix is prefix.
func pointerKey(prefix []byte) []byte {
	k := bytes.Clone(prefix)
	k[0] = pointerTag
	return k
}

// keyOffset is the offset (or checkpoint) that ends an index key.
func keyOffset(k []byte) int64 {
	return int64(binary.BigEndian.Uint64(k[len(k)-offsetBytes:]))
}

// The operations, as an entry stores them.
var opCodes = []codecs.Op{"", codecs.OpSnapshot, codecs.OpInsert, codecs.OpUpdate, codecs.OpDelete, codecs.OpTruncate}

// entryValue is what the replay judges ev by, without its row: the
// operation, the key's kind, the position and the unchanged columns.
func entryValue(ev *codecs.Event) []byte {
	code := byte(0)
	for i, op := range opCodes {
		if op == ev.Op {
			code = byte(i)
		}
	}
	b := make([]byte, 0, 16)
	b = append(b, code, byte(ev.EntityID.Kind()))
	b = binary.BigEndian.AppendUint64(b, uint64(ev.Position.CommitLSN))
	b = binary.BigEndian.AppendUint32(b, ev.Position.Index)
	if len(ev.Unchanged) == 0 {
		return b
	}
	b = binary.AppendUvarint(b, uint64(len(ev.Unchanged)))
	for _, c := range ev.Unchanged {
		b = binary.AppendUvarint(b, uint64(len(c)))
		b = append(b, c...)
	}
	return b
}

var errBadEntry = errors.New("history index: an entry does not decode")

// decodeEntry decodes an entry into the event the replay judges: it has
// no row, no times and no transaction.
func decodeEntry(typ string, ids map[codecs.KeyKind]codecs.Key, id string, b []byte) (*codecs.Event, error) {
	if len(b) < 14 || int(b[0]) == 0 || int(b[0]) >= len(opCodes) {
		return nil, errBadEntry
	}
	ev := &codecs.Event{EntityType: typ, Op: opCodes[b[0]],
		Position: codecs.Position{CommitLSN: codecs.LSN(binary.BigEndian.Uint64(b[2:])), Index: binary.BigEndian.Uint32(b[10:])}}
	ev.CommitLSN = ev.Position.CommitLSN
	if ev.Op == codecs.OpTruncate {
		ev.EntityID = codecs.IntKey(0)
	} else {
		kind := codecs.KeyKind(b[1])
		key, ok := ids[kind]
		if !ok {
			var err error
			if key, err = codecs.ParseKey(kind, id); err != nil {
				return nil, fmt.Errorf("%w: key %q of kind %s: %w", errBadEntry, id, kind, err)
			}
			ids[kind] = key
		}
		ev.EntityID = key
	}
	b = b[14:]
	if len(b) == 0 {
		return ev, nil
	}
	n, k := binary.Uvarint(b)
	if k <= 0 || n > uint64(len(b)) {
		return nil, errBadEntry
	}
	b = b[k:]
	ev.Unchanged = make([]string, 0, n)
	for range n {
		l, k := binary.Uvarint(b)
		if k <= 0 || l > uint64(len(b)-k) {
			return nil, errBadEntry
		}
		ev.Unchanged = append(ev.Unchanged, string(b[k:k+int(l)]))
		b = b[k+int(l):]
	}
	return ev, nil
}

// truncValue is a truncate's entry: whether its key was "<type>/0" (it
// empties the type for every entity's changes) and its position.
func truncValue(typeWide bool, pos codecs.Position) []byte {
	b := make([]byte, 0, 13)
	if typeWide {
		b = append(b, 1)
	} else {
		b = append(b, 0)
	}
	b = binary.BigEndian.AppendUint64(b, uint64(pos.CommitLSN))
	return binary.BigEndian.AppendUint32(b, pos.Index)
}

func decodeTrunc(b []byte) (typeWide bool, pos codecs.Position, err error) {
	if len(b) != 13 {
		return false, pos, fmt.Errorf("history index: a truncate's entry of %d bytes", len(b))
	}
	return b[0] == 1, codecs.Position{CommitLSN: codecs.LSN(binary.BigEndian.Uint64(b[1:])), Index: binary.BigEndian.Uint32(b[9:])}, nil
}

// indexMetrics are the changes_history_index_* series.
type indexMetrics struct {
	records  prometheus.Counter
	skipped  prometheus.Counter
	lag      prometheus.Gauge
	position prometheus.Gauge
	size     prometheus.Gauge
	answers  *prometheus.CounterVec
}

func newIndexMetrics(r prometheus.Registerer) (*indexMetrics, error) {
	f := promreg.With(r)
	m := &indexMetrics{
		records: f.Counter("changes_history_index_records_total",
			"Committed history records the history index has read."),
		skipped: f.Counter("changes_history_index_skipped_records_total",
			"History records the index read that are no entity's change: markers (resync, watermark) and records that are not events."),
		lag: f.Gauge("changes_history_index_lag_records",
			"History offsets the index has not read yet (read every second); answers read those from the history."),
		position: f.Gauge("changes_history_index_offset",
			"The first history offset the index has not stored."),
		size: f.Gauge("changes_history_index_size_bytes",
			"The index's database on disk, as goleveldb estimates it (every 30 s)."),
		answers: f.CounterVec("changes_history_index_answers_total",
			"Point-in-time answers of the index, by kind (entity, type).", "kind"),
	}
	return m, f.Err()
}
