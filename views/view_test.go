package views_test

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
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
	"github.com/changes-dev/changes/topology"
	"github.com/changes-dev/changes/views"
)

func testTopology(t *testing.T) *topology.Topology {
	t.Helper()
	cfg, err := topology.Parse([]byte(`
kafka: {brokers: ["127.0.0.1:1"]}
postgres: {url: "postgres://unused"}
entities: [{type: account, table: accounts, partitions: 1}] # goka's tester has one partition per topic
`))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Storage = t.TempDir()
	return topology.New(cfg)
}

func state(id int64, lsn codecs.LSN, name string) *codecs.State {
	return &codecs.State{
		EntityType: "account", EntityID: codecs.IntKey(id),
		Row:        codecs.Row{"id": json.RawMessage(`1`), "name": json.RawMessage(`"` + name + `"`)},
		Position:   codecs.Position{CommitLSN: lsn},
		CommitTime: time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC),
	}
}

// enc encodes a table value the way the snapshot processor writes it.
func enc(t *testing.T, st *codecs.State) []byte {
	t.Helper()
	if st == nil {
		return nil
	}
	b, err := (codecs.StateCodec{}).Encode(st)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// runView runs a view on a goka tester until the test ends.
func runView(t *testing.T, topo *topology.Topology, tt *tester.Tester, opts ...views.Option) *views.View {
	t.Helper()
	v, err := views.New(topo, "account", append(opts, views.WithGokaOptions(goka.WithViewTester(tt)))...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- v.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("view stopped with %v", err)
		}
	})
	if err := v.WaitRecovered(ctx); err != nil {
		t.Fatal(err)
	}
	return v
}

func TestView(t *testing.T) {
	topo := testTopology(t)
	tt := tester.New(t)
	var mu sync.Mutex
	var updates []views.Update
	v, err := views.New(topo, "account",
		views.WithUpdateHook(func(u views.Update) { mu.Lock(); updates = append(updates, u); mu.Unlock() }),
		views.WithGokaOptions(goka.WithViewTester(tt)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- v.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("view stopped with %v", err)
		}
	}()
	if err := v.WaitRecovered(ctx); err != nil {
		t.Fatal(err)
	}

	table := topo.Snapshot("account")
	tt.Consume(table, "1", enc(t, state(1, 10, "a")))
	tt.Consume(table, "2", enc(t, state(2, 11, "b")))
	tt.Consume(table, "1", enc(t, state(1, 12, "a2")))
	tt.Consume(table, "2", []byte(nil)) // tombstone: entity 2 deleted

	st, err := v.Get(context.Background(), 1)
	if err != nil || st == nil || string(st.Row["name"]) != `"a2"` || st.Position.CommitLSN != 12 {
		t.Fatalf("Get(1) = %+v, %v; want the latest state", st, err)
	}
	var decoded struct {
		Name string `json:"name"`
	}
	if err := st.Row.Decode(&decoded); err != nil || decoded.Name != "a2" {
		t.Errorf("Row.Decode = %+v, %v", decoded, err)
	}
	for _, id := range []int64{2, 3} {
		if st, err := v.Get(context.Background(), id); err != nil || st != nil {
			t.Errorf("Get(%d) = %+v, %v; want nil", id, st, err)
		}
	}
	if n, err := v.Len(); err != nil || n != 1 {
		t.Errorf("Len = %d, %v; want 1", n, err)
	}

	// A TRUNCATE marker in entity 1's partition hides every earlier state
	// there; the marker itself is no entity.
	tt.Consume(table, topology.TruncateKey(0, 1),
		enc(t, &codecs.State{EntityType: "account", Truncated: true, Position: codecs.Position{CommitLSN: 20}}))
	if st, err := v.Get(context.Background(), 1); err != nil || st != nil {
		t.Errorf("Get(1) after a later truncate = %+v, %v; want nil", st, err)
	}
	if n, err := v.Len(); err != nil || n != 0 {
		t.Errorf("Len after the truncate = %d, %v; want 0", n, err)
	}
	// A state from before the truncate reaches the hook as gone.
	tt.Consume(table, "1", enc(t, state(1, 15, "old")))
	// The hook hears of a record once it is committed: within
	// liveBatchDelay of the previous commit, not at once.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		mu.Lock()
		n := len(updates)
		mu.Unlock()
		if n >= 6 || time.Now().After(deadline) {
			break
		}
	}
	mu.Lock()
	if u := updates[len(updates)-1]; u.EntityID != codecs.IntKey(1) || u.State != nil {
		t.Errorf("a pre-truncate state reached the hook as %+v, want nil", u)
	}
	updates = updates[:len(updates)-1]
	mu.Unlock()

	mu.Lock()
	defer mu.Unlock()
	if len(updates) != 5 {
		t.Fatalf("hook saw %d updates, want 5: %+v", len(updates), updates)
	}
	if u := updates[2]; u.EntityID != codecs.IntKey(1) || u.State == nil || u.State.Position.CommitLSN != 12 {
		t.Errorf("update reached the hook as %+v", u)
	}
	if u := updates[3]; u.EntityID != codecs.IntKey(2) || u.State != nil || !u.Tombstone {
		t.Errorf("tombstone reached the hook as %+v", u)
	}
	if u := updates[4]; u.EntityID != codecs.IntKey(1) || u.State != nil || u.Tombstone {
		t.Errorf("the TRUNCATE reached the hook as %+v, want entity 1 gone", u)
	}
}

