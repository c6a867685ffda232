package capture

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/jackc/pglogrepl"

	"github.com/changes-dev/changes/codecs"
)

// PostgreSQL type OIDs used by the test relations.
const (
	oidBytea  = 17
	oidInt8   = 20
	oidInt4   = 23
	oidText   = 25
	oidFloat8 = 701
	oidJSONB  = 3802
	oidBool   = 16
)

var testTables = []table{
	intTable("public", "accounts", "account", "id"),
	intTable("billing", "invoices", "invoice", "invoice_no"),
}

// intTable is a table keyed by one bigint column, as checkTable resolves it.
func intTable(schema, name, typ, column string) table {
	return table{schema: schema, name: name, entityType: typ, keyColumns: []string{column},
		key: tableKey{kinds: []codecs.KeyKind{codecs.KeyInteger}, types: []string{"bigint"}, collations: []string{""}, order: []int{0}}}
}

func cols(c ...*pglogrepl.RelationMessageColumn) []*pglogrepl.RelationMessageColumn { return c }

func col(name string, oid uint32) *pglogrepl.RelationMessageColumn {
	return &pglogrepl.RelationMessageColumn{Name: name, DataType: oid}
}

// accounts is the Relation message of public.accounts, with the id column
// not first.
func accounts() *pglogrepl.RelationMessage {
	return &pglogrepl.RelationMessage{
		RelationID: 16384, Namespace: "public", RelationName: "accounts",
		Columns: cols(col("name", oidText), col("id", oidInt8), col("blob", oidBytea),
			col("score", oidFloat8), col("doc", oidJSONB), col("active", oidBool)),
	}
}

func text(s string) *pglogrepl.TupleDataColumn {
	return &pglogrepl.TupleDataColumn{DataType: pglogrepl.TupleDataTypeText, Data: []byte(s)}
}

var (
	null      = &pglogrepl.TupleDataColumn{DataType: pglogrepl.TupleDataTypeNull}
	unchanged = &pglogrepl.TupleDataColumn{DataType: pglogrepl.TupleDataTypeToast}
)

func tuple(c ...*pglogrepl.TupleDataColumn) *pglogrepl.TupleData {
	return &pglogrepl.TupleData{ColumnNum: uint16(len(c)), Columns: c}
}

func accountsRelation(t *testing.T) *relation {
	t.Helper()
	rels := newRelations(testTables)
	if err := rels.add(accounts()); err != nil {
		t.Fatalf("add: %v", err)
	}
	rel, err := rels.get(16384)
	if err != nil {
		t.Fatalf("get: %v", err)
	}
	return rel
}

func TestRelationsAdd(t *testing.T) {
	tests := []struct {
		name      string
		msg       *pglogrepl.RelationMessage
		wantTable string
		wantIdx   int
		wantErr   string // "" for success
		wantSetup bool
	}{
		{"declared table", accounts(), "public.accounts", 1, "", false},
		{"another schema's id column", &pglogrepl.RelationMessage{
			RelationID: 2, Namespace: "billing", RelationName: "invoices",
			Columns: cols(col("invoice_no", oidInt8), col("id", oidInt4)),
		}, "billing.invoices", 0, "", false},
		{"table no entity declares", &pglogrepl.RelationMessage{
			RelationID: 3, Namespace: "public", RelationName: "orders",
			Columns: cols(col("id", oidInt8)),
		}, "", 0, "public.orders", true},
		{"declared name in another schema", &pglogrepl.RelationMessage{
			RelationID: 4, Namespace: "archive", RelationName: "accounts",
			Columns: cols(col("id", oidInt8)),
		}, "", 0, "archive.accounts", true},
		{"id column dropped", &pglogrepl.RelationMessage{
			RelationID: 5, Namespace: "public", RelationName: "accounts",
			Columns: cols(col("name", oidText), col("account_id", oidInt8)),
		}, "", 0, "key column id", true},
		{"id column name differs in case", &pglogrepl.RelationMessage{
			RelationID: 6, Namespace: "public", RelationName: "accounts",
			Columns: cols(col("ID", oidInt8)),
		}, "", 0, "key column id", true},
		{"no columns", &pglogrepl.RelationMessage{
			RelationID: 7, Namespace: "billing", RelationName: "invoices",
		}, "", 0, "invoice_no", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rels := newRelations(testTables)
			err := rels.add(tt.msg)
			if tt.wantErr != "" {
				if err == nil {
					t.Fatal("add succeeded, want an error")
				}
				if !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("error %q does not mention %q", err, tt.wantErr)
				}
				if got := errors.Is(err, ErrSetup); got != tt.wantSetup {
					t.Errorf("errors.Is(%q, ErrSetup) = %v, want %v", err, got, tt.wantSetup)
				}
				if rel, err := rels.get(tt.msg.RelationID); err == nil {
					t.Errorf("a rejected relation was registered: %+v", rel)
				}
				return
			}
			if err != nil {
				t.Fatalf("add: %v", err)
			}
			rel, err := rels.get(tt.msg.RelationID)
			if err != nil {
				t.Fatalf("get: %v", err)
			}
			if rel.table.qualified() != tt.wantTable || !reflect.DeepEqual(rel.keyIndex, []int{tt.wantIdx}) || rel.msg != tt.msg {
				t.Errorf("relation = table %s, id index %d; want %s, %d", rel.table.qualified(), rel.keyIndex, tt.wantTable, tt.wantIdx)
			}
		})
	}
}

