package main

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/changes-dev/changes/codecs"
)

func TestSeqOf(t *testing.T) {
	dbz := []byte(`{"before":null,"after":{"id":1,"seq":10,"note":"one!"},"source":{"version":"3.6.1.Final","lsn":835978488},"op":"u","ts_ms":1795652000777}`)
	if got := seqOfDebezium(dbz); got != 10 {
		t.Errorf("debezium seq = %d, want 10", got)
	}
	if got := seqOfDebezium([]byte(`{"before":{"id":1},"after":null,"op":"d"}`)); got != 0 {
		t.Errorf("debezium delete seq = %d, want 0", got)
	}
	if got := seqOfDebezium(nil); got != 0 {
		t.Errorf("tombstone seq = %d, want 0", got)
	}
	ev := &codecs.Event{EntityType: "account", EntityID: codecs.IntKey(1), Op: codecs.OpUpdate, CommitLSN: 5,
		Position: codecs.Position{CommitLSN: 5}, After: codecs.Row{"id": json.RawMessage(`1`), "seq": json.RawMessage(`42`)}}
	raw, err := (codecs.EventCodec{}).Encode(ev)
	if err != nil {
		t.Fatal(err)
	}
	if got := seqOfEvent(raw); got != 42 {
		t.Errorf("event seq = %d, want 42", got)
	}
}

func TestLatenciesAndStats(t *testing.T) {
	a := newArrivals()
	base := time.Now().UnixNano()
	var commits []commit
	for i := int64(1); i <= 100; i++ {
		commits = append(commits, commit{seq: i, at: base})
		if i <= 98 {
			a.add(i, base+i*int64(time.Millisecond))
		}
	}
	a.add(5, base+time.Hour.Nanoseconds()) // a redelivery keeps the first arrival
	lat, missing := a.latencies(commits)
	if len(lat) != 98 || missing != 2 {
		t.Fatalf("%d latencies, %d missing; want 98, 2", len(lat), missing)
	}
	s := statsOf(lat, missing)
	if s.P50ms != 49 || s.P99ms != 98 || s.MaxMs != 98 || s.Samples != 98 || s.Missing != 2 {
		t.Errorf("stats = %+v", s)
	}
	if s := statsOf(nil, 3); s.Samples != 0 || s.Missing != 3 {
		t.Errorf("empty stats = %+v", s)
	}
}

func TestArrivalsAfter(t *testing.T) {
	topic, store := newArrivals(), newArrivals()
	topic.add(1, 100)
	store.add(1, 130)
	topic.add(2, 200)
	store.add(2, 190) // the store first: counted as 0
	topic.add(3, 300) // never in the store: left out
	store.add(4, 400) // never in the topic: left out
	got := store.after(topic, []commit{{1, 0}, {2, 0}, {3, 0}, {4, 0}})
	if len(got) != 2 || got[0] != 0 || got[1] != 30 {
		t.Errorf("after = %v, want [0 30]", got)
	}
}
