package server_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lovoo/goka"
	"github.com/lovoo/goka/tester"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/internal/syncbuf"
	"github.com/changes-dev/changes/topology"
	"github.com/changes-dev/changes/views"
	"github.com/changes-dev/changes/views/history"
	"github.com/changes-dev/changes/views/server"
	"github.com/changes-dev/changes/views/viewstest"
)

// testServer serves a view of type account with entities 1..n and the
// tokens "tok" and "next". The history is not configured.
func testServer(t *testing.T, n int) *httptest.Server {
	t.Helper()
	tbl := viewstest.New(t, "account")
	srv := httptest.NewServer(server.Handler(server.Config{Views: map[string]*views.View{"account": tbl.View}, Token: "tok", Tokens: []string{"next"}}))
	t.Cleanup(srv.Close)
	for id := int64(1); id <= int64(n); id++ {
		tbl.Put(account(id, `"a`+strconv.FormatInt(id, 10)+`"`))
	}
	return srv
}

// account is the state of account id whose name is the JSON nameJSON.
func account(id int64, nameJSON string) *codecs.State {
	return &codecs.State{EntityType: "account", EntityID: codecs.IntKey(id),
		Row:      codecs.Row{"id": json.RawMessage(strconv.FormatInt(id, 10)), "name": json.RawMessage(nameJSON)},
		Position: codecs.Position{CommitLSN: codecs.LSN(id)}, CommitTime: time.Unix(1700000000, 0).UTC()}
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
	if code, body := do(t, srv, "/readyz", ""); code != 503 || strings.TrimSpace(body) != `{"applied_lsn":{"account":null},"ready":false,"stale_seconds":{"account":null},"views":{"account":"idle"}}` {
		t.Errorf("/readyz of a view that does not run: %d %s", code, body)
	}
	if code, body := do(t, srv, "/v1/entities/account/1", ""); code != 503 || !strings.Contains(body, "not running") {
		t.Errorf("GET of a view that does not run: %d %s", code, body)
	}
}

// do GETs path with token, checks the headers every answer must carry,
// and returns the status and the body.
func do(t *testing.T, srv *httptest.Server, path, token string) (int, string) {
	t.Helper()
	resp := get(t, srv.Client(), srv.URL+path, token)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: read the body: %v", path, err)
	}
	return resp.StatusCode, string(body)
}

func get(t *testing.T, c *http.Client, url, token string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.Header.Get("X-Content-Type-Options"); got != "nosniff" {
		t.Errorf("GET %s: X-Content-Type-Options %q, want nosniff", url, got)
	}
	return resp
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
		{"/v1/entities/account/7", "next", 200, `{"type":"account","id":"7","row":{"id":7,"name":"a7"},"position":"0000000000000007:00000000","commit_time":"2023-11-14T22:13:20Z"}`},
		{"/v1/entities/account/7", "tok2", 401, `{"error":"wrong bearer token"}`},
		{"/v1/entities/account/7", "to", 401, `{"error":"wrong bearer token"}`},
		{"/v1/entities/account/7", "tok,next", 401, `{"error":"wrong bearer token"}`},
		{"/v1/entities/account/99", "tok", 404, `{"error":"account \"99\" not found"}`},
		{"/v1/entities/account/x7", "tok", 400, `{"error":"view account holds integer keys: integer key \"x7\" is not a 64-bit integer in decimal"}`},
		{"/v1/entities/account/99999999999999999999", "tok", 400, `{"error":"view account holds integer keys: integer key \"99999999999999999999\" is not a 64-bit integer in decimal"}`},
		{"/v1/entities/user/7", "tok", 404, `{"error":"unknown entity type \"user\""}`},
		{"/v1/entities/account?limit=1001", "tok", 400, `{"error":"limit \"1001\" must be an integer from 1 to 1000"}`},
		{"/v1/history/account/7", "tok", 404, `{"error":"this server does not read the history"}`},
		{"/v1/history/account/7?after=x", "tok", 400, `{"error":"after \"x\" is not a history offset"}`},
		{"/v1/history/account/7?after=-1", "tok", 400, `{"error":"after \"-1\" is not a history offset"}`},
		{"/v1/history/account/7?limit=0", "tok", 400, `{"error":"limit \"0\" must be an integer from 1 to 1000"}`},
		{"/v1/history/account/7?at=5&after=3", "tok", 400, `{"error":"at= answers one state; after= and limit= page the list of changes"}`},
		{"/v1/history/account/7", "", 401, `{"error":"missing bearer token"}`},
		{"/healthz", "", 200, `{"status":"ok"}`},
		{"/readyz", "", 200, `{"applied_lsn":{"account":null},"ready":true,"stale_seconds":{"account":STALE},"views":{"account":"running"}}`},
		{"/v1/entities/account/7?min_lsn=x", "tok", 400, `{"error":"min_lsn \"x\" is not an LSN such as 16/B374D848 (pg_current_wal_insert_lsn() after your COMMIT)"}`},
		{"/v1/entities/account?min_lsn=0/0", "tok", 400, `{"error":"min_lsn \"0/0\" is not an LSN such as 16/B374D848 (pg_current_wal_insert_lsn() after your COMMIT)"}`},
		{"/nothing/here", "", 404, `{"error":"no such endpoint: GET /nothing/here"}`},
	} {
		code, body := do(t, srv, c.path, c.token)
		// A recovered view is synced as of its recovery: stale_seconds is
		// a small number, never null.
		body = staleSeconds.ReplaceAllString(body, `"stale_seconds":{"account":STALE}`)
		if code != c.code || strings.TrimSpace(body) != c.body {
			t.Errorf("GET %s: %d %s\nwant %d %s", c.path, code, body, c.code, c.body)
		}
	}
	// The scheme is case-insensitive (RFC 9110); the token is not.
	for _, c := range []struct {
		header string
		code   int
	}{{"bearer next", 200}, {"BEARER tok", 200}, {"Bearer NEXT", 401}, {"Basic dG9rOg==", 401}, {"Bearer", 401}, {"Bearer  tok", 401}} {
		req, _ := http.NewRequest(http.MethodGet, srv.URL+"/v1/entities/account/7", nil)
		req.Header.Set("Authorization", c.header)
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != c.code {
			t.Errorf("Authorization %q: %d, want %d", c.header, resp.StatusCode, c.code)
		}
		if c.code == 401 && resp.Header.Get("WWW-Authenticate") == "" {
			t.Errorf("Authorization %q: 401 without WWW-Authenticate", c.header)
		}
	}
}

