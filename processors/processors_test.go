package processors_test

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lovoo/goka"
	"github.com/lovoo/goka/tester"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/internal/promreg"
	"github.com/changes-dev/changes/processors"
	"github.com/changes-dev/changes/topology"
)

const testConfig = `
kafka: {brokers: ["127.0.0.1:1"]}
postgres: {url: "postgres://unused"}
entities:
  - {type: account, table: accounts, partitions: 4}
  - {type: campaign, table: campaigns, partitions: 2}
`

func testTopology(t *testing.T) *topology.Topology {
	t.Helper()
	cfg, err := topology.Parse([]byte(testConfig))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Storage = t.TempDir()
	cfg.Topics.DeleteGrace = time.Nanosecond // the sweep test needs it over at once
	return topology.New(cfg)
}

// start runs p until the test ends.
func start(t *testing.T, p *goka.Processor) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("processor stopped with %v", err)
		}
	})
}

func event(typ string, id int64, op codecs.Op, lsn codecs.LSN, idx uint32, after string) *codecs.Event {
	e := &codecs.Event{
		EntityType: typ, EntityID: codecs.IntKey(id), Op: op, TxID: 7,
		CommitLSN: lsn, Position: codecs.Position{CommitLSN: lsn, Index: idx},
		CommitTime: time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC), CaptureTime: time.Date(2026, 11, 25, 12, 0, 0, 1000, time.UTC),
	}
	if after != "" {
		if err := json.Unmarshal([]byte(after), &e.After); err != nil {
			panic(err)
		}
	}
	return e
}

