package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/internal/dbcheck"
)

// TestTypesRoundTrip captures a row holding every common type, and a row of
// NULLs, and checks each value's JSON form (codecs package doc) and that it
// equals what a SELECT of the row maps to.
func TestTypesRoundTrip(t *testing.T) {
	e := stack(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	types := uniqueName("ty")
	setup, err := pgx.Connect(ctx, e.pgURL)
	if err != nil {
		t.Fatal(err)
	}
	execSQL(t, ctx, setup, fmt.Sprintf(`create type %[1]s_mood as enum ('sad', 'happy');
		create domain %[1]s_posint as integer check (value > 0);
		create domain %[1]s_posint2 as %[1]s_posint`, types))
	setup.Close(ctx)
	onCleanup(t, e, func(ctx context.Context, conn *pgx.Conn) {
		execSQL(t, ctx, conn, fmt.Sprintf("drop type %[1]s_mood cascade; drop domain %[1]s_posint2 cascade; drop domain %[1]s_posint cascade", types))
	})

	columns := []struct {
		name, typ, literal, want string // want: the JSON the event must carry; "" = compare with the SELECT only
	}{
		{"c_int2", "smallint", "-32768", `-32768`},
		{"c_int4", "integer", "2147483647", `2147483647`},
		{"c_int8", "bigint", "9223372036854775807", `9223372036854775807`},
		{"c_numeric", "numeric(40,20)", "12345678901234567890.12345678901234567890", `"12345678901234567890.12345678901234567890"`},
		{"c_numeric_nan", "numeric", "'NaN'", `"NaN"`},
		{"c_real", "real", "1.5", `1.5`},
		{"c_double", "double precision", "0.1", `0.1`},
		{"c_double_inf", "double precision", "'-Infinity'", `"-Infinity"`},
		{"c_bool", "boolean", "true", `true`},
		{"c_text", "text", `E'quote " backslash \\ newline \n unicode é 漢 <tag>'`, `"quote \" backslash \\ newline \n unicode é 漢 <tag>"`},
		{"c_varchar", "varchar(10)", "'abc'", `"abc"`},
		{"c_uuid", "uuid", "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'", `"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"`},
		{"c_timestamptz", "timestamptz", "'2026-11-25 10:00:00.123456+00'", ""},
		{"c_timestamp", "timestamp", "'2026-11-25 10:00:00.5'", `"2026-11-25 10:00:00.5"`},
		{"c_date", "date", "'2026-11-25'", `"2026-11-25"`},
		{"c_time", "time", "'23:59:59.999999'", `"23:59:59.999999"`},
		{"c_json", "json", `'{"b": 1, "a": [true, null, 1.50]}'`, `{"b":1,"a":[true,null,1.50]}`},
		{"c_jsonb", "jsonb", `'{"b": 1, "a": [true, null, 1.50]}'`, `{"a":[true,null,1.50],"b":1}`},
		{"c_bytea", "bytea", `'\xdeadbeef'`, `"\\xdeadbeef"`},
		{"c_int_array", "integer[]", "'{1,2,NULL}'", `"{1,2,NULL}"`},
		{"c_text_array", "text[]", `'{"a b",c}'`, `"{\"a b\",c}"`},
		{"c_enum", types + "_mood", "'happy'", `"happy"`},
		{"c_domain", types + "_posint", "5", `5`},
		{"c_domain_of_domain", types + "_posint2", "6", `6`},
	}
	var defs, names, literals, nulls []string
	for _, c := range columns {
		defs = append(defs, c.name+" "+c.typ)
		names = append(names, c.name)
		literals = append(literals, c.literal)
		nulls = append(nulls, "null")
	}
	f := newCaptureFixture(t, ctx, "types", "id bigint primary key, "+strings.Join(defs, ", "))
	stop := f.start(t, ctx)
	waitSlotActive(t, ctx, f.db, f.cfg.Postgres.Slot)
	execSQL(t, ctx, f.db, fmt.Sprintf("insert into %s (id, %s) values (1, %s), (2, %s)",
		f.table, strings.Join(names, ", "), strings.Join(literals, ", "), strings.Join(nulls, ", ")))
	got := readHistory(t, ctx, f.cfg, f.topo.History(), 2)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	selected, err := dbcheck.Rows(ctx, f.db, "public."+f.table, []string{"id"})
	if err != nil {
		t.Fatal(err)
	}
	for i, m := range got {
		ev, err := codecs.EventCodec{}.Decode(m.Value)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range columns {
			v, ok := ev.After[c.name]
			switch {
			case !ok:
				t.Errorf("row %s: column %s is missing", ev.EntityID, c.name)
			case i == 1 && string(v) != "null":
				t.Errorf("row %s: NULL %s came as %s", ev.EntityID, c.name, v)
			case i == 0 && c.want != "" && !sameJSON(string(v), c.want):
				t.Errorf("%s %s: got %s, want %s", c.name, c.typ, v, c.want)
			}
			if sel := selected[ev.EntityID][c.name]; !sameJSON(string(v), string(sel)) {
				t.Errorf("row %s %s: event %s, SELECT %s", ev.EntityID, c.name, v, sel)
			}
		}
	}
}

// TestSchemaChangesMidStream alters the captured table while it streams and
// truncates it: every event carries the columns the table had at its commit.
func TestSchemaChangesMidStream(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	f := newCaptureFixture(t, ctx, "ddl", "id bigint primary key, a text")
	stop := f.start(t, ctx)
	waitSlotActive(t, ctx, f.db, f.cfg.Postgres.Slot)
	for _, sql := range []string{
		"insert into %s values (1, 'one')",
		"alter table %s add column b integer default 7",
		"insert into %s (id, a, b) values (2, 'two', 8)",
		"update %s set a = 'uno' where id = 1",
		"alter table %s drop column a",
		"insert into %s (id, b) values (3, 9)",
		"delete from %s where id = 2",
		"truncate %s",
		"insert into %s (id, b) values (4, 10)",
	} {
		execSQL(t, ctx, f.db, fmt.Sprintf(sql, f.table))
	}
	want := []string{
		`insert 1 {"a":"one","id":1}`,
		`insert 2 {"a":"two","b":8,"id":2}`,
		`update 1 {"a":"uno","b":7,"id":1}`,
		`insert 3 {"b":9,"id":3}`,
		`delete 2 null`,
		`truncate 0 null`,
		`insert 4 {"b":10,"id":4}`,
	}
	got := readHistory(t, ctx, f.cfg, f.topo.History(), len(want))
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	for i, m := range got {
		ev, err := codecs.EventCodec{}.Decode(m.Value)
		if err != nil {
			t.Fatal(err)
		}
		after, _ := json.Marshal(ev.After) // sorted keys
		if s := fmt.Sprintf("%s %s %s", ev.Op, ev.EntityID, after); i >= len(want) || s != want[i] {
			t.Errorf("history[%d] = %s, want %s", i, s, want[min(i, len(want)-1)])
		}
	}
}

// sameJSON compares two JSON texts by value, key order and spacing aside,
// but number text as written (1.50 is not 1.5: numeric keeps its digits).
func sameJSON(a, b string) bool {
	na, errA := normalJSON(a)
	nb, errB := normalJSON(b)
	if errA != nil || errB != nil {
		return a == b
	}
	return na == nb
}

func normalJSON(s string) (string, error) {
	dec := json.NewDecoder(strings.NewReader(s))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return "", err
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil { // map keys come out sorted
		return "", err
	}
	return buf.String(), nil
}