func TestRelationsReplacedAfterSchemaChange(t *testing.T) {
	rels := newRelations(testTables)
	if err := rels.add(accounts()); err != nil {
		t.Fatal(err)
	}
	// ALTER TABLE ... ADD COLUMN moves nothing, but a new Relation message
	// with the same id must replace the cached columns.
	changed := &pglogrepl.RelationMessage{
		RelationID: 16384, Namespace: "public", RelationName: "accounts",
		Columns: cols(col("id", oidInt8), col("email", oidText)),
	}
	if err := rels.add(changed); err != nil {
		t.Fatal(err)
	}
	rel, err := rels.get(16384)
	if err != nil {
		t.Fatal(err)
	}
	if rel.msg != changed || rel.keyIndex[0] != 0 {
		t.Fatalf("get returned the old relation (key index %v)", rel.keyIndex)
	}
	row, _, err := rel.row(tuple(text("7"), text("a@b")))
	if err != nil {
		t.Fatal(err)
	}
	if want := (codecs.Row{"id": json.RawMessage(`7`), "email": json.RawMessage(`"a@b"`)}); !reflect.DeepEqual(row, want) {
		t.Errorf("row = %s, want %s", rowString(row), rowString(want))
	}
}

func TestRelationsGetUnknown(t *testing.T) {
	rels := newRelations(testTables)
	if err := rels.add(accounts()); err != nil {
		t.Fatal(err)
	}
	for _, id := range []uint32{0, 16385} {
		rel, err := rels.get(id)
		if err == nil || rel != nil {
			t.Errorf("get(%d) = %+v, %v; want an error", id, rel, err)
		}
	}
}

func rowString(r codecs.Row) string {
	b, _ := json.Marshal(r)
	return string(b)
}

func TestRelationRow(t *testing.T) {
	tests := []struct {
		name          string
		tuple         *pglogrepl.TupleData
		want          codecs.Row
		wantUnchanged []string
	}{
		{
			name:  "every column sent",
			tuple: tuple(text(`say "hi"`), text("9007199254740993"), text(`\xdeadbeef`), text("1.5"), text(`{"a": [1]}`), text("t")),
			want: codecs.Row{
				"name": json.RawMessage(`"say \"hi\""`), "id": json.RawMessage(`9007199254740993`),
				"blob": json.RawMessage(`"\\xdeadbeef"`), "score": json.RawMessage(`1.5`),
				"doc": json.RawMessage(`{"a": [1]}`), "active": json.RawMessage(`true`),
			},
		},
		{
			name:  "nulls are JSON null",
			tuple: tuple(null, text("1"), null, null, null, null),
			want: codecs.Row{
				"name": json.RawMessage(`null`), "id": json.RawMessage(`1`), "blob": json.RawMessage(`null`),
				"score": json.RawMessage(`null`), "doc": json.RawMessage(`null`), "active": json.RawMessage(`null`),
			},
		},
		{
			name:  "unchanged TOASTed columns are listed and absent, never null",
			tuple: tuple(text("acme"), text("1"), unchanged, text("NaN"), unchanged, text("f")),
			want: codecs.Row{
				"name": json.RawMessage(`"acme"`), "id": json.RawMessage(`1`),
				"score": json.RawMessage(`"NaN"`), "active": json.RawMessage(`false`),
			},
			wantUnchanged: []string{"blob", "doc"},
		},
		{
			name:  "empty text is an empty string, not null",
			tuple: tuple(text(""), text("1"), text(""), text("-Infinity"), text(`""`), text("t")),
			want: codecs.Row{
				"name": json.RawMessage(`""`), "id": json.RawMessage(`1`), "blob": json.RawMessage(`""`),
				"score": json.RawMessage(`"-Infinity"`), "doc": json.RawMessage(`""`), "active": json.RawMessage(`true`),
			},
		},
	}
	rel := accountsRelation(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			row, unch, err := rel.row(tt.tuple)
			if err != nil {
				t.Fatalf("row: %v", err)
			}
			if !reflect.DeepEqual(row, tt.want) {
				t.Errorf("row =\n %s\nwant\n %s", rowString(row), rowString(tt.want))
			}
			if !reflect.DeepEqual(unch, tt.wantUnchanged) {
				t.Errorf("unchanged = %q, want %q", unch, tt.wantUnchanged)
			}
			for _, c := range unch {
				if v, ok := row[c]; ok {
					t.Errorf("unchanged column %s is in the row as %s", c, v)
				}
			}
			for name, v := range row {
				if !json.Valid(v) {
					t.Errorf("column %s = %q, not JSON", name, v)
				}
			}
		})
	}
}

