// Package kread reads one partition of a Kafka topic at read_committed and
// always knows its position.
//
// The history is written with Kafka transactions: every transaction ends with
// a commit or abort marker that takes an offset, and the records of an
// aborted transaction stay in the log. sarama's PartitionConsumer hides both,
// as it should, but then a reader cannot tell "the record before the end was
// a marker" from "the record before the end has not arrived yet", so every
// loop that stops at offset end-1 hangs or times out. A Reader fetches with
// the Fetch API itself, filters aborted records the way the Java consumer
// does, and moves its position past every batch a fetch covered, markers
// included: reading [from, to) ends exactly at to.
package kread

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/IBM/sarama"
)

// Record is one committed record of the partition.
type Record struct {
	Offset    int64
	Key       []byte
	Value     []byte
	Headers   []*sarama.RecordHeader
	Timestamp time.Time
}

// ErrOffsetOutOfRange is returned when the reader's position is before the
// partition's log start (retention removed it) or after its end.
var ErrOffsetOutOfRange = errors.New("kread: offset out of range")

// fetchMaxBytes bounds one fetch response; a first batch larger than this
// is still returned whole (KIP-74).
const fetchMaxBytes = 8 << 20

// Reader reads a partition from an offset. It is not safe for concurrent use.
type Reader struct {
	client    sarama.Client
	topic     string
	partition int32
	next      int64
	version   int16
	maxBytes  int32 // of a fetch; fetchMaxBytes unless SetFetchMaxBytes
	// From the last fetch: the last stable offset, and whether it held no
	// batch at all (nothing at or after next below it).
	stable int64
	empty  bool
}

// New returns a Reader of topic/partition positioned at offset from.
func New(client sarama.Client, topic string, partition int32, from int64) *Reader {
	v := int16(5) // isolation level and log start offset (Kafka 0.11+)
	if client.Config().Version.IsAtLeast(sarama.V2_3_0_0) {
		v = 11
	}
	return &Reader{client: client, topic: topic, partition: partition, next: from, version: v, maxBytes: fetchMaxBytes}
}

// SetFetchMaxBytes bounds what one Fetch asks for (default 8 MiB). A reader
// after one record sets it small: the broker then sends the batch that holds
// the offset (a first batch larger than the bound still comes whole, KIP-74)
// rather than up to 8 MiB of what follows it.
func (r *Reader) SetFetchMaxBytes(n int32) { r.maxBytes = max(n, 1) }

// Offset is the next offset the reader will read: past every record, marker
// and aborted record it has fetched.
func (r *Reader) Offset() int64 { return r.next }

// Fetch returns the committed records of one fetch at the reader's position,
// waiting up to wait for some to arrive, and moves the position past
// everything the fetch covered. It may return no record and a moved
// position (markers, aborted records), or neither (nothing new within wait).
func (r *Reader) Fetch(ctx context.Context, wait time.Duration) ([]*Record, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	broker, err := r.client.Leader(r.topic, r.partition)
	if err != nil {
		return nil, fmt.Errorf("kread: leader of %s/%d: %w", r.topic, r.partition, err)
	}
	req := &sarama.FetchRequest{
		Version:      r.version,
		MaxWaitTime:  int32(wait.Milliseconds()),
		MinBytes:     1,
		MaxBytes:     r.maxBytes,
		Isolation:    sarama.ReadCommitted,
		SessionID:    0,
		SessionEpoch: -1,
	}
	req.AddBlock(r.topic, r.partition, r.next, r.maxBytes, -1)
	resp, err := broker.Fetch(req)
	if err != nil {
		_ = broker.Close() // the client reconnects on its next use
		return nil, fmt.Errorf("kread: fetch %s/%d at %d: %w", r.topic, r.partition, r.next, err)
	}
	block := resp.GetBlock(r.topic, r.partition)
	if block == nil {
		return nil, fmt.Errorf("kread: fetch %s/%d: %w", r.topic, r.partition, sarama.ErrIncompleteResponse)
	}
	switch {
	case errors.Is(block.Err, sarama.ErrNoError):
	case errors.Is(block.Err, sarama.ErrOffsetOutOfRange):
		return nil, fmt.Errorf("%w: %s/%d at %d (log start %d)", ErrOffsetOutOfRange, r.topic, r.partition, r.next, block.LogStartOffset)
	case errors.Is(block.Err, sarama.ErrNotLeaderForPartition), errors.Is(block.Err, sarama.ErrLeaderNotAvailable),
		errors.Is(block.Err, sarama.ErrUnknownTopicOrPartition), errors.Is(block.Err, sarama.ErrFencedLeaderEpoch),
		errors.Is(block.Err, sarama.ErrUnknownLeaderEpoch):
		_ = r.client.RefreshMetadata(r.topic)
		return nil, fmt.Errorf("kread: fetch %s/%d: %w", r.topic, r.partition, block.Err)
	default:
		return nil, fmt.Errorf("kread: fetch %s/%d: %w", r.topic, r.partition, block.Err)
	}
	records, next := committed(block, r.next)
	r.empty = len(block.RecordsSet) == 0
	r.stable = block.LastStableOffset
	if r.version < 4 || r.stable < 0 {
		r.stable = block.HighWaterMarkOffset
	}
	r.next = next
	return records, nil
}

