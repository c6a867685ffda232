package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/internal/dbcheck"
	"github.com/changes-dev/changes/internal/platform"
	"github.com/changes-dev/changes/topology"
	"github.com/changes-dev/changes/views/history"
	"github.com/changes-dev/changes/views/server"
)

// nastyTexts are text keys a naive encoding gets wrong: separators of paths,
// queries, lists and JSON, escapes, unicode, digits (a text, not a number)
// and the empty string.
var nastyTexts = []string{
	"plain", "a/b", "a//b/", "with space", "quote\"d", `back\slash`, "per%2Fcent", "?q=1&r#frag",
	"ü漢字", "emoji 🙂", "42", "042", "", "[\"a\",\"b\"]", "line\nbreak", "tab\tx", "comma,x", "~tilde",
}

// TestKeysOfEveryKind captures tables keyed by a uuid, a text and a
// composite key (text and integer parts) and follows every change to the
// views, the query server (keys URL-escaped in paths, pages with after=) and
// the history (asof): the keys survive unchanged, an update that changes a
// key is a delete and an insert, and every view equals its table.
func TestKeysOfEveryKind(t *testing.T) {
	e := stack(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	name := uniqueName("keys")
	tables := map[string]string{"byuuid": name + "_byuuid", "bytext": name + "_bytext", "bypair": name + "_bypair"}
	cfg := testConfig(t, e, name, []topology.EntityConfig{
		{Type: "byuuid", Table: "public." + tables["byuuid"], IDColumn: "id", Partitions: 3},
		{Type: "bytext", Table: "public." + tables["bytext"], IDColumn: "code", Partitions: 3},
		{Type: "bypair", Table: "public." + tables["bypair"], KeyColumnNames: []string{"tenant", "n"}, Partitions: 3},
	})
	topo := topology.New(cfg)
	cleanupStack(t, e, cfg, tables["byuuid"], tables["bytext"], tables["bypair"])
	db, err := pgx.Connect(ctx, e.pgURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close(context.Background()) })
	execSQL(t, ctx, db, fmt.Sprintf(`
		create table %s (id uuid primary key, v integer not null);
		create table %s (code text primary key, v integer not null);
		create table %s (tenant text not null, n integer not null, v integer not null, primary key (tenant, n))`,
		tables["byuuid"], tables["bytext"], tables["bypair"]))
	// Rows before the platform starts come through the initial snapshot,
	// the others through the stream.
	insertNasty := func(v int, texts []string) {
		for i, s := range texts {
			execSQL(t, ctx, db, fmt.Sprintf("insert into %s (code, v) values (%s, %d)", tables["bytext"], quoteLiteral(s), v))
			execSQL(t, ctx, db, fmt.Sprintf("insert into %s (tenant, n, v) values (%s, %d, %d)", tables["bypair"], quoteLiteral(s), i, v))
			execSQL(t, ctx, db, fmt.Sprintf("insert into %s (id, v) values (gen_random_uuid(), %d)", tables["byuuid"], v))
		}
	}
	if err := platform.EnsureTopics(topo); err != nil {
		t.Fatal(err)
	}
	half := len(nastyTexts) / 2
	insertNasty(1, nastyTexts[:half])
	run := startPlatform(t, ctx, topo)
	waitSlotActive(t, ctx, db, cfg.Postgres.Slot)
	insertNasty(2, nastyTexts[half:])
	// Parts that a naive separator would merge: ("x,1", 2) and ("x", 1)
	// must stay two entities.
	execSQL(t, ctx, db, fmt.Sprintf(`insert into %[1]s (tenant, n, v) values ('x,1', 2, 3), ('x', 1, 3), ('x","1', 2, 3)`, tables["bypair"]))
	// Key changes: the old key deleted, the new one inserted.
	execSQL(t, ctx, db, fmt.Sprintf(`update %s set code = 'renamed/'||code, v = v + 10 where code in ('plain', 'a/b')`, tables["bytext"]))
	execSQL(t, ctx, db, fmt.Sprintf(`update %s set n = n + 100 where tenant = 'with space'`, tables["bypair"]))
	execSQL(t, ctx, db, fmt.Sprintf(`update %s set id = gen_random_uuid() where id = (select id from %[1]s where v = 1 order by id limit 1)`, tables["byuuid"]))
	execSQL(t, ctx, db, fmt.Sprintf(`delete from %s where code = '042'`, tables["bytext"]))
	execSQL(t, ctx, db, fmt.Sprintf(`update %s set v = v + 1`, tables["bytext"]))
	waitViewsEqual(t, ctx, db, topo, run.views)

	text := run.views["bytext"]
	// Typed reads by key; a renamed key is gone, its new one there.
	for _, s := range []string{"renamed/plain", "renamed/a/b", "42", "", "ü漢字", "per%2Fcent"} {
		if st, err := text.GetKey(ctx, codecs.TextKey(s)); err != nil || st == nil {
			t.Errorf("GetKey(%q) = %v, %v; want the entity", s, st, err)
		}
	}
	for _, s := range []string{"plain", "a/b", "042"} {
		if st, err := text.GetKey(ctx, codecs.TextKey(s)); err != nil || st != nil {
			t.Errorf("GetKey(%q) = %v, %v; want nothing (renamed or deleted)", s, st, err)
		}
	}
	// All in the bytes order of the keys.
	var order []string
	for st, err := range text.All(ctx) {
		if err != nil {
			t.Fatal(err)
		}
		if st.EntityID.Kind() != codecs.KeyText {
			t.Errorf("entity %q has a %s key, want text", st.EntityID, st.EntityID.Kind())
		}
		order = append(order, st.EntityID.String())
	}
	if !slices.IsSorted(order) {
		t.Errorf("All is not in byte order: %q", order)
	}
	pair := run.views["bypair"]
	for _, parts := range [][2]string{{"x,1", "2"}, {"x", "1"}, {`x","1`, "2"}, {"with space", "103"}, {"a/b", "1"}} {
		k := codecs.CompositeKey(codecs.TextKey(parts[0]), codecs.TextKey(parts[1]))
		st, err := pair.GetKey(ctx, k)
		if err != nil || st == nil || st.EntityID != k {
			t.Errorf("GetKey(%s) = %v, %v", k, st, err)
		}
	}

	// The query server: every key through its escaped path, and the pages
	// of the list.
	h, err := history.Open(topo, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	srv := httptest.NewServer(server.Handler(server.Config{Views: run.views, History: h, Log: testLogger(t)}))
	defer srv.Close()
	get := func(path string) (int, []byte) {
		t.Helper()
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	for typ := range tables {
		rows, err := dbcheck.Rows(ctx, db, "public."+tables[typ], mustEntity(t, cfg, typ).KeyColumns())
		if err != nil {
			t.Fatal(err)
		}
		for k, row := range rows {
			if k.String() == "" {
				continue // no path segment is empty: the empty text key is listed, not addressed
			}
			code, body := get("/v1/entities/" + typ + "/" + url.PathEscape(k.String()))
			var en server.Entity
			if code != 200 || json.Unmarshal(body, &en) != nil || en.ID != k.String() || dbcheck.DiffRow(row, en.Row) != "" {
				t.Errorf("GET %s %q: %d %s", typ, k, code, body)
			}
		}
		// Paging with a small limit visits every entity once, in order.
		var seen []string
		var after *string
		for range 1000 {
			path := "/v1/entities/" + typ + "?limit=3"
			if after != nil {
				path += "&after=" + url.QueryEscape(*after)
			}
			code, body := get(path)
			var page server.Page
			if code != 200 || json.Unmarshal(body, &page) != nil {
				t.Fatalf("GET %s: %d %s", path, code, body)
			}
			for _, en := range page.Entities {
				seen = append(seen, en.ID)
			}
			if page.NextAfter == nil {
				break
			}
			after = page.NextAfter
		}
		if len(seen) != len(rows) || len(slices.Compact(slices.Clone(seen))) != len(seen) {
			t.Errorf("%s: pages listed %d entities, the table has %d", typ, len(seen), len(rows))
		}
		for _, id := range seen {
			k, err := run.views[typ].ParseKey(id)
			if err != nil {
				t.Errorf("%s: listed id %q: %v", typ, id, err)
			} else if _, ok := rows[k]; !ok {
				t.Errorf("%s: listed %q, which the table does not hold", typ, id)
			}
		}
	}

	// The history of one text key with a slash, and `changes asof` of it,
	// at the end.
	code, body := get("/v1/history/bytext/" + url.PathEscape("renamed/a/b"))
	var ch server.Changes
	if code != 200 || json.Unmarshal(body, &ch) != nil || len(ch.Changes) != 2 {
		t.Fatalf("history of renamed/a/b: %d %s (want its insert and its update)", code, body)
	}
	if first := ch.Changes[0].Event; first.Op != codecs.OpInsert || first.EntityID != codecs.TextKey("renamed/a/b") {
		t.Errorf("first change of renamed/a/b = %s %q, want an insert of the new key", first.Op, first.EntityID)
	}
	cmd, stdout, stderr := command(ctx, t, map[string]string{
		"CHANGES_KAFKA_BROKERS": e.brokers, "CHANGES_POSTGRES_URL": e.pgURL, "CHANGES_TOPIC_PREFIX": cfg.Topics.Prefix,
	}, "asof", "--config", writeConfig(t, cfg), "--type", "bypair", "--id", `["x,1","2"]`, "--at", time.Now().UTC().Format(time.RFC3339Nano))
	if err := cmd.Run(); err != nil {
		t.Fatalf("changes asof: %v\n%s", err, stderr)
	}
	var at history.StateAt
	if err := json.Unmarshal(stdout.Bytes(), &at); err != nil || at.Entity == nil || at.ID != `["x,1","2"]` || string(at.Entity.Row["tenant"]) != `"x,1"` {
		t.Errorf("changes asof of [\"x,1\",\"2\"] = %s (%v)", stdout, err)
	}
}

// mustEntity is the config of entity type typ.
func mustEntity(t testing.TB, cfg *topology.Config, typ string) topology.EntityConfig {
	t.Helper()
	ent, ok := cfg.Entity(typ)
	if !ok {
		t.Fatalf("no entity type %s", typ)
	}
	return ent
}

// quoteLiteral quotes s as a SQL escape string literal (for backslashes and
// control characters).
func quoteLiteral(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `'`, `\'`, "\n", `\n`, "\t", `\t`)
	return "E'" + r.Replace(s) + "'"
}
