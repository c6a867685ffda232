package processors

import (
	"errors"
	"fmt"
	"hash"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/lovoo/goka"

	"github.com/changes-dev/changes/topology"
)

// laneRecorder is a producer that records what reaches it, per lane, and
// lets the test acknowledge each record. It checks, as each record arrives,
// that nothing passed a marker of its lane: a marker arrives only once every
// earlier record of its lane was acknowledged, and no record arrives while a
// marker of its lane is unacknowledged.
type laneRecorder struct {
	t          *testing.T
	partitions map[string]int

	mu      sync.Mutex
	instant map[string]bool        // keys acknowledged as they arrive
	arrived map[lane][]string      // keys, in the order they reached the producer
	pending map[string]*sentRecord // arrived, not yet acknowledged, by key
	order   []string               // every key that arrived, in order
}

type sentRecord struct {
	lane   lane
	marker bool
	finish goka.PromiseFinisher
}

func newLaneRecorder(t *testing.T, partitions map[string]int) *laneRecorder {
	return &laneRecorder{t: t, partitions: partitions, arrived: map[lane][]string{}, pending: map[string]*sentRecord{}}
}

func (f *laneRecorder) Emit(topic, key string, value []byte) *goka.Promise {
	return f.EmitWithHeaders(topic, key, value, nil)
}

func (f *laneRecorder) EmitWithHeaders(topic, key string, _ []byte, _ goka.Headers) *goka.Promise {
	p, finish := goka.NewPromiseWithFinisher()
	l := lane{topic, -1}
	if n, ok := f.partitions[topic]; ok {
		l.partition = topology.PartitionOf(key, n)
	}
	marker := l.partition >= 0 && isMarkerKey(key) // only topics with partitions carry markers
	f.mu.Lock()
	defer f.mu.Unlock()
	for k, s := range f.pending {
		if s.lane != l {
			continue
		}
		if s.marker {
			f.t.Errorf("%s reached the producer while marker %s of its lane was unacknowledged", key, k)
		}
		if marker {
			f.t.Errorf("marker %s reached the producer while %s of its lane was unacknowledged", key, k)
		}
	}
	f.arrived[l] = append(f.arrived[l], key)
	f.order = append(f.order, key)
	if f.instant[key] {
		finish(&sarama.ProducerMessage{}, nil)
		return p
	}
	f.pending[key] = &sentRecord{lane: l, marker: marker, finish: finish}
	return p
}

func (f *laneRecorder) Close() error { return nil }

// ack acknowledges key, or fails it if err is not nil.
func (f *laneRecorder) ack(key string, err error) {
	f.mu.Lock()
	s := f.pending[key]
	delete(f.pending, key)
	f.mu.Unlock()
	if s == nil {
		f.t.Fatalf("%s has not reached the producer", key)
	}
	s.finish(&sarama.ProducerMessage{}, err)
}

// waitArrived waits for the producer to have received keys, in that order
// (the fence sends released records from its own goroutine).
func (f *laneRecorder) waitArrived(keys ...string) {
	f.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		f.mu.Lock()
		got := slices.Clone(f.order)
		f.mu.Unlock()
		if slices.Equal(got, keys) {
			return
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("records that reached the producer: %v, want %v", got, keys)
		}
		time.Sleep(time.Millisecond)
	}
}

// keyIn returns the first key prefix<i> of partition p of n.
func keyIn(prefix string, p int32, n int) string {
	for i := 0; ; i++ {
		if k := fmt.Sprintf("%s%d", prefix, i); topology.PartitionOf(k, n) == p {
			return k
		}
	}
}