func encode(t *testing.T, e *codecs.Event) []byte {
	t.Helper()
	b, err := codecs.EventCodec{}.Encode(e)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestSnapshotTopicIsGroupTable: goka names a group's table itself; the
// topology's snapshot topic must be that table, or the views would read a
// topic the snapshot group never writes.
func TestSnapshotTopicIsGroupTable(t *testing.T) {
	topo := testTopology(t)
	for _, typ := range topo.EntityTypes() {
		if got, want := topo.Snapshot(typ), string(goka.GroupTable(goka.Group(topo.SnapshotGroup(typ)))); got != want {
			t.Errorf("Snapshot(%s) = %q, goka's table of the group is %q", typ, got, want)
		}
	}
}

func TestRouter(t *testing.T) {
	topo := testTopology(t)
	tt := tester.New(t)
	reg := prometheus.NewRegistry()
	p, err := processors.NewRouter(topo, processors.WithRegisterer(reg), processors.WithGokaOptions(goka.WithTester(tt)))
	if err != nil {
		t.Fatal(err)
	}
	accounts := tt.NewQueueTracker(topo.Events("account"))
	campaigns := tt.NewQueueTracker(topo.Events("campaign"))
	dead := tt.NewQueueTracker(topo.DeadLetter())
	start(t, p)

	acc := encode(t, event("account", 42, codecs.OpInsert, 100, 0, `{"id": 42}`))
	camp := encode(t, event("campaign", 9007199254740993, codecs.OpDelete, 100, 1, ""))
	tt.Consume(topo.History(), "account/42", acc, tester.WithHeaders(goka.Headers{codecs.HeaderOp: []byte("insert")}))
	tt.Consume(topo.History(), "campaign/9007199254740993", camp)

	hdr, key, value, ok := accounts.NextRawWithHeaders()
	if !ok || key != "42" || string(value) != string(acc) {
		t.Fatalf("account topic: got %q=%q (%v), want 42=%q", key, value, ok, acc)
	}
	if string(hdr[codecs.HeaderOp]) != "insert" {
		t.Errorf("history headers not carried: %v", hdr)
	}
	if key, value, ok := campaigns.NextRaw(); !ok || key != "9007199254740993" || string(value) != string(camp) {
		t.Fatalf("campaign topic: got %q=%q (%v)", key, value, ok)
	}

	bad := []struct {
		name, reason string
		value        []byte
	}{
		{"not an event", "decode event", []byte("{not json")},
		{"undeclared type", `entity type "user" is not declared`, encode(t, event("user", 1, codecs.OpInsert, 100, 2, `{"id": 1}`))},
	}
	for i, c := range bad {
		t.Run(c.name, func(t *testing.T) {
			tt.Consume(topo.History(), "k", c.value)
			hdr, _, value, ok := dead.NextRawWithHeaders()
			if !ok {
				t.Fatal("nothing dead-lettered")
			}
			if string(value) != string(c.value) {
				t.Errorf("dead letter value %q, want the original %q", value, c.value)
			}
			if r := string(hdr[codecs.HeaderDeadLetterReason]); !strings.Contains(r, c.reason) {
				t.Errorf("reason %q does not mention %q", r, c.reason)
			}
			if string(hdr[codecs.HeaderSourceTopic]) != topo.History() {
				t.Errorf("source topic header %q", hdr[codecs.HeaderSourceTopic])
			}
			if got := counter(t, reg, "changes_processor_deadletters_total"); got != float64(i+1) {
				t.Errorf("dead letters counted %v, want %d", got, i+1)
			}
		})
	}
	if _, _, ok := accounts.NextRaw(); ok {
		t.Error("a bad record reached the account topic")
	}
	if _, _, ok := campaigns.NextRaw(); ok {
		t.Error("a bad record reached the campaign topic")
	}

	// A record the capture wrote (key "type/id" and the op header) is routed
	// without being decoded: a value that does not decode goes on, and the
	// snapshot processor dead-letters it (TestSnapshot's bad records).
	tt.Consume(topo.History(), "campaign/7", []byte("{not json"), tester.WithHeaders(goka.Headers{codecs.HeaderOp: []byte("update")}))
	if key, value, ok := campaigns.NextRaw(); !ok || key != "7" || string(value) != "{not json" {
		t.Fatalf("routed by key and header: got %q=%q (%v)", key, value, ok)
	}
	// An undeclared type in the key is a dead letter there too.
	tt.Consume(topo.History(), "user/7", acc, tester.WithHeaders(goka.Headers{codecs.HeaderOp: []byte("update")}))
	if _, _, value, ok := dead.NextRawWithHeaders(); !ok || string(value) != string(acc) {
		t.Fatalf("undeclared type by key: dead letter %q (%v)", value, ok)
	}

	// A TRUNCATE goes to every partition of its type, under the partitions'
	// truncate keys; by its header, or decoded.
	trunc := encode(t, event("account", 0, codecs.OpTruncate, 100, 3, ""))
	tt.Consume(topo.History(), "account/0", trunc, tester.WithHeaders(goka.Headers{codecs.HeaderOp: []byte("truncate")}))
	for p := range int32(4) {
		key, value, ok := accounts.NextRaw()
		if !ok || key != topology.TruncateKey(p, 4) || string(value) != string(trunc) {
			t.Fatalf("truncate copy %d (by header): %q=%q (%v), want key %q", p, key, value, ok, topology.TruncateKey(p, 4))
		}
	}
	tt.Consume(topo.History(), "account/0", trunc)
	for p := range int32(4) {
		key, value, ok := accounts.NextRaw()
		if !ok || key != topology.TruncateKey(p, 4) || string(value) != string(trunc) {
			t.Fatalf("truncate copy %d: %q=%q (%v), want key %q", p, key, value, ok, topology.TruncateKey(p, 4))
		}
	}
	if _, _, ok := accounts.NextRaw(); ok {
		t.Error("more than one truncate copy per partition")
	}
}

func TestSnapshot(t *testing.T) {
	topo := testTopology(t)
	tt := tester.New(t)
	reg := prometheus.NewRegistry()
	p, err := processors.NewSnapshot(topo, "account", processors.WithRegisterer(reg), processors.WithGokaOptions(goka.WithTester(tt)))
	if err != nil {
		t.Fatal(err)
	}
	dead := tt.NewQueueTracker(topo.DeadLetter())
	start(t, p)
	events := topo.Events("account")
	table := goka.Table(topo.Snapshot("account"))
	state := func(key string) *codecs.State {
		v := tt.TableValue(table, key)
		if v == nil {
			return nil
		}
		return v.(*codecs.State)
	}

	tt.Consume(events, "1", encode(t, event("account", 1, codecs.OpInsert, 100, 0, `{"id": 1, "name": "a", "blob": "big"}`)))
	st := state("1")
	if st == nil || string(st.Row["name"]) != `"a"` || st.Position != (codecs.Position{CommitLSN: 100}) {
		t.Fatalf("after insert: %+v", st)
	}

	// An update that did not send the unchanged TOASTed column keeps it.
	upd := event("account", 1, codecs.OpUpdate, 200, 0, `{"id": 1, "name": "b"}`)
	upd.Unchanged = []string{"blob"}
	tt.Consume(events, "1", encode(t, upd))
	st = state("1")
	if string(st.Row["name"]) != `"b"` || string(st.Row["blob"]) != `"big"` {
		t.Fatalf("after update: row %v, want name b and blob kept", st.Row)
	}

	// Redelivered and older changes change nothing (the redelivered one
	// writes the stored state again: TestSnapshotRewritesRedelivered).
	tt.Consume(events, "1", encode(t, upd))
	tt.Consume(events, "1", encode(t, event("account", 1, codecs.OpUpdate, 150, 3, `{"id": 1, "name": "old"}`)))
	if st = state("1"); string(st.Row["name"]) != `"b"` || st.Position.CommitLSN != 200 {
		t.Fatalf("an old change was applied: %+v", st)
	}
	if got := counter(t, reg, "changes_snapshot_skipped_total"); got != 1 {
		t.Errorf("skipped %v, want 1", got)
	}
	if got := counter(t, reg, "changes_processor_rewrites_total"); got != 1 {
		t.Errorf("rewrites %v, want 1", got)
	}

	tt.Consume(events, "1", encode(t, event("account", 1, codecs.OpDelete, 300, 0, "")))
	if st := state("1"); st == nil || !st.Deleted || st.Row != nil || st.Position.CommitLSN != 300 {
		t.Fatalf("after delete: %+v, want a deleted state at 300", st)
	}
	// An older change delivered again does not bring the entity back.
	tt.Consume(events, "1", encode(t, event("account", 1, codecs.OpInsert, 250, 0, `{"id": 1, "name": "ghost"}`)))
	if st := state("1"); st == nil || !st.Deleted {
		t.Fatalf("an older insert after the delete was applied: %+v", st)
	}
	// Once the grace period is over, the sweep writes the Kafka tombstone.
	if err := processors.Sweep(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	if st := state("1"); st != nil {
		t.Fatalf("after the sweep: %+v, want a tombstone", st)
	}
	if got := counter(t, reg, "changes_snapshot_tombstones_total"); got != 1 {
		t.Errorf("tombstones counted %v, want 1", got)
	}

	// TRUNCATE: the marker hides every earlier state of its partition; an
	// older change delivered again stays out; a later insert is back.
	// (The tester has one partition per topic.)
	tt.Consume(events, "5", encode(t, event("account", 5, codecs.OpInsert, 400, 0, `{"id": 5, "blob": "kept?"}`)))
	tt.Consume(events, topology.TruncateKey(0, 4), encode(t, event("account", 0, codecs.OpTruncate, 500, 0, "")))
	if m := state(topology.TruncateKey(0, 4)); m == nil || !m.Truncated || m.Position.CommitLSN != 500 {
		t.Fatalf("truncate marker: %+v", m)
	}
	tt.Consume(events, "6", encode(t, event("account", 6, codecs.OpInsert, 450, 0, `{"id": 6}`)))
	if st := state("6"); st != nil {
		t.Fatalf("an insert older than the truncate was applied: %+v", st)
	}
	after := event("account", 5, codecs.OpUpdate, 600, 0, `{"id": 5}`)
	after.Unchanged = []string{"blob"}
	tt.Consume(events, "5", encode(t, after))
	if st := state("5"); st == nil || st.Position.CommitLSN != 600 || st.Row["blob"] != nil {
		t.Fatalf("after the truncate, entity 5 = %+v; want the new row without the pre-truncate blob", st)
	}
	tt.Consume(events, "7", encode(t, event("account", 7, codecs.OpInsert, 450, 1, `{"id": 7}`)))
	tt.SetTableValue(table, "8", &codecs.State{EntityType: "account", EntityID: codecs.IntKey(8), Row: codecs.Row{"id": json.RawMessage("8")}, Position: codecs.Position{CommitLSN: 420}})
	if err := processors.Sweep(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	if st := state("8"); st != nil {
		t.Errorf("the sweep kept a state from before the truncate: %+v", st)
	}
	if st := state("5"); st == nil {
		t.Error("the sweep removed a state from after the truncate")
	}

	bad := []struct {
		name, key, reason string
		value             []byte
	}{
		{"not an event", "2", "decode event", []byte(`{"type":"account"}`)},
		{"other type", "2", "event of campaign 2", encode(t, event("campaign", 2, codecs.OpInsert, 400, 0, `{"id": 2}`))},
		{"key is not the id", "3", `under key "3"`, encode(t, event("account", 2, codecs.OpInsert, 400, 1, `{"id": 2}`))},
	}
	for _, c := range bad {
		t.Run(c.name, func(t *testing.T) {
			tt.Consume(events, c.key, c.value)
			hdr, _, _, ok := dead.NextRawWithHeaders()
			if !ok {
				t.Fatal("nothing dead-lettered")
			}
			if r := string(hdr[codecs.HeaderDeadLetterReason]); !strings.Contains(r, c.reason) {
				t.Errorf("reason %q does not mention %q", r, c.reason)
			}
			if state(c.key) != nil {
				t.Errorf("a bad record was applied to key %s", c.key)
			}
		})
	}
}

// TestSnapshotRewritesRedelivered puts the processor's local copy ahead of
// its changelog, as a crash between goka's local write and the changelog's
// acknowledgement leaves it, and checks that the redelivered change (and a
// redelivered truncate marker) writes the stored state to the changelog
// again, while a strictly older change writes nothing.
func TestSnapshotRewritesRedelivered(t *testing.T) {
	topo := testTopology(t)
	tt := tester.New(t)
	reg := prometheus.NewRegistry()
	p, err := processors.NewSnapshot(topo, "account", processors.WithRegisterer(reg), processors.WithGokaOptions(goka.WithTester(tt)))
	if err != nil {
		t.Fatal(err)
	}
	table := goka.Table(topo.Snapshot("account"))
	changelog := tt.NewQueueTracker(string(table))
	start(t, p)
	events := topo.Events("account")

	// The local copy holds entity 1 at 200 and a truncate marker at 100;
	// the changelog got neither (the tester's SetTableValue writes only the
	// local storage).
	ahead := &codecs.State{EntityType: "account", EntityID: codecs.IntKey(1), Row: codecs.Row{"id": json.RawMessage("1"), "name": json.RawMessage(`"ahead"`)},
		Position: codecs.Position{CommitLSN: 200, Index: 2}, AppliedTime: time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)}
	tt.SetTableValue(table, "1", ahead)
	marker := &codecs.State{EntityType: "account", Truncated: true, Position: codecs.Position{CommitLSN: 100},
		AppliedTime: time.Date(2026, 11, 25, 11, 0, 0, 0, time.UTC)}
	mkey := topology.TruncateKey(0, 4)
	tt.SetTableValue(table, mkey, marker)

	next := func() (string, *codecs.State, bool) {
		t.Helper()
		key, v, ok := changelog.Next()
		if !ok {
			return "", nil, false
		}
		return key, v.(*codecs.State), true
	}
	cases := []struct {
		name    string
		key     string
		ev      *codecs.Event
		want    *codecs.State // nil: nothing written
		rewrite float64
		skipped float64
	}{
		{"strictly older change", "1", event("account", 1, codecs.OpUpdate, 200, 1, `{"id": 1, "name": "older"}`), nil, 0, 1},
		{"change at the stored position", "1", event("account", 1, codecs.OpUpdate, 200, 2, `{"id": 1, "name": "redelivered"}`), ahead, 1, 1},
		{"strictly older truncate", mkey, event("account", 0, codecs.OpTruncate, 90, 0, ""), nil, 1, 2},
		{"truncate at the marker's position", mkey, event("account", 0, codecs.OpTruncate, 100, 0, ""), marker, 2, 2},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tt.Consume(events, c.key, encode(t, c.ev))
			key, got, ok := next()
			switch {
			case c.want == nil && ok:
				t.Errorf("wrote %s=%+v to the changelog, want nothing", key, got)
			case c.want != nil && !ok:
				t.Errorf("nothing written to the changelog, want %s=%+v", c.key, c.want)
			case c.want != nil && (key != c.key || !reflect.DeepEqual(got, c.want)):
				t.Errorf("changelog got %s=%+v, want the stored state %s=%+v", key, got, c.key, c.want)
			}
			if n := counter(t, reg, "changes_processor_rewrites_total"); n != c.rewrite {
				t.Errorf("changes_processor_rewrites_total = %v, want %v", n, c.rewrite)
			}
			if n := counter(t, reg, "changes_snapshot_skipped_total"); n != c.skipped {
				t.Errorf("changes_snapshot_skipped_total = %v, want %v", n, c.skipped)
			}
		})
	}
	// The stored state is unchanged: a rewrite is not an apply.
	if got := tt.TableValue(table, "1").(*codecs.State); !reflect.DeepEqual(got, ahead) {
		t.Errorf("stored state changed to %+v", got)
	}
}

