package processors

import (
	"errors"
	"fmt"
	"hash"
	"sync"

	"github.com/IBM/sarama"
	"github.com/lovoo/goka"

	"github.com/changes-dev/changes/topology"
)

// Markers are the records the router fans out to every partition and the
// snapshot processors keep there: truncate markers and progress watermarks.
// A marker says something about every record of its partition before it
// ("everything committed before L is applied"), so no record may pass it in
// either direction on its way into the partition.
//
// sarama keeps a partition's records in order only while they succeed. While
// it cannot find a partition's leader it fails a record at once, without a
// retry (updateLeaderIfBrokerProducerIsNil in async_producer.go), and sends
// the records behind it once the leader is back. A change that failed that
// way is processed again after the processor restarts, and lands behind the
// watermark that was written after it: a view there would say it holds a
// change it does not have yet.
//
// So a fencedProducer holds a marker until every earlier record of its
// partition (its lane) was acknowledged, and holds every later record of the
// lane until the marker was. Once a failure is known, it sends nothing more:
// every held or later record fails without being written (a record whose
// send began as the failure came in may still go out; never a marker,
// which goes out only when its lane has nothing in flight). Within a lane,
// records reach Kafka in the order they were emitted, held or not.
//
// Only the events topics and the snapshot tables carry markers (the topics
// partitions names); a record of another topic, such as a dead letter of a
// record under a marker key, is never held.
//
// Its acknowledgements also pass through the processor's inOrder (see
// there). Its methods are safe for concurrent use; records of one lane are
// emitted by one goroutine (a partition's processor, or the router), except
// in the lanes that carry no marker.
type fencedProducer struct {
	next       goka.Producer
	order      *inOrder
	partitions map[string]int // partition count of every topic that carries markers

	mu      sync.Mutex
	wake    *sync.Cond // signalled when released records wait or the producer closes
	lanes   map[lane]*laneState
	release []*fencedRecord // released from their lane, in order, for the sender to emit
	failed  error           // the first failure: nothing is sent after it
	closed  bool
	stopped chan struct{} // closed when the sender has returned
	// sending counts the direct sends under way, which Close waits for:
	// sarama's input is closed by the wrapped producer's Close.
	sending sync.WaitGroup
	// afterSend, when not nil, runs on the sender after it sent a
	// released record and before it takes the lock again (tests).
	afterSend func()
}

// lane is one partition of one topic. A topic the producer knows no
// partition count of is one lane (partition -1).
type lane struct {
	topic     string
	partition int32
}

// laneState counts what a lane has in flight and what it holds back.
type laneState struct {
	unacked int             // records emitted or released, not yet acknowledged
	markers int             // of them, markers
	queued  int             // of them, released but not yet emitted by the sender
	held    []*fencedRecord // waiting for the lane's earlier records, in order
}

// fencedRecord is one record emitted through a fencedProducer.
type fencedRecord struct {
	lane    lane
	marker  bool
	key     string
	value   []byte
	headers goka.Headers
	ack     *pendingAck
}

// errProducerClosed fails the records a fencedProducer still held when it
// was closed.
var errProducerClosed = errors.New("the processor's producer closed before the record was sent")

// isMarkerKey reports whether key is a truncate marker's or a progress
// watermark's key.
func isMarkerKey(key string) bool {
	return topology.IsTruncateKey(key) || topology.IsWatermarkKey(key)
}

// newFencedProducer wraps next. partitions gives the partition count of the
// topics the processors write, by name.
func newFencedProducer(next goka.Producer, order *inOrder, partitions map[string]int) *fencedProducer {
	p := &fencedProducer{
		next:       next,
		order:      order,
		partitions: partitions,
		lanes:      make(map[lane]*laneState),
		stopped:    make(chan struct{}),
	}
	p.wake = sync.NewCond(&p.mu)
	go p.sendReleased()
	return p
}

// producerBuilder wraps build so that the producers it builds keep markers
// in place (fencedProducer) and pass their acknowledgements through o.
// partitions gives the partition count of each topic written, by name.
func (o *inOrder) producerBuilder(build goka.ProducerBuilder, partitions map[string]int) goka.ProducerBuilder {
	return func(brokers []string, clientID string, hasher func() hash.Hash32) (goka.Producer, error) {
		p, err := build(brokers, clientID, hasher)
		if err != nil {
			return nil, err
		}
		return newFencedProducer(p, o, partitions), nil
	}
}

// markerTopics is the partition count of every topic of topo that carries
// markers (the events topics and the snapshot tables), by name.
func markerTopics(topo *topology.Topology) map[string]int {
	m := make(map[string]int)
	for _, e := range topo.Config().Entities {
		m[topo.Events(e.Type)] = e.Partitions
		m[topo.Snapshot(e.Type)] = e.Partitions
	}
	return m
}

func (p *fencedProducer) laneOf(topic, key string) lane {
	n, ok := p.partitions[topic]
	if !ok || n <= 0 {
		return lane{topic: topic, partition: -1}
	}
	return lane{topic: topic, partition: topology.PartitionOf(key, n)}
}

// Emit is EmitWithHeaders without headers.
func (p *fencedProducer) Emit(topic, key string, value []byte) *goka.Promise {
	return p.EmitWithHeaders(topic, key, value, nil)
}

