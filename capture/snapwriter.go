package capture

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/IBM/sarama"

	"github.com/changes-dev/changes/topology"
)

// snapshotInFlight is how many produce requests of the snapshot may await
// the broker's answer at once: with one, the copy waited for every batch's
// round trip, and sarama's producer sent what gathered meanwhile (a few
// hundred rows a request).
const snapshotInFlight = 3

// snapshotWriter writes the initial snapshot's records to the history's one
// partition in record batches of its own, each as large as
// kafka.max_record_bytes allows, with up to snapshotInFlight produce
// requests in flight, on a client of its own. It is idempotent by hand: a
// producer id of its own and the sequence numbers of its batches, so the
// broker writes the batches in order and refuses every batch after one it
// did not write (OUT_OF_ORDER_SEQUENCE_NUMBER): a failure leaves no hole.
// (The broker checks sequence numbers once it holds a batch of the
// producer, so the first batch goes alone.)
// It never retries: its first error fails the copy, and the capture's next
// session resumes after the last row the history holds, as after a crash.
//
// sarama's producer hands each record through four goroutines and, with
// idempotence, one request at a time: the copy spent more time waiting for
// it than reading and encoding rows. add, flush and close are called by one
// goroutine.
type snapshotWriter struct {
	client   sarama.Client
	broker   *sarama.Broker
	topic    string
	version  int16 // of the produce requests
	timeout  int32 // the broker's time to answer a produce request, in ms
	maxBytes int   // of a batch, as sarama measures it
	pid      int64
	epoch    int16
	seq      int32 // the next batch's first sequence number

	batch *sarama.RecordBatch
	size  int // of batch, as sarama measures it: never less than encoded
	// records and headers are the current batch's, allocated with it.
	records []sarama.Record
	headers []*sarama.RecordHeader

	queue   chan *sarama.RecordBatch // to the sender
	sent    chan struct{}            // closed when the sender has sent everything queued
	slots   chan struct{}            // one taken by each request in flight
	answers sync.WaitGroup           // the requests in flight
	// failed is closed at the first failure, err.
	failOnce sync.Once
	err      error
	failed   chan struct{}
}

// newSnapshotWriter connects to the leader of the history's partition and
// takes a producer id.
func newSnapshotWriter(k topology.KafkaConfig, topic string) (*snapshotWriter, error) {
	cfg, err := topology.SaramaConfig(k)
	if err != nil {
		return nil, err
	}
	// Idempotence is done here, not by sarama's producer, which would
	// allow one request at a time.
	cfg.Producer.Idempotent = false
	cfg.Net.MaxOpenRequests = snapshotInFlight
	client, err := sarama.NewClient(k.Brokers, cfg)
	if err != nil {
		return nil, fmt.Errorf("snapshot writer: %w", topology.ExplainKafkaError(k, err))
	}
	w := &snapshotWriter{
		client: client, topic: topic,
		version:  produceVersion(cfg.Version),
		timeout:  int32(cfg.Producer.Timeout / time.Millisecond),
		maxBytes: cfg.Producer.MaxMessageBytes,
		queue:    make(chan *sarama.RecordBatch, 1),
		sent:     make(chan struct{}),
		slots:    make(chan struct{}, snapshotInFlight),
		failed:   make(chan struct{}),
	}
	if err := w.connect(); err != nil {
		client.Close()
		return nil, err
	}
	go w.send()
	return w, nil
}

