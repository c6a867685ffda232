package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/internal/dbcheck"
	wl "github.com/changes-dev/changes/internal/workload" // e2e has a type workload, the fault suite's
	"github.com/changes-dev/changes/topology"
	"github.com/changes-dev/changes/views"
	"github.com/changes-dev/changes/views/history"
	"github.com/changes-dev/changes/views/server"
)

// pausableWorkload commits random inserts, updates and deletes of rows with
// ids 1..maxID until stopped, as fast as it can. Pause blocks new
// transactions and waits for the ones in flight, so a test can read "the
// database at T" exactly.
type pausableWorkload struct {
	*wl.Workload[struct{}]
}

func startWorkload(t testing.TB, ctx context.Context, pgURL, table string, maxID int64, workers int) *pausableWorkload {
	t.Helper()
	w, err := wl.Start(ctx, wl.Config[struct{}]{URL: pgURL, Workers: workers, Seed: 42,
		Txn: func(ctx context.Context, tx pgx.Tx, _ int, rnd *rand.Rand) (int, struct{}, error) {
			changes := 0
			for range 1 + rnd.IntN(3) {
				id := 1 + rnd.Int64N(maxID)
				var sql string
				switch k := rnd.IntN(10); {
				case k < 5:
					sql = fmt.Sprintf("insert into %s values (%d, %d, 'v%d') on conflict (id) do update set n = %[1]s.n + 1, note = excluded.note", table, id, rnd.IntN(1000), rnd.IntN(1e6))
				case k < 8:
					sql = fmt.Sprintf("update %s set n = n + 1, note = 'u%d' where id = %d", table, rnd.IntN(1e6), id)
				default:
					sql = fmt.Sprintf("delete from %s where id = %d", table, id)
				}
				tag, err := tx.Exec(ctx, sql)
				if err != nil {
					return 0, struct{}{}, err
				}
				changes += int(tag.RowsAffected())
			}
			return changes, struct{}{}, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	return &pausableWorkload{w}
}

// moment pauses the workload, takes T (every transaction committed before T
// is visible, none commits within a few milliseconds of it), and returns T
// and the table's rows at T.
func (w *pausableWorkload) moment(t testing.TB, ctx context.Context, db *pgx.Conn, table string) (time.Time, map[int64]codecs.Row) {
	t.Helper()
	w.Pause()
	defer w.Resume()
	time.Sleep(5 * time.Millisecond)
	at := time.Now()
	time.Sleep(5 * time.Millisecond)
	rows, err := dbcheck.Rows(ctx, db, table, []string{"id"})
	if err != nil {
		t.Fatal(err)
	}
	return at, idsOf(rows)
}

func (w *pausableWorkload) finish(t testing.TB) {
	t.Helper()
	if err := w.Stop(); err != nil {
		t.Fatalf("workload: %v", err)
	}
}

// TestViewsServeAndAsOf runs the platform under a random workload, then
// checks: a view converges to the database; a view restarted on its
// directory reopens its data and reads nothing again; the query server
// answers through a real listener, errors included; the history rebuilds
// the database's state at two moments T1 and T2 exactly (Go API, HTTP and
// the `changes asof` command); and once retention has removed the start of
// the history, what it can no longer tell is an error, not a guess.
func TestViewsServeAndAsOf(t *testing.T) {
	e := stack(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cfg, topo, db, table := itemTable(t, ctx, e, "views", "id bigint primary key, n integer not null, note text", 4, nil)
	execSQL(t, ctx, db, "insert into "+table+" select g, g, 'seed' from generate_series(1, 100) g")
	execSQL(t, ctx, db, "insert into "+table+" select g, g, 'untouched' from generate_series(1001, 1010) g")
	run := startPlatform(t, ctx, topo)
	waitSlotActive(t, ctx, db, cfg.Postgres.Slot)

	w := startWorkload(t, ctx, e.pgURL, table, 400, 3)
	time.Sleep(1500 * time.Millisecond)
	t1, rows1 := w.moment(t, ctx, db, table)
	time.Sleep(1500 * time.Millisecond)
	t2, rows2 := w.moment(t, ctx, db, table)
	time.Sleep(500 * time.Millisecond)
	w.finish(t)
	t.Logf("%d changes; %d rows at T1, %d at T2", w.Changes(), len(rows1), len(rows2))
	began := time.Now()
	phase := func(what string) { t.Logf("%s after %.1fs", what, time.Since(began).Seconds()) }
	defer phase("end")
	if maps := []map[int64]codecs.Row{rows1, rows2}; len(diffByID(maps[0], statesOf(maps[1]), 1)) == 0 {
		t.Fatal("the database did not change between T1 and T2: the test would prove nothing")
	}
	waitViewsEqual(t, ctx, db, topo, run.views)
	finalRows, err := dbcheck.Rows(ctx, db, "public."+table, []string{"id"})
	if err != nil {
		t.Fatal(err)
	}
	final := idsOf(finalRows)

	phase("views equal the database")
	// The platform stops here: what follows reads the views, the history
	// and the server, and its progress watermarks would keep adding
	// records to the table.
	run.stop()
	// A view restarted on its directory reopens its data: it applies no
	// record while recovering and equals the database at once.
	dir := t.TempDir()
	runView := func() (*views.View, *prometheus.Registry, func()) {
		reg := prometheus.NewRegistry()
		v, err := views.New(topo, "item", views.WithStorageDir(dir), views.WithRegisterer(reg), views.WithLogger(testLogger(t)))
		if err != nil {
			t.Fatal(err)
		}
		vctx, vcancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- v.Run(vctx) }()
		start := time.Now()
		if err := v.WaitRecovered(ctx); err != nil {
			t.Fatal(err)
		}
		t.Logf("view ready in %s", time.Since(start))
		return v, reg, func() {
			vcancel()
			if err := <-done; err != nil {
				t.Errorf("view: %v", err)
			}
		}
	}
	v, reg, stop := runView()
	firstRecovery := metricValue(t, reg, "changes_view_updates_total", map[string]string{"phase": "recovery"})
	if firstRecovery == 0 {
		t.Fatal("a fresh view applied no record while recovering")
	}
	stop()
	v, reg, stop = runView()
	defer stop()
	if n := metricValue(t, reg, "changes_view_updates_total", map[string]string{"phase": "recovery"}); n != 0 {
		t.Errorf("a restarted view applied %v records while recovering, want 0 (a fresh one applied %v)", n, firstRecovery)
	}
	states, err := collectByID(v.Each)
	if err != nil {
		t.Fatal(err)
	}
	if d := diffByID(final, states, 5); len(d) > 0 {
		t.Fatalf("restarted view differs from the database:\n%s", strings.Join(d, "\n"))
	}
	if n, err := v.Len(); err != nil || n != len(final) {
		t.Errorf("Len = %d, %v; want %d", n, err, len(final))
	}
	// The gauges follow within their one-second refresh.
	want := fmt.Sprintf("# HELP changes_view_entities Entities a view holds (deleted and truncated ones excluded).\n# TYPE changes_view_entities gauge\nchanges_view_entities{entity_type=\"item\"} %d\n", len(final))
	for deadline := time.Now().Add(5 * time.Second); ; {
		err := testutil.GatherAndCompare(reg, strings.NewReader(want), "changes_view_entities")
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("entities gauge: %v", err)
			break
		}
		time.Sleep(100 * time.Millisecond)
	}

	phase("restarted view checked")
	// Point in time through the Go API.
	h, err := history.Open(topo, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	for i, m := range []struct {
		at   time.Time
		rows map[int64]codecs.Row
	}{{t1, rows1}, {t2, rows2}} {
		end, err := h.OffsetAt(ctx, m.at)
		if err != nil {
			t.Fatal(err)
		}
		all, err := h.TypeAt(ctx, "item", end, nil)
		if err != nil {
			t.Fatal(err)
		}
		if d := diffByID(m.rows, statesOf2(all), 5); len(d) > 0 {
			t.Errorf("TypeAt(T%d) differs from the database at T%d:\n%s", i+1, i+1, strings.Join(d, "\n"))
		}
		for _, id := range []int64{1, 7, 150, 399} {
			st, err := h.EntityAt(ctx, "item", codecs.IntKey(id), end, nil)
			if err != nil {
				t.Fatal(err)
			}
			want, ok := m.rows[id]
			if ok != (st != nil) || (ok && len(diffByID(map[int64]codecs.Row{id: want}, map[int64]*codecs.State{id: st}, 1)) > 0) {
				t.Errorf("EntityAt(%d, T%d) = %+v, want %v", id, i+1, st, want)
			}
		}
	}

	phase("Go API point in time checked")
	// The query server, through a real listener.
	const token = "t0ken"
	srv := httptest.NewServer(server.Handler(server.Config{Views: map[string]*views.View{"item": v}, History: h, Token: token, Log: testLogger(t)}))
	defer srv.Close()
	get := func(path, tok string) (int, []byte) {
		t.Helper()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+path, nil)
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("GET %s: Content-Type %q", path, ct)
		}
		return resp.StatusCode, body
	}
	someID := slices.Sorted(mapsKeys(final))[0]
	for _, c := range []struct {
		path, token string
		code        int
		errPart     string
	}{
		{"/v1/entities/item/" + strconv.FormatInt(someID, 10), "", 401, "missing bearer token"},
		{"/v1/entities/item/" + strconv.FormatInt(someID, 10), "nope", 401, "wrong bearer token"},
		{"/v1/entities/item/abc", token, 400, `"abc" is not a 64-bit integer`},
		{"/v1/entities/gadget/1", token, 404, `unknown entity type "gadget"`},
		{"/v1/entities/item/100000", token, 404, `item "100000" not found`},
		{"/v1/entities/item?limit=0", token, 400, "limit"},
		{"/v1/entities/item?after=x", token, 400, "after"},
		{"/v1/history/item/1?at=yesterday", token, 400, "neither an RFC 3339 time nor a history offset"},
		{"/v1/history/item/1?at=2000-01-01T00:00:00Z", token, 410, "older than the history"},
		{"/v2/nothing", token, 404, "no such endpoint"},
	} {
		code, body := get(c.path, c.token)
		var eb struct{ Error string }
		if code != c.code || json.Unmarshal(body, &eb) != nil || !strings.Contains(eb.Error, c.errPart) {
			t.Errorf("GET %s: %d %s; want %d with an error containing %q", c.path, code, body, c.code, c.errPart)
		}
	}
	if code, body := get("/healthz", ""); code != 200 {
		t.Errorf("/healthz: %d %s", code, body)
	}
	if code, body := get("/readyz", ""); code != 200 || !strings.Contains(string(body), `"item":"running"`) {
		t.Errorf("/readyz: %d %s", code, body)
	}
	code, body := get("/v1/entities/item/"+strconv.FormatInt(someID, 10), token)
	var ent server.Entity
	if code != 200 || json.Unmarshal(body, &ent) != nil || ent.ID != strconv.FormatInt(someID, 10) ||
		len(diffByID(map[int64]codecs.Row{someID: final[someID]}, map[int64]*codecs.State{someID: {EntityID: codecs.IntKey(someID), Row: ent.Row}}, 1)) > 0 {
		t.Errorf("GET entity %d: %d %s; want %v", someID, code, body, final[someID])
	}
	// Paging through the listing gives every entity once, in id order.
	var listed []int64
	listedStates := map[int64]*codecs.State{}
	after := ""
	for pages := 0; ; pages++ {
		code, body := get("/v1/entities/item?limit=37&after="+url.QueryEscape(after), token)
		var page server.Page
		if code != 200 || json.Unmarshal(body, &page) != nil {
			t.Fatalf("listing: %d %s", code, body)
		}
		for _, en := range page.Entities {
			id, err := strconv.ParseInt(en.ID, 10, 64)
			if err != nil {
				t.Fatalf("listing: id %q: %v", en.ID, err)
			}
			listed = append(listed, id)
			listedStates[id] = &codecs.State{EntityID: codecs.IntKey(id), Row: en.Row}
		}
		if page.NextAfter == nil {
			break
		}
		after = *page.NextAfter
		if pages > 100 {
			t.Fatal("listing does not end")
		}
	}
	if !slices.IsSorted(listed) || len(listed) != len(final) {
		t.Errorf("listing gave %d ids (sorted: %v), want %d in order", len(listed), slices.IsSorted(listed), len(final))
	}
	if d := diffByID(final, listedStates, 5); len(d) > 0 {
		t.Errorf("listing differs from the database:\n%s", strings.Join(d, "\n"))
	}
	// Point in time over HTTP, for every id the two moments disagree on.
	for i, m := range []struct {
		at   time.Time
		rows map[int64]codecs.Row
	}{{t1, rows1}, {t2, rows2}} {
		checked := 0
		for id := int64(1); id <= 400 && checked < 6; id++ {
			_, in1 := rows1[id]
			_, in2 := rows2[id]
			same := in1 == in2 && (!in1 || len(diffByID(map[int64]codecs.Row{id: rows1[id]}, map[int64]*codecs.State{id: {EntityID: codecs.IntKey(id), Row: rows2[id]}}, 1)) == 0)
			if same {
				continue // not telling
			}
			checked++
			code, body := get(fmt.Sprintf("/v1/history/item/%d?at=%s", id, url.QueryEscape(m.at.Format(time.RFC3339Nano))), token)
			var sa server.StateAt
			if code != 200 || json.Unmarshal(body, &sa) != nil {
				t.Fatalf("history at T%d of %d: %d %s", i+1, id, code, body)
			}
			want, ok := m.rows[id]
			if ok != (sa.Entity != nil) || (ok && len(diffByID(map[int64]codecs.Row{id: want}, map[int64]*codecs.State{id: {EntityID: codecs.IntKey(id), Row: sa.Entity.Row}}, 1)) > 0) {
				t.Errorf("history of %d at T%d = %s, want %v", id, i+1, body, want)
			}
		}
		if checked == 0 {
			t.Fatal("no entity differs between T1 and T2")
		}
	}
	// The change list of an entity ends with its current state.
	code, body = get(fmt.Sprintf("/v1/history/item/%d", someID), token)
	var ch server.Changes
	if code != 200 || json.Unmarshal(body, &ch) != nil || len(ch.Changes) == 0 {
		t.Fatalf("changes of %d: %d %s", someID, code, body)
	}
	last := ch.Changes[len(ch.Changes)-1].Event
	if last.Op == codecs.OpDelete || len(diffByID(map[int64]codecs.Row{someID: final[someID]}, map[int64]*codecs.State{someID: {EntityID: codecs.IntKey(someID), Row: last.After}}, 1)) > 0 {
		t.Errorf("last change of %d = %+v, want its current row %v", someID, last, final[someID])
	}

	phase("HTTP checked")
	// `changes asof` as a command, at T1.
	cmd, stdout, stderr := command(ctx, t, map[string]string{
		"CHANGES_KAFKA_BROKERS": e.brokers, "CHANGES_POSTGRES_URL": e.pgURL, "CHANGES_TOPIC_PREFIX": cfg.Topics.Prefix,
	}, "asof", "--config", writeConfig(t, cfg), "--type", "item", "--at", t1.Format(time.RFC3339Nano))
	if err := cmd.Run(); err != nil {
		t.Fatalf("changes asof: %v\n%s", err, stderr)
	}
	asof := map[int64]*codecs.State{}
	for line := range strings.Lines(stdout.String()) {
		var en server.Entity
		if err := json.Unmarshal([]byte(line), &en); err != nil {
			t.Fatalf("asof line %q: %v", line, err)
		}
		id, err := strconv.ParseInt(en.ID, 10, 64)
		if err != nil {
			t.Fatalf("asof line %q: %v", line, err)
		}
		asof[id] = &codecs.State{EntityID: codecs.IntKey(id), Row: en.Row}
	}
	if d := diffByID(rows1, asof, 5); len(d) > 0 {
		t.Errorf("changes asof at T1 differs from the database at T1:\n%s", strings.Join(d, "\n"))
	}

	phase("asof command checked")
	// Retention removes the start of the history (DeleteRecords moves the
	// log start as retention does): what it no longer holds is an error.
	endT1, err := h.OffsetAt(ctx, t1)
	if err != nil {
		t.Fatal(err)
	}
	admin, err := topology.NewClusterAdmin(cfg.Kafka)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	if err := admin.DeleteRecords(topo.History(), map[int32]int64{0: endT1}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.OffsetAt(ctx, t1.Add(-time.Millisecond)); !errors.Is(err, history.ErrBeforeHistory) {
		t.Errorf("OffsetAt before the new start: %v, want ErrBeforeHistory", err)
	}
	if _, err := h.TypeAt(ctx, "item", endT1+10, nil); !errors.Is(err, history.ErrOlderThanHistory) {
		t.Errorf("TypeAt after retention: %v, want ErrOlderThanHistory", err)
	}
	// An entity unchanged since the new start: the view vouches for it over
	// HTTP; without a view it is an error.
	b, err := h.Bounds(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const unchanged = 1001 // seeded, never touched by the workload
	{
		if _, err := h.EntityAt(ctx, "item", codecs.IntKey(unchanged), b.End, nil); !errors.Is(err, history.ErrOlderThanHistory) {
			t.Errorf("EntityAt of unchanged %d without a view: %v, want ErrOlderThanHistory", unchanged, err)
		}
		code, body := get(fmt.Sprintf("/v1/history/item/%d?at=%d", unchanged, b.End-1), token)
		var sa server.StateAt
		if code != 200 || json.Unmarshal(body, &sa) != nil || sa.Entity == nil ||
			len(diffByID(map[int64]codecs.Row{unchanged: final[unchanged]}, map[int64]*codecs.State{unchanged: {EntityID: codecs.IntKey(unchanged), Row: sa.Entity.Row}}, 1)) > 0 {
			t.Errorf("history of unchanged %d after retention: %d %s; want its row %v", unchanged, code, body, final[unchanged])
		}
	}
}

func statesOf(rows map[int64]codecs.Row) map[int64]*codecs.State {
	out := map[int64]*codecs.State{}
	for id, r := range rows {
		out[id] = &codecs.State{EntityID: codecs.IntKey(id), Row: r}
	}
	return out
}

func statesOf2(states []*codecs.State) map[int64]*codecs.State {
	out := map[int64]*codecs.State{}
	for _, st := range states {
		out[idOf(st.EntityID)] = st
	}
	return out
}

func mapsKeys[V any](m map[int64]V) func(func(int64) bool) {
	return func(yield func(int64) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// diffByID is dbcheck.Diff of maps by integer id.
func diffByID(db map[int64]codecs.Row, view map[int64]*codecs.State, max int) []string {
	return dbcheck.Diff(keysOf(db), keysOf(view), max)
}

// collectByID is dbcheck.Collect by integer id.
func collectByID(each dbcheck.Each) (map[int64]*codecs.State, error) {
	states, err := dbcheck.Collect(each)
	return idsOf(states), err
}