// EmitWithHeaders emits the record now, or holds it in its lane (see
// fencedProducer). The promise finishes once this record and every record
// and commit queued before it in the processor's inOrder finished.
func (p *fencedProducer) EmitWithHeaders(topic, key string, value []byte, headers goka.Headers) *goka.Promise {
	out, finish := goka.NewPromiseWithFinisher()
	l := p.laneOf(topic, key)
	r := &fencedRecord{
		lane:    l,
		marker:  l.partition >= 0 && isMarkerKey(key),
		key:     key,
		value:   value,
		headers: headers,
		ack:     p.order.add(func(msg *sarama.ProducerMessage, err error) { finish(msg, err) }),
	}
	p.mu.Lock()
	if err := p.refusal(); err != nil {
		p.mu.Unlock()
		p.order.complete(r.ack, nil, err)
		return out
	}
	ls := p.lanes[r.lane]
	if ls == nil {
		ls = new(laneState)
		p.lanes[r.lane] = ls
	}
	switch {
	case len(ls.held) > 0 || !ls.admits(r):
		ls.held = append(ls.held, r)
		p.mu.Unlock()
	case ls.queued > 0:
		// Free to go, behind released records the sender has yet to
		// send: after them, in its queue. (Held instead, it would wait
		// for an acknowledgement that may have come already.)
		p.queue(ls, r)
		p.mu.Unlock()
	default:
		ls.count(r)
		p.sending.Add(1)
		p.mu.Unlock()
		p.send(r)
		p.sending.Done()
	}
	return out
}

// admits reports whether r may be emitted after what the lane has in flight:
// nothing passes an unacknowledged marker, and a marker passes nothing
// unacknowledged.
func (ls *laneState) admits(r *fencedRecord) bool {
	return ls.markers == 0 && (!r.marker || ls.unacked == 0)
}

// count adds r to what the lane has in flight.
func (ls *laneState) count(r *fencedRecord) {
	ls.unacked++
	if r.marker {
		ls.markers++
	}
}

// refusal is why nothing may be sent any more, if so. p.mu is held.
func (p *fencedProducer) refusal() error {
	switch {
	case p.failed != nil:
		return fmt.Errorf("an earlier record of this processor failed: %w", p.failed)
	case p.closed:
		return errProducerClosed
	}
	return nil
}

// send hands r to the wrapped producer.
func (p *fencedProducer) send(r *fencedRecord) {
	p.next.EmitWithHeaders(r.lane.topic, r.key, r.value, r.headers).ThenWithMessage(func(msg *sarama.ProducerMessage, err error) {
		p.acknowledged(r, msg, err)
	})
}

// acknowledged takes r's outcome: it releases what r held back in its lane,
// or, on a failure, fails everything held anywhere.
func (p *fencedProducer) acknowledged(r *fencedRecord, msg *sarama.ProducerMessage, err error) {
	p.mu.Lock()
	ls := p.lanes[r.lane]
	ls.unacked--
	if r.marker {
		ls.markers--
	}
	var dropped []*fencedRecord
	if err != nil && p.failed == nil {
		p.failed = err
		dropped = p.dropHeld()
	}
	if p.refusal() == nil {
		p.releaseFrom(ls)
	}
	p.mu.Unlock()
	p.order.complete(r.ack, msg, err)
	p.fail(dropped)
}

// releaseFrom moves the records at the head of ls that may now be emitted to
// the sender's queue. p.mu is held.
func (p *fencedProducer) releaseFrom(ls *laneState) {
	n := 0
	for n < len(ls.held) && ls.admits(ls.held[n]) {
		p.queue(ls, ls.held[n])
		n++
	}
	clear(ls.held[:n])
	ls.held = ls.held[n:]
}

// queue counts r in flight in ls and puts it in the sender's queue. p.mu is
// held.
func (p *fencedProducer) queue(ls *laneState, r *fencedRecord) {
	ls.count(r)
	ls.queued++
	p.release = append(p.release, r)
	p.wake.Signal()
}

// dropHeld empties every lane and the sender's queue and returns what they
// held, in order per lane. p.mu is held.
func (p *fencedProducer) dropHeld() []*fencedRecord {
	var out []*fencedRecord
	for _, r := range p.release {
		ls := p.lanes[r.lane]
		ls.unacked--
		ls.queued--
		if r.marker {
			ls.markers--
		}
		out = append(out, r)
	}
	p.release = nil
	for _, ls := range p.lanes {
		out = append(out, ls.held...)
		ls.held = nil
	}
	return out
}

// fail fails the acknowledgements of rs, which were never sent.
func (p *fencedProducer) fail(rs []*fencedRecord) {
	if len(rs) == 0 {
		return
	}
	p.mu.Lock()
	err := p.refusal()
	p.mu.Unlock()
	for _, r := range rs {
		p.order.complete(r.ack, nil, err)
	}
}

// sendReleased emits the released records in the order they were released.
// It runs on its own goroutine: acknowledged runs on the wrapped producer's
// goroutine that reads sarama's successes, and emitting there could block
// on sarama's input while sarama waits for that goroutine.
func (p *fencedProducer) sendReleased() {
	defer close(p.stopped)
	p.mu.Lock()
	defer p.mu.Unlock()
	for {
		for len(p.release) == 0 && !p.closed {
			p.wake.Wait()
		}
		if len(p.release) == 0 {
			return
		}
		// A failure or Close empties the queue under the lock: what is
		// in it may be sent.
		r := p.release[0]
		p.release[0] = nil
		p.release = p.release[1:]
		p.mu.Unlock()
		p.send(r)
		if p.afterSend != nil {
			p.afterSend()
		}
		p.mu.Lock()
		p.lanes[r.lane].queued--
	}
}

// Close fails what is still held, waits for the sends under way, then
// closes the wrapped producer, which waits for the acknowledgements of what
// was sent.
func (p *fencedProducer) Close() error {
	p.mu.Lock()
	p.closed = true
	dropped := p.dropHeld()
	p.wake.Broadcast()
	p.mu.Unlock()
	p.fail(dropped)
	<-p.stopped
	p.sending.Wait()
	return p.next.Close()
}
