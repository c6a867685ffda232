package main

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/views"
	"github.com/changes-dev/changes/views/viewstest"
)

func TestHandler(t *testing.T) {
	tbl := viewstest.New(t, "account")
	accounts := &views.Typed[Account]{View: tbl.View}
	for i, a := range []struct {
		budget string
		active bool
	}{{"10.00", true}, {"300.50", true}, {"99999.99", false}, {"20.00", true}, {"300.49", true}} {
		id := int64(i + 1)
		tbl.PutRow(id, codecs.Row{
			"name":   json.RawMessage(`"acme ` + strconv.FormatInt(id, 10) + `"`),
			"budget": json.RawMessage(`"` + a.budget + `"`), "active": json.RawMessage(strconv.FormatBool(a.active)),
			"updated_at": json.RawMessage(`"2026-11-25T10:00:00Z"`),
		})
	}
	placements := &views.Typed[Placement]{View: viewstest.New(t, "placement").View}
	srv := httptest.NewServer(Handler(accounts, placements))
	defer srv.Close()
	get := func(path string) (int, string) {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, strings.TrimSpace(string(b))
	}
	if code, body := get("/accounts/2"); code != 200 || !strings.Contains(body, `"budget":"300.50"`) {
		t.Errorf("/accounts/2: %d %s", code, body)
	}
	if code, _ := get("/accounts/9"); code != 404 {
		t.Errorf("/accounts/9: %d, want 404", code)
	}
	code, body := get("/top?n=2")
	var top []Account
	if code != 200 || json.Unmarshal([]byte(body), &top) != nil || len(top) != 2 || top[0].ID != 2 || top[1].ID != 5 {
		t.Errorf("/top?n=2: %d %s; want accounts 2 and 5 (3 is inactive)", code, body)
	}
	if code, body := get("/readyz"); code != 200 {
		t.Errorf("/readyz: %d %s", code, body)
	}
}

func TestPlacement(t *testing.T) {
	tbl := viewstest.New(t, "placement")
	placements := &views.Typed[Placement]{View: tbl.View}
	accounts := &views.Typed[Account]{View: viewstest.New(t, "account").View}
	// As the snapshot processor writes them: keyed by (campaign_id, site).
	for _, p := range []struct {
		campaign int64
		site     string
		bid      string
	}{{7, "news.example/sports", "0.5000"}, {7, "news.example", "0.1000"}, {8, "news.example/sports", "0.9000"}} {
		tbl.PutKeyRow(codecs.CompositeKey(codecs.IntKey(p.campaign), codecs.TextKey(p.site)), codecs.Row{
			"campaign_id": json.RawMessage(strconv.FormatInt(p.campaign, 10)), "site": json.RawMessage(strconv.Quote(p.site)),
			"bid": json.RawMessage(strconv.Quote(p.bid)), "updated_at": json.RawMessage(`"2026-11-25T10:00:00Z"`),
		})
	}
	srv := httptest.NewServer(Handler(accounts, placements))
	defer srv.Close()
	for path, want := range map[string]string{
		"/placements/7/news.example/sports":   `"bid":"0.5000"`, // the slash is the site's
		"/placements/7/news.example%2Fsports": `"bid":"0.5000"`, // escaped, the same
		"/placements/7/news.example":          `"bid":"0.1000"`,
		"/placements/8/news.example/sports":   `"bid":"0.9000"`,
		"/placements/9/news.example/sports":   "no such placement",
		"/placements/x/news.example":          "want /placements/",
	} {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.Contains(string(b), want) {
			t.Errorf("%s: %d %s, want %s", path, resp.StatusCode, b, want)
		}
	}
}

func TestWatchDeactivations(t *testing.T) {
	tbl := viewstest.New(t, "account")
	accounts := &views.Typed[Account]{View: tbl.View}
	row := func(active bool, name string) codecs.Row {
		return codecs.Row{"name": json.RawMessage(`"` + name + `"`), "budget": json.RawMessage(`"1.00"`), "active": json.RawMessage(strconv.FormatBool(active))}
	}
	tbl.PutRow(1, row(true, "one"))
	tbl.PutRow(2, row(false, "two")) // inactive before the watch starts
	var logs syncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	watching := make(chan struct{}, 1)
	go func() {
		defer close(done)
		watchDeactivations(ctx, accounts, slog.New(slog.NewTextHandler(&logs, nil)), func() { watching <- struct{}{} })
	}()
	defer func() { cancel(); <-done }()
	<-watching                               // subscribed and read
	tbl.PutRow(2, row(false, "two renamed")) // still inactive: not a deactivation
	tbl.PutRow(1, row(false, "one"))         // deactivated
	tbl.Delete(1)
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(logs.String(), "account deleted") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	out := logs.String()
	if strings.Count(out, "account deactivated") != 1 || !strings.Contains(out, `deactivated" id=1 `) || !strings.Contains(out, `deleted" id=1`) {
		t.Errorf("logs:\n%s\nwant exactly one deactivation (id=1) and the deletion of 1", out)
	}
}

type syncBuffer struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