// A path the server serves, asked with another method than GET or HEAD,
// is 405 with an Allow header, before the token is checked; an unknown path
// is 404 whatever the method.
func TestMethodNotAllowed(t *testing.T) {
	srv := testServer(t, 3)
	for _, c := range []struct {
		method, path string
		code         int
		body         string
	}{
		{http.MethodPost, "/v1/entities/account/7", 405, `{"error":"method POST is not allowed on /v1/entities/account/7: use GET"}`},
		{http.MethodDelete, "/v1/entities/account", 405, `{"error":"method DELETE is not allowed on /v1/entities/account: use GET"}`},
		{http.MethodPut, "/v1/history/account/7", 405, `{"error":"method PUT is not allowed on /v1/history/account/7: use GET"}`},
		{http.MethodOptions, "/healthz", 405, `{"error":"method OPTIONS is not allowed on /healthz: use GET"}`},
		{http.MethodPost, "/nothing/here", 404, `{"error":"no such endpoint: POST /nothing/here"}`},
		{http.MethodHead, "/healthz", 200, ``},
	} {
		req, _ := http.NewRequest(c.method, srv.URL+c.path, nil)
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != c.code || strings.TrimSpace(string(body)) != c.body {
			t.Errorf("%s %s: %d %s\nwant %d %s", c.method, c.path, resp.StatusCode, body, c.code, c.body)
		}
		if allow := resp.Header.Get("Allow"); (c.code == 405) != (allow == "GET, HEAD") {
			t.Errorf("%s %s: %d with Allow %q", c.method, c.path, resp.StatusCode, allow)
		}
	}
}

func TestOpenWithoutTokens(t *testing.T) {
	tbl := viewstest.New(t, "account")
	tbl.Put(account(1, `"a"`))
	srv := httptest.NewServer(server.Handler(server.Config{Views: map[string]*views.View{"account": tbl.View}, Tokens: []string{""}}))
	defer srv.Close()
	if code, body := do(t, srv, "/v1/entities/account/1", ""); code != 200 {
		t.Errorf("no token configured: %d %s", code, body)
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
		// The page is written from its encoded entities: the same JSON as
		// encoding/json makes of a Page.
		if std, _ := json.Marshal(page); body != string(std)+"\n" {
			t.Errorf("page JSON\n%s\nwant\n%s", body, std)
		}
		for _, e := range page.Entities {
			ids = append(ids, e.ID)
		}
		if page.NextAfter == nil {
			break
		}
		after = *page.NextAfter
	}
	want := make([]string, 25)
	for i := range want {
		want[i] = strconv.Itoa(i + 1)
	}
	if strings.Join(ids, ",") != strings.Join(want, ",") {
		t.Errorf("pages gave %v, want 1..25 once each in order", ids)
	}
}

