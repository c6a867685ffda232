package capture

import (
	"encoding/json"
	"fmt"
	"slices"

	"github.com/jackc/pglogrepl"

	"github.com/changes-dev/changes/codecs"
)

// relation is a Relation message resolved against the captured tables.
type relation struct {
	msg   *pglogrepl.RelationMessage
	table table
	// keyIndex holds the tuple index of each key column, in keyColumns
	// order, and keyTypes its type.
	keyIndex []int
	keyTypes []uint32
}

// relations caches the Relation messages of the stream. PostgreSQL sends one
// before the first change of a table in a session and again after its schema
// changes, so the cache is always current for the changes that follow.
type relations struct {
	byID   map[uint32]*relation
	tables map[string]table
}

func newRelations(tables []table) *relations {
	r := &relations{byID: map[uint32]*relation{}, tables: map[string]table{}}
	for _, t := range tables {
		r.tables[t.qualified()] = t
	}
	return r
}

func (r *relations) add(m *pglogrepl.RelationMessage) error {
	t, ok := r.tables[m.Namespace+"."+m.RelationName]
	if !ok {
		return fmt.Errorf("%w: publication sends table %s.%s, which no entity type declares: remove it from the publication or declare it", ErrSetup,
			m.Namespace, m.RelationName)
	}
	idx := make([]int, len(t.keyColumns))
	types := make([]uint32, len(t.keyColumns))
	for k, name := range t.keyColumns {
		idx[k] = slices.IndexFunc(m.Columns, func(c *pglogrepl.RelationMessageColumn) bool { return c.Name == name })
		if idx[k] < 0 {
			return fmt.Errorf("%w: table %s no longer has its key column %s", ErrSetup, t.qualified(), name)
		}
		if _, ok := codecs.KeyColumnKind(m.Columns[idx[k]].DataType); !ok {
			return fmt.Errorf("%w: key column %s.%s changed to type %d, which cannot hold a key (%s)", ErrSetup, t.qualified(), name, m.Columns[idx[k]].DataType, codecs.KeyTypes)
		}
		types[k] = m.Columns[idx[k]].DataType
	}
	r.byID[m.RelationID] = &relation{msg: m, table: t, keyIndex: idx, keyTypes: types}
	return nil
}

func (r *relations) get(id uint32) (*relation, error) {
	rel, ok := r.byID[id]
	if !ok {
		return nil, fmt.Errorf("change for relation %d before its Relation message", id)
	}
	return rel, nil
}

// row decodes a tuple into a Row, returning the names of the columns
// PostgreSQL did not send because their TOASTed value is unchanged.
func (rel *relation) row(tuple *pglogrepl.TupleData) (codecs.Row, []string, error) {
	if tuple == nil {
		return nil, nil, nil
	}
	if len(tuple.Columns) != len(rel.msg.Columns) {
		return nil, nil, fmt.Errorf("table %s: tuple has %d columns, relation has %d", rel.table.qualified(), len(tuple.Columns), len(rel.msg.Columns))
	}
	row := make(codecs.Row, len(tuple.Columns))
	var unchanged []string
	for i, col := range tuple.Columns {
		meta := rel.msg.Columns[i]
		switch col.DataType {
		case pglogrepl.TupleDataTypeNull:
			row[meta.Name] = json.RawMessage("null")
		case pglogrepl.TupleDataTypeToast:
			unchanged = append(unchanged, meta.Name)
		case pglogrepl.TupleDataTypeText:
			v, err := codecs.ColumnValue(meta.DataType, col.Data)
			if err != nil {
				return nil, nil, fmt.Errorf("table %s column %s: %w", rel.table.qualified(), meta.Name, err)
			}
			row[meta.Name] = v
		default:
			return nil, nil, fmt.Errorf("table %s column %s: tuple data type %q is not text (binary mode is not used)", rel.table.qualified(), meta.Name, col.DataType)
		}
	}
	return row, unchanged, nil
}

// oldRow decodes the old tuple of an update or delete. A key tuple ('K',
// REPLICA IDENTITY DEFAULT or USING INDEX) holds only the identity columns;
// PostgreSQL sends the others as null, which they are not, so they are left out.
func (rel *relation) oldRow(tuple *pglogrepl.TupleData, tupleType uint8) (codecs.Row, []string, error) {
	row, unchanged, err := rel.row(tuple)
	if err != nil || tupleType != pglogrepl.UpdateMessageTupleTypeKey {
		return row, unchanged, err
	}
	for _, c := range rel.msg.Columns {
		if c.Flags&1 == 0 {
			delete(row, c.Name)
		}
	}
	return row, nil, nil
}

// key reads the entity key from a tuple's key columns. A key column that is
// NULL or missing, a key longer than codecs.MaxKeyBytes and a text key that
// starts with codecs.ReservedKeyPrefix are ErrInvalidKey, naming the table
// and the column(s).
func (rel *relation) key(tuple *pglogrepl.TupleData) (codecs.Key, error) {
	t := rel.table
	if tuple == nil {
		return codecs.Key{}, fmt.Errorf("%w: table %s: the change carries no key column %s", ErrInvalidKey, t.qualified(), t.columnList())
	}
	values := make([][]byte, len(rel.keyIndex))
	for k, i := range rel.keyIndex {
		if i >= len(tuple.Columns) || tuple.Columns[i].DataType != pglogrepl.TupleDataTypeText {
			return codecs.Key{}, fmt.Errorf("%w: table %s: key column %s is null or missing in the change", ErrInvalidKey, t.qualified(), t.keyColumns[k])
		}
		values[k] = tuple.Columns[i].Data
	}
	key, err := codecs.ColumnKey(t.keyColumns, rel.keyTypes, values)
	if err != nil {
		return codecs.Key{}, fmt.Errorf("%w: table %s: %v", ErrInvalidKey, t.qualified(), err)
	}
	return key, nil
}