func newFenceForTest(t *testing.T, partitions map[string]int) (goka.Producer, *laneRecorder, *inOrder) {
	t.Helper()
	fake := newLaneRecorder(t, partitions)
	order := new(inOrder)
	p, err := order.producerBuilder(func([]string, string, func() hash.Hash32) (goka.Producer, error) { return fake, nil }, partitions)(nil, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p, fake, order
}

// TestFenceKeepsMarkersInPlace follows a watermark through its lane: it
// waits for the record before it, the record after it waits for it, and
// the other partition's records pass meanwhile.
func TestFenceKeepsMarkersInPlace(t *testing.T) {
	const n = 2
	p, fake, _ := newFenceForTest(t, map[string]int{"events": n})
	a0, c0 := keyIn("a", 0, n), keyIn("c", 0, n)
	b1, d1 := keyIn("b", 1, n), keyIn("d", 1, n)
	w0 := topology.WatermarkKeys(n)[0]

	var mu sync.Mutex
	var acked []string
	emit := func(key string) {
		p.Emit("events", key, nil).Then(func(err error) {
			mu.Lock()
			defer mu.Unlock()
			acked = append(acked, key+"="+errText(err))
		})
	}
	emit(a0)
	emit(b1)
	emit(w0)
	emit(c0)
	emit(d1)
	fake.waitArrived(a0, b1, d1) // w0 waits for a0, c0 for w0; d1 is in the other lane
	fake.ack(b1, nil)
	fake.ack(d1, nil)
	fake.ack(a0, nil)
	fake.waitArrived(a0, b1, d1, w0)
	fake.ack(w0, nil)
	fake.waitArrived(a0, b1, d1, w0, c0)
	fake.ack(c0, nil)
	mu.Lock()
	defer mu.Unlock()
	if want := []string{a0 + "=ok", b1 + "=ok", w0 + "=ok", c0 + "=ok", d1 + "=ok"}; !slices.Equal(acked, want) {
		t.Fatalf("acknowledgements: %v, want %v", acked, want)
	}
}

// TestFenceStopsAtFailure fails the record a watermark waits for: the
// watermark, and every record after it in any lane, fail without reaching
// the producer, as does a commit queued after them.
func TestFenceStopsAtFailure(t *testing.T) {
	const n = 2
	p, fake, order := newFenceForTest(t, map[string]int{"events": n})
	a0, c0, e0 := keyIn("a", 0, n), keyIn("c", 0, n), keyIn("e", 0, n)
	b1, d1 := keyIn("b", 1, n), keyIn("d", 1, n)
	w0 := topology.WatermarkKeys(n)[0]
	t0 := topology.TruncateKeys(n)[0]

	var mu sync.Mutex
	got := map[string]string{}
	emit := func(key string) {
		p.Emit("events", key, nil).Then(func(err error) {
			mu.Lock()
			defer mu.Unlock()
			got[key] = errText(err)
		})
	}
	emit(a0)
	emit(w0)
	emit(c0)
	emit(b1)
	emit(t0)
	order.complete(order.add(func(_ *sarama.ProducerMessage, err error) {
		mu.Lock()
		defer mu.Unlock()
		got["commit"] = errText(err)
	}), nil, nil)
	fake.waitArrived(a0, b1)
	fake.ack(a0, errors.New("producer/leader: run out of available brokers"))
	emit(d1)
	emit(e0)
	fake.ack(b1, nil)
	time.Sleep(20 * time.Millisecond) // time for a wrongly released record to be sent
	fake.waitArrived(a0, b1)
	mu.Lock()
	defer mu.Unlock()
	for _, k := range []string{a0, w0, c0, b1, t0, "commit", d1, e0} {
		if got[k] != "fail" {
			t.Errorf("%s: %q, want it failed", k, got[k])
		}
	}
}

// TestFenceRandomInterleavings emits records and markers to a few lanes and
// acknowledges them in random orders. laneRecorder checks that no record
// passes a marker; this checks that every lane's records reach the producer
// in the order they were emitted, and that each is acknowledged once.
func TestFenceRandomInterleavings(t *testing.T) {
	const n = 3
	partitions := map[string]int{"events": n, "table": n}
	for seed := range uint64(50) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 1))
			p, fake, _ := newFenceForTest(t, partitions)
			watermarks := topology.WatermarkKeys(n)
			emitted := map[lane][]string{}
			var mu sync.Mutex
			acks := map[string]int{}
			seq := 0
			total := 0
			for range 400 {
				if rng.IntN(3) > 0 {
					topic := []string{"events", "table"}[rng.IntN(2)]
					part := int32(rng.IntN(n))
					// A marker key is used once per lane here, so the
					// recorder can tell records apart by key.
					key := keyIn(fmt.Sprintf("k%d-", seq), part, n)
					if rng.IntN(5) == 0 {
						key = keyIn(watermarks[part]+"/"+fmt.Sprint(seq)+"-", part, n)
					}
					seq++
					total++
					l := lane{topic, part}
					emitted[l] = append(emitted[l], key)
					p.Emit(topic, key, nil).Then(func(err error) {
						mu.Lock()
						defer mu.Unlock()
						if err != nil {
							t.Errorf("%s failed: %v", key, err)
						}
						acks[key]++
					})
					continue
				}
				fake.mu.Lock()
				var keys []string
				for k := range fake.pending {
					keys = append(keys, k)
				}
				fake.mu.Unlock()
				if len(keys) > 0 {
					slices.Sort(keys)
					fake.ack(keys[rng.IntN(len(keys))], nil)
				}
			}
			// Acknowledge the rest as it arrives.
			deadline := time.Now().Add(10 * time.Second)
			for {
				mu.Lock()
				done := len(acks)
				mu.Unlock()
				if done == total {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("%d of %d records acknowledged", done, total)
				}
				fake.mu.Lock()
				var keys []string
				for k := range fake.pending {
					keys = append(keys, k)
				}
				fake.mu.Unlock()
				for _, k := range keys {
					fake.ack(k, nil)
				}
				time.Sleep(time.Millisecond)
			}
			fake.mu.Lock()
			defer fake.mu.Unlock()
			for l, want := range emitted {
				if got := fake.arrived[l]; !slices.Equal(got, want) {
					t.Errorf("lane %v: records reached the producer in the order %v, emitted %v", l, got, want)
				}
			}
			mu.Lock()
			defer mu.Unlock()
			for k, c := range acks {
				if c != 1 {
					t.Errorf("%s acknowledged %d times", k, c)
				}
			}
		})
	}
}

