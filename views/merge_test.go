package views

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/lovoo/goka"
	"github.com/lovoo/goka/tester"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/topology"
)

// record is the goka.UpdateContext of one table record.
type record struct {
	partition int32
	offset    int64
}

func (r record) Topic() goka.Stream    { return "" }
func (r record) Partition() int32      { return r.partition }
func (r record) Offset() int64         { return r.offset }
func (r record) Headers() goka.Headers { return nil }
func (r record) Timestamp() time.Time  { return time.Time{} }

// partitioned is a view of a table of n partitions, fed record by record.
type partitioned struct {
	t       *testing.T
	v       *View
	n       int
	stores  []*partitionStore
	offsets []int64
}

// newPartitioned builds a view of n partitions on goka's tester, which has
// one partition per topic and so cannot feed n: each partition's storage is
// opened by the view's own storage builder and fed through the view's own
// update callback, as goka's partition goroutines do once the partitions
// have recovered.
func newPartitioned(t *testing.T, n int) *partitioned {
	t.Helper()
	cfg := Config{Kafka: topology.KafkaConfig{Brokers: []string{"127.0.0.1:1"}}, EntityType: "account", Topic: "changes.snapshot.account-table", Partitions: n}
	v, err := Open(cfg, WithInMemory(), WithGokaOptions(goka.WithViewTester(tester.New(t))))
	if err != nil {
		t.Fatal(err)
	}
	pt := &partitioned{t: t, v: v, n: n, offsets: make([]int64, n)}
	for p := range int32(n) {
		s, err := v.openStore(cfg.Topic, p)
		if err != nil {
			t.Fatal(err)
		}
		ps := s.(*partitionStore)
		if err := ps.store.MarkRecovered(); err != nil { // every record commits as it comes
			t.Fatal(err)
		}
		pt.stores = append(pt.stores, ps)
	}
	t.Cleanup(func() {
		if !pt.close(5 * time.Second) {
			t.Error("the storage does not close: an iteration still holds a partition")
		}
	})
	return pt
}

// close closes every partition's storage; false if that takes longer
// than d (a reader holds a partition open).
func (pt *partitioned) close(d time.Duration) bool {
	closed := make(chan struct{})
	go func() {
		for _, ps := range pt.stores {
			ps.Close()
		}
		close(closed)
	}()
	select {
	case <-closed:
		return true
	case <-time.After(d):
		return false
	}
}

// put writes value under key to the key's partition, as the table's next record.
func (pt *partitioned) put(key string, value []byte) {
	pt.t.Helper()
	p := topology.PartitionOf(key, pt.n)
	ps := pt.stores[p]
	off := pt.offsets[p]
	pt.offsets[p]++
	if err := pt.v.update(record{partition: p, offset: off}, ps, key, value); err != nil {
		pt.t.Fatal(err)
	}
	if err := ps.SetOffset(off); err != nil {
		pt.t.Fatal(err)
	}
}

func (pt *partitioned) putState(st *codecs.State) {
	pt.t.Helper()
	b, err := (codecs.StateCodec{}).Encode(st)
	if err != nil {
		pt.t.Fatal(err)
	}
	key := st.EntityID.String()
	if st.Truncated {
		pt.t.Fatal("use truncate")
	}
	pt.put(key, b)
}

// truncate writes partition p's truncate marker at position at.
func (pt *partitioned) truncate(p int32, at codecs.Position) {
	pt.t.Helper()
	b, err := (codecs.StateCodec{}).Encode(&codecs.State{EntityType: "account", Truncated: true, Position: at})
	if err != nil {
		pt.t.Fatal(err)
	}
	pt.put(topology.TruncateKey(p, pt.n), b)
}

func alive(id int64, lsn codecs.LSN) *codecs.State {
	return &codecs.State{EntityType: "account", EntityID: codecs.IntKey(id), Row: codecs.Row{"id": json.RawMessage(strconv.FormatInt(id, 10))},
		Position: codecs.Position{CommitLSN: lsn}}
}

// ids collects the ids a sequence yields, failing on an error.
func ids(t *testing.T, seq func(func(*codecs.State, error) bool)) []int64 {
	t.Helper()
	var out []int64
	for st, err := range seq {
		if err != nil {
			t.Fatal(err)
		}
		id, ok := st.EntityID.Int()
		if !ok {
			t.Fatalf("entity %s %q is not an integer", st.EntityID.Kind(), st.EntityID)
		}
		out = append(out, id)
	}
	return out
}