func (w *snapshotWriter) connect() error {
	var err error
	if w.broker, err = w.client.Leader(w.topic, 0); err != nil {
		return fmt.Errorf("snapshot writer: the leader of %s: %w", w.topic, err)
	}
	// As sarama's idempotent producer asks: a new producer id (-1, -1).
	req := &sarama.InitProducerIDRequest{ProducerID: -1, ProducerEpoch: -1}
	switch v := w.client.Config().Version; {
	case v.IsAtLeast(sarama.V2_7_0_0):
		req.Version = 4
	case v.IsAtLeast(sarama.V2_5_0_0):
		req.Version = 3
	case v.IsAtLeast(sarama.V2_4_0_0):
		req.Version = 2
	case v.IsAtLeast(sarama.V2_0_0_0):
		req.Version = 1
	}
	// A broker that has just started answers "still loading" for a while
	// (its transaction coordinator reads its log): that is waited out, as
	// sarama's own producer does, for up to initProducerIDWait.
	backoff := 50 * time.Millisecond
	for deadline := time.Now().Add(initProducerIDWait); ; {
		res, err := w.broker.InitProducerID(req)
		if err == nil && !errors.Is(res.Err, sarama.ErrNoError) {
			err = res.Err
		}
		if err == nil {
			w.pid, w.epoch = res.ProducerID, res.ProducerEpoch
			return nil
		}
		if !coordinatorBusy(err) || time.Now().Add(backoff).After(deadline) {
			return fmt.Errorf("snapshot writer: a producer id: %w", err)
		}
		time.Sleep(backoff)
		backoff = min(2*backoff, time.Second)
	}
}

// initProducerIDWait is how long the snapshot writer waits out a
// transaction coordinator that is not ready for a producer id.
const initProducerIDWait = 30 * time.Second

// coordinatorBusy reports the errors of a producer id request that a
// coordinator gives while it loads, moves or is elected: worth asking again.
func coordinatorBusy(err error) bool {
	for _, busy := range []sarama.KError{
		sarama.ErrOffsetsLoadInProgress, // COORDINATOR_LOAD_IN_PROGRESS
		sarama.ErrConsumerCoordinatorNotAvailable,
		sarama.ErrNotCoordinatorForConsumer,
		sarama.ErrRequestTimedOut,
		sarama.ErrConcurrentTransactions,
	} {
		if errors.Is(err, busy) {
			return true
		}
	}
	return false
}

// produceVersion is the produce request version sarama's producer uses
// for the configured Kafka version (sarama lowers it to what the broker
// supports).
func produceVersion(v sarama.KafkaVersion) int16 {
	switch {
	case v.IsAtLeast(sarama.V3_7_0_0):
		return 10
	case v.IsAtLeast(sarama.V2_8_0_0):
		return 9
	case v.IsAtLeast(sarama.V2_4_0_0):
		return 8
	case v.IsAtLeast(sarama.V2_1_0_0):
		return 7
	case v.IsAtLeast(sarama.V2_0_0_0):
		return 6
	case v.IsAtLeast(sarama.V1_0_0_0):
		return 5
	}
	return 3
}

// recordsPerBatch is how many records a batch allocates room for at once.
const recordsPerBatch = 1024

// add appends msg, a record newHistoryRecord made, to the current batch,
// sending the batch first when msg would make it larger than
// kafka.max_record_bytes. It fails once a write failed.
func (w *snapshotWriter) add(ctx context.Context, msg *sarama.ProducerMessage) error {
	size := msg.ByteSize(2)
	if w.batch != nil && w.size+size >= w.maxBytes {
		if err := w.flush(ctx); err != nil {
			return err
		}
	}
	if err := w.failure(); err != nil {
		return err
	}
	ts := msg.Timestamp.Truncate(time.Millisecond)
	if w.batch == nil {
		w.batch = &sarama.RecordBatch{
			Version: 2, FirstTimestamp: ts, MaxTimestamp: ts,
			ProducerID: w.pid, ProducerEpoch: w.epoch, FirstSequence: w.seq,
			Records: make([]*sarama.Record, 0, recordsPerBatch),
		}
		w.size = recordBatchOverhead
	}
	if len(w.records) == 0 {
		w.records = make([]sarama.Record, recordsPerBatch)
	}
	rec := &w.records[0]
	w.records = w.records[1:]
	if len(w.headers) < len(msg.Headers) {
		w.headers = make([]*sarama.RecordHeader, max(recordsPerBatch*len(msg.Headers), len(msg.Headers)))
	}
	rec.Headers = w.headers[:len(msg.Headers):len(msg.Headers)]
	w.headers = w.headers[len(msg.Headers):]
	for i := range msg.Headers {
		rec.Headers[i] = &msg.Headers[i]
	}
	var err error
	if rec.Key, err = msg.Key.Encode(); err != nil {
		return err
	}
	if rec.Value, err = msg.Value.Encode(); err != nil {
		return err
	}
	// A delta may be negative, as sarama's producer writes it.
	rec.TimestampDelta = ts.Sub(w.batch.FirstTimestamp)
	rec.OffsetDelta = int64(len(w.batch.Records))
	if ts.After(w.batch.MaxTimestamp) {
		w.batch.MaxTimestamp = ts
	}
	w.batch.Records = append(w.batch.Records, rec)
	w.batch.LastOffsetDelta = int32(len(w.batch.Records) - 1)
	w.size += size
	return nil
}