// pageThrough follows next_after from the first page of path (which ends
// in "after=") and returns every page's entity ids and byte length.
func pageThrough(t *testing.T, srv *httptest.Server, path string) (pages [][]int64, sizes []int) {
	t.Helper()
	after := ""
	for range 1000 {
		code, body := do(t, srv, path+after, "tok")
		var page server.Page
		if code != 200 || json.Unmarshal([]byte(body), &page) != nil {
			t.Fatalf("%s%s: %d %.200s", path, after, code, body)
		}
		var ids []int64
		for _, e := range page.Entities {
			id, err := strconv.ParseInt(e.ID, 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, id)
		}
		pages, sizes = append(pages, ids), append(sizes, len(body))
		if page.NextAfter == nil {
			return pages, sizes
		}
		if len(ids) == 0 || *page.NextAfter != strconv.FormatInt(ids[len(ids)-1], 10) {
			t.Fatalf("next_after %q after the ids %v", *page.NextAfter, ids)
		}
		after = *page.NextAfter
	}
	t.Fatal("paging does not end")
	return nil, nil
}

func TestPageByteBudget(t *testing.T) {
	const budget = 64 << 10
	tbl := viewstest.New(t, "account")
	srv := httptest.NewServer(server.Handler(server.Config{Views: map[string]*views.View{"account": tbl.View}, Token: "tok", MaxResponseBytes: budget}))
	defer srv.Close()
	// 40 entities of about 10 KB, and entity 17 alone bigger than the budget.
	for id := int64(1); id <= 40; id++ {
		n := 10 << 10
		if id == 17 {
			n = 2 * budget
		}
		tbl.Put(account(id, `"`+strings.Repeat("x", n)+`"`))
	}
	pages, sizes := pageThrough(t, srv, "/v1/entities/account?limit=1000&after=")
	var all []int64
	for i, ids := range pages {
		all = append(all, ids...)
		switch {
		case len(ids) == 1 && ids[0] == 17:
			if sizes[i] <= budget {
				t.Errorf("the page of entity 17 alone is %d bytes, want more than the budget", sizes[i])
			}
		case sizes[i] > budget:
			t.Errorf("page %d %v is %d bytes, over the budget of %d", i, ids, sizes[i], budget)
		case len(ids) < 4 && i < len(pages)-1 && !(len(pages[i+1]) == 1 && pages[i+1][0] == 17):
			t.Errorf("page %d holds only %v (%d bytes): cut too early", i, ids, sizes[i])
		}
	}
	if len(pages) < 7 {
		t.Errorf("%d pages of %v bytes; want the 400 KB cut into pages of at most 64 KB", len(pages), sizes)
	}
	if got := fmt.Sprint(all); got != fmt.Sprint(seq(1, 40)) {
		t.Errorf("pages hold %v, want 1..40 once each, in order", got)
	}
	// The limit still ends a page that fits its budget; 17 is alone.
	pages, _ = pageThrough(t, srv, "/v1/entities/account?limit=2&after=")
	if len(pages) != 21 || len(pages[0]) != 2 || len(pages[8]) != 1 {
		t.Errorf("limit=2 gave pages %v", pages)
	}
}

func seq(first, last int64) []int64 {
	var out []int64
	for id := first; id <= last; id++ {
		out = append(out, id)
	}
	return out
}

// blockingServer serves a view of account 1..n whose /v1/history requests
// block until release is closed (they wait in HistoryLater, holding a
// turn of MaxInFlight), then answer 503.
func blockingServer(t *testing.T, cfg server.Config, n int) (srv *httptest.Server, entered <-chan struct{}, release func()) {
	t.Helper()
	tbl := viewstest.New(t, "account")
	for id := int64(1); id <= int64(n); id++ {
		tbl.Put(account(id, `"a"`))
	}
	in := make(chan struct{}, 100)
	gate := make(chan struct{})
	cfg.Views = map[string]*views.View{"account": tbl.View}
	cfg.HistoryLater = func() *history.Reader {
		in <- struct{}{}
		<-gate
		return nil
	}
	srv = httptest.NewServer(server.Handler(cfg))
	var once sync.Once
	release = func() { once.Do(func() { close(gate) }) }
	t.Cleanup(srv.Close)
	t.Cleanup(release) // before srv.Close, which waits for the requests
	return srv, in, release
}

