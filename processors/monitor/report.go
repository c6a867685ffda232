package monitor

import (
	"context"
	"fmt"
	"io"
	"math"
	"slices"
	"time"

	"github.com/IBM/sarama"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/internal/kread"
	"github.com/changes-dev/changes/internal/outage"
	"github.com/changes-dev/changes/topology"
)

// ReferenceNote explains the "reference system" row that `changes slo` and
// the demo's summary print under their latencies.
const ReferenceNote = "reference system: the published figures of the production system we compare with, 81.8% of changes within 5 s and 89% within 1 min"

// SLOBounds are the bounds `changes slo` reports the share of changes within,
// the reference report's.
var SLOBounds = []time.Duration{time.Second, 5 * time.Second, time.Minute, time.Hour}

// Latencies are the latencies of one kind (commit to history, or commit to
// snapshot) of one entity type.
type Latencies struct {
	EntityType string
	// Stage is "history" or "snapshot".
	Stage   string
	samples []float64 // seconds, sorted
	// committed is how many changes the history holds for the window.
	committed int
}

// Committed is how many changes of the type the history holds for the
// window; Count falls short of it by the changes not routed or applied yet
// (and, for the snapshot, by states compaction has removed since).
func (l *Latencies) Committed() int { return l.committed }

// Count is the number of changes measured.
func (l *Latencies) Count() int { return len(l.samples) }

// Within is the share of changes whose latency is at most d.
func (l *Latencies) Within(d time.Duration) float64 {
	if len(l.samples) == 0 {
		return math.NaN()
	}
	n, _ := slices.BinarySearch(l.samples, d.Seconds()+1e-12)
	return float64(n) / float64(len(l.samples))
}

// Quantile is the q-quantile (nearest rank) in seconds.
func (l *Latencies) Quantile(q float64) float64 {
	if len(l.samples) == 0 {
		return math.NaN()
	}
	i := int(math.Ceil(q*float64(len(l.samples)))) - 1
	return l.samples[max(0, min(i, len(l.samples)-1))]
}

// Report is what `changes slo` prints: the latencies of the changes of a
// window, from the times the records carry (commit time, the router's copy
// time, apply time), so any window the topics still hold can be reported
// after the fact.
type Report struct {
	From, To  time.Time
	Latencies []*Latencies // by entity type, history then snapshot
}

// reader reads topic partitions from the first offset at or after a time.
type reader struct {
	client   sarama.Client
	consumer sarama.Consumer
}

func newReader(cfg *topology.Config) (*reader, error) {
	client, err := topology.NewClient(cfg.Kafka)
	if err != nil {
		return nil, fmt.Errorf("kafka client: %w", err)
	}
	consumer, err := sarama.NewConsumerFromClient(client)
	if err != nil {
		client.Close()
		return nil, err
	}
	return &reader{client: client, consumer: consumer}, nil
}

// Close closes the consumer and the client, waiting at most
// outage.CloseTimeout for each: a report that is done must not hang on a
// broker that stopped answering.
func (r *reader) Close() {
	outage.CloseWithin(outage.CloseTimeout, "kafka consumer", r.consumer.Close)
	outage.CloseWithin(outage.CloseTimeout, "kafka client", r.client.Close)
}