func TestNewUndeclaredType(t *testing.T) {
	_, err := views.New(testTopology(t), "user")
	if err == nil || !strings.Contains(err.Error(), `"user"`) {
		t.Fatalf("got %v, want an error naming the type", err)
	}
}

func TestViewRangeTypedSubscribe(t *testing.T) {
	topo := testTopology(t)
	tt := tester.New(t)
	v := runView(t, topo, tt, views.WithInMemory())
	if got := v.Status(); got != views.StatusRunning {
		t.Errorf("Status = %v, want running", got)
	}
	sub := v.Subscribe(16)
	slow := v.Subscribe(1)
	table := topo.Snapshot("account")
	ids := []int64{100, -5, 1 << 40, 3, -1 << 50, 10}
	for i, id := range ids {
		tt.Consume(table, strconv.FormatInt(id, 10), enc(t, state(id, codecs.LSN(10+i), "n"+strconv.FormatInt(id, 10))))
	}
	tt.Consume(table, "3", enc(t, &codecs.State{EntityType: "account", EntityID: codecs.IntKey(3), Deleted: true, Position: codecs.Position{CommitLSN: 30}}))

	var got []int64
	for st, err := range v.All(context.Background()) {
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, intID(t, st.EntityID))
	}
	want := []int64{-1 << 50, -5, 10, 100, 1 << 40} // id order; 3 is deleted
	if !slices.Equal(got, want) {
		t.Errorf("All = %v, want %v", got, want)
	}
	got = got[:0]
	for st, err := range v.Range(context.Background(), -5, 100) {
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, intID(t, st.EntityID))
		if st.EntityID == codecs.IntKey(10) {
			break
		}
	}
	if want := []int64{-5, 10}; !slices.Equal(got, want) {
		t.Errorf("Range(-5, 100) stopped at 10 = %v, want %v", got, want)
	}
	if n, err := v.Len(); err != nil || n != 5 {
		t.Errorf("Len = %d, %v; want 5", n, err)
	}

	typed := &views.Typed[struct {
		Name string `json:"name"`
	}]{View: v}
	e, ok, err := typed.Get(context.Background(), 1<<40)
	if err != nil || !ok || e.Value.Name != "n1099511627776" || e.ID != 1<<40 {
		t.Errorf("Typed.Get = %+v, %v, %v", e, ok, err)
	}
	if _, ok, err := typed.Get(context.Background(), 3); ok || err != nil {
		t.Errorf("Typed.Get(deleted) = %v, %v; want not found", ok, err)
	}
	bad := &views.Typed[struct {
		Name int `json:"name"`
	}]{View: v}
	if _, _, err := bad.Get(context.Background(), 10); err == nil || !strings.Contains(err.Error(), "entity 10 does not decode") {
		t.Errorf("Typed.Get into a wrong type: %v", err)
	}

	for i, id := range append(ids, 3) {
		u := <-sub.C()
		if u.EntityID != codecs.IntKey(id) || (id == 3) != (u.State == nil) && i == len(ids) {
			t.Errorf("update %d = %+v, want entity %d", i, u, id)
		}
	}
	if _, ok := <-slow.C(); !ok {
		t.Fatal("the slow subscriber got nothing")
	}
	if _, ok := <-slow.C(); ok || !errors.Is(slow.Err(), views.ErrSlowSubscriber) {
		t.Errorf("slow subscriber: open=%v err=%v; want closed with ErrSlowSubscriber", ok, slow.Err())
	}
	sub.Close()
	if _, ok := <-sub.C(); ok || sub.Err() != nil {
		t.Errorf("closed subscription: open=%v err=%v", ok, sub.Err())
	}
}