func TestQueueOverflow(t *testing.T) {
	reg := prometheus.NewRegistry()
	srv, entered, release := blockingServer(t, server.Config{MaxInFlight: 1, MaxWaiting: 1, MaxWait: time.Minute, Registerer: reg}, 3)
	// The first request takes the only turn, the second waits for it.
	results := make(chan int, 2)
	go func() { results <- status(srv, "/v1/history/account/1") }()
	<-entered
	go func() { results <- status(srv, "/v1/entities/account/2") }()
	waitGauge(t, reg, "changes_serve_waiting_requests", 1)
	// The third finds the queue full: 503 at once, with Retry-After.
	resp := get(t, srv.Client(), srv.URL+"/v1/entities/account/3", "")
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") != strconv.Itoa(server.RetryAfter) || !strings.Contains(string(body), "too busy") {
		t.Errorf("beyond the queue: %d, Retry-After %q, %s", resp.StatusCode, resp.Header.Get("Retry-After"), body)
	}
	release()
	got := []int{<-results, <-results}
	if !(got[0] == 503 && got[1] == 200) && !(got[0] == 200 && got[1] == 503) {
		t.Errorf("the blocked history request and the waiting read answered %v, want 503 (no history) and 200", got)
	}
	want := `
# HELP changes_serve_rejected_requests_total Query server requests answered 503 for want of a turn, by limit and reason (queue_full: too many waiting; wait_timeout: waited the longest wait).
# TYPE changes_serve_rejected_requests_total counter
changes_serve_rejected_requests_total{limit="requests",reason="queue_full"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "changes_serve_rejected_requests_total"); err != nil {
		t.Error(err)
	}
}

func TestWaitTimeout(t *testing.T) {
	srv, entered, _ := blockingServer(t, server.Config{MaxInFlight: 1, MaxWaiting: 10, MaxWait: 50 * time.Millisecond}, 1)
	go status(srv, "/v1/history/account/1")
	<-entered
	resp := get(t, srv.Client(), srv.URL+"/v1/entities/account/1", "")
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" || !strings.Contains(string(body), "none finished within 50ms") {
		t.Errorf("a read waiting longer than MaxWait: %d, Retry-After %q, %s", resp.StatusCode, resp.Header.Get("Retry-After"), body)
	}
	// Probes take no turn.
	if code, body := do(t, srv, "/healthz", ""); code != 200 {
		t.Errorf("/healthz while every turn is taken: %d %s", code, body)
	}
}

// status GETs path and returns the status, or -1: for goroutines, which
// must not call t.Fatal.
func status(srv *httptest.Server, path string) int {
	resp, err := srv.Client().Get(srv.URL + path)
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

func waitGauge(t *testing.T, reg *prometheus.Registry, name string, want float64) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() == name && len(mf.GetMetric()) > 0 && mf.GetMetric()[0].GetGauge().GetValue() == want {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not reach %v", name, want)
		}
	}
}

// TestSlowReaderFreesItsTurn: a client that asks for a large page and
// stops reading loses its connection after WriteTimeout, and with it the
// only turn, which the next request gets.
func TestSlowReaderFreesItsTurn(t *testing.T) {
	tbl := viewstest.New(t, "account")
	// 16 MiB: more than the kernel buffers between the two ends hold.
	for id := int64(1); id <= 128; id++ {
		tbl.Put(account(id, `"`+strings.Repeat("x", 128<<10)+`"`))
	}
	srv := httptest.NewUnstartedServer(server.Handler(server.Config{Views: map[string]*views.View{"account": tbl.View},
		MaxInFlight: 1, MaxWait: time.Minute, MaxResponseBytes: 64 << 20, WriteTimeout: 200 * time.Millisecond}))
	closed := make(chan string, 100)
	srv.Config.ConnState = func(c net.Conn, st http.ConnState) {
		if st == http.StateClosed {
			closed <- c.RemoteAddr().String()
		}
	}
	srv.Start()
	defer srv.Close()

	conn, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := conn.(*net.TCPConn).SetReadBuffer(4096); err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(conn, "GET /v1/entities/account?limit=1000 HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReaderSize(conn, 4096), nil)
	if err != nil || resp.StatusCode != 200 || resp.ContentLength < 16<<20 {
		t.Fatalf("the large page: %v, %v", resp, err)
	}
	// The slow client reads nothing more. The next request must get the
	// turn within MaxWait (a minute), not 503.
	start := time.Now()
	if code, body := do(t, srv, "/v1/entities/account/1", ""); code != 200 {
		t.Fatalf("while a client stops reading: %d %.200s", code, body)
	}
	t.Logf("the next request was answered after %s", time.Since(start))
	// The server closed the slow client's connection: the answer was cut.
	// (Reading what is left would show it, but slowly: the kernel probes
	// a closed window with a backoff.)
	for timeout := time.After(10 * time.Second); ; {
		select {
		case addr := <-closed:
			if addr == conn.LocalAddr().String() {
				return
			}
		case <-timeout:
			t.Fatal("the server did not close the connection of the client that stopped reading")
		}
	}
}

// TestInternalErrorHasAnID: a 500 says "internal error" and an id, and
// the log line with the detail carries the same id.
func TestInternalErrorHasAnID(t *testing.T) {
	var logs syncbuf.Buffer
	log := slog.New(slog.NewJSONHandler(&logs, nil))
	// A nil view panics when read: the stand-in for any unexpected failure.
	srv := httptest.NewServer(server.Handler(server.Config{Views: map[string]*views.View{"broken": nil}, Log: log}))
	defer srv.Close()
	code, body := do(t, srv, "/v1/entities/broken/1", "")
	var eb struct{ Error, ID string }
	if err := json.Unmarshal([]byte(body), &eb); code != 500 || err != nil || eb.Error != "internal error" || !regexp.MustCompile(`^[0-9a-f]{16}$`).MatchString(eb.ID) {
		t.Fatalf("a failing read: %d %s; want 500 {\"error\":\"internal error\",\"id\":...}", code, body)
	}
	if strings.Contains(body, "nil pointer") || strings.Contains(body, "panic") || strings.Contains(body, ".go:") {
		t.Errorf("the 500 body gives the detail away: %s", body)
	}
	var found bool
	for line := range strings.Lines(logs.String()) {
		var rec struct {
			Msg, Err  string
			RequestID string `json:"request_id"`
			Status    int
		}
		if json.Unmarshal([]byte(line), &rec) == nil && rec.RequestID == eb.ID {
			found = true
			if rec.Status != 500 || !strings.Contains(rec.Err, "nil pointer") {
				t.Errorf("log line of request %s: %s", eb.ID, line)
			}
		}
	}
	if !found {
		t.Errorf("no log line has request_id %s:\n%s", eb.ID, logs.String())
	}
	// A second failure gets another id.
	_, body2 := do(t, srv, "/v1/entities/broken/1", "")
	if body2 == body {
		t.Errorf("two failures share the body %s", body)
	}
}

// TestMinLSN: with min_lsn=, a read waits until the view has applied that
// LSN, then answers with the write; past MaxWait it is 503 with
// Retry-After. Every answer that reads the view says its watermark.
func TestMinLSN(t *testing.T) {
	tbl := viewstest.New(t, "account")
	srv := httptest.NewServer(server.Handler(server.Config{Views: map[string]*views.View{"account": tbl.View}, MaxWait: 300 * time.Millisecond}))
	defer srv.Close()
	tbl.Put(account(1, `"old"`))
	tbl.Watermark(0x100)

	resp := get(t, srv.Client(), srv.URL+"/v1/entities/account/1", "")
	resp.Body.Close()
	if got := resp.Header.Get(server.HeaderAppliedLSN); got != "0/100" || resp.Header.Get(server.HeaderAppliedCommitTime) == "" {
		t.Errorf("%s = %q (commit time %q), want 0/100", server.HeaderAppliedLSN, got, resp.Header.Get(server.HeaderAppliedCommitTime))
	}
	if code, body := do(t, srv, "/readyz", ""); code != 200 || !strings.Contains(body, `"applied_lsn":{"account":"0/100"}`) {
		t.Errorf("/readyz: %d %s", code, body)
	}

	// The write commits before 0/200; the view gets it 100 ms later.
	go func() {
		time.Sleep(100 * time.Millisecond)
		st := account(1, `"new"`)
		st.Position = codecs.Position{CommitLSN: 0x180}
		tbl.Put(st)
		tbl.Watermark(0x200)
	}()
	for _, path := range []string{"/v1/entities/account/1?min_lsn=0/200", "/v1/entities/account?min_lsn=0/200"} {
		start := time.Now()
		code, body := do(t, srv, path, "")
		if code != 200 || !strings.Contains(body, `"new"`) {
			t.Errorf("GET %s: %d %s, want the write", path, code, body)
		}
		t.Logf("GET %s answered after %s", path, time.Since(start).Round(time.Millisecond))
	}
	resp = get(t, srv.Client(), srv.URL+"/v1/entities/account/1?min_lsn=0/300", "")
	resp.Body.Close()
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" {
		t.Errorf("min_lsn beyond the watermark for MaxWait: %d (Retry-After %q), want 503 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
}
