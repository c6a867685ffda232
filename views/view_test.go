package views_test

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lovoo/goka"
	"github.com/lovoo/goka/tester"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/topology"
	"github.com/changes-dev/changes/views"
)

func testTopology(t *testing.T) *topology.Topology {
	t.Helper()
	cfg, err := topology.Parse([]byte(`
kafka: {brokers: ["127.0.0.1:1"]}
postgres: {url: "postgres://unused"}
entities: [{type: account, table: accounts, partitions: 3}]
`))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Storage = t.TempDir()
	return topology.New(cfg)
}

func state(id int64, lsn codecs.LSN, name string) *codecs.State {
	return &codecs.State{
		EntityType: "account", EntityID: id,
		Row:        codecs.Row{"id": json.RawMessage(`1`), "name": json.RawMessage(`"` + name + `"`)},
		Position:   codecs.Position{CommitLSN: lsn},
		CommitTime: time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC),
	}
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

	table := string(topo.Snapshot("account"))
	tt.Consume(table, "1", state(1, 10, "a"))
	tt.Consume(table, "2", state(2, 11, "b"))
	tt.Consume(table, "1", state(1, 12, "a2"))
	tt.Consume(table, "2", nil) // tombstone: entity 2 deleted

	st, err := v.Get(1)
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
		if st, err := v.Get(id); err != nil || st != nil {
			t.Errorf("Get(%d) = %+v, %v; want nil", id, st, err)
		}
	}
	if n, err := v.Len(); err != nil || n != 1 {
		t.Errorf("Len = %d, %v; want 1", n, err)
	}

	// A TRUNCATE marker in entity 1's partition hides every earlier state
	// there; the marker itself is no entity.
	tt.Consume(table, topology.TruncateKey(topology.PartitionOf("1", 3), 3),
		&codecs.State{EntityType: "account", Truncated: true, Position: codecs.Position{CommitLSN: 20}})
	if st, err := v.Get(1); err != nil || st != nil {
		t.Errorf("Get(1) after a later truncate = %+v, %v; want nil", st, err)
	}
	if n, err := v.Len(); err != nil || n != 0 {
		t.Errorf("Len after the truncate = %d, %v; want 0", n, err)
	}
	// A state from before the truncate reaches the hook as gone.
	tt.Consume(table, "1", state(1, 15, "old"))
	mu.Lock()
	if u := updates[len(updates)-1]; u.EntityID != 1 || u.State != nil {
		t.Errorf("a pre-truncate state reached the hook as %+v, want nil", u)
	}
	updates = updates[:len(updates)-1]
	mu.Unlock()

	mu.Lock()
	defer mu.Unlock()
	if len(updates) != 4 {
		t.Fatalf("hook saw %d updates, want 4", len(updates))
	}
	if u := updates[3]; u.EntityID != 2 || u.State != nil {
		t.Errorf("delete reached the hook as %+v", u)
	}
	if u := updates[2]; u.EntityID != 1 || u.State == nil || u.State.Position.CommitLSN != 12 {
		t.Errorf("update reached the hook as %+v", u)
	}
}

func TestNewUndeclaredType(t *testing.T) {
	_, err := views.New(testTopology(t), "user")
	if err == nil || !strings.Contains(err.Error(), `"user"`) {
		t.Fatalf("got %v, want an error naming the type", err)
	}
}