// read calls fn with every committed record of topic/partition from the
// first one at or after from up to the partition's end when read starts.
func (r *reader) read(ctx context.Context, topic string, partition int32, from time.Time, fn func(*sarama.ConsumerMessage)) error {
	end, err := kread.End(r.client, topic, partition)
	if err != nil {
		return err
	}
	start, err := kread.Start(r.client, topic, partition)
	if err != nil {
		return err
	}
	if !from.IsZero() {
		at, err := r.client.GetOffset(topic, partition, from.UnixMilli())
		if err != nil {
			return err
		}
		if at < 0 {
			return nil // nothing at or after from
		}
		start = max(start, at)
	}
	err = kread.Range(ctx, r.client, topic, partition, start, end, func(rec *kread.Record) (bool, error) {
		fn(rec.Message(topic, partition))
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("read %s/%d: %w", topic, partition, err)
	}
	return nil
}

// SLO reads the changes committed in the last window and measures their
// latencies as the monitor does (rows of an initial snapshot left out): commit to history from the router's copies
// in the events topics (their timestamps: when the history's consumer had
// the change), commit to snapshot from the snapshot tables' apply times (a
// state compacted away since is not counted).
func SLO(ctx context.Context, topo *topology.Topology, window time.Duration) (*Report, error) {
	cfg := topo.Config()
	r, err := newReader(cfg)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	to := time.Now()
	from := to.Add(-window)
	rep := &Report{From: from, To: to}
	hist := map[string]*Latencies{}
	snap := map[string]*Latencies{}
	for _, typ := range topo.EntityTypes() {
		hist[typ] = &Latencies{EntityType: typ, Stage: "history"}
		snap[typ] = &Latencies{EntityType: typ, Stage: "snapshot"}
		rep.Latencies = append(rep.Latencies, hist[typ], snap[typ])
	}
	// The history says how many changes were committed in the window, and
	// which positions are rows of an initial snapshot (no commit time).
	snapshotRows := map[codecs.Position]struct{}{}
	err = r.read(ctx, topo.History(), 0, from, func(msg *sarama.ConsumerMessage) {
		ev, err := (codecs.EventCodec{}).Decode(msg.Value)
		switch {
		case err != nil || ev.CommitTime.Before(from) || ev.Op == codecs.OpTruncate:
		case ev.Op == codecs.OpSnapshot:
			snapshotRows[ev.Position] = struct{}{}
		case hist[ev.EntityType] != nil:
			hist[ev.EntityType].committed++
			snap[ev.EntityType].committed++
		}
	})
	if err != nil {
		return nil, err
	}
	for _, typ := range topo.EntityTypes() {
		ent, _ := cfg.Entity(typ)
		seen := map[codecs.Position]struct{}{} // the router may deliver twice
		for p := range int32(ent.Partitions) {
			err := r.read(ctx, topo.Events(typ), p, from, func(msg *sarama.ConsumerMessage) {
				ev, err := (codecs.EventCodec{}).Decode(msg.Value)
				if err != nil || !ev.Op.IsChange() {
					return
				}
				if _, dup := seen[ev.Position]; dup {
					return
				}
				seen[ev.Position] = struct{}{}
				if d, committed, ok := routedLatency(msg); ok && !committed.Before(from) {
					hist[typ].samples = append(hist[typ].samples, d)
				}
			})
			if err != nil {
				return nil, err
			}
		}
	}
	for _, typ := range topo.EntityTypes() {
		ent, _ := cfg.Entity(typ)
		seen := map[codecs.Position]struct{}{}
		for p := range int32(ent.Partitions) {
			err := r.read(ctx, topo.Snapshot(typ), p, from, func(msg *sarama.ConsumerMessage) {
				if msg.Value == nil {
					return
				}
				st, err := (codecs.StateCodec{}).Decode(msg.Value)
				if err != nil || st.Watermark || st.CommitTime.Before(from) {
					return
				}
				if _, dup := seen[st.Position]; dup {
					return
				}
				seen[st.Position] = struct{}{}
				if _, copied := snapshotRows[st.Position]; copied {
					return
				}
				if d, ok := appliedLatency(st); ok {
					snap[typ].samples = append(snap[typ].samples, d)
				}
			})
			if err != nil {
				return nil, err
			}
		}
	}
	for _, l := range rep.Latencies {
		slices.Sort(l.samples)
	}
	return rep, nil
}

// Print writes the report as the reference system's: the share of changes
// within each of SLOBounds, and p50, p99, p99.9 and max.
func (rep *Report) Print(w io.Writer) {
	fmt.Fprintf(w, "changes slo: changes committed %s .. %s (%s)\n\n", rep.From.UTC().Format(time.RFC3339), rep.To.UTC().Format(time.RFC3339), rep.To.Sub(rep.From).Round(time.Second))
	fmt.Fprintf(w, "  %-30s %9s %9s", "latency", "committed", "changes")
	for _, b := range SLOBounds {
		fmt.Fprintf(w, " %8s", "<= "+shortDuration(b))
	}
	fmt.Fprintf(w, " %9s %9s %9s %9s\n", "p50", "p99", "p99.9", "max")
	for _, l := range rep.Latencies {
		fmt.Fprintf(w, "  %-30s %9d %9d", "commit -> "+l.Stage+" "+l.EntityType, l.Committed(), l.Count())
		for _, b := range SLOBounds {
			fmt.Fprintf(w, " %8s", percent(l.Within(b)))
		}
		fmt.Fprintf(w, " %9s %9s %9s %9s\n", seconds(l.Quantile(0.5)), seconds(l.Quantile(0.99)), seconds(l.Quantile(0.999)), seconds(l.Quantile(1)))
	}
	fmt.Fprintf(w, "  %-30s %9s %9s %8s %8s %8s %8s\n", "reference system", "", "", "", "81.8%", "89.0%", "100.0%")
	fmt.Fprintf(w, "\n  committed: the history's changes of the window; changes: those that reached the stage, measured\n")
	fmt.Fprintf(w, "  %s\n", ReferenceNote)
}

func shortDuration(d time.Duration) string {
	switch {
	case d >= time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	case d >= time.Minute:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	}
	return fmt.Sprintf("%ds", int(d.Seconds()))
}

func percent(f float64) string {
	if math.IsNaN(f) {
		return "-"
	}
	return fmt.Sprintf("%.1f%%", 100*f)
}

func seconds(s float64) string {
	if math.IsNaN(s) {
		return "-"
	}
	return time.Duration(s * float64(time.Second)).Round(10 * time.Microsecond).String()
}

// AuditResult is what `changes audit` finds.
type AuditResult struct {
	// HistoryRecords and TableRecords are how many records were checked.
	HistoryRecords, TableRecords int
	// Forgotten is how many history events of the window were forgotten
	// unchecked: the audit remembers monitor.remember_events of them, and
	// table records at the positions of older ones are not checked.
	Forgotten int
	Anomalies []Anomaly
	Stale     []Stale
}

// Audit checks the changes of the last window once: the history's integrity,
// every table record written since against the history, and every entity
// whose table has not reached its latest history event committed more than
// staleAfter ago. It remembers at most monitor.remember_events history
// events: in a longer window the oldest go unchecked (AuditResult.Forgotten).
func Audit(ctx context.Context, topo *topology.Topology, window, staleAfter time.Duration) (*AuditResult, error) {
	cfg := topo.Config()
	r, err := newReader(cfg)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	now := time.Now()
	from := now.Add(-window)
	c := NewChecker(topo, staleAfter, window+staleAfter, cfg.Monitor.RememberEvents)
	res := &AuditResult{}
	// The history first, each event "seen" at its commit time, then the
	// tables: a table record is checked against what the history says.
	err = r.read(ctx, topo.History(), 0, from, func(msg *sarama.ConsumerMessage) {
		ev, err := (codecs.EventCodec{}).Decode(msg.Value)
		if err == nil && ev.Op == codecs.OpWatermark {
			return // progress, nothing to check
		}
		res.HistoryRecords++
		if err != nil {
			res.Anomalies = append(res.Anomalies, Anomaly{Kind: Undecodable, Topic: msg.Topic, Offset: msg.Offset, Detail: err.Error()})
			return
		}
		res.Anomalies = append(res.Anomalies, c.History(msg.Offset, ev, ev.CommitTime)...)
	})
	if err != nil {
		return nil, err
	}
	for _, typ := range topo.EntityTypes() {
		ent, _ := cfg.Entity(typ)
		for p := range int32(ent.Partitions) {
			// From the start of the window, less the bound: a state applied
			// late is still read.
			err := r.read(ctx, topo.Snapshot(typ), p, from.Add(-staleAfter), func(msg *sarama.ConsumerMessage) {
				var st *codecs.State
				if msg.Value != nil {
					var err error
					if st, err = (codecs.StateCodec{}).Decode(msg.Value); err != nil {
						res.TableRecords++
						res.Anomalies = append(res.Anomalies, Anomaly{Kind: Undecodable, EntityType: typ, Topic: msg.Topic, Partition: msg.Partition, Offset: msg.Offset, Detail: err.Error()})
						return
					}
					if st.Watermark {
						return
					}
				}
				res.TableRecords++
				res.Anomalies = append(res.Anomalies, c.Table(typ, msg.Topic, msg.Partition, msg.Offset, string(msg.Key), st, now)...)
			})
			if err != nil {
				return nil, err
			}
		}
	}
	var never []Anomaly
	res.Stale, never = c.Stale(now)
	res.Anomalies = append(res.Anomalies, never...)
	settled, pending := c.Forgotten()
	res.Forgotten = settled + pending
	return res, nil
}