// TestMergeOrdersThePartitions: Range and All merge the partitions into one
// id order, whichever partition holds which id.
func TestMergeOrdersThePartitions(t *testing.T) {
	const n = 4
	pt := newPartitioned(t, n)
	all := []int64{math.MinInt64, -1 << 40, -300, -1, 0, 1, 2, 3, 7, 8, 100, 255, 256, 1 << 53, math.MaxInt64}
	used := map[int32]bool{}
	for i, id := range slices.Backward(all) { // written out of order
		pt.putState(alive(id, codecs.LSN(10+i)))
		used[topology.PartitionOf(strconv.FormatInt(id, 10), n)] = true
	}
	if len(used) != n {
		t.Fatalf("the ids fill %d of the %d partitions: the merge is not exercised", len(used), n)
	}
	ctx := context.Background()
	if got := ids(t, pt.v.All(ctx)); !slices.Equal(got, all) {
		t.Errorf("All = %v\nwant %v", got, all)
	}
	ranges := []struct {
		first, last int64
		want        []int64
	}{
		{-300, 100, []int64{-300, -1, 0, 1, 2, 3, 7, 8, 100}},
		{4, 6, nil},
		{7, 7, []int64{7}},
		{math.MaxInt64, math.MaxInt64, []int64{math.MaxInt64}},
		{math.MinInt64, -2, []int64{math.MinInt64, -1 << 40, -300}},
		{5, 4, nil}, // first after last
	}
	for _, r := range ranges {
		if got := ids(t, pt.v.Range(ctx, r.first, r.last)); !slices.Equal(got, r.want) {
			t.Errorf("Range(%d, %d) = %v, want %v", r.first, r.last, got, r.want)
		}
	}
	if got, err := pt.v.Len(); err != nil || got != len(all) {
		t.Errorf("Len = %d, %v; want %d", got, err, len(all))
	}
	for _, id := range all {
		if st, err := pt.v.Get(ctx, id); err != nil || st == nil || st.EntityID != codecs.IntKey(id) {
			t.Errorf("Get(%d) = %+v, %v", id, st, err)
		}
	}
}

// TestMergeHidesWhatEachPartitionRemoved: deleted states and tombstones
// are left out, and a partition's TRUNCATE hides that partition's states
// at or before it, not another partition's.
func TestMergeHidesWhatEachPartitionRemoved(t *testing.T) {
	const n = 3
	pt := newPartitioned(t, n)
	// Entities 1..30, all at LSN 10: every partition holds some.
	for id := int64(1); id <= 30; id++ {
		pt.putState(alive(id, 10))
	}
	pt.putState(&codecs.State{EntityType: "account", EntityID: codecs.IntKey(4), Deleted: true, Position: codecs.Position{CommitLSN: 11}})
	pt.put("5", nil) // a tombstone
	truncated := topology.PartitionOf("7", n)
	pt.truncate(truncated, codecs.Position{CommitLSN: 20})
	pt.putState(alive(7, 30)) // inserted again after the TRUNCATE
	var want []int64
	for id := int64(1); id <= 30; id++ {
		if id == 4 || id == 5 || (topology.PartitionOf(strconv.FormatInt(id, 10), n) == truncated && id != 7) {
			continue
		}
		want = append(want, id)
	}
	ctx := context.Background()
	if got := ids(t, pt.v.All(ctx)); !slices.Equal(got, want) {
		t.Errorf("All = %v\nwant %v (partition %d truncated at LSN 20, then 7 inserted)", got, want, truncated)
	}
	if got, err := pt.v.Len(); err != nil || got != len(want) {
		t.Errorf("Len = %d, %v; want %d", got, err, len(want))
	}
	for id := int64(1); id <= 30; id++ {
		st, err := pt.v.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if (st != nil) != slices.Contains(want, id) {
			t.Errorf("Get(%d) = %+v; visible %v, want %v", id, st, st != nil, slices.Contains(want, id))
		}
	}
}

// TestMergeReleasesThePartitions: an iteration left early, ended by its
// context or by an error holds no partition open: the storage closes.
func TestMergeReleasesThePartitions(t *testing.T) {
	const n = 4
	pt := newPartitioned(t, n)
	for id := int64(1); id <= 20; id++ {
		pt.putState(alive(id, 10))
	}
	for range pt.v.All(context.Background()) {
		break
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	seen := 0
	for _, err := range pt.v.All(ctx) {
		if err != nil {
			if !errors.Is(err, context.Canceled) {
				t.Errorf("iteration ended with %v, want context.Canceled", err)
			}
			break
		}
		if seen++; seen == 3 {
			cancel()
		}
	}
	if seen != 3 {
		t.Errorf("the iteration went on for %d entities after its context was cancelled at 3", seen-3)
	}
	if !pt.close(5 * time.Second) {
		t.Fatal("the storage does not close: an iteration still holds a partition")
	}
	// Closed partitions: reads say so instead of reading a closed database.
	for _, err := range pt.v.All(context.Background()) {
		if !errors.Is(err, ErrNotRunning) {
			t.Errorf("All after the close: %v, want ErrNotRunning", err)
		}
	}
}
