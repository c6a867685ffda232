package capture

import (
	"encoding/binary"
	"reflect"
	"testing"

	"github.com/jackc/pglogrepl"
)

// wireTuple writes TupleData as pgoutput does.
func wireTuple(cols ...*pglogrepl.TupleDataColumn) []byte {
	b := binary.BigEndian.AppendUint16(nil, uint16(len(cols)))
	for _, c := range cols {
		b = append(b, c.DataType)
		if c.DataType == pglogrepl.TupleDataTypeText || c.DataType == pglogrepl.TupleDataTypeBinary {
			b = binary.BigEndian.AppendUint32(b, uint32(len(c.Data)))
			b = append(b, c.Data...)
		}
	}
	return b
}

func wireChange(kind byte, rel uint32, parts ...any) []byte {
	b := binary.BigEndian.AppendUint32([]byte{kind}, rel)
	for _, p := range parts {
		switch p := p.(type) {
		case byte:
			b = append(b, p)
		case []byte:
			b = append(b, p...)
		}
	}
	return b
}

// TestChangeDecoder decodes what pglogrepl.Parse decodes, the same way.
func TestChangeDecoder(t *testing.T) {
	key := wireTuple(text("7"), null, null, null, null, null)
	full := wireTuple(text("7"), text("a@b"), unchanged, null, text("t"), text(""))
	other := wireTuple(text("8"), text("c@d"), unchanged, text("{}"), text("f"), &pglogrepl.TupleDataColumn{DataType: pglogrepl.TupleDataTypeBinary, Data: []byte{0, 1}})
	tests := []struct {
		name string
		msg  []byte
	}{
		{"insert", wireChange('I', 16384, byte('N'), full)},
		{"update", wireChange('U', 16384, byte('N'), full)},
		{"update with key", wireChange('U', 16384, byte('K'), key, byte('N'), other)},
		{"update with old row", wireChange('U', 16385, byte('O'), full, byte('N'), other)},
		{"delete with key", wireChange('D', 16384, byte('K'), key)},
		{"delete with old row", wireChange('D', 16384, byte('O'), other)},
	}
	var d changeDecoder
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want, err := pglogrepl.Parse(tt.msg)
			if err != nil {
				t.Fatal(err)
			}
			got, err := d.decode(tt.msg)
			if err != nil {
				t.Fatal(err)
			}
			var wantRel uint32
			var wantType uint8
			var wantOld, wantNew *pglogrepl.TupleData
			switch m := want.(type) {
			case *pglogrepl.InsertMessage:
				wantRel, wantNew = m.RelationID, m.Tuple
			case *pglogrepl.UpdateMessage:
				wantRel, wantType, wantOld, wantNew = m.RelationID, m.OldTupleType, m.OldTuple, m.NewTuple
			case *pglogrepl.DeleteMessage:
				wantRel, wantType, wantOld = m.RelationID, m.OldTupleType, m.OldTuple
			}
			if got.relID != wantRel || got.oldType != wantType {
				t.Errorf("relation %d, old tuple type %q; want %d, %q", got.relID, got.oldType, wantRel, wantType)
			}
			for _, p := range []struct {
				name      string
				got, want *pglogrepl.TupleData
			}{{"old", got.old, wantOld}, {"new", got.new, wantNew}} {
				if !sameTuple(p.got, p.want) {
					t.Errorf("%s tuple %s, want %s", p.name, tupleString(p.got), tupleString(p.want))
				}
			}
		})
	}
}

func sameTuple(a, b *pglogrepl.TupleData) bool {
	if a == nil || b == nil {
		return a == b
	}
	if a.ColumnNum != b.ColumnNum || len(a.Columns) != len(b.Columns) {
		return false
	}
	for i := range a.Columns {
		x, y := a.Columns[i], b.Columns[i]
		if x.DataType != y.DataType || x.Length != y.Length || string(x.Data) != string(y.Data) {
			return false
		}
	}
	return true
}

func tupleString(t *pglogrepl.TupleData) string {
	if t == nil {
		return "nil"
	}
	s := ""
	for _, c := range t.Columns {
		s += string(c.DataType) + ":" + string(c.Data) + " "
	}
	return s
}

func TestChangeDecoderErrors(t *testing.T) {
	full := wireTuple(text("7"), text("a@b"))
	for name, msg := range map[string][]byte{
		"short":               {'I', 0, 0},
		"insert not N":        wireChange('I', 1, byte('K'), full),
		"update bad tag":      wireChange('U', 1, byte('X'), full),
		"update no new":       wireChange('U', 1, byte('K'), full),
		"update old then bad": wireChange('U', 1, byte('K'), full, byte('O'), full),
		"delete not K or O":   wireChange('D', 1, byte('N'), full),
		"no column count":     wireChange('I', 1, byte('N')),
		"column missing":      wireChange('I', 1, byte('N'), full[:len(full)-8]),
		"value cut":           wireChange('I', 1, byte('N'), full[:len(full)-1]),
		"no length":           wireChange('I', 1, byte('N'), []byte{0, 1, 't', 0, 0}),
		"not a change":        wireChange('R', 1, byte('N'), full),
	} {
		t.Run(name, func(t *testing.T) {
			var d changeDecoder
			if m, err := d.decode(msg); err == nil {
				t.Errorf("decode(%q) = %+v, want an error", msg, m)
			}
		})
	}
}

// TestChangeDecoderReuses checks that a decoder reuses its tuples: the
// stream decodes one message at a time, and allocating none is the point.
func TestChangeDecoderReuses(t *testing.T) {
	msg := wireChange('U', 16384, byte('K'), wireTuple(text("7"), null), byte('N'), wireTuple(text("7"), text("x")))
	var d changeDecoder
	if _, err := d.decode(msg); err != nil {
		t.Fatal(err)
	}
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := d.decode(msg); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("decode allocates %v times per message, want 0", allocs)
	}
	m, _ := d.decode(msg)
	if !reflect.DeepEqual(m.new.Columns[1].Data, []byte("x")) {
		t.Errorf("new tuple column 1 = %q", m.new.Columns[1].Data)
	}
}