func TestNewSnapshotUndeclaredType(t *testing.T) {
	if _, err := processors.NewSnapshot(testTopology(t), "user"); err == nil || !strings.Contains(err.Error(), `"user"`) {
		t.Fatalf("got %v, want an error naming the type", err)
	}
}

// counter sums the series of the counter family name in reg.
func counter(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	v, err := promreg.Sum(reg, name, nil)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestRouterRefusesForgedRecords feeds the router what a writer to the
// history could forge: many entity types the config does not declare, and
// truncates whose value is not what their key says. Each is dead-lettered
// once with its reason, nothing reaches an events topic, and no record's
// entity type becomes a label value.
func TestRouterRefusesForgedRecords(t *testing.T) {
	topo := testTopology(t)
	tt := tester.New(t)
	reg := prometheus.NewRegistry()
	p, err := processors.NewRouter(topo, processors.WithRegisterer(reg), processors.WithGokaOptions(goka.WithTester(tt)))
	if err != nil {
		t.Fatal(err)
	}
	accounts := tt.NewQueueTracker(topo.Events("account"))
	campaigns := tt.NewQueueTracker(topo.Events("campaign"))
	dead := tt.NewQueueTracker(topo.DeadLetter())
	start(t, p)
	hist := topo.History()
	op := func(o codecs.Op) tester.EmitOption {
		return tester.WithHeaders(goka.Headers{codecs.HeaderOp: []byte(o)})
	}

	const forged = 50
	for i := range forged {
		typ := fmt.Sprintf("forged_%d", i)
		// By key and header, and decoded; an insert and a truncate.
		tt.Consume(hist, typ+"/1", encode(t, event(typ, 1, codecs.OpInsert, 100, uint32(i), `{"id": 1}`)), op(codecs.OpInsert))
		tt.Consume(hist, "k", encode(t, event(typ, 0, codecs.OpTruncate, 101, uint32(i), "")))
	}
	for range 2 * forged {
		if _, _, _, ok := dead.NextRawWithHeaders(); !ok {
			t.Fatal("an undeclared type was not dead-lettered")
		}
	}
	truncates := []struct {
		name  string
		value []byte
	}{
		{"a truncate of another type", encode(t, event("campaign", 0, codecs.OpTruncate, 102, 0, ""))},
		{"not an event", []byte("{not json")},
		{"an insert", encode(t, event("account", 0, codecs.OpInsert, 102, 1, `{"id": 0}`))},
	}
	for _, c := range truncates {
		t.Run(c.name, func(t *testing.T) {
			tt.Consume(hist, "account/0", c.value, op(codecs.OpTruncate))
			hdr, _, value, ok := dead.NextRawWithHeaders()
			if !ok || string(value) != string(c.value) {
				t.Fatalf("dead letter %q (%v), want the forged truncate", value, ok)
			}
			if r := string(hdr[codecs.HeaderDeadLetterReason]); !strings.Contains(r, "a truncate of account") {
				t.Errorf("reason %q", r)
			}
		})
	}
	if _, _, ok := accounts.NextRaw(); ok {
		t.Error("a forged record reached the account topic")
	}
	if _, _, ok := campaigns.NextRaw(); ok {
		t.Error("a forged record reached the campaign topic")
	}
	for _, c := range []struct {
		reason string
		want   float64
	}{{"undeclared_type", 2 * forged}, {"bad_truncate", float64(len(truncates))}} {
		if got := deadLetters(t, reg, topo.RouterGroup(), c.reason); got != c.want {
			t.Errorf("dead letters %s = %v, want %v", c.reason, got, c.want)
		}
	}
	assertDeclaredLabels(t, reg, "account", "campaign")
}

// TestRouterTruncateFanOut: a truncate of a type of 10000 partitions, the
// most the config allows, is one copy per declared partition, each under
// its partition's marker key, and no more, routed in well under a second.
func TestRouterTruncateFanOut(t *testing.T) {
	cfg, err := topology.Parse([]byte(`
kafka: {brokers: ["127.0.0.1:1"]}
postgres: {url: "postgres://unused"}
entities: [{type: wide, table: wide, partitions: 10000}]
`))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Storage = t.TempDir()
	topo := topology.New(cfg)
	tt := tester.New(t)
	p, err := processors.NewRouter(topo, processors.WithGokaOptions(goka.WithTester(tt)))
	if err != nil {
		t.Fatal(err)
	}
	wide := tt.NewQueueTracker(topo.Events("wide"))
	start(t, p)
	began := time.Now()
	tt.Consume(topo.History(), "wide/0", encode(t, event("wide", 0, codecs.OpTruncate, 100, 0, "")),
		tester.WithHeaders(goka.Headers{codecs.HeaderOp: []byte("truncate")}))
	// Finding each partition's marker key per truncate took 13 s here;
	// the keys computed once take milliseconds.
	if took := time.Since(began); took > 3*time.Second {
		t.Errorf("a truncate of 10000 partitions took %s to route", took)
	} else {
		t.Logf("a truncate of 10000 partitions routed in %s", took)
	}
	want := topology.TruncateKeys(10000)
	for i, key := range want {
		got, _, ok := wide.NextRaw()
		if !ok || got != key {
			t.Fatalf("copy %d: key %q (%v), want %q", i, got, ok, key)
		}
	}
	if key, _, ok := wide.NextRaw(); ok {
		t.Errorf("a copy beyond the declared partitions: %q", key)
	}
}

// TestSnapshotRefusesForgedTruncates: a snapshot processor sets its
// partition's truncate marker only from a truncate of its own type under
// that marker's key; anything else is dead-lettered and writes nothing.
func TestSnapshotRefusesForgedTruncates(t *testing.T) {
	topo := testTopology(t)
	tt := tester.New(t)
	reg := prometheus.NewRegistry()
	p, err := processors.NewSnapshot(topo, "account", processors.WithRegisterer(reg), processors.WithGokaOptions(goka.WithTester(tt)))
	if err != nil {
		t.Fatal(err)
	}
	dead := tt.NewQueueTracker(topo.DeadLetter())
	changelog := tt.NewQueueTracker(topo.Snapshot("account"))
	start(t, p)
	events := topo.Events("account")
	// The tester's topics have one partition: partition 0's marker key is
	// TruncateKey(0, 4).
	cases := []struct {
		name, key string
		ev        *codecs.Event
	}{
		{"another partition's marker key", topology.TruncateKey(1, 4), event("account", 0, codecs.OpTruncate, 100, 0, "")},
		{"a marker key of no partition", "~truncate/123456789", event("account", 0, codecs.OpTruncate, 100, 1, "")},
		{"an entity key", "0", event("account", 0, codecs.OpTruncate, 100, 2, "")},
		{"another type", topology.TruncateKey(0, 4), event("campaign", 0, codecs.OpTruncate, 100, 3, "")},
		{"not a truncate under the marker key", topology.TruncateKey(0, 4), event("account", 0, codecs.OpInsert, 100, 4, `{"id": 0}`)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tt.Consume(events, c.key, encode(t, c.ev))
			if _, _, _, ok := dead.NextRawWithHeaders(); !ok {
				t.Error("not dead-lettered")
			}
			if key, v, ok := changelog.Next(); ok {
				t.Errorf("wrote %s=%+v to the table", key, v)
			}
		})
	}
	if got := deadLetters(t, reg, topo.SnapshotGroup("account"), "bad_truncate"); got != float64(len(cases)) {
		t.Errorf("bad_truncate dead letters = %v, want %d", got, len(cases))
	}
	// The router's copy still sets the marker.
	tt.Consume(events, topology.TruncateKey(0, 4), encode(t, event("account", 0, codecs.OpTruncate, 200, 0, "")))
	if key, v, ok := changelog.Next(); !ok || key != topology.TruncateKey(0, 4) || !v.(*codecs.State).Truncated {
		t.Errorf("the router's truncate: wrote %s=%+v (%v), want the marker", key, v, ok)
	}
}

