package capture

import (
	"sync"

	"github.com/changes-dev/changes/codecs"
)

// txn is one transaction on its way to Kafka.
type txn struct {
	endLSN    codecs.LSN
	remaining int  // records produced, not yet acknowledged
	sealed    bool // its Commit was seen: no more records will come
}

// tracker knows which transactions Kafka has acknowledged in full. Records
// are produced in stream order; a transaction counts as acknowledged only
// when it and every transaction before it are, so the position it yields is
// always safe to report to PostgreSQL as flushed. Safe for concurrent use:
// the replication loop opens and seals, the producer's success loop acks.
type tracker struct {
	mu      sync.Mutex
	pending []*txn // in stream order
	acked   codecs.LSN
}

func newTracker(start codecs.LSN) *tracker { return &tracker{acked: start} }

// open starts a transaction.
func (t *tracker) open() *txn {
	x := &txn{}
	t.mu.Lock()
	t.pending = append(t.pending, x)
	t.mu.Unlock()
	return x
}

// produced counts one more record of x in flight.
func (t *tracker) produced(x *txn) {
	t.mu.Lock()
	x.remaining++
	t.mu.Unlock()
}

// seal marks x complete, ending at endLSN.
func (t *tracker) seal(x *txn, endLSN codecs.LSN) {
	t.mu.Lock()
	x.endLSN = endLSN
	x.sealed = true
	t.advance()
	t.mu.Unlock()
}

// ack records that Kafka acknowledged one record of x.
func (t *tracker) ack(x *txn) { t.ackN(x, 1) }

// ackN records that Kafka acknowledged n records of x.
func (t *tracker) ackN(x *txn, n int) {
	t.mu.Lock()
	x.remaining -= n
	t.advance()
	t.mu.Unlock()
}

func (t *tracker) advance() {
	for len(t.pending) > 0 {
		head := t.pending[0]
		if !head.sealed || head.remaining > 0 {
			return
		}
		t.acked = head.endLSN
		t.pending[0] = nil
		t.pending = t.pending[1:]
	}
}

// idle reports whether nothing is open or in flight.
func (t *tracker) idle() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.pending) == 0
}

// acknowledged is the end LSN of the last transaction Kafka has in full.
func (t *tracker) acknowledged() codecs.LSN {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.acked
}

// skipTo advances the acknowledged position over WAL that holds no captured
// change (a keepalive's WAL end while idle). It never moves it back and does
// nothing while anything is open or in flight.
func (t *tracker) skipTo(lsn codecs.LSN) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.pending) > 0 || lsn <= t.acked {
		return false
	}
	t.acked = lsn
	return true
}
