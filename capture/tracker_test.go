package capture

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/changes-dev/changes/codecs"
)

// step is one call on a tracker, by transaction name, and the acknowledged
// position expected after it.
type step struct {
	do   string // "open", "produce", "ack", "seal"
	txn  string
	end  codecs.LSN // for seal
	want codecs.LSN
}

func runSteps(t *testing.T, start codecs.LSN, steps []step) *tracker {
	t.Helper()
	tr := newTracker(start)
	txns := map[string]*txn{}
	for i, s := range steps {
		switch s.do {
		case "open":
			txns[s.txn] = tr.open()
		case "produce":
			tr.produced(txns[s.txn])
		case "ack":
			tr.ack(txns[s.txn])
		case "seal":
			tr.seal(txns[s.txn], s.end)
		default:
			t.Fatalf("step %d: unknown %q", i, s.do)
		}
		if got := tr.acknowledged(); got != s.want {
			t.Fatalf("after step %d (%s %s): acknowledged = %s, want %s", i, s.do, s.txn, got, s.want)
		}
	}
	return tr
}

func TestTracker(t *testing.T) {
	const start = codecs.LSN(100)
	tests := []struct {
		name     string
		steps    []step
		wantIdle bool
	}{
		{
			name: "acked before the commit: waits for the seal",
			steps: []step{
				{"open", "a", 0, start},
				{"produce", "a", 0, start},
				{"produce", "a", 0, start},
				{"ack", "a", 0, start},
				{"ack", "a", 0, start},
				{"seal", "a", 200, 200},
			},
			wantIdle: true,
		},
		{
			name: "sealed before the acks: waits for the last ack",
			steps: []step{
				{"open", "a", 0, start},
				{"produce", "a", 0, start},
				{"produce", "a", 0, start},
				{"seal", "a", 200, start},
				{"ack", "a", 0, start},
				{"ack", "a", 0, 200},
			},
			wantIdle: true,
		},
		{
			name: "an empty sealed transaction at the head advances at once",
			steps: []step{
				{"open", "a", 0, start},
				{"seal", "a", 150, 150},
			},
			wantIdle: true,
		},
		{
			name: "a later transaction acked first does not pass the earlier one",
			steps: []step{
				{"open", "a", 0, start},
				{"produce", "a", 0, start},
				{"seal", "a", 200, start},
				{"open", "b", 0, start},
				{"produce", "b", 0, start},
				{"seal", "b", 300, start},
				{"ack", "b", 0, start}, // b is complete, a is not
				{"ack", "a", 0, 300},   // both at once
			},
			wantIdle: true,
		},
		{
			name: "an empty transaction behind a pending one waits",
			steps: []step{
				{"open", "a", 0, start},
				{"produce", "a", 0, start},
				{"seal", "a", 200, start},
				{"open", "b", 0, start},
				{"seal", "b", 250, start},
				{"open", "c", 0, start},
				{"produce", "c", 0, start},
				{"ack", "a", 0, 250}, // a and the empty b, not the unsealed c
			},
			wantIdle: false,
		},
		{
			name: "an open transaction at the head holds back the sealed ones",
			steps: []step{
				{"open", "a", 0, start},
				{"open", "b", 0, start},
				{"seal", "b", 300, start},
				{"produce", "a", 0, start},
				{"ack", "a", 0, start},
				{"seal", "a", 200, 300},
			},
			wantIdle: true,
		},
		{
			name: "three transactions acked in reverse order",
			steps: []step{
				{"open", "a", 0, start},
				{"produce", "a", 0, start},
				{"seal", "a", 200, start},
				{"open", "b", 0, start},
				{"produce", "b", 0, start},
				{"seal", "b", 300, start},
				{"open", "c", 0, start},
				{"produce", "c", 0, start},
				{"seal", "c", 400, start},
				{"ack", "c", 0, start},
				{"ack", "b", 0, start},
				{"ack", "a", 0, 400},
			},
			wantIdle: true,
		},
		{
			name: "acknowledged moves one transaction at a time in order",
			steps: []step{
				{"open", "a", 0, start},
				{"produce", "a", 0, start},
				{"seal", "a", 200, start},
				{"open", "b", 0, start},
				{"produce", "b", 0, start},
				{"seal", "b", 300, start},
				{"ack", "a", 0, 200},
				{"ack", "b", 0, 300},
			},
			wantIdle: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := runSteps(t, start, tt.steps)
			if got := tr.idle(); got != tt.wantIdle {
				t.Errorf("idle() = %v, want %v", got, tt.wantIdle)
			}
		})
	}
}

