package dbcheck

import (
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/changes-dev/changes/codecs"
)

func row(kv ...string) codecs.Row {
	r := codecs.Row{}
	for i := 0; i < len(kv); i += 2 {
		r[kv[i]] = json.RawMessage(kv[i+1])
	}
	return r
}

func TestDiff(t *testing.T) {
	k := codecs.IntKey
	db := map[codecs.Key]codecs.Row{
		k(1): row("id", "1", "doc", `{"a": [1, 2]}`),
		k(2): row("id", "2", "name", `"b"`),
		k(3): row("id", "3"),
	}
	view := map[codecs.Key]*codecs.State{
		k(1): {Row: row("id", "1", "doc", `{"a":[1,2]}`)}, // the same document, compacted
		k(2): {Row: row("id", "2", "name", `"B"`)},
		k(4): {Row: row("id", "4")},
	}
	got := strings.Join(Diff(db, view, 10), "\n")
	for _, want := range []string{
		`id 2: column name is "b" in the database, "B" in the view`,
		"id 3: in the database, not in the view",
		"id 4: in the view, not in the database",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("diff lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "id 1") {
		t.Errorf("json documents that differ only in whitespace were reported:\n%s", got)
	}
	if d := Diff(db, view, 1); len(d) != 2 || !strings.Contains(d[1], "2 more") {
		t.Errorf("Diff with max 1 = %q", d)
	}
	if d := Diff(map[codecs.Key]codecs.Row{k(1): row("id", "1")}, map[codecs.Key]*codecs.State{k(1): {Row: row("id", "1", "x", "null")}}, 5); len(d) != 1 {
		t.Errorf("an extra column in the view was not reported: %q", d)
	}
}

func TestQuoteTable(t *testing.T) {
	tests := []struct{ table, want string }{
		{"public.accounts", `"public"."accounts"`},
		{"MixedCase.Accounts", `"MixedCase"."Accounts"`},
		{"accounts", `"accounts"`},
		{"Accounts", `"Accounts"`},
		{`s.we"ird`, `"s"."we""ird"`},
	}
	for _, tt := range tests {
		if got := QuoteTable(tt.table); got != tt.want {
			t.Errorf("QuoteTable(%q) = %s, want %s", tt.table, got, tt.want)
		}
	}
}

// TestRowsKeys reads tables keyed by a uuid, a char(n) and two columns: the
// keys are those codecs.ColumnKey gives, and Row finds each row by its key.
func TestRowsKeys(t *testing.T) {
	url := os.Getenv("CHANGES_POSTGRES_URL")
	if url == "" {
		t.Skip("CHANGES_POSTGRES_URL is not set: eval \"$(bash stack/stack.sh env)\" to run against the test stack")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	for _, sql := range []string{
		"create temporary table u (id uuid primary key, v int)",
		"insert into u values ('0B6F3D6E-1C2A-4F6B-9A51-2F3C4D5E6F70', 1)",
		"create temporary table c (code char(5) primary key)",
		"insert into c values ('ab')",
		"create temporary table m (tenant text not null, id bigint not null, primary key (tenant, id))",
		"insert into m values ('acme', 42), ('b\"x', 7)",
	} {
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	uid, _ := codecs.UUIDKey("0b6f3d6e-1c2a-4f6b-9a51-2f3c4d5e6f70")
	for _, tc := range []struct {
		table string
		cols  []string
		keys  []codecs.Key
	}{
		{"pg_temp.u", []string{"id"}, []codecs.Key{uid}},
		{"pg_temp.c", []string{"code"}, []codecs.Key{codecs.TextKey("ab   ")}},
		{"pg_temp.m", []string{"tenant", "id"}, []codecs.Key{
			codecs.CompositeKey(codecs.TextKey("acme"), codecs.IntKey(42)),
			codecs.CompositeKey(codecs.TextKey(`b"x`), codecs.IntKey(7)),
		}},
	} {
		rows, err := Rows(ctx, conn, tc.table, tc.cols)
		if err != nil {
			t.Fatal(err)
		}
		if len(rows) != len(tc.keys) {
			t.Errorf("%s: %d rows, want %d", tc.table, len(rows), len(tc.keys))
		}
		for _, k := range tc.keys {
			if rows[k] == nil {
				t.Errorf("%s: no row under key %s %q (have %v)", tc.table, k.Kind(), k, rows)
			}
			row, err := Row(ctx, conn, tc.table, tc.cols, k)
			if err != nil || row == nil {
				t.Errorf("%s: Row(%q) = %v, %v", tc.table, k, row, err)
			}
		}
	}
	if row, err := Row(ctx, conn, "pg_temp.m", []string{"tenant", "id"}, codecs.CompositeKey(codecs.TextKey("acme"), codecs.IntKey(1))); err != nil || row != nil {
		t.Errorf("Row of a missing key = %v, %v", row, err)
	}
}
