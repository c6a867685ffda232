package server_test

import (
	"encoding/json"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/views"
	"github.com/changes-dev/changes/views/server"
	"github.com/changes-dev/changes/views/viewstest"
)

// keyedServer serves the views text (of text keys), pair (of composite
// keys) and account (of integer keys 1..3), each entity's row naming its key.
func keyedServer(t *testing.T, texts []string, pairs []codecs.Key) *httptest.Server {
	t.Helper()
	text := viewstest.New(t, "text")
	pair := viewstest.New(t, "pair")
	account := viewstest.New(t, "account")
	lsn := codecs.LSN(1)
	put := func(tbl *viewstest.Table, typ string, k codecs.Key) {
		name, _ := json.Marshal(k.String())
		tbl.Put(&codecs.State{EntityType: typ, EntityID: k, Row: codecs.Row{"name": name},
			Position: codecs.Position{CommitLSN: lsn}, CommitTime: time.Unix(1700000000, 0).UTC()})
		lsn++
	}
	for _, s := range texts {
		put(text, "text", codecs.TextKey(s))
	}
	for _, k := range pairs {
		put(pair, "pair", k)
	}
	for id := int64(1); id <= 3; id++ {
		put(account, "account", codecs.IntKey(id))
	}
	srv := httptest.NewServer(server.Handler(server.Config{Views: map[string]*views.View{
		"text": text.View, "pair": pair.View, "account": account.View,
	}}))
	t.Cleanup(srv.Close)
	return srv
}

func pairKey(a, b string) codecs.Key {
	return codecs.CompositeKey(codecs.TextKey(a), codecs.TextKey(b))
}

var serverTexts = []string{"a/b", "a b", "ü", `q"uote`, "42", "10", "9", "50%", "x+y", "a&b=c", "?#", "%2F", "", "a\x01"}

func TestServeKeys(t *testing.T) {
	pairs := []codecs.Key{pairKey("acme", "4/2"), pairKey("acme", "42"), pairKey("a,b", "c")}
	srv := keyedServer(t, serverTexts, pairs)
	for _, s := range serverTexts {
		if s == "" {
			continue // /v1/entities/text/ is no entity's path
		}
		path := "/v1/entities/text/" + url.PathEscape(s)
		code, body := do(t, srv, path, "")
		var e server.Entity
		if code != 200 || json.Unmarshal([]byte(body), &e) != nil {
			t.Errorf("GET %s: %d %s", path, code, body)
			continue
		}
		var row struct{ Name string }
		if err := e.Row.Decode(&row); e.ID != s || e.Type != "text" || err != nil || row.Name != s {
			t.Errorf("GET %s: id %q, name %q; want %q", path, e.ID, row.Name, s)
		}
	}
	// Escaped by hand, as curl users write them.
	for path, want := range map[string]string{
		"/v1/entities/text/a%2Fb":                            "a/b",
		"/v1/entities/text/a%20b":                            "a b",
		"/v1/entities/text/%C3%BC":                           "ü",
		"/v1/entities/text/q%22uote":                         `q"uote`,
		"/v1/entities/text/50%25":                            "50%",
		"/v1/entities/text/%252F":                            "%2F",
		"/v1/entities/text/x+y":                              "x+y",
		"/v1/entities/text/a&b=c":                            "a&b=c",
		"/v1/entities/text/%3F%23":                           "?#",
		"/v1/entities/pair/%5B%22acme%22%2C%224%2F2%22%5D":   `["acme","4/2"]`,
		"/v1/entities/pair/" + url.PathEscape(`["a,b","c"]`): `["a,b","c"]`,
	} {
		code, body := do(t, srv, path, "")
		var e server.Entity
		if code != 200 || json.Unmarshal([]byte(body), &e) != nil || e.ID != want {
			t.Errorf("GET %s: %d %s; want the entity %q", path, code, body, want)
		}
	}
	for path, wantCode := range map[string]int{
		"/v1/entities/text/a%2Fc":                               404,
		"/v1/entities/text/a/b":                                 404, // two segments: no route
		"/v1/entities/text/%FF":                                 400, // not UTF-8
		"/v1/entities/pair/acme":                                400, // not a composite key
		"/v1/entities/pair/" + url.PathEscape(`["acme", "42"]`): 400, // not canonical
		"/v1/entities/pair/" + url.PathEscape(`["acme","43"]`):  404,
		"/v1/entities/account/x":                                400,
		"/v1/entities/account/042":                              400,
		"/v1/entities/account/%2B1":                             400,
		"/v1/entities/account/1.0":                              400,
		"/v1/entities/account/4":                                404,
		"/v1/entities/account?after=x":                          400,
		"/v1/entities/account?after=01":                         400,
		"/v1/entities/pair?after=acme":                          400,
	} {
		if code, body := do(t, srv, path, ""); code != wantCode {
			t.Errorf("GET %s: %d %s; want %d", path, code, body, wantCode)
		}
	}
	// Integer views page from an empty after=, as they always did.
	if code, body := do(t, srv, "/v1/entities/account?after=", ""); code != 200 || strings.Count(body, `"type":"account"`) != 3 {
		t.Errorf("GET /v1/entities/account?after=: %d %s", code, body)
	}
}

