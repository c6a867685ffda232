package server_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lovoo/goka"
	"github.com/lovoo/goka/tester"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/topology"
	"github.com/changes-dev/changes/views"
	"github.com/changes-dev/changes/views/server"
	"github.com/changes-dev/changes/views/viewstest"
)

// testServer serves a view of type account with entities 1..n and token
// "tok". The history is not configured.
func testServer(t *testing.T, n int) *httptest.Server {
	t.Helper()
	tbl := viewstest.New(t, "account")
	srv := httptest.NewServer(server.Handler(server.Config{Views: map[string]*views.View{"account": tbl.View}, Token: "tok"}))
	t.Cleanup(srv.Close)
	for id := int64(1); id <= int64(n); id++ {
		tbl.Put(&codecs.State{EntityType: "account", EntityID: id,
			Row:      codecs.Row{"id": json.RawMessage(strconv.FormatInt(id, 10)), "name": json.RawMessage(`"a` + strconv.FormatInt(id, 10) + `"`)},
			Position: codecs.Position{CommitLSN: codecs.LSN(id)}, CommitTime: time.Unix(1700000000, 0).UTC()})
	}
	return srv
}

func TestNotReady(t *testing.T) {
	cfg, err := topology.Parse([]byte("kafka: {brokers: [\"127.0.0.1:1\"]}\npostgres: {url: x}\nentities: [{type: account, table: accounts}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	v, err := views.New(topology.New(cfg), "account", views.WithInMemory(), views.WithGokaOptions(goka.WithViewTester(tester.New(t))))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(server.Handler(server.Config{Views: map[string]*views.View{"account": v}}))
	defer srv.Close()
	if code, body := do(t, srv, "/readyz", ""); code != 503 || strings.TrimSpace(body) != `{"ready":false,"stale_seconds":{"account":null},"views":{"account":"idle"}}` {
		t.Errorf("/readyz of a view that does not run: %d %s", code, body)
	}
	if code, body := do(t, srv, "/v1/entities/account/1", ""); code != 503 || !strings.Contains(body, "not running") {
		t.Errorf("GET of a view that does not run: %d %s", code, body)
	}
}

func do(t *testing.T, srv *httptest.Server, path, token string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, srv.URL+path, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func TestServer(t *testing.T) {
	srv := testServer(t, 25)
	for _, c := range []struct {
		path, token string
		code        int
		body        string
	}{
		{"/v1/entities/account/7", "tok", 200, `{"type":"account","id":"7","row":{"id":7,"name":"a7"},"position":"0000000000000007:00000000","commit_time":"2023-11-14T22:13:20Z"}`},
		{"/v1/entities/account/7", "", 401, `{"error":"missing bearer token"}`},
		{"/v1/entities/account/7", "tok2", 401, `{"error":"wrong bearer token"}`},
		{"/v1/entities/account/99", "tok", 404, `{"error":"account 99 not found"}`},
		{"/v1/entities/account/x7", "tok", 400, `{"error":"id \"x7\" is not a 64-bit integer"}`},
		{"/v1/entities/account/99999999999999999999", "tok", 400, `{"error":"id \"99999999999999999999\" is not a 64-bit integer"}`},
		{"/v1/entities/user/7", "tok", 404, `{"error":"unknown entity type \"user\""}`},
		{"/v1/entities/account?limit=1001", "tok", 400, `{"error":"limit \"1001\" must be an integer from 1 to 1000"}`},
		{"/v1/history/account/7", "tok", 404, `{"error":"this server does not read the history"}`},
		{"/healthz", "", 200, `{"status":"ok"}`},
		{"/readyz", "", 200, `{"ready":true,"stale_seconds":{"account":STALE},"views":{"account":"running"}}`},
	} {
		code, body := do(t, srv, c.path, c.token)
		// A recovered view is synced as of its recovery: stale_seconds is
		// a small number, never null.
		body = staleSeconds.ReplaceAllString(body, `"stale_seconds":{"account":STALE}`)
		if code != c.code || strings.TrimSpace(body) != c.body {
			t.Errorf("GET %s: %d %s\nwant %d %s", c.path, code, body, c.code, c.body)
		}
	}
}

var staleSeconds = regexp.MustCompile(`"stale_seconds":\{"account":0\.\d+\}`)

func TestServerPages(t *testing.T) {
	srv := testServer(t, 25)
	var ids []string
	after := ""
	for range 10 {
		code, body := do(t, srv, "/v1/entities/account?limit=10&after="+after, "tok")
		var page server.Page
		if code != 200 || json.Unmarshal([]byte(body), &page) != nil {
			t.Fatalf("%d %s", code, body)
		}
		for _, e := range page.Entities {
			ids = append(ids, strconv.FormatInt(e.ID, 10))
		}
		if page.NextAfter == "" {
			break
		}
		after = page.NextAfter
	}
	want := make([]string, 25)
	for i := range want {
		want[i] = strconv.Itoa(i + 1)
	}
	if strings.Join(ids, ",") != strings.Join(want, ",") {
		t.Errorf("pages gave %v, want 1..25 once each in order", ids)
	}
}
