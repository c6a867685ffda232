package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/IBM/sarama"

	"github.com/changes-dev/changes/codecs"
)

// arrivals records when a consumer saw each seq.
type arrivals struct {
	mu sync.Mutex
	at map[int64]int64
	n  int64 // records read, seq or not
}

func newArrivals() *arrivals { return &arrivals{at: map[int64]int64{}} }

func (a *arrivals) add(seq int64, at int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.n++
	if seq > 0 {
		if _, dup := a.at[seq]; !dup {
			a.at[seq] = at
		}
	}
}

func (a *arrivals) reset() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.at = map[int64]int64{}
	a.n = 0
}

// latencies joins commits with arrivals: the latency of every committed
// change that arrived, and how many did not (yet).
func (a *arrivals) latencies(commits []commit) (lat []time.Duration, missing int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, c := range commits {
		at, ok := a.at[c.seq]
		if !ok {
			missing++
			continue
		}
		lat = append(lat, time.Duration(max(at-c.at, 0)))
	}
	slices.Sort(lat)
	return lat, missing
}

// after is, for every committed change that both a and earlier saw, how
// long after earlier a saw it (0 if a saw it first): the time one stage
// adds to the one before it.
func (a *arrivals) after(earlier *arrivals, commits []commit) []time.Duration {
	a.mu.Lock()
	defer a.mu.Unlock()
	earlier.mu.Lock()
	defer earlier.mu.Unlock()
	var lat []time.Duration
	for _, c := range commits {
		at, ok := a.at[c.seq]
		e, eok := earlier.at[c.seq]
		if ok && eok {
			lat = append(lat, time.Duration(max(at-e, 0)))
		}
	}
	slices.Sort(lat)
	return lat
}

// seqOf reads the seq column of a history event.
func seqOfEvent(value []byte) int64 {
	ev, err := (codecs.EventCodec{}).Decode(value)
	if err != nil || ev.After == nil {
		return 0
	}
	seq, _ := strconv.ParseInt(string(ev.After["seq"]), 10, 64)
	return seq
}

// seqOfState reads the seq column of a snapshot table's state (0 for a
// tombstone or a truncate marker).
func seqOfState(value []byte) int64 {
	if value == nil {
		return 0
	}
	st, err := (codecs.StateCodec{}).Decode(value)
	if err != nil || st.Row == nil {
		return 0
	}
	seq, _ := strconv.ParseInt(string(st.Row["seq"]), 10, 64)
	return seq
}

// seqOfDebezium reads after.seq of a Debezium change event (JSON converter,
// schemas disabled).
func seqOfDebezium(value []byte) int64 {
	if value == nil {
		return 0 // a tombstone
	}
	var v struct {
		After map[string]json.RawMessage `json:"after"`
	}
	if json.Unmarshal(value, &v) != nil || v.After == nil {
		return 0
	}
	seq, _ := strconv.ParseInt(string(v.After["seq"]), 10, 64)
	return seq
}

// consume reads topics from their current end into a, with seqOf, until
// ctx is done. It reads as a consumer group of its own: sarama's plain
// PartitionConsumer delivers some records up to 100 ms late on this machine
// (p99 ~60 ms on a bare topic, whatever Consumer.MaxWaitTime) while a group
// consumer does not (p99 ~3 ms); both systems are read the same way.
func consume(ctx context.Context, brokers []string, cfg *sarama.Config, group string, topics []string, seqOf func([]byte) int64, a *arrivals) error {
	c := *cfg
	c.Consumer.Offsets.Initial = sarama.OffsetNewest
	c.Consumer.Offsets.AutoCommit.Enable = false
	cg, err := sarama.NewConsumerGroup(brokers, group, &c)
	if err != nil {
		return err
	}
	ready := make(chan struct{})
	h := &arrivalHandler{seqOf: seqOf, a: a, ready: ready}
	go func() {
		defer cg.Close()
		for ctx.Err() == nil {
			if err := cg.Consume(ctx, topics, h); err != nil && ctx.Err() == nil {
				time.Sleep(100 * time.Millisecond)
			}
		}
	}()
	select {
	case <-ready:
		return nil
	case <-time.After(30 * time.Second):
		return fmt.Errorf("consumer group %s never got its partitions", group)
	case <-ctx.Done():
		return ctx.Err()
	}
}

type arrivalHandler struct {
	seqOf func([]byte) int64
	a     *arrivals
	ready chan struct{}
	once  sync.Once
}

func (h *arrivalHandler) Setup(sarama.ConsumerGroupSession) error {
	h.once.Do(func() { close(h.ready) })
	return nil
}

func (h *arrivalHandler) Cleanup(sarama.ConsumerGroupSession) error { return nil }

func (h *arrivalHandler) ConsumeClaim(_ sarama.ConsumerGroupSession, claim sarama.ConsumerGroupClaim) error {
	for m := range claim.Messages() {
		h.a.add(h.seqOf(m.Value), time.Now().UnixNano())
	}
	return nil
}

// endOffsets sums the end offsets of every partition of topics.
func endOffsets(client sarama.Client, topics ...string) (int64, error) {
	var sum int64
	for _, topic := range topics {
		if err := client.RefreshMetadata(topic); err != nil {
			return 0, err
		}
		parts, err := client.Partitions(topic)
		if err != nil {
			return 0, err
		}
		for _, p := range parts {
			end, err := client.GetOffset(topic, p, sarama.OffsetNewest)
			if err != nil {
				return 0, err
			}
			sum += end
		}
	}
	return sum, nil
}

// stats are the latency figures of one system at one rate.
type stats struct {
	Samples int     `json:"samples"`
	Missing int     `json:"missing"`
	P50ms   float64 `json:"p50_ms"`
	P99ms   float64 `json:"p99_ms"`
	P999ms  float64 `json:"p999_ms"`
	MaxMs   float64 `json:"max_ms"`
}

func statsOf(lat []time.Duration, missing int) stats {
	s := stats{Samples: len(lat), Missing: missing}
	if len(lat) == 0 {
		return s // printed as "-"
	}
	q := func(f float64) float64 {
		i := int(math.Ceil(f*float64(len(lat)))) - 1
		return float64(lat[max(0, min(i, len(lat)-1))].Microseconds()) / 1000
	}
	s.P50ms, s.P99ms, s.P999ms, s.MaxMs = q(0.5), q(0.99), q(0.999), q(1)
	return s
}