func TestViewMetrics(t *testing.T) {
	topo := testTopology(t)
	tt := tester.New(t)
	reg := prometheus.NewRegistry()
	v := runView(t, topo, tt, views.WithInMemory(), views.WithRegisterer(reg))
	table := topo.Snapshot("account")
	tt.Consume(table, "1", enc(t, state(1, 10, "a")))
	tt.Consume(table, "2", enc(t, state(2, 11, "b")))
	tt.Consume(table, "not-an-id", enc(t, state(3, 12, "c")))
	for range 3 {
		if _, err := v.Get(context.Background(), 1); err != nil {
			t.Fatal(err)
		}
	}
	want := `
# HELP changes_view_bad_records_total Table records a view could not apply (a key that is no entity id) or decode for its subscribers.
# TYPE changes_view_bad_records_total counter
changes_view_bad_records_total{entity_type="account"} 1
# HELP changes_view_updates_total Table records a view applied, by entity type and phase (recovery: catching up after the start; live).
# TYPE changes_view_updates_total counter
changes_view_updates_total{entity_type="account",phase="live"} 3
changes_view_updates_total{entity_type="account",phase="recovery"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "changes_view_updates_total", "changes_view_bad_records_total"); err != nil {
		t.Error(err)
	}
	if n := testutil.CollectAndCount(reg, "changes_view_get_seconds"); n != 1 {
		t.Errorf("changes_view_get_seconds has %d series, want 1", n)
	}
	if got, err := testutil.GatherAndCount(reg,
		"changes_view_entities", "changes_view_lag_records", "changes_view_recovered", "changes_view_slow_subscribers_total"); err != nil || got != 4 {
		t.Errorf("gauges and counters: %d series (%v), want 4 (one per metric, labelled by type)", got, err)
	}
}

func TestViewStatusChanges(t *testing.T) {
	topo := testTopology(t)
	tt := tester.New(t)
	v, err := views.New(topo, "account", views.WithInMemory(), views.WithGokaOptions(goka.WithViewTester(tt)))
	if err != nil {
		t.Fatal(err)
	}
	if got := v.Status(); got != views.StatusIdle {
		t.Errorf("Status before Run = %v, want idle", got)
	}
	if _, err := v.Get(context.Background(), 1); !errors.Is(err, views.ErrNotRunning) {
		t.Errorf("Get before Run: %v, want ErrNotRunning", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	changes := v.StatusChanges(ctx)
	done := make(chan error, 1)
	go func() { done <- v.Run(ctx) }()
	deadline := time.After(5 * time.Second)
	for seen := views.StatusIdle; seen != views.StatusRunning; {
		select {
		case seen = <-changes:
		case <-deadline:
			t.Fatalf("no running status; last %v", seen)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := v.Status(); got != views.StatusIdle {
		t.Errorf("Status after Run = %v, want idle", got)
	}
	// A view that stopped answers ErrNotRunning, never a closed database.
	if _, err := v.Get(context.Background(), 1); !errors.Is(err, views.ErrNotRunning) {
		t.Errorf("Get after Run: %v, want ErrNotRunning", err)
	}
	for _, err := range v.All(context.Background()) {
		if !errors.Is(err, views.ErrNotRunning) {
			t.Errorf("All after Run: %v, want ErrNotRunning", err)
		}
	}
	if _, err := v.Len(); !errors.Is(err, views.ErrNotRunning) {
		t.Errorf("Len after Run: %v, want ErrNotRunning", err)
	}
	if v.Recovered() {
		t.Error("Recovered after Run")
	}
	sub := v.Subscribe(1)
	if _, ok := <-sub.C(); ok || !errors.Is(sub.Err(), views.ErrNotRunning) {
		t.Errorf("Subscribe after Run: open=%v err=%v; want closed with ErrNotRunning", ok, sub.Err())
	}
}

// TestViewPassesOverBadTruncateMarker: a truncate-key record that is not a
// marker must not stop Run (it would on every restart); it is counted and
// the view goes on.
func TestViewPassesOverBadTruncateMarker(t *testing.T) {
	topo := testTopology(t)
	tt := tester.New(t)
	reg := prometheus.NewRegistry()
	v := runView(t, topo, tt, views.WithInMemory(), views.WithRegisterer(reg))
	table := topo.Snapshot("account")
	tt.Consume(table, "1", enc(t, state(1, 10, "a")))
	tt.Consume(table, topology.TruncateKey(0, 1), []byte("not a state"))
	tt.Consume(table, topology.TruncateKey(0, 1), enc(t, state(7, 11, "an entity, not a marker")))
	tt.Consume(table, "2", enc(t, state(2, 12, "b")))
	for _, id := range []int64{1, 2} {
		if st, err := v.Get(context.Background(), id); err != nil || st == nil {
			t.Errorf("Get(%d) = %+v, %v; want the state (no truncate applied)", id, st, err)
		}
	}
	want := `
# HELP changes_view_bad_records_total Table records a view could not apply (a key that is no entity id) or decode for its subscribers.
# TYPE changes_view_bad_records_total counter
changes_view_bad_records_total{entity_type="account"} 2
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "changes_view_bad_records_total"); err != nil {
		t.Error(err)
	}
}

// A view is synced as of its recovery at once, not only at its next lag
// check: a broker lost right after the recovery would never answer that
// check, and reads during the outage would not say how stale they are.
func TestViewSyncedAtRecovery(t *testing.T) {
	before := time.Now()
	v := runView(t, testTopology(t), tester.New(t))
	at := v.SyncedAt()
	if at.IsZero() || at.Before(before) || at.After(time.Now()) {
		t.Errorf("SyncedAt right after recovery = %v; want a time between the view's start (%v) and now", at, before)
	}
}

// intID is the id of an integer key, failing the test for another kind.
func intID(t *testing.T, k codecs.Key) int64 {
	t.Helper()
	id, ok := k.Int()
	if !ok {
		t.Fatalf("key %s %q is not an integer", k.Kind(), k)
	}
	return id
}