// TestFenceRecordBehindReleasedOnes emits a record to a lane whose released
// records the sender has sent, and whose acknowledgements came, but which
// the sender has not counted out yet: it must still go out (held, it would
// wait for an acknowledgement that came already, and the lane would hang).
func TestFenceRecordBehindReleasedOnes(t *testing.T) {
	const n = 2
	p, fake, _ := newFenceForTest(t, map[string]int{"events": n})
	fp := p.(*fencedProducer)
	a0, c0 := keyIn("a", 0, n), keyIn("c", 0, n)
	w0 := topology.WatermarkKeys(n)[0]
	fake.mu.Lock()
	fake.instant = map[string]bool{w0: true, c0: true}
	fake.mu.Unlock()
	var once sync.Once
	fp.afterSend = func() { once.Do(func() { p.Emit("events", c0, nil) }) }
	p.Emit("events", a0, nil)
	p.Emit("events", w0, nil) // held behind a0
	fake.ack(a0, nil)         // releases w0; the sender sends it, it is acknowledged at once, then c0 comes
	fake.waitArrived(a0, w0, c0)
}

// TestFenceCloseFailsHeld closes the producer while a watermark waits for
// the record before it: the watermark fails, unsent, and an emit after
// Close fails too.
func TestFenceCloseFailsHeld(t *testing.T) {
	const n = 2
	p, fake, _ := newFenceForTest(t, map[string]int{"events": n})
	a0 := keyIn("a", 0, n)
	w0 := topology.WatermarkKeys(n)[0]
	errs := make(chan error, 2)
	p.Emit("events", a0, nil)
	p.Emit("events", w0, nil).Then(func(err error) { errs <- err })
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	fake.ack(a0, nil) // as the wrapped producer's Close would drain it
	if err := <-errs; !errors.Is(err, errProducerClosed) {
		t.Errorf("the held watermark: %v, want %v", err, errProducerClosed)
	}
	p.Emit("events", keyIn("b", 1, n), nil).Then(func(err error) { errs <- err })
	if err := <-errs; !errors.Is(err, errProducerClosed) {
		t.Errorf("a record emitted after Close: %v, want %v", err, errProducerClosed)
	}
	fake.waitArrived(a0)
}

// TestFenceDeadLetterOfAMarker checks that a record under a marker key in a
// topic that carries no markers (a dead letter) is not held.
func TestFenceDeadLetterOfAMarker(t *testing.T) {
	const n = 2
	p, fake, _ := newFenceForTest(t, map[string]int{"events": n})
	a0 := keyIn("a", 0, n)
	w0 := topology.WatermarkKeys(n)[0]
	p.Emit("deadletter", a0, nil)
	p.Emit("deadletter", w0, nil)
	fake.waitArrived(a0, w0)
}