// deadLetters is the changes_processor_deadletters_total series of group
// and reason.
func deadLetters(t *testing.T, reg *prometheus.Registry, group, reason string) float64 {
	t.Helper()
	v, err := promreg.Sum(reg, "changes_processor_deadletters_total", map[string]string{"group": group, "reason": reason})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// assertDeclaredLabels fails if any series in reg has an entity_type label
// that is not one of types.
func assertDeclaredLabels(t *testing.T, reg *prometheus.Registry, types ...string) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "entity_type" && !slices.Contains(types, l.GetValue()) {
					t.Errorf("%s has entity_type=%q, not a declared type", mf.GetName(), l.GetValue())
				}
			}
		}
	}
}

// watermark is a progress watermark at lsn, as the capture writes it.
func watermark(lsn codecs.LSN) *codecs.Event {
	return &codecs.Event{
		Op: codecs.OpWatermark, CommitLSN: lsn, Position: codecs.Position{CommitLSN: lsn},
		CommitTime: time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC), CaptureTime: time.Date(2026, 12, 2, 12, 0, 0, 1000, time.UTC),
	}
}

// TestRouterWatermarkFanOut: a watermark reaches every partition of every
// type, after the changes before it, under the partitions' watermark keys.
func TestRouterWatermarkFanOut(t *testing.T) {
	topo := testTopology(t)
	tt := tester.New(t)
	p, err := processors.NewRouter(topo, processors.WithGokaOptions(goka.WithTester(tt)))
	if err != nil {
		t.Fatal(err)
	}
	queues := map[string]*tester.QueueTracker{}
	for _, typ := range topo.EntityTypes() {
		queues[typ] = tt.NewQueueTracker(topo.Events(typ))
	}
	start(t, p)
	tt.Consume(topo.History(), "account/5", encode(t, event("account", 5, codecs.OpInsert, 100, 0, `{"id":5}`)),
		tester.WithHeaders(goka.Headers{codecs.HeaderOp: []byte("insert")}))
	tt.Consume(topo.History(), "~watermark", encode(t, watermark(0x200)),
		tester.WithHeaders(goka.Headers{codecs.HeaderOp: []byte("watermark")}))
	if key, _, ok := queues["account"].NextRaw(); !ok || key != "5" {
		t.Fatalf("first account record: %q (%v), want the insert of 5", key, ok)
	}
	for typ, q := range queues {
		ent, _ := topo.Config().Entity(typ)
		for i, want := range topology.WatermarkKeys(ent.Partitions) {
			key, raw, ok := q.NextRaw()
			if !ok || key != want {
				t.Fatalf("%s copy %d: key %q (%v), want %q", typ, i, key, ok, want)
			}
			ev, err := codecs.EventCodec{}.Decode(raw)
			if err != nil || ev.Op != codecs.OpWatermark || ev.CommitLSN != 0x200 {
				t.Fatalf("%s copy %d: %+v, %v", typ, i, ev, err)
			}
		}
		if key, _, ok := q.NextRaw(); ok {
			t.Errorf("%s: a copy beyond the declared partitions: %q", typ, key)
		}
	}
	// A record whose header says watermark, whose value is a change: no
	// copy anywhere.
	dead := tt.NewQueueTracker(topo.DeadLetter())
	tt.Consume(topo.History(), "account/6", encode(t, event("account", 6, codecs.OpInsert, 0x300, 0, `{"id":6}`)),
		tester.WithHeaders(goka.Headers{codecs.HeaderOp: []byte("watermark")}))
	if _, _, _, ok := dead.NextRawWithHeaders(); !ok {
		t.Error("a forged watermark was not dead-lettered")
	}
	for typ, q := range queues {
		if key, _, ok := q.NextRaw(); ok {
			t.Errorf("%s: a forged watermark was copied under %q", typ, key)
		}
	}
}

