package capture

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/changes-dev/changes/codecs"
)

func keyTestConn(t *testing.T) (context.Context, *pgx.Conn, string) {
	url := testPostgresURL(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return ctx, conn, url
}

// TestCheckTableKeys: checkTable accepts the key columns that are exactly a
// unique key of NOT NULL columns of a key type, in the replica identity, and
// says what is wrong with the others.
func TestCheckTableKeys(t *testing.T) {
	ctx, conn, _ := keyTestConn(t)
	for _, sql := range []string{
		"create temporary table k_ok (id bigint, tenant text, primary key (tenant, id))",
		"create temporary table k_uuid (id uuid primary key, v text)",
		"create temporary table k_char (code char(4) primary key)",
		"create temporary table k_unique (id bigint primary key, a varchar(10) not null, b uuid not null, unique (b, a))",
		"alter table k_unique replica identity using index k_unique_b_a_key",
		"create temporary table k_numeric (id numeric primary key)",
		"create temporary table k_nullable (id bigint primary key, code text unique)",
		"create temporary table k_part (a text not null, b text not null, c text not null, primary key (a, b, c))",
		"create temporary table k_nothing (id uuid primary key)",
		"alter table k_nothing replica identity nothing",
		"create temporary table k_ident (id bigint primary key, code text not null unique)",
		"create temporary table k_full (id bigint primary key, code text not null unique)",
		"alter table k_full replica identity full",
	} {
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	var schema string
	if err := conn.QueryRow(ctx, "select nspname from pg_namespace where oid = pg_my_temp_schema()").Scan(&schema); err != nil {
		t.Fatal(err)
	}
	tab := func(name string, cols ...string) table {
		return table{schema: schema, name: name, entityType: "e", keyColumns: cols}
	}
	for _, tc := range []struct {
		t     table
		kind  codecs.KeyKind
		order []int
		err   []string
	}{
		{t: tab("k_ok", "tenant", "id"), kind: codecs.KeyComposite, order: []int{0, 1}},
		{t: tab("k_ok", "id", "tenant"), kind: codecs.KeyComposite, order: []int{1, 0}},
		{t: tab("k_uuid", "id"), kind: codecs.KeyUUID, order: []int{0}},
		{t: tab("k_char", "code"), kind: codecs.KeyText, order: []int{0}},
		{t: tab("k_unique", "a", "b"), kind: codecs.KeyComposite, order: []int{1, 0}},
		{t: tab("k_full", "code"), kind: codecs.KeyText, order: []int{0}},
		{t: tab("k_numeric", "id"), err: []string{"k_numeric.id is numeric", "smallint, integer, bigint, uuid, text, varchar or char(n)"}},
		{t: tab("k_nullable", "code"), err: []string{"k_nullable.code may be NULL", "SET NOT NULL"}},
		{t: tab("k_ok", "tenant"), err: []string{"k_ok.tenant has no unique index of its own"}},
		{t: tab("k_part", "a", "b"), err: []string{"key columns (a, b) of table", "not the columns of its primary key or of a unique, non-partial index"}},
		{t: tab("k_ok", "tenant", "nope"), err: []string{`no key column "nope"`}},
		{t: tab("k_nothing", "id"), err: []string{"REPLICA IDENTITY NOTHING"}},
		{t: tab("k_ident", "code"), err: []string{"key column(s) code not part of its replica identity"}},
	} {
		t.Run(tc.t.name+"/"+strings.Join(tc.t.keyColumns, ","), func(t *testing.T) {
			got, err := checkTable(ctx, conn, tc.t)
			if tc.err != nil {
				if !errors.Is(err, ErrSetup) {
					t.Fatalf("got %v, want ErrSetup", err)
				}
				for _, s := range tc.err {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("error %q does not say %q", err, s)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.kind() != tc.kind || !slices.Equal(got.key.order, tc.order) {
				t.Errorf("kind %s, order %v; want %s, %v", got.kind(), got.key.order, tc.kind, tc.order)
			}
		})
	}
}

// TestKeyOrder: the snapshot's pages and the cuts' comparison follow the
// database's order of the key's index, also for text in a collation whose
// order is not the bytes' ('a' < 'B' in ICU, 'B' < 'a' in bytes).
func TestKeyOrder(t *testing.T) {
	ctx, conn, url := keyTestConn(t)
	var icu bool
	if err := conn.QueryRow(ctx, "select exists (select 1 from pg_collation where collname = 'en-US-x-icu')").Scan(&icu); err != nil {
		t.Fatal(err)
	}
	coll := `collate "C"`
	if icu {
		coll = `collate "en-US-x-icu"`
	} else {
		t.Log("no ICU collation: the text order is the bytes' (the database's collation is C on the test stack)")
	}
	for _, sql := range []string{
		"create temporary table k_order (n int not null, tenant text " + coll + " not null, primary key (tenant, n))",
		"insert into k_order select n, t from unnest(array['a', 'B', 'b', 'A', 'ä', '_x', '10', '9']) t, generate_series(-2, 2) n",
	} {
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	var schema string
	if err := conn.QueryRow(ctx, "select nspname from pg_namespace where oid = pg_my_temp_schema()").Scan(&schema); err != nil {
		t.Fatal(err)
	}
	tab, err := checkTable(ctx, conn, table{schema: schema, name: "k_order", entityType: "e", keyColumns: []string{"n", "tenant"}})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(tab.key.order, []int{1, 0}) {
		t.Fatalf("order %v, want the index's (tenant, n)", tab.key.order)
	}
	// Every row in the index's order, as the copy reads them.
	keys := func(sql string, args []any) []codecs.Key {
		t.Helper()
		rows, err := conn.Query(ctx, sql, append([]any{pgx.QueryResultFormats{pgx.TextFormatCode}}, args...)...)
		if err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
		defer rows.Close()
		var out []codecs.Key
		for rows.Next() {
			raw := rows.RawValues()
			k, err := codecs.ColumnKey([]string{"n", "tenant"}, []uint32{23, 25}, [][]byte{raw[0], raw[1]})
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, k)
		}
		return out
	}
	sql, args, err := pageQuery(tab, codecs.Key{}, false)
	if err != nil {
		t.Fatal(err)
	}
	all := keys(sql, args)
	if len(all) != 40 {
		t.Fatalf("%d rows, want 40", len(all))
	}
	if icu && slices.IsSortedFunc(all, func(a, b codecs.Key) int { return strings.Compare(a.Parts()[1], b.Parts()[1]) }) {
		t.Error("the collation orders text as bytes: the test proves nothing")
	}
	collate := &collator{url: url}
	defer collate.close()
	for i, after := range all {
		sql, args, err := pageQuery(tab, after, true)
		if err != nil {
			t.Fatal(err)
		}
		if got := keys(sql, args); !slices.Equal(got, all[i+1:]) {
			t.Fatalf("after %s: %v, want %v", after, got, all[i+1:])
		}
		for j, k := range all {
			got, err := compareKeys(ctx, tab, k, after, collate)
			if err != nil {
				t.Fatal(err)
			}
			if want := cmpInt(j, i); got != want {
				t.Errorf("compareKeys(%s, %s) = %d, want %d (the copy's order)", k, after, got, want)
			}
		}
	}
	// An incremental snapshot's chunks: bounds included, after excluded, in
	// the same order; rowsLeft counts them.
	for _, c := range []struct{ after, from, to int }{{-1, 3, 30}, {5, 3, 30}, {-1, -1, 12}, {20, -1, -1}, {7, 7, 7}} {
		ptr := func(i int) *codecs.Key {
			if i < 0 {
				return nil
			}
			return &all[i]
		}
		lo, hi := 0, len(all)-1
		if c.from >= 0 {
			lo = c.from
		}
		if c.after >= 0 {
			lo = max(lo, c.after+1)
		}
		if c.to >= 0 {
			hi = c.to
		}
		sql, args, err := keysetQuery(tab, ptr(c.after), ptr(c.from), ptr(c.to), 1000)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := keys(sql, args), all[lo:hi+1]; !slices.Equal(got, want) {
			t.Errorf("chunk after %d from %d to %d: %v, want %v", c.after, c.from, c.to, got, want)
		}
		n, err := rowsLeft(ctx, conn, tab, ptr(c.after), ptr(c.from), ptr(c.to))
		if err != nil || n != int64(hi+1-lo) {
			t.Errorf("rowsLeft after %d from %d to %d = %d, %v; want %d", c.after, c.from, c.to, n, err, hi+1-lo)
		}
	}
	// A cut after a text key: changes of later rows in the copy's order are
	// covered, of earlier ones not.
	cs := &cuts{tables: []table{tab}, collate: collate, max: 100,
		list: []resolvedCut{{table: 0, after: all[17], lsn: 100}}}
	for j, k := range all {
		got, err := cs.covers(ctx, 0, k, 50)
		if err != nil {
			t.Fatal(err)
		}
		if got != (j > 17) {
			t.Errorf("covers(%s) = %v after the cut at %s", k, got, all[17])
		}
	}
}

func cmpInt(a, b int) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// TestCutAfterKey: a cut keeps an integer key where states always held it
// and any other key beside it; a state written before other kinds reads as
// an integer key.
func TestCutAfterKey(t *testing.T) {
	uid, _ := codecs.UUIDKey("0b6f3d6e-1c2a-4f6b-9a51-2f3c4d5e6f70")
	for _, k := range []codecs.Key{codecs.IntKey(9007199254740993), codecs.IntKey(0), uid, codecs.TextKey(""), codecs.TextKey("x"),
		codecs.CompositeKey(codecs.TextKey("acme"), codecs.IntKey(-1))} {
		var c snapshotCut
		c.setAfter(k)
		data, err := json.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		var back snapshotCut
		if err := json.Unmarshal(data, &back); err != nil {
			t.Fatal(err)
		}
		got, err := back.afterKey()
		if err != nil || got != k {
			t.Errorf("%s %q: %s reads back as %q, %v", k.Kind(), k, data, got, err)
		}
		if _, integer := k.Int(); integer && strings.Contains(string(data), "after_key") {
			t.Errorf("an integer key is written as before: %s", data)
		}
	}
	var old snapshotCut
	if err := json.Unmarshal([]byte(`{"type":"a","after":"123","lsn":"0/10"}`), &old); err != nil {
		t.Fatal(err)
	}
	if k, err := old.afterKey(); err != nil || k != codecs.IntKey(123) {
		t.Errorf("an old cut reads as %q, %v; want the integer 123", k, err)
	}
}
