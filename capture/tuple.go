package capture

import (
	"encoding/binary"
	"fmt"

	"github.com/jackc/pglogrepl"
)

// changeMsg is a decoded Insert, Update or Delete message of pgoutput.
type changeMsg struct {
	relID    uint32
	oldType  uint8 // 'K' or 'O' when old is set
	old, new *pglogrepl.TupleData
}

// changeDecoder decodes pgoutput's Insert, Update and Delete messages, one
// at a time, without allocating: the tuples and their columns are reused by
// the next message, and the columns' data point into the message itself.
// pglogrepl.Parse allocates every column and copies its value; the capture
// decodes each value once more (codecs.ColumnValue, which copies), so the
// tuples need not outlive the message. Not safe for concurrent use.
type changeDecoder struct {
	old, new tupleBuf
}

type tupleBuf struct {
	data pglogrepl.TupleData
	cols []pglogrepl.TupleDataColumn
	ptrs []*pglogrepl.TupleDataColumn
}

// decode decodes an Insert ('I'), Update ('U') or Delete ('D') message,
// its type byte included. The result is valid until the next call.
func (d *changeDecoder) decode(msg []byte) (changeMsg, error) {
	var m changeMsg
	kind := msg[0]
	src := msg[1:]
	if len(src) < 5 {
		return m, fmt.Errorf("pgoutput %c message of %d bytes", kind, len(msg))
	}
	m.relID = binary.BigEndian.Uint32(src)
	tag := src[4]
	src = src[5:]
	var err error
	switch kind {
	case 'I':
		if tag != 'N' {
			return m, fmt.Errorf("pgoutput insert: tuple type %q, want N", tag)
		}
		m.new, _, err = d.new.decode(src)
	case 'U':
		if tag == 'K' || tag == 'O' {
			m.oldType = tag
			if m.old, src, err = d.old.decode(src); err != nil {
				return m, err
			}
			if len(src) == 0 {
				return m, fmt.Errorf("pgoutput update: no new tuple after the old one")
			}
			tag, src = src[0], src[1:]
		}
		if tag != 'N' {
			return m, fmt.Errorf("pgoutput update: tuple type %q, want K, O or N", tag)
		}
		m.new, _, err = d.new.decode(src)
	case 'D':
		if tag != 'K' && tag != 'O' {
			return m, fmt.Errorf("pgoutput delete: tuple type %q, want K or O", tag)
		}
		m.oldType = tag
		m.old, _, err = d.old.decode(src)
	default:
		return m, fmt.Errorf("pgoutput message %q is not a change", kind)
	}
	return m, err
}

// decode decodes TupleData at the start of src and returns the rest.
func (t *tupleBuf) decode(src []byte) (*pglogrepl.TupleData, []byte, error) {
	if len(src) < 2 {
		return nil, nil, fmt.Errorf("pgoutput tuple: %d bytes, want its column count", len(src))
	}
	n := int(binary.BigEndian.Uint16(src))
	src = src[2:]
	if cap(t.cols) < n {
		t.cols = make([]pglogrepl.TupleDataColumn, n)
		t.ptrs = make([]*pglogrepl.TupleDataColumn, n)
		for i := range t.cols {
			t.ptrs[i] = &t.cols[i]
		}
	}
	cols := t.cols[:n]
	for i := range cols {
		if len(src) < 1 {
			return nil, nil, fmt.Errorf("pgoutput tuple: column %d of %d missing", i+1, n)
		}
		c := &cols[i]
		c.DataType, c.Length, c.Data = src[0], 0, nil
		src = src[1:]
		switch c.DataType {
		case pglogrepl.TupleDataTypeText, pglogrepl.TupleDataTypeBinary:
			if len(src) < 4 {
				return nil, nil, fmt.Errorf("pgoutput tuple: column %d: no length", i+1)
			}
			l := binary.BigEndian.Uint32(src)
			src = src[4:]
			if uint64(l) > uint64(len(src)) {
				return nil, nil, fmt.Errorf("pgoutput tuple: column %d: %d bytes, %d left", i+1, l, len(src))
			}
			c.Length, c.Data = l, src[:l:l]
			src = src[l:]
		}
	}
	t.data = pglogrepl.TupleData{ColumnNum: uint16(n), Columns: t.ptrs[:n]}
	return &t.data, src, nil
}
