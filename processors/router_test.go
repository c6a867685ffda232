package processors_test

import (
	"strconv"
	"testing"

	"github.com/lovoo/goka"
	"github.com/lovoo/goka/tester"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/internal/promreg"
	"github.com/changes-dev/changes/processors"
)

// TestRouterRoutes: each history record goes to the events topic of its
// entity type, keyed by its entity id, with its bytes and every header as
// they were. The key and the op header route a record the capture wrote;
// a record without them, or with a key or header the router cannot read,
// is decoded and routed by what it says.
func TestRouterRoutes(t *testing.T) {
	topo := testTopology(t)
	tt := tester.New(t)
	reg := prometheus.NewRegistry()
	p, err := processors.NewRouter(topo, processors.WithRegisterer(reg), processors.WithGokaOptions(goka.WithTester(tt)))
	if err != nil {
		t.Fatal(err)
	}
	topics := map[string]*tester.QueueTracker{
		"account":  tt.NewQueueTracker(topo.Events("account")),
		"campaign": tt.NewQueueTracker(topo.Events("campaign")),
	}
	dead := tt.NewQueueTracker(topo.DeadLetter())
	start(t, p)
	op := func(o string) goka.Headers { return goka.Headers{codecs.HeaderOp: []byte(o)} }

	tests := []struct {
		name    string
		key     string
		headers goka.Headers
		value   []byte
		topic   string // the events topic of this type
		wantKey string
	}{
		{"by key and header", "account/1", op("insert"),
			encode(t, event("account", 1, codecs.OpInsert, 200, 0, `{"id": 1}`)), "account", "1"},
		{"a negative id", "campaign/-9", op("update"),
			encode(t, event("campaign", -9, codecs.OpUpdate, 200, 1, `{"id": -9}`)), "campaign", "-9"},
		{"the largest id", "campaign/9223372036854775807", op("delete"),
			encode(t, event("campaign", 9223372036854775807, codecs.OpDelete, 200, 2, "")), "campaign", "9223372036854775807"},
		// Routed by the key, not decoded: the snapshot processor of the
		// key's type checks the value and dead-letters it.
		{"a value of another entity under the key", "account/2", op("update"),
			encode(t, event("campaign", 3, codecs.OpUpdate, 200, 3, `{"id": 3}`)), "account", "2"},
		// Without a usable key or header, the value decides.
		{"no header", "account/4", nil,
			encode(t, event("account", 4, codecs.OpInsert, 200, 4, `{"id": 4}`)), "account", "4"},
		{"a key without a type", "5", op("insert"),
			encode(t, event("account", 5, codecs.OpInsert, 200, 5, `{"id": 5}`)), "account", "5"},
		// A text key is routed by the key like an integer one.
		{"a text id, routed by the key", "account/x/y z", op("insert"),
			encode(t, event("campaign", 6, codecs.OpInsert, 200, 6, `{"id": 6}`)), "account", "x/y z"},
		{"a key with an empty id", "account/", op("insert"),
			encode(t, event("campaign", 6, codecs.OpInsert, 200, 6, `{"id": 6}`)), "campaign", "6"},
		{"an op the header does not know", "account/7", op("upsert"),
			encode(t, event("campaign", 7, codecs.OpInsert, 200, 7, `{"id": 7}`)), "campaign", "7"},
		{"extra headers", "account/8", goka.Headers{codecs.HeaderOp: []byte("insert"), "trace": []byte("abc")},
			encode(t, event("account", 8, codecs.OpInsert, 200, 8, `{"id": 8}`)), "account", "8"},
	}
	routed := map[string]float64{}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var opts []tester.EmitOption
			if tc.headers != nil {
				opts = append(opts, tester.WithHeaders(tc.headers))
			}
			tt.Consume(topo.History(), tc.key, tc.value, opts...)
			routed[tc.topic]++
			hdr, key, value, ok := topics[tc.topic].NextRawWithHeaders()
			if !ok {
				t.Fatalf("nothing reached the %s topic", tc.topic)
			}
			if key != tc.wantKey || string(value) != string(tc.value) {
				t.Errorf("%s topic got %q=%s, want %q and the history's bytes", tc.topic, key, value, tc.wantKey)
			}
			for k, v := range tc.headers {
				if string(hdr[k]) != string(v) {
					t.Errorf("header %s = %q, want %q as in the history", k, hdr[k], v)
				}
			}
			for typ, q := range topics {
				if k, _, ok := q.NextRaw(); ok {
					t.Errorf("a second copy, in the %s topic under %q", typ, k)
				}
			}
			if _, _, ok := dead.NextRaw(); ok {
				t.Error("dead-lettered")
			}
		})
	}
	for typ, n := range routed {
		if got := routedCounter(t, reg, typ); got != n {
			t.Errorf("routed %s = %v, want %v", typ, got, n)
		}
	}
}

// TestRouterKeepsOrder: the changes of every entity reach its events topic
// in history order, interleaved with other entities' and types'.
func TestRouterKeepsOrder(t *testing.T) {
	topo := testTopology(t)
	tt := tester.New(t)
	p, err := processors.NewRouter(topo, processors.WithGokaOptions(goka.WithTester(tt)))
	if err != nil {
		t.Fatal(err)
	}
	accounts := tt.NewQueueTracker(topo.Events("account"))
	campaigns := tt.NewQueueTracker(topo.Events("campaign"))
	start(t, p)
	type sent struct {
		typ string
		id  int64
		idx uint32
	}
	var want = map[string][]sent{}
	for i := range uint32(60) {
		s := sent{typ: []string{"account", "campaign", "account"}[i%3], id: int64(i % 7), idx: i}
		ev := event(s.typ, s.id, codecs.OpUpdate, 300, i, `{"id": 0}`)
		tt.Consume(topo.History(), s.typ+"/"+itoa(s.id), encode(t, ev), tester.WithHeaders(goka.Headers{codecs.HeaderOp: []byte("update")}))
		want[s.typ] = append(want[s.typ], s)
	}
	for typ, q := range map[string]*tester.QueueTracker{"account": accounts, "campaign": campaigns} {
		for i, w := range want[typ] {
			key, value, ok := q.NextRaw()
			if !ok {
				t.Fatalf("%s: only %d of %d events", typ, i, len(want[typ]))
			}
			ev, err := codecs.EventCodec{}.Decode(value)
			if err != nil {
				t.Fatal(err)
			}
			if key != itoa(w.id) || ev.EntityID != codecs.IntKey(w.id) || ev.Position.Index != w.idx {
				t.Fatalf("%s event %d: key %q, %s at index %d; want %d at index %d", typ, i, key, ev.EntityID, ev.Position.Index, w.id, w.idx)
			}
		}
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// routedCounter is changes_router_events_total of entityType.
func routedCounter(t *testing.T, reg *prometheus.Registry, entityType string) float64 {
	t.Helper()
	v, err := promreg.Sum(reg, "changes_router_events_total", map[string]string{"entity_type": entityType})
	if err != nil {
		t.Fatal(err)
	}
	return v
}