func TestTrackerSkipTo(t *testing.T) {
	const start = codecs.LSN(100)
	tests := []struct {
		name    string
		pending func(tr *tracker) // leaves the tracker in some state
		skipTo  codecs.LSN
		want    bool
		wantLSN codecs.LSN
	}{
		{"idle, forward", func(*tracker) {}, 500, true, 500},
		{"idle, same position", func(*tracker) {}, start, false, start},
		{"idle, backwards", func(*tracker) {}, 50, false, start},
		{"open, nothing produced", func(tr *tracker) { tr.open() }, 500, false, start},
		{"sealed, records in flight", func(tr *tracker) {
			x := tr.open()
			tr.produced(x)
			tr.seal(x, 200)
		}, 500, false, start},
		{"open, records acked", func(tr *tracker) {
			x := tr.open()
			tr.produced(x)
			tr.ack(x)
		}, 500, false, start},
		{"after a completed transaction, backwards", func(tr *tracker) {
			x := tr.open()
			tr.seal(x, 300)
		}, 200, false, 300},
		{"after a completed transaction, forward", func(tr *tracker) {
			x := tr.open()
			tr.seal(x, 300)
		}, 301, true, 301},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := newTracker(start)
			tt.pending(tr)
			if got := tr.skipTo(tt.skipTo); got != tt.want {
				t.Errorf("skipTo(%s) = %v, want %v", tt.skipTo, got, tt.want)
			}
			if got := tr.acknowledged(); got != tt.wantLSN {
				t.Errorf("acknowledged = %s, want %s", got, tt.wantLSN)
			}
		})
	}
}

func TestTrackerSkipToThenTransaction(t *testing.T) {
	tr := newTracker(100)
	if !tr.skipTo(1000) {
		t.Fatal("skipTo(1000) on an idle tracker did nothing")
	}
	x := tr.open()
	tr.produced(x)
	if tr.skipTo(2000) || tr.acknowledged() != 1000 {
		t.Fatalf("skipTo with a record in flight moved to %s", tr.acknowledged())
	}
	tr.seal(x, 1500)
	tr.ack(x)
	if got := tr.acknowledged(); got != 1500 {
		t.Errorf("acknowledged = %s, want 1500", got)
	}
}

// TestTrackerConcurrentAcks runs the capture's pattern under the race
// detector: one goroutine opens, produces and seals in stream order while
// several others ack records in any order. At every moment the acknowledged
// position must be the end of a transaction whose records, and those of every
// transaction before it, have all been acked.
func TestTrackerConcurrentAcks(t *testing.T) {
	const (
		txns    = 200
		records = 5
		ackers  = 8
		start   = codecs.LSN(1000)
	)
	endOf := func(i int) codecs.LSN { return start + codecs.LSN(i+1)*10 }
	tr := newTracker(start)
	var acked [txns]atomic.Int32 // acks issued per transaction, counted before tracker.ack

	type rec struct {
		i int
		x *txn
	}
	work := make(chan rec, txns*records)
	var wg sync.WaitGroup
	for w := range ackers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 7))
			var held []rec
			flush := func() {
				r.Shuffle(len(held), func(a, b int) { held[a], held[b] = held[b], held[a] })
				for _, h := range held {
					acked[h.i].Add(1)
					tr.ack(h.x)
				}
				held = held[:0]
			}
			for x := range work {
				// Hold some records back, so acks arrive out of order.
				held = append(held, x)
				if r.IntN(4) == 0 {
					flush()
				}
			}
			flush()
		}()
	}

	observed := make(chan error, 1)
	stop := make(chan struct{})
	go func() {
		last := start
		for {
			select {
			case <-stop:
				observed <- nil
				return
			default:
			}
			got := tr.acknowledged()
			if got < last {
				observed <- fmt.Errorf("acknowledged moved back from %s to %s", last, got)
				return
			}
			last = got
			for i := 0; i < txns && endOf(i) <= got; i++ {
				if n := acked[i].Load(); n != records {
					observed <- fmt.Errorf("acknowledged %s passes transaction %d with %d of %d records acked", got, i, n, records)
					return
				}
			}
		}
	}()

	for i := range txns {
		x := tr.open()
		for range records {
			tr.produced(x)
			work <- rec{i, x}
		}
		tr.seal(x, endOf(i))
	}
	close(work)
	wg.Wait()
	close(stop)
	if err := <-observed; err != nil {
		t.Fatal(err)
	}
	if got, want := tr.acknowledged(), endOf(txns-1); got != want {
		t.Errorf("acknowledged = %s after every ack, want %s", got, want)
	}
	if !tr.idle() {
		t.Error("tracker not idle after every transaction was acked")
	}
}

// TestTrackerAckN acknowledges several records of a transaction at once,
// as a Kafka commit does: only all of them complete it.
func TestTrackerAckN(t *testing.T) {
	tr := newTracker(10)
	a, b := tr.open(), tr.open()
	for range 3 {
		tr.produced(a)
	}
	tr.produced(b)
	tr.seal(a, 20)
	tr.seal(b, 30)
	tr.ackN(a, 2)
	if got := tr.acknowledged(); got != 10 {
		t.Fatalf("after 2 of 3 records of a: acknowledged = %s, want 0/A", got)
	}
	tr.ackN(b, 1)
	if got := tr.acknowledged(); got != 10 {
		t.Fatalf("b complete, a not: acknowledged = %s, want 0/A", got)
	}
	tr.ackN(a, 1)
	if got := tr.acknowledged(); got != 30 || !tr.idle() {
		t.Fatalf("both complete: acknowledged = %s (idle %v), want 0/1E and idle", got, tr.idle())
	}
}
