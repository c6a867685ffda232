package capture

import (
	"encoding/json"
	"maps"
	"testing"

	"github.com/changes-dev/changes/codecs"
)

// TestExistingKeys looks up keys of a table keyed by an integer and a text
// column, some present, some not, and checks the delete's row of a key.
func TestExistingKeys(t *testing.T) {
	ctx, conn, _ := keyTestConn(t)
	for _, sql := range []string{
		`create temporary table k_exist (n int not null, tenant text collate "C" not null, primary key (tenant, n))`,
		"insert into k_exist values (1, 'a'), (2, 'a'), (1, 'b''c')",
	} {
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	var schema string
	if err := conn.QueryRow(ctx, "select nspname from pg_namespace where oid = pg_my_temp_schema()").Scan(&schema); err != nil {
		t.Fatal(err)
	}
	tab, err := checkTable(ctx, conn, table{schema: schema, name: "k_exist", entityType: "e", keyColumns: []string{"n", "tenant"}})
	if err != nil {
		t.Fatal(err)
	}
	key := func(n int64, tenant string) codecs.Key {
		return codecs.CompositeKey(codecs.IntKey(n), codecs.TextKey(tenant))
	}
	keys := []codecs.Key{key(1, "a"), key(3, "a"), key(1, "b'c"), key(2, "b'c"), key(2, "a")}
	got, err := existingKeys(ctx, conn, tab, keys)
	if err != nil {
		t.Fatal(err)
	}
	if want := map[int]bool{0: true, 2: true, 4: true}; !maps.Equal(got, want) {
		t.Fatalf("present %v, want %v", got, want)
	}
	row, err := keyRow(tab, key(3, "b'c"))
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := json.Marshal(row); string(b) != `{"n":3,"tenant":"b'c"}` {
		t.Fatalf("key row %s", b)
	}
}

func TestSameRow(t *testing.T) {
	have := codecs.Row{"id": json.RawMessage(`1`), "note": json.RawMessage(`"x"`)}
	for row, want := range map[string]bool{
		`{"id":1,"note":"x"}`:          true,
		`{"note":"x","id":1}`:          true,
		`{"id":1,"note":"y"}`:          false,
		`{"id":1}`:                     false,
		`{"id":1,"note":"x","more":2}`: false,
		`not json`:                     false,
	} {
		if got := sameRow(have, []byte(row)); got != want {
			t.Errorf("sameRow(%s) = %v, want %v", row, got, want)
		}
	}
}