// recordBatchOverhead is sarama's size of a record batch's header, which
// its producer counts against the batch's limit.
const recordBatchOverhead = 49

// flush sends the current batch: it waits while snapshotInFlight requests
// are in flight and one more is queued.
func (w *snapshotWriter) flush(ctx context.Context) error {
	if w.batch == nil {
		return w.failure()
	}
	batch := w.batch
	w.batch = nil
	w.seq = nextSequence(w.seq, len(batch.Records))
	select {
	case w.queue <- batch:
		return w.failure()
	case <-w.failed:
		return w.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// nextSequence is the sequence number after n records from seq: they
// wrap around at the largest int32 to 0, as Kafka's do.
func nextSequence(seq int32, n int) int32 {
	return int32((int64(seq) + int64(n)) % (math.MaxInt32 + 1))
}

// send is the sender: it sends each queued batch once a slot is free.
func (w *snapshotWriter) send() {
	defer close(w.sent)
	first := true
	for batch := range w.queue {
		if w.failure() != nil {
			continue // nothing after a failure: the broker would refuse it anyway
		}
		w.slots <- struct{}{}
		req := &sarama.ProduceRequest{RequiredAcks: sarama.WaitForAll, Timeout: w.timeout, Version: w.version}
		req.AddBatch(w.topic, 0, batch)
		n := len(batch.Records)
		w.answers.Add(1)
		err := w.broker.AsyncProduce(req, func(res *sarama.ProduceResponse, err error) {
			defer w.answers.Done()
			defer func() { <-w.slots }()
			if err == nil {
				if b := res.GetBlock(w.topic, 0); b == nil {
					err = errors.New("no answer for the partition")
				} else if !errors.Is(b.Err, sarama.ErrNoError) {
					err = b.Err
				}
			}
			if err != nil {
				w.fail(fmt.Errorf("kafka did not take a batch of %d snapshot rows: %w", n, err))
			}
		})
		if err != nil {
			w.answers.Done()
			<-w.slots
			w.fail(fmt.Errorf("kafka did not take a batch of %d snapshot rows: %w", n, err))
		}
		if first {
			// The broker checks a producer's sequence numbers only once it
			// has written a batch of it: until then it would take a later
			// batch after a failed first one.
			w.answers.Wait()
			first = false
		}
	}
}

func (w *snapshotWriter) fail(err error) {
	w.failOnce.Do(func() { w.err = err; close(w.failed) })
}

// failure returns the first failure, if any.
func (w *snapshotWriter) failure() error {
	select {
	case <-w.failed:
		return w.err
	default:
		return nil
	}
}

// close sends what add was given unless ctx is done or a write failed,
// waits for every answer and closes the client. It returns the first
// failure: nil means Kafka has every record.
func (w *snapshotWriter) close(ctx context.Context) error {
	err := w.flush(ctx)
	close(w.queue)
	<-w.sent
	w.answers.Wait()
	w.client.Close()
	if ferr := w.failure(); ferr != nil {
		return ferr
	}
	return err
}
