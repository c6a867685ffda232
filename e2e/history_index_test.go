package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/views"
	"github.com/changes-dev/changes/views/history"
	"github.com/changes-dev/changes/views/server"
)

// TestHistoryIndexServesAt: on a real pipeline, /v1/history?at= answered by
// the history index equals, byte for byte and status for status, the answer
// of a server without it, which scans the history: for entities updated
// with their TOASTed column unchanged, deleted, inserted again, and across
// a TRUNCATE, at offsets and at times.
func TestHistoryIndexServesAt(t *testing.T) {
	e := stack(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cfg, topo, db, table := itemTable(t, ctx, e, "hindex", "id bigint primary key, n integer not null, blob text", 2, nil)
	// 9,600 characters of hex: TOASTed out of line, so an update that does
	// not change it sends it as unchanged.
	const blob = "(select string_agg(md5(random()::text), '') from generate_series(1, 300))"
	execSQL(t, ctx, db, "insert into "+table+" select g, g, "+blob+" from generate_series(1, 30) g")
	run := startPlatform(t, ctx, topo)
	waitSlotActive(t, ctx, db, cfg.Postgres.Slot)
	var moments []time.Time
	step := func(sql string) {
		execSQL(t, ctx, db, sql)
		time.Sleep(30 * time.Millisecond)
		moments = append(moments, time.Now())
	}
	for i := range 8 {
		step(fmt.Sprintf("update %s set n = n + 1 where id %% 3 = %d", table, i%3)) // blob unchanged
		step(fmt.Sprintf("delete from %s where id = %d", table, 2+i))
		step(fmt.Sprintf("insert into %s values (%d, 0, %s) on conflict (id) do update set n = -1", table, 2+i, blob))
		if i == 4 {
			step("truncate " + table)
			step("insert into " + table + " select g, 100 + g, " + blob + " from generate_series(1, 12) g")
		}
		step(fmt.Sprintf("update %s set blob = %s where id = %d", table, blob, 1+i))
	}
	waitViewsEqual(t, ctx, db, topo, run.views)
	// The history is complete: the rest reads Kafka only.
	run.stop()

	h, err := history.Open(topo, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	b, err := h.Bounds(ctx)
	if err != nil {
		t.Fatal(err)
	}
	x, stopIndex := indexHistory(t, ctx, h, b.End, "index")
	defer stopIndex()
	unchanged := 0
	for id := int64(1); id <= 14; id++ {
		changes, err := h.Changes(ctx, "item", codecs.IntKey(id), b.Start, b.End)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range changes {
			if len(c.Event.Unchanged) > 0 {
				unchanged++
			}
		}
	}
	if unchanged == 0 {
		t.Fatal("no update kept its TOASTed column unchanged: the test would not check the index's reads of earlier changes")
	}
	v := runView(t, ctx, topo, "item")
	if err := v.WaitRecovered(ctx); err != nil {
		t.Fatal(err)
	}
	vs := map[string]*views.View{"item": v}
	withIndex := httptest.NewServer(server.Handler(server.Config{Views: vs, History: h, HistoryIndex: func() *history.Index { return x }, Log: testLogger(t)}))
	defer withIndex.Close()
	scanning := httptest.NewServer(server.Handler(server.Config{Views: vs, History: h, Log: testLogger(t)}))
	defer scanning.Close()
	get := func(base, path string) (int, string, string) {
		t.Helper()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header.Get(server.HeaderHistorySource), string(body)
	}
	var ats []string
	for off := b.Start; off < b.End; off += max(1, (b.End-b.Start)/25) {
		ats = append(ats, fmt.Sprint(off))
	}
	for _, m := range moments {
		ats = append(ats, m.UTC().Format(time.RFC3339Nano))
	}
	compare := func(ats []string) (states, indexed int) {
		t.Helper()
		for _, at := range ats {
			for id := 1; id <= 14; id++ {
				path := fmt.Sprintf("/v1/history/item/%d?at=%s", id, url.QueryEscape(at))
				code, source, body := get(withIndex.URL, path)
				wantCode, wantSource, want := get(scanning.URL, path)
				if code != wantCode || body != want {
					t.Fatalf("GET %s: from the index %d %s\nfrom the scan %d %s", path, code, body, wantCode, want)
				}
				if (source != "index" || wantSource != "scan") && (source != "" || wantSource != "" || code != http.StatusGone) {
					now, _ := h.Bounds(ctx)
					end, _ := server.EndOffset(ctx, h, at)
					t.Errorf("GET %s: %s %q and %q, want index and scan (index at %d, history [%d, %d), end %d)", path, server.HeaderHistorySource, source, wantSource, x.Position(), now.Start, now.End, end)
				}
				if code == http.StatusOK && len(body) > 200 {
					states++
				}
				if source == "index" {
					indexed++
				}
			}
		}
		return states, indexed
	}
	states, indexed := compare(ats)
	if states == 0 || indexed < len(ats) {
		t.Errorf("%d answers held a state, %d came from the index: the comparison proves little", states, indexed)
	}
	t.Logf("%d moments x 14 entities compared; %d answers held a state, %d came from the index", len(ats), states, indexed)

	// The whole type at each moment: the same lines from the index as from
	// the scan, each line the entity's answer at that moment.
	lines := 0
	for _, at := range ats {
		path := "/v1/history/item?at=" + url.QueryEscape(at)
		code, source, body := get(withIndex.URL, path)
		wantCode, wantSource, want := get(scanning.URL, path)
		if code != wantCode || body != want {
			t.Fatalf("GET %s: from the index %d %s\nfrom the scan %d %s", path, code, body, wantCode, want)
		}
		if code == http.StatusGone {
			// A moment recorded before the history's first change: not
			// a moment of the history, for both alike (no source).
			continue
		}
		if code != http.StatusOK || source != "index" || wantSource != "scan" {
			t.Errorf("GET %s: %d, %s %q and %q, want 200 from the index and the scan", path, code, server.HeaderHistorySource, source, wantSource)
		}
		for line := range strings.Lines(body) {
			var e history.Entity
			if err := json.Unmarshal([]byte(line), &e); err != nil {
				t.Fatalf("GET %s: a line that is not an entity: %q: %v", path, line, err)
			}
			_, _, one := get(scanning.URL, fmt.Sprintf("/v1/history/item/%s?at=%s", url.PathEscape(e.ID), url.QueryEscape(at)))
			var st history.StateAt
			if err := json.Unmarshal([]byte(one), &st); err != nil || st.Entity == nil {
				t.Fatalf("GET %s lists %s, which /v1/history/item/%s?at= says did not exist: %s", path, e.ID, e.ID, one)
			}
			if got, _ := json.Marshal(st.Entity); strings.TrimSuffix(line, "\n") != string(got) {
				t.Fatalf("GET %s: line %s\nthe entity's own answer %s", path, line, got)
			}
			lines++
		}
	}
	if lines == 0 {
		t.Error("every whole-type answer was empty: the comparison proves nothing")
	}
	if code, _, body := get(withIndex.URL, "/v1/history/item"); code != http.StatusBadRequest {
		t.Errorf("GET /v1/history/item without at=: %d %s, want 400", code, body)
	}
	t.Logf("%d moments of the whole type compared, %d entity lines", len(ats), lines)

	// Retention removes the first half of the history: what depended on
	// it is 410 (or the view's word) from both alike, and the index sweeps.
	cut := (b.Start + b.End) / 2
	admin, err := sarama.NewClusterAdmin(cfg.Kafka.Brokers, saramaConfig(t, cfg.Kafka))
	if err != nil {
		t.Fatal(err)
	}
	if err := admin.DeleteRecords(topo.History(), map[int32]int64{0: cut}); err != nil {
		t.Fatalf("delete the history before offset %d: %v", cut, err)
	}
	admin.Close()
	var after []string
	for _, at := range ats {
		if n, err := strconv.ParseInt(at, 10, 64); err != nil || n >= cut {
			after = append(after, at)
		}
	}
	states, indexed = compare(after)
	t.Logf("after retention: %d moments x 14 entities compared; %d answers held a state, %d came from the index", len(after), states, indexed)
	// The scan cannot rebuild a whole type without the history's start; the
	// index can, from its first checkpoint after the new start.
	fromIndex := 0
	for _, at := range after {
		path := "/v1/history/item?at=" + url.QueryEscape(at)
		if code, _, body := get(scanning.URL, path); code != http.StatusGone {
			t.Errorf("GET %s from the scan after retention: %d %s, want 410", path, code, body)
		}
		switch code, source, body := get(withIndex.URL, path); {
		case code == http.StatusOK && source == "index":
			fromIndex++
		case code != http.StatusGone:
			t.Errorf("GET %s from the index after retention: %d (%s) %s, want 200 from the index or 410", path, code, source, body)
		}
	}
	if fromIndex == 0 {
		t.Errorf("after retention the index answered none of %d whole-type moments", len(after))
	}
	// An index built after retention keeps no checkpoints of the types: the
	// server scans for a whole type, and says so.
	late, stopLate := indexHistory(t, ctx, h, b.End, "the index built after retention")
	defer stopLate()
	withLate := httptest.NewServer(server.Handler(server.Config{Views: vs, History: h, HistoryIndex: func() *history.Index { return late }, Log: testLogger(t)}))
	defer withLate.Close()
	path := fmt.Sprintf("/v1/history/item?at=%d", b.End-1)
	code, source, body := get(withLate.URL, path)
	wantCode, _, want := get(scanning.URL, path)
	if source != "scan" || code != wantCode || body != want {
		t.Errorf("GET %s from an index without checkpoints: %d (%s) %s\nthe scan: %d %s", path, code, source, body, wantCode, want)
	}

	// `changes serve` keeps its index beside its views and answers from it
	// once it has caught up, the same as the scan.
	serveAddr := freeAddr(t)
	serve := startProcess(ctx, t, map[string]string{"CHANGES_SERVE_LISTEN": serveAddr}, "serve", "--config", writeConfig(t, cfg))
	path = fmt.Sprintf("/v1/history/item/3?at=%d", b.End-1)
	for {
		serve.mustRun(t)
		code, hdr, body := httpGet(serveAddr, path)
		if hdr.Get(server.HeaderHistorySource) == "index" {
			wantCode, _, want := get(scanning.URL, path)
			if code != wantCode || body != want {
				t.Errorf("changes serve: GET %s: %d %s\nthe scan: %d %s", path, code, body, wantCode, want)
			}
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("changes serve never answered %s from its index:\n%s", path, serve.tail())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, err := os.Stat(filepath.Join(cfg.Storage, "serve", topo.History()+".index", "CURRENT")); err != nil {
		t.Errorf("changes serve's index is not in <storage>/serve/<history topic>.index: %v", err)
	}
}

// indexHistory builds a history index of h (a checkpoint every 50
// offsets) in a directory of its own, and returns it once it has read up
// to offset end, with the function that stops and closes it (before h
// closes); name names it in errors.
func indexHistory(t *testing.T, ctx context.Context, h *history.Reader, end int64, name string) (*history.Index, func()) {
	t.Helper()
	x, err := history.OpenIndex(h, history.IndexConfig{Dir: t.TempDir(), CheckpointEvery: 50})
	if err != nil {
		t.Fatal(err)
	}
	ictx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- x.Run(ictx) }()
	closeIndex := func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("%s: %v", name, err)
		}
		x.Close()
	}
	for x.Position() < end {
		if ctx.Err() != nil {
			closeIndex()
			t.Fatalf("%s reached offset %d of %d", name, x.Position(), end)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return x, closeIndex
}