func TestRelationRowNil(t *testing.T) {
	row, unch, err := accountsRelation(t).row(nil)
	if row != nil || unch != nil || err != nil {
		t.Errorf("row(nil) = %v, %v, %v; want all nil (a delete has no new tuple)", row, unch, err)
	}
}

func TestRelationRowErrors(t *testing.T) {
	binary := &pglogrepl.TupleDataColumn{DataType: pglogrepl.TupleDataTypeBinary, Data: []byte{0, 1}}
	tests := []struct {
		name  string
		tuple *pglogrepl.TupleData
		want  string
	}{
		{"too few columns", tuple(text("a"), text("1")), "tuple has 2 columns, relation has 6"},
		{"too many columns", tuple(text("a"), text("1"), null, null, null, null, null), "tuple has 7 columns"},
		{"binary column", tuple(text("a"), text("1"), binary, null, null, null), "column blob"},
		{"unknown tuple type", tuple(text("a"), text("1"), null, null, null, &pglogrepl.TupleDataColumn{DataType: 'x'}), "column active"},
		{"bad integer", tuple(text("a"), text("one"), null, null, null, null), "column id"},
		{"bad float", tuple(text("a"), text("1"), null, text("abc"), null, null), "column score"},
		{"bad json", tuple(text("a"), text("1"), null, null, text("{"), null), "column doc"},
		{"bad boolean", tuple(text("a"), text("1"), null, null, null, text("yes")), "column active"},
	}
	rel := accountsRelation(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			row, unch, err := rel.row(tt.tuple)
			if err == nil {
				t.Fatalf("row = %s, %q; want an error", rowString(row), unch)
			}
			if row != nil {
				t.Errorf("row returned %s with the error", rowString(row))
			}
			for _, s := range []string{"public.accounts", tt.want} {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not mention %q", err, s)
				}
			}
		})
	}
}

func TestRelationID(t *testing.T) {
	full := func(id *pglogrepl.TupleDataColumn) *pglogrepl.TupleData {
		return tuple(text("acme"), id, null, null, null, null)
	}
	tests := []struct {
		name  string
		tuple *pglogrepl.TupleData
		want  int64
		err   string // "" for success
	}{
		{"positive", full(text("42")), 42, ""},
		{"negative", full(text("-7")), -7, ""},
		{"above 2^53", full(text("9007199254740993")), 9007199254740993, ""},
		{"max int64", full(text("9223372036854775807")), 9223372036854775807, ""},
		// A delete under the default replica identity sends only the key;
		// the other columns are null.
		{"key-only old tuple", tuple(null, text("5"), null, null, null, null), 5, ""},
		{"null id", full(null), 0, "key column id is null or missing"},
		{"unchanged id", full(unchanged), 0, "key column id is null or missing"},
		{"not an integer", full(text("abc")), 0, `"abc"`},
		{"fraction", full(text("1.5")), 0, `"1.5"`},
		{"out of range", full(text("9223372036854775808")), 0, "9223372036854775808"},
		{"nil tuple", nil, 0, "carries no key column id"},
		{"short tuple", tuple(text("acme")), 0, "key column id is null or missing"},
	}
	rel := accountsRelation(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := rel.key(tt.tuple)
			if tt.err == "" {
				if err != nil || got != codecs.IntKey(tt.want) {
					t.Errorf("key = %s, %v; want %d", got, err, tt.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("key = %s, want an error", got)
			}
			if !errors.Is(err, ErrInvalidKey) || Retryable(err) {
				t.Errorf("error %q is not a non-retryable ErrInvalidKey", err)
			}
			for _, s := range []string{"public.accounts", tt.err} {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not mention %q", err, s)
				}
			}
		})
	}
}
