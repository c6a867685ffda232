package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/views"
	"github.com/changes-dev/changes/views/history"
	"github.com/changes-dev/changes/views/server"
)

// sseEvent is one server-sent event of a change stream.
type sseEvent struct {
	id    int64
	event string
	data  string
}

// TestChangeStream follows a type's changes over HTTP (server-sent
// events): from offset 0, a disconnect after 40 events, a reconnect with
// Last-Event-ID while changes go on being committed. The ids received,
// in order, must be exactly the history offsets of the type's changes,
// each event the history's, none missing and none twice. A stream beyond
// MaxSubscriptions is refused with 503.
func TestChangeStream(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	f := newCaptureFixture(t, ctx, "sse", "id bigint primary key, v int not null default 0")
	stop := f.start(t, ctx)
	defer stop()
	waitSlotActive(t, ctx, f.db, f.cfg.Postgres.Slot)
	commit := func(from, to int) {
		for i := from; i < to; i++ {
			execSQL(t, ctx, f.db, fmt.Sprintf("insert into %s values (%d)", f.table, i))
			if i%3 == 0 {
				execSQL(t, ctx, f.db, fmt.Sprintf("update %s set v = v + 1 where id = %d", f.table, i))
			}
			if i%7 == 0 {
				execSQL(t, ctx, f.db, fmt.Sprintf("delete from %s where id = %d", f.table, i))
			}
		}
	}
	commit(0, 60)

	h, err := history.Open(f.topo, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	v := runView(t, ctx, f.topo, "item")
	const token = "t0ken"
	srv := httptest.NewServer(server.Handler(server.Config{Views: map[string]*views.View{"item": v}, History: h, Token: token, Log: testLogger(t), MaxSubscriptions: 1}))
	defer srv.Close()
	open := func(path, lastID, tok string) (*http.Response, context.CancelFunc) {
		t.Helper()
		rctx, cancel := context.WithCancel(ctx)
		req, _ := http.NewRequestWithContext(rctx, http.MethodGet, srv.URL+path, nil)
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		if lastID != "" {
			req.Header.Set("Last-Event-ID", lastID)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		return resp, cancel
	}
	for _, c := range []struct {
		path, lastID, token string
		want                int
	}{
		{"/v1/changes/item?from=0", "", "", http.StatusUnauthorized},
		{"/v1/changes/nope", "", token, http.StatusNotFound},
		{"/v1/changes/item?from=x", "", token, http.StatusBadRequest},
		{"/v1/changes/item", "-1", token, http.StatusBadRequest},
		{"/v1/changes/item?from=999999999", "", token, http.StatusBadRequest},
	} {
		resp, cancel := open(c.path, c.lastID, c.token)
		resp.Body.Close()
		cancel()
		if resp.StatusCode != c.want {
			t.Errorf("GET %s (Last-Event-ID %q): %d, want %d", c.path, c.lastID, resp.StatusCode, c.want)
		}
	}

	// read reads events from resp until it has n or ctx ends.
	read := func(resp *http.Response, n int) []sseEvent {
		t.Helper()
		if ct := resp.Header.Get("Content-Type"); resp.StatusCode != http.StatusOK || ct != "text/event-stream" {
			t.Fatalf("change stream: %d %s", resp.StatusCode, ct)
		}
		var out []sseEvent
		var cur sseEvent
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for len(out) < n && sc.Scan() {
			line := sc.Text()
			field, value, _ := strings.Cut(line, ": ")
			switch field {
			case "":
				if cur.event != "" {
					out = append(out, cur)
				}
				cur = sseEvent{}
			case "id":
				cur.id, _ = strconv.ParseInt(value, 10, 64)
			case "event":
				cur.event = value
			case "data":
				cur.data = value
			}
		}
		if len(out) < n {
			t.Fatalf("change stream ended after %d events, want %d: %v", len(out), n, sc.Err())
		}
		return out
	}
	resp, closeFirst := open("/v1/changes/item?from=0", "", token)
	defer closeFirst()
	got := read(resp, 40)
	closeFirst()
	resp.Body.Close()
	// More changes while no one listens, and while the second stream runs.
	commit(60, 90)
	// The first stream's slot is free once its handler saw the client go.
	var closeSecond context.CancelFunc
	for {
		resp, closeSecond = open("/v1/changes/item", strconv.FormatInt(got[len(got)-1].id, 10), token)
		if resp.StatusCode != http.StatusServiceUnavailable || ctx.Err() != nil {
			break
		}
		resp.Body.Close()
		closeSecond()
		time.Sleep(50 * time.Millisecond)
	}
	defer closeSecond()
	// One stream at a time (MaxSubscriptions): another is refused; a HEAD
	// takes no stream.
	busy, closeBusy := open("/v1/changes/item?from=0", "", token)
	busy.Body.Close()
	closeBusy()
	if busy.StatusCode != http.StatusServiceUnavailable || busy.Header.Get("Retry-After") == "" {
		t.Errorf("a second stream at once: %d (Retry-After %q), want 503 with Retry-After", busy.StatusCode, busy.Header.Get("Retry-After"))
	}
	head, _ := http.NewRequestWithContext(ctx, http.MethodHead, srv.URL+"/v1/changes/item", nil)
	head.Header.Set("Authorization", "Bearer "+token)
	if hr, err := http.DefaultClient.Do(head); err != nil || hr.StatusCode != http.StatusOK || hr.Header.Get("Content-Type") != "text/event-stream" {
		t.Errorf("HEAD of a change stream: %v, %v", hr, err)
	} else {
		hr.Body.Close()
	}
	commit(90, 120) // read live by the open stream
	want := historyOf(t, ctx, f, 120)
	got = append(got, read(resp, len(want)-len(got))...)
	resp.Body.Close()
	for i := range want {
		if i >= len(got) || got[i].id != want[i].Offset {
			t.Fatalf("event %d: id %v, want offset %d (the history's %dth change of item)", i, got[min(i, len(got)-1)].id, want[i].Offset, i)
		}
		ev, err := (codecs.EventCodec{}).Decode([]byte(got[i].data))
		if err != nil || ev.Position != want[i].Event.Position || string(ev.Op) != got[i].event || ev.EntityID != want[i].Event.EntityID {
			t.Fatalf("event %d at offset %d: %+v (%v), event %q; want %+v", i, got[i].id, ev, err, got[i].event, want[i].Event)
		}
	}
	closeSecond()

	// From the end: only what is committed from now on.
	var closeLast context.CancelFunc
	for {
		resp, closeLast = open("/v1/changes/item", "", token)
		if resp.StatusCode != http.StatusServiceUnavailable || ctx.Err() != nil {
			break
		}
		resp.Body.Close()
		closeLast()
		time.Sleep(50 * time.Millisecond)
	}
	defer closeLast()
	execSQL(t, ctx, f.db, fmt.Sprintf("insert into %s values (1000)", f.table))
	if next := read(resp, 1); next[0].id <= want[len(want)-1].Offset || next[0].event != "insert" {
		t.Fatalf("a stream from the end began with %+v; want the insert after offset %d", next[0], want[len(want)-1].Offset)
	}
	t.Logf("%d events over two streams, in history order, none missing or repeated; a stream from the end got the next change", len(got))
}

// historyOf waits until the history holds every change the commits of ids
// 0 to n made (an insert each, an update of every third, a delete of every
// seventh), and returns them.
func historyOf(t *testing.T, ctx context.Context, f *captureFixture, n int) []history.Change {
	t.Helper()
	want := n + (n+2)/3 + (n+6)/7
	for {
		var out []history.Change
		for _, m := range readAll(t, ctx, f.cfg, f.topo.History()) {
			ev, err := (codecs.EventCodec{}).Decode(m.Value)
			if err != nil {
				t.Fatalf("history offset %d: %v", m.Offset, err)
			}
			out = append(out, history.Change{Offset: m.Offset, Event: ev})
		}
		if len(out) >= want {
			return out
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the history holds %d changes of item, want %d", len(out), want)
		case <-time.After(200 * time.Millisecond):
		}
	}
}
