package processors

import (
	"fmt"
	"sync"

	"github.com/IBM/sarama"
	"github.com/lovoo/goka"
)

// inOrder makes a processor's input offsets advance only past messages
// whose every record was delivered, and never past a failure.
//
// goka marks a message's offset as soon as that message's own table write
// and emits are acknowledged, in whatever order that happens, and sarama
// marks the highest offset: a message whose emit went to a reachable
// broker (or that emitted nothing, as a skipped redelivery) is marked while
// an earlier message still waits for a broker that is down. If the earlier
// one then fails, the offset committed when the session closes is past it,
// and it is never processed again: a hole in an events topic or a table.
// Also, sarama's async producer can still deliver records it holds after an
// earlier one ran out of retries.
//
// inOrder therefore takes the acknowledgements of the processor's producer
// (a fencedProducer) and every message's commit (goka's DeferCommit) into one queue in the order they were asked
// for: an acknowledgement is passed on to goka only after every earlier one
// was, and once one record failed, every later record and commit fails too
// (delivered or not). The processor stops on the first failure; the
// supervisor builds a new processor, with a new inOrder, and the messages
// after the last committed offset are processed again (the snapshot
// processor writes a state again when its change is redelivered, see
// rewrite).
//
// Its methods are safe for concurrent use.
type inOrder struct {
	mu     sync.Mutex // held while acknowledgements are passed on, so they run in order
	queue  []*pendingAck
	failed error // the first failure
}

// pendingAck is one acknowledgement waiting for the ones before it.
type pendingAck struct {
	done   bool
	msg    *sarama.ProducerMessage
	err    error
	finish func(*sarama.ProducerMessage, error)
}

// add queues an acknowledgement that finish receives once it and every
// earlier one completed.
func (o *inOrder) add(finish func(*sarama.ProducerMessage, error)) *pendingAck {
	o.mu.Lock()
	defer o.mu.Unlock()
	a := &pendingAck{finish: finish}
	o.queue = append(o.queue, a)
	return a
}

// complete records a's outcome and passes on every completed
// acknowledgement at the head of the queue, in order.
func (o *inOrder) complete(a *pendingAck, msg *sarama.ProducerMessage, err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	a.done, a.msg, a.err = true, msg, err
	for len(o.queue) > 0 && o.queue[0].done {
		h := o.queue[0]
		o.queue[0] = nil
		o.queue = o.queue[1:]
		switch {
		case h.err != nil && o.failed == nil:
			o.failed = h.err
		case h.err == nil && o.failed != nil:
			h.err = fmt.Errorf("an earlier record of this processor failed: %w", o.failed)
		}
		h.finish(h.msg, h.err)
	}
}

// commitAfterEarlier makes goka commit the message gctx processes only once
// every record emitted before it was delivered, and not at all after a
// failure. Call it first in every input callback.
func (o *inOrder) commitAfterEarlier(gctx goka.Context) {
	done := gctx.DeferCommit()
	o.complete(o.add(func(_ *sarama.ProducerMessage, err error) { done(err) }), nil, nil)
}