// committed returns the committed records of block at or after from, and
// the offset after the last complete batch it holds (from if none).
func committed(block *sarama.FetchResponseBlock, from int64) ([]*Record, int64) {
	aborted := append([]*sarama.AbortedTransaction(nil), block.AbortedTransactions...)
	sort.Slice(aborted, func(i, j int) bool { return aborted[i].FirstOffset < aborted[j].FirstOffset })
	abortedPIDs := map[int64]bool{}
	next := from
	var out []*Record
	for _, set := range block.RecordsSet {
		b := set.RecordBatch
		if b == nil {
			if set.MsgSet != nil { // the pre-0.11 format: no transactions
				for _, outer := range set.MsgSet.Messages {
					for _, m := range outer.Messages() {
						if m.Offset >= from {
							out = append(out, &Record{Offset: m.Offset, Key: m.Msg.Key, Value: m.Msg.Value, Timestamp: m.Msg.Timestamp})
						}
						next = max(next, m.Offset+1)
					}
				}
			}
			continue
		}
		if b.PartialTrailingRecord {
			break // the rest comes with the next fetch
		}
		for len(aborted) > 0 && aborted[0].FirstOffset <= b.LastOffset() {
			abortedPIDs[aborted[0].ProducerID] = true
			aborted = aborted[1:]
		}
		next = max(next, b.LastOffset()+1)
		if b.Control {
			if len(b.Records) > 0 && controlType(b.Records[0].Key) == controlAbort {
				delete(abortedPIDs, b.ProducerID)
			}
			continue
		}
		if b.IsTransactional && abortedPIDs[b.ProducerID] {
			continue
		}
		for _, rec := range b.Records {
			off := b.FirstOffset + rec.OffsetDelta
			if off < from {
				continue
			}
			ts := b.FirstTimestamp.Add(rec.TimestampDelta)
			if b.LogAppendTime {
				ts = b.MaxTimestamp
			}
			out = append(out, &Record{Offset: off, Key: rec.Key, Value: rec.Value, Headers: rec.Headers, Timestamp: ts})
		}
	}
	return out, next
}

const (
	controlAbort  = 0
	controlCommit = 1
)

// controlType reads the type of a control record from its key: int16
// version, int16 type (0 abort, 1 commit).
func controlType(key []byte) int {
	if len(key) < 4 {
		return -1
	}
	return int(binary.BigEndian.Uint16(key[2:4]))
}

// Range calls fn with every committed record at offsets [from, to), in
// order, until fn returns false or an error; it returns once the reader's
// position reaches to, or once nothing is left before to (compaction may
// have removed a compacted topic's last records). Use End for a to that
// exists: an offset beyond the last stable offset waits for transactions
// to be decided, or for new records.
func Range(ctx context.Context, client sarama.Client, topic string, partition int32, from, to int64, fn func(*Record) (bool, error)) error {
	return RangeSized(ctx, client, topic, partition, from, to, fetchMaxBytes, fn)
}

// RangeSized is Range with fetches of at most maxBytes (see
// Reader.SetFetchMaxBytes): for a read that likely stops after a few
// records, which an 8 MiB fetch would make read and decode thousands.
func RangeSized(ctx context.Context, client sarama.Client, topic string, partition int32, from, to int64, maxBytes int32, fn func(*Record) (bool, error)) error {
	r := New(client, topic, partition, from)
	r.SetFetchMaxBytes(maxBytes)
	for r.Offset() < to {
		recs, err := r.Fetch(ctx, 500*time.Millisecond)
		if err != nil {
			return err
		}
		if r.empty && r.stable >= to {
			return nil // nothing left in [position, to)
		}
		for _, rec := range recs {
			if rec.Offset >= to {
				return nil
			}
			more, err := fn(rec)
			if err != nil || !more {
				return err
			}
		}
	}
	return nil
}