// TestSnapshotKeepsWatermark: a snapshot processor stores its partition's
// latest watermark, passes over one delivered again or older, and
// dead-letters one under another key.
func TestSnapshotKeepsWatermark(t *testing.T) {
	topo := testTopology(t)
	tt := tester.New(t)
	reg := prometheus.NewRegistry()
	p, err := processors.NewSnapshot(topo, "account", processors.WithRegisterer(reg), processors.WithGokaOptions(goka.WithTester(tt)))
	if err != nil {
		t.Fatal(err)
	}
	dead := tt.NewQueueTracker(topo.DeadLetter())
	changelog := tt.NewQueueTracker(topo.Snapshot("account"))
	start(t, p)
	events := topo.Events("account")
	key := topology.WatermarkKeys(4)[0] // the tester's topics have one partition
	stored := func(want codecs.LSN) {
		t.Helper()
		k, v, ok := changelog.Next()
		st, _ := v.(*codecs.State)
		if !ok || k != key || st == nil || !st.Watermark || st.Position != (codecs.Position{CommitLSN: want}) || st.EntityType != "account" {
			t.Fatalf("wrote %s=%+v (%v), want the watermark at %s", k, v, ok, want)
		}
	}
	tt.Consume(events, key, encode(t, watermark(0x200)))
	stored(0x200)
	tt.Consume(events, key, encode(t, watermark(0x300)))
	stored(0x300)
	tt.Consume(events, key, encode(t, watermark(0x300))) // delivered again: not written again
	tt.Consume(events, key, encode(t, watermark(0x100))) // older: a restarted capture's
	if k, v, ok := changelog.Next(); ok {
		t.Errorf("a watermark delivered again or older wrote %s=%+v", k, v)
	}
	tt.Consume(events, topology.WatermarkKeys(4)[1], encode(t, watermark(0x400)))
	tt.Consume(events, key, encode(t, event("account", 0, codecs.OpInsert, 0x500, 0, `{"id":0}`)))
	tt.Consume(events, "9", encode(t, watermark(0x600)))
	for i := range 3 {
		if _, _, _, ok := dead.NextRawWithHeaders(); !ok {
			t.Fatalf("forged watermark %d not dead-lettered", i)
		}
	}
	if k, v, ok := changelog.Next(); ok {
		t.Errorf("a forged watermark wrote %s=%+v", k, v)
	}
	if got := deadLetters(t, reg, topo.SnapshotGroup("account"), "bad_watermark"); got != 3 {
		t.Errorf("bad_watermark dead letters = %v, want 3", got)
	}
}