// listKeys follows next_after through the listing of typ, limit at a
// time, and returns the keys in the order served.
func listKeys(t *testing.T, srv *httptest.Server, typ string, limit int) []string {
	t.Helper()
	var keys []string
	var after *string
	for range 100 {
		path := "/v1/entities/" + typ + "?limit=" + strconv.Itoa(limit)
		if after != nil {
			path += "&after=" + url.QueryEscape(*after)
		}
		code, body := do(t, srv, path, "")
		var page struct {
			Entities  []server.Entity `json:"entities"`
			NextAfter *string         `json:"next_after"`
		}
		if code != 200 || json.Unmarshal([]byte(body), &page) != nil {
			t.Fatalf("GET %s: %d %s", path, code, body)
		}
		for _, e := range page.Entities {
			keys = append(keys, e.ID)
		}
		if page.NextAfter == nil {
			return keys
		}
		if len(page.Entities) == 0 || *page.NextAfter != page.Entities[len(page.Entities)-1].ID {
			t.Fatalf("GET %s: next_after %q after %d entities", path, *page.NextAfter, len(page.Entities))
		}
		after = page.NextAfter
	}
	t.Fatal("paging does not end")
	return nil
}

func TestServeKeysPages(t *testing.T) {
	pairs := []codecs.Key{pairKey("acme", "4/2"), pairKey("acme", "42"), pairKey("a,b", "c"), pairKey("a", "b,c"), pairKey("b", "")}
	srv := keyedServer(t, serverTexts, pairs)
	want := slices.Clone(serverTexts)
	slices.Sort(want) // bytewise: "" first, "10" before "9"
	for _, limit := range []int{1, 2, 3, 1000} {
		if got := listKeys(t, srv, "text", limit); !slices.Equal(got, want) {
			t.Errorf("text keys by %d: %q\nwant %q", limit, got, want)
		}
	}
	var wantPairs []string
	for _, k := range slices.SortedFunc(slices.Values(pairs), codecs.Key.Compare) {
		wantPairs = append(wantPairs, k.String())
	}
	for _, limit := range []int{1, 2, 1000} {
		if got := listKeys(t, srv, "pair", limit); !slices.Equal(got, wantPairs) {
			t.Errorf("pair keys by %d: %q\nwant %q", limit, got, wantPairs)
		}
	}
	// In a view of text keys, an empty after= is the key "": what follows it.
	code, body := do(t, srv, "/v1/entities/text?limit=1&after=", "")
	var page server.Page
	if code != 200 || json.Unmarshal([]byte(body), &page) != nil || len(page.Entities) != 1 || page.Entities[0].ID != want[1] {
		t.Errorf("after= in a view of text keys: %d %s; want %q", code, body, want[1])
	}
	// after= a key the view does not hold: the keys after it.
	code, body = do(t, srv, "/v1/entities/text?after="+url.QueryEscape("5"), "")
	page = server.Page{}
	var got []string
	if code == 200 && json.Unmarshal([]byte(body), &page) == nil {
		for _, e := range page.Entities {
			got = append(got, e.ID)
		}
	}
	i, _ := slices.BinarySearch(want, "5")
	if !slices.Equal(got, want[i:]) {
		t.Errorf("after=5: %d %q, want %q", code, got, want[i:])
	}
}