// Follow calls fn with every committed record of the partition from offset
// from on (sarama.OffsetNewest: its end now), as they arrive, until ctx is
// done (it returns ctx.Err()) or fn returns an error (returned). A fetch
// that fails (a broker away, a leader moving) is reported to onErr, if not
// nil, and tried again after a second: the follower rides out outages. An
// offset that retention has passed is ErrOffsetOutOfRange, returned.
func Follow(ctx context.Context, client sarama.Client, topic string, partition int32, from int64, onErr func(error), fn func(*Record) error) error {
	if from == sarama.OffsetNewest {
		end, err := End(client, topic, partition)
		if err != nil {
			return err
		}
		from = end
	}
	r := New(client, topic, partition, from)
	for {
		recs, err := r.Fetch(ctx, 500*time.Millisecond)
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.Is(err, ErrOffsetOutOfRange):
			return err
		case err != nil:
			if onErr != nil {
				onErr(err)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(time.Second):
			}
			continue
		}
		for _, rec := range recs {
			if err := fn(rec); err != nil {
				return err
			}
		}
	}
}

// Message is rec as a sarama.ConsumerMessage of topic/partition, for code
// that handles both.
func (rec *Record) Message(topic string, partition int32) *sarama.ConsumerMessage {
	return &sarama.ConsumerMessage{Topic: topic, Partition: partition, Offset: rec.Offset, Key: rec.Key,
		Value: rec.Value, Headers: rec.Headers, Timestamp: rec.Timestamp}
}

// exactWithin is how far behind its end a Lag counts records one by one.
const exactWithin = 1000

// Lag is how many committed records of the partition a consumer whose next
// offset is next has still to read. end-next alone never reaches 0 behind
// a transactional writer: the marker that ends its last transaction takes
// an offset no consumer commits past. Within 1000 offsets of the end it
// counts the records; further behind, markers are a rounding error and it
// returns end-next.
func Lag(ctx context.Context, client sarama.Client, topic string, partition int32, next int64) (int64, error) {
	end, err := End(client, topic, partition)
	if err != nil || end-next <= 0 {
		return 0, err
	}
	if end-next > exactWithin {
		return end - next, nil
	}
	var n int64
	err = Range(ctx, client, topic, partition, next, end, func(*Record) (bool, error) { n++; return true, nil })
	return n, err
}

// End returns the partition's last stable offset: the end of what a
// read_committed reader can read now (the high water mark when no
// transaction is open).
func End(client sarama.Client, topic string, partition int32) (int64, error) {
	return listOffset(client, topic, partition, sarama.OffsetNewest)
}

// Start returns the partition's log start offset.
func Start(client sarama.Client, topic string, partition int32) (int64, error) {
	return listOffset(client, topic, partition, sarama.OffsetOldest)
}

func listOffset(client sarama.Client, topic string, partition int32, at int64) (int64, error) {
	broker, err := client.Leader(topic, partition)
	if err != nil {
		return 0, fmt.Errorf("kread: leader of %s/%d: %w", topic, partition, err)
	}
	req := sarama.NewOffsetRequest(client.Config().Version)
	if req.Version >= 2 {
		req.IsolationLevel = sarama.ReadCommitted
	}
	req.AddBlock(topic, partition, at, 1)
	resp, err := broker.GetAvailableOffsets(req)
	if err != nil {
		_ = broker.Close()
		return 0, fmt.Errorf("kread: list offsets of %s/%d: %w", topic, partition, err)
	}
	block := resp.GetBlock(topic, partition)
	if block == nil {
		return 0, fmt.Errorf("kread: list offsets of %s/%d: %w", topic, partition, sarama.ErrIncompleteResponse)
	}
	if !errors.Is(block.Err, sarama.ErrNoError) {
		if errors.Is(block.Err, sarama.ErrNotLeaderForPartition) {
			_ = client.RefreshMetadata(topic)
		}
		return 0, fmt.Errorf("kread: list offsets of %s/%d: %w", topic, partition, block.Err)
	}
	if block.Offset == 0 && len(block.Offsets) == 1 {
		return block.Offsets[0], nil
	}
	return block.Offset, nil
}
