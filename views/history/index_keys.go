package history

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/syndtr/goleveldb/leveldb/util"

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

// entityKey is id as the checkpoints' keys end: its kind, then an integer
// as 8 big-endian bytes with the sign bit flipped, any other key as its
// text. Bytes compare as codecs.Key.Compare does, so a checkpoint's
// entities come out of goleveldb in the order TypeAt answers them; ids of
// the same text and another kind are other entities, as in the replay.
func entityKey(b []byte, id codecs.Key) []byte {
	b = append(b, byte(id.Kind()))
	if n, ok := id.Int(); ok {
		return binary.BigEndian.AppendUint64(b, uint64(n)^1<<63)
	}
	return append(b, id.String()...)
}

// parseEntityKey is the key that entityKey wrote b from.
func parseEntityKey(b []byte) (codecs.Key, error) {
	switch {
	case len(b) == 0:
		return codecs.Key{}, errors.New("history index: an empty entity key")
	case codecs.KeyKind(b[0]) != codecs.KeyInteger:
		return codecs.ParseKey(codecs.KeyKind(b[0]), string(b[1:]))
	case len(b) != 1+offsetBytes:
		return codecs.Key{}, fmt.Errorf("history index: an integer entity key of %d bytes", len(b))
	}
	return codecs.IntKey(int64(binary.BigEndian.Uint64(b[1:]) ^ 1<<63)), nil
}

// layerPrefix is the prefix of the versions (tag versionTag) or of the
// full checkpoint (tag fullTag) of typ at checkpoint c.
func layerPrefix(tag byte, typ string, c int64) []byte {
	b := make([]byte, 0, 3+len(typ)+offsetBytes+1+offsetBytes)
	b = append(b, tag, 0)
	b = append(b, typ...)
	b = append(b, 0)
	return binary.BigEndian.AppendUint64(b, uint64(c))
}

// layerKey is the key of entity id in the layer of typ at checkpoint c.
func layerKey(tag byte, typ string, c int64, id codecs.Key) []byte {
	return entityKey(layerPrefix(tag, typ, c), id)
}

// pointerKey is the key of the pointer to the last version of entity id of
// typ.
func pointerKey(typ string, id codecs.Key) []byte {
	b := make([]byte, 0, 4+len(typ)+offsetBytes)
	b = append(b, pointerTag, 0)
	b = append(b, typ...)
	b = append(b, 0)
	return entityKey(b, id)
}

// layerTypes lists the types that have keys of tag (versionTag or
// fullTag), seeking from one type to the next.
func layerTypes(r dbReader, tag byte) ([]string, error) {
	it := r.NewIterator(util.BytesPrefix([]byte{tag, 0}), nil)
	defer it.Release()
	var types []string
	for ok := it.First(); ok; {
		k := it.Key()
		end := bytes.IndexByte(k[2:], 0)
		if end < 0 {
			return nil, fmt.Errorf("history index: a key %q without its type's end", k)
		}
		typ := string(k[2 : 2+end])
		types = append(types, typ)
		ok = it.Seek(append([]byte{tag, 0}, append([]byte(typ), 1)...))
	}
	return types, it.Error()
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
