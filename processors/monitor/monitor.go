// Package monitor watches the platform from the outside, as the reference
// system's separate daemon did, and exports what it finds as changes_monitor_*
// Prometheus metrics that deploy/prometheus/alerts.yml alerts on:
//
//   - latency (rows of the initial snapshot left out): commit to history (when the history's first consumer, the
//     router, had the change: the timestamp of its copy in the type's events
//     topic) and commit to snapshot (when the snapshot processor applied it),
//     per entity type, as histograms with buckets at 1 s, 5 s, 60 s and
//     3600 s among others. Both come from times the records carry, so a
//     monitor that lags or restarts does not distort them, and `changes slo`
//     measures any past window the same way;
//   - history integrity: positions strictly increase and consecutive inside a
//     transaction; duplicates, reorders and gaps are counted and logged with
//     their offsets;
//   - snapshot consistency: every table record must be the state a history
//     event says (else wrong_value or unknown_position), and every entity's
//     table must reach its latest history event within monitor.stale_after
//     (else it is stale, a gauge);
//   - database audit: sampled entities compared with PostgreSQL at a
//     consistent point, changes in flight allowed for;
//   - lag: every processor group's lag per partition, and the replication
//     slot's lag and retained WAL in bytes.
//
// The Checker holds the consistency logic without I/O; the Monitor feeds it
// from Kafka. A Monitor starts at the end of every topic: it checks what
// happens from its start on.
package monitor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strconv"
	"time"

	"github.com/IBM/sarama"
	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/internal/kread"
	"github.com/changes-dev/changes/internal/outage"
	"github.com/changes-dev/changes/topology"
)

// Option configures a Monitor.
type Option func(*Monitor)

// WithLogger sets the logger. Default: slog.Default().
func WithLogger(l *slog.Logger) Option { return func(m *Monitor) { m.log = l } }

// WithRegisterer registers the changes_monitor_* metrics with r. Default:
// not registered.
func WithRegisterer(r prometheus.Registerer) Option { return func(m *Monitor) { m.reg = r } }

// WithStorageDir sets where the database audit keeps its views of the
// tables. Default: <config storage>/monitor.
func WithStorageDir(dir string) Option { return func(m *Monitor) { m.storageDir = dir } }

// Monitor checks the history and the snapshot tables of a deployment.
type Monitor struct {
	topo       *topology.Topology
	cfg        *topology.Config
	log        *slog.Logger
	reg        prometheus.Registerer
	storageDir string
	metrics    *metrics
	checker    *Checker
	declared   map[string]bool    // entity types of the config
	forgotten  [2]int             // the checker's Forgotten counts already exported
	stale      map[entityKey]bool // reported stale, to log each once
	ready      chan struct{}      // closed once every consumer reads
}

// New returns a Monitor of topo's deployment.
func New(topo *topology.Topology, opts ...Option) (*Monitor, error) {
	cfg := topo.Config()
	m := &Monitor{
		topo:       topo,
		cfg:        cfg,
		log:        slog.Default(),
		storageDir: filepath.Join(cfg.Storage, "monitor"),
		stale:      map[entityKey]bool{},
		ready:      make(chan struct{}),
	}
	for _, o := range opts {
		o(m)
	}
	m.log = m.log.With("component", "monitor")
	var err error
	if m.metrics, err = newMetrics(m.reg, topo); err != nil {
		return nil, fmt.Errorf("monitor metrics: %w", err)
	}
	m.checker = NewChecker(topo, cfg.Monitor.StaleAfter, cfg.Monitor.Remember, cfg.Monitor.RememberEvents)
	m.declared = map[string]bool{}
	for _, typ := range topo.EntityTypes() {
		m.declared[typ] = true
	}
	return m, nil
}

// undeclaredLabel is the entity_type label of whatever is not a declared
// entity type: a type read from a record never becomes a label value of its
// own, so forged records cannot make series without bound.
const undeclaredLabel = "undeclared"

// typeLabel is typ as a metric label value.
func (m *Monitor) typeLabel(typ string) string {
	if m.declared[typ] {
		return typ
	}
	return undeclaredLabel
}

// Ready is closed once the monitor reads every topic: what is written from
// then on is checked.
func (m *Monitor) Ready() <-chan struct{} { return m.ready }

// record is a message of the history, an events topic or a table, for the
// check loop.
type record struct {
	source int    // fromHistory, fromEvents or fromTable
	typ    string // entity type of an events topic or a table
	msg    *sarama.ConsumerMessage
}

const (
	fromHistory = iota
	fromEvents
	fromTable
)

// Run monitors until ctx is cancelled (nil) or Kafka or PostgreSQL fail.
func (m *Monitor) Run(ctx context.Context) error {
	client, err := topology.NewClient(m.cfg.Kafka)
	if err != nil {
		return fmt.Errorf("monitor: kafka client: %w", err)
	}
	defer m.closeWithin("kafka client", client.Close)
	consumer, err := sarama.NewConsumerFromClient(client)
	if err != nil {
		return fmt.Errorf("monitor: consumer: %w", err)
	}
	defer m.closeWithin("kafka consumer", consumer.Close)
	// Whichever way Run returns, the goroutines it started stop and are
	// waited for before the consumer and the client close under them: an
	// early return cancels them first.
	runCtx, cancel := context.WithCancel(ctx)
	g, gctx := errgroup.WithContext(runCtx)
	defer func() {
		cancel()
		g.Wait()
	}()
	in := make(chan record, 1024)
	// Tables first, then the history: a table record of a history event
	// the monitor sees is always read too.
	for _, typ := range m.topo.EntityTypes() {
		ent, _ := m.cfg.Entity(typ)
		for p := range int32(ent.Partitions) {
			if err := m.consume(gctx, g, consumer, m.topo.Snapshot(typ), p, fromTable, typ, in); err != nil {
				return err
			}
			if err := m.consume(gctx, g, consumer, m.topo.Events(typ), p, fromEvents, typ, in); err != nil {
				return err
			}
		}
	}
	// The checker starts after the history's last committed record: the
	// last stable offset, as the capture writes in Kafka transactions.
	hist := m.topo.History()
	end, err := kread.End(client, hist, 0)
	if err != nil {
		return fmt.Errorf("monitor: end of %s: %w", hist, err)
	}
	last, err := lastEvent(ctx, client, hist, end)
	if err != nil {
		return fmt.Errorf("monitor: last record of %s: %w", hist, err)
	}
	if last != nil {
		m.checker.Begin(last.Position)
	}
	if err := m.consumeFrom(gctx, g, consumer, hist, 0, end, fromHistory, "", in); err != nil {
		return err
	}
	close(m.ready)
	m.log.Info("monitoring", "history", m.topo.History(), "types", m.topo.EntityTypes(),
		"stale_after", m.cfg.Monitor.StaleAfter, "audit_rate", m.cfg.Monitor.AuditRate)
	g.Go(func() error { return m.check(gctx, in) })
	g.Go(func() error { return m.watchLag(gctx, client) })
	if m.cfg.Monitor.AuditRate > 0 {
		g.Go(func() error { return m.audit(gctx) })
	}
	err = g.Wait()
	if errors.Is(err, context.Canceled) && ctx.Err() != nil {
		return nil
	}
	return err
}

// consume reads one partition from its end into in.
func (m *Monitor) consume(ctx context.Context, g *errgroup.Group, consumer sarama.Consumer, topic string, partition int32, source int, typ string, in chan<- record) error {
	return m.consumeFrom(ctx, g, consumer, topic, partition, sarama.OffsetNewest, source, typ, in)
}

// consumeFrom reads one partition from offset from into in. A consumer
// that closes ends the monitor with an error (the caller restarts it),
// never a loop on a closed channel.
func (m *Monitor) consumeFrom(ctx context.Context, g *errgroup.Group, consumer sarama.Consumer, topic string, partition int32, from int64, source int, typ string, in chan<- record) error {
	pc, err := consumer.ConsumePartition(topic, partition, from)
	if err != nil {
		return fmt.Errorf("monitor: read %s/%d: %w", topic, partition, err)
	}
	g.Go(func() error {
		defer pc.Close()
		for {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case err, ok := <-pc.Errors():
				if !ok {
					return fmt.Errorf("monitor: the consumer of %s/%d closed", topic, partition)
				}
				// sarama retries by itself; a monitor that stopped would
				// silence every alert.
				m.metrics.consumerErrors.WithLabelValues(topic).Inc()
				m.log.Warn("consumer error", "topic", topic, "partition", partition, "err", err)
			case msg, ok := <-pc.Messages():
				if !ok {
					return fmt.Errorf("monitor: the consumer of %s/%d closed", topic, partition)
				}
				select {
				case in <- record{source: source, typ: typ, msg: msg}:
				case <-ctx.Done():
					return ctx.Err()
				}
			}
		}
	})
	return nil
}

// check runs the Checker on every record and the staleness check every
// second.
func (m *Monitor) check(ctx context.Context, in <-chan record) error {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
			m.checkStale(time.Now())
		case r := <-in:
			m.apply(r, time.Now())
		}
	}
}

func (m *Monitor) apply(r record, now time.Time) {
	msg := r.msg
	var found []Anomaly
	switch r.source {
	case fromHistory:
		ev, err := (codecs.EventCodec{}).Decode(msg.Value)
		if err != nil {
			m.metrics.badRecords.WithLabelValues(msg.Topic).Inc()
			m.log.Warn("history record does not decode", "offset", msg.Offset, "err", err)
			return
		}
		found = m.checker.History(msg.Offset, ev, now)
	case fromEvents:
		if d, _, ok := routedLatency(msg); ok {
			m.metrics.toHistory.WithLabelValues(r.typ).Observe(d)
		}
		return
	case fromTable:
		var st *codecs.State
		if msg.Value != nil {
			var err error
			if st, err = (codecs.StateCodec{}).Decode(msg.Value); err != nil {
				m.metrics.badRecords.WithLabelValues(msg.Topic).Inc()
				m.log.Warn("table record does not decode", "topic", msg.Topic, "partition", msg.Partition, "offset", msg.Offset, "err", err)
				return
			}
			if d, ok := appliedLatency(st); ok && !m.checker.IsSnapshot(st.Position) {
				m.metrics.toSnapshot.WithLabelValues(r.typ).Observe(d)
			}
		}
		found = m.checker.Table(r.typ, msg.Topic, msg.Partition, msg.Offset, string(msg.Key), st, now)
	}
	for _, a := range found {
		switch a.Kind {
		case Duplicate, Reorder, Gap, UndeclaredType:
			m.metrics.historyAnomalies.WithLabelValues(a.Kind).Inc()
		default:
			m.metrics.inconsistent.WithLabelValues(m.typeLabel(a.EntityType), a.Kind).Inc()
		}
		m.log.Error("inconsistency", "kind", a.Kind, "entity_type", a.EntityType, "entity_id", a.EntityID,
			"position", a.Position.String(), "topic", a.Topic, "partition", a.Partition, "offset", a.Offset, "detail", a.Detail)
	}
}

func (m *Monitor) checkStale(now time.Time) {
	stale, never := m.checker.Stale(now)
	for _, a := range never {
		m.metrics.inconsistent.WithLabelValues(m.typeLabel(a.EntityType), a.Kind).Inc()
		m.log.Error("inconsistency", "kind", a.Kind, "entity_type", a.EntityType, "entity_id", a.EntityID,
			"position", a.Position.String(), "topic", a.Topic, "offset", a.Offset, "detail", a.Detail)
	}
	counts := map[string]int{}
	current := map[entityKey]bool{}
	for _, s := range stale {
		k := entityKey{s.EntityType, s.EntityID}
		counts[s.EntityType]++
		current[k] = true
		if !m.stale[k] {
			m.log.Error("stale entity: its snapshot has not reached its latest history event",
				"entity_type", s.EntityType, "entity_id", s.EntityID, "position", s.Position.String(),
				"history_offset", s.Offset, "for", now.Sub(s.Since).Round(time.Second), "table_position", s.TablePosition.String())
		}
	}
	m.stale = current
	for _, typ := range m.topo.EntityTypes() {
		m.metrics.stale.WithLabelValues(typ).Set(float64(counts[typ]))
	}
	m.metrics.tracked.Set(float64(m.checker.Tracked()))
	m.metrics.dropped.Set(float64(m.checker.Dropped()))
	settled, pending := m.checker.Forgotten()
	if m.forgotten == [2]int{} && settled+pending > 0 {
		m.log.Warn("the monitor remembers monitor.remember_events history events and forgets older ones early: "+
			"their table records go unchecked (changes_monitor_forgotten_events_total); raise monitor.remember_events if memory allows",
			"remember_events", m.cfg.Monitor.RememberEvents, "remember", m.cfg.Monitor.Remember)
	}
	m.metrics.forgotten.WithLabelValues("false").Add(float64(settled - m.forgotten[0]))
	m.metrics.forgotten.WithLabelValues("true").Add(float64(pending - m.forgotten[1]))
	m.forgotten = [2]int{settled, pending}
}

// watchLag reads every processor group's lag and the slot's every 5 s.
func (m *Monitor) watchLag(ctx context.Context, client sarama.Client) error {
	admin, err := sarama.NewClusterAdminFromClient(client)
	if err != nil {
		return fmt.Errorf("monitor: admin: %w", err)
	}
	// Not closed: closing the admin would close the shared client.
	var db *pgx.Conn
	defer func() { closeDB(db) }()
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		if err := m.groupLag(ctx, admin, client); err != nil {
			m.log.Warn("consumer lag", "err", err)
		}
		if db == nil || db.IsClosed() {
			db, err = pgx.Connect(ctx, m.cfg.Postgres.URL)
			if err != nil {
				m.log.Warn("slot lag: connect to PostgreSQL", "err", err)
				db = nil
			}
		}
		if db != nil {
			if err := m.slotLag(ctx, db); err != nil {
				m.log.Warn("slot lag", "err", err)
				m.forgetSlot()
			}
		} else {
			m.forgetSlot()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// groupLag sets the lag of the router and of every snapshot group.
func (m *Monitor) groupLag(ctx context.Context, admin sarama.ClusterAdmin, client sarama.Client) error {
	inputs := map[string]string{m.topo.RouterGroup(): m.topo.History()}
	for _, typ := range m.topo.EntityTypes() {
		inputs[m.topo.SnapshotGroup(typ)] = m.topo.Events(typ)
	}
	var errs []error
	for group, topic := range inputs {
		parts, err := client.Partitions(topic)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		offsets, err := admin.ListConsumerGroupOffsets(group, map[string][]int32{topic: parts})
		if err == nil && offsets.Err != sarama.ErrNoError {
			err = offsets.Err
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("group %s: %w", group, err))
			continue
		}
		for _, p := range parts {
			b := offsets.GetBlock(topic, p)
			if b == nil || b.Err != sarama.ErrNoError {
				continue // not known now; keep the last value
			}
			committed := b.Offset
			if committed < 0 { // no commit yet: the group starts at the oldest record
				if committed, err = client.GetOffset(topic, p, sarama.OffsetOldest); err != nil {
					errs = append(errs, err)
					continue
				}
			}
			lag, err := kread.Lag(ctx, client, topic, p, committed)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			m.metrics.groupLag.WithLabelValues(group, topic, strconv.Itoa(int(p))).Set(float64(lag))
		}
	}
	return errors.Join(errs...)
}

// slotLag sets the replication slot's lag and retained WAL.
func (m *Monitor) slotLag(ctx context.Context, db *pgx.Conn) error {
	slot := m.cfg.Postgres.Slot
	var lag, retained *int64
	var active bool
	err := db.QueryRow(ctx, `select (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint, (pg_current_wal_lsn() - restart_lsn)::bigint, active
		from pg_replication_slots where slot_name = $1`, slot).Scan(&lag, &retained, &active)
	if errors.Is(err, pgx.ErrNoRows) {
		m.forgetSlot()
		m.metrics.slotPresent.WithLabelValues(slot).Set(0)
		return nil
	}
	if err != nil {
		return err
	}
	m.metrics.slotPresent.WithLabelValues(slot).Set(1)
	m.metrics.slotActive.WithLabelValues(slot).Set(float64(b2i(active)))
	if lag != nil {
		m.metrics.slotLag.WithLabelValues(slot).Set(float64(*lag))
	}
	if retained != nil {
		m.metrics.slotRetained.WithLabelValues(slot).Set(float64(*retained))
	}
	return nil
}

// forgetSlot removes the slot's gauges: an old value must not keep an
// alert firing when the slot cannot be read.
func (m *Monitor) forgetSlot() {
	slot := m.cfg.Postgres.Slot
	for _, g := range []*prometheus.GaugeVec{m.metrics.slotLag, m.metrics.slotRetained, m.metrics.slotActive, m.metrics.slotPresent} {
		g.DeleteLabelValues(slot)
	}
}

// lastEvent returns the last event of the history before offset end, or nil
// if there is none; records that are not events are passed over.
func lastEvent(ctx context.Context, client sarama.Client, topic string, end int64) (*codecs.Event, error) {
	start, err := kread.Start(client, topic, 0)
	if err != nil {
		return nil, err
	}
	const window = 256
	for to := end; to > start; to -= window {
		var last *codecs.Event
		err := kread.Range(ctx, client, topic, 0, max(start, to-window), to, func(r *kread.Record) (bool, error) {
			if ev, err := (codecs.EventCodec{}).Decode(r.Value); err == nil && ev.Op != codecs.OpWatermark {
				last = ev
			}
			return true, nil
		})
		if err != nil || last != nil {
			return last, err
		}
	}
	return nil, nil
}

// closeWithin closes what with close, waiting at most outage.CloseTimeout:
// a broker that stopped answering must not hold the monitor's shutdown.
func (m *Monitor) closeWithin(what string, close func() error) {
	if err := outage.CloseWithin(outage.CloseTimeout, what, close); err != nil {
		m.log.Warn("shutdown", "err", err)
	}
}

// closeDB closes db, if any, waiting at most outage.CloseTimeout for
// PostgreSQL to take the goodbye.
func closeDB(db *pgx.Conn) {
	if db == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), outage.CloseTimeout)
	defer cancel()
	db.Close(ctx)
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// routedLatency is commit to history of an events topic record: from the
// change's commit to the router's copy (its timestamp, in milliseconds).
// Truncates, watermarks and undecodable records have none.
func routedLatency(msg *sarama.ConsumerMessage) (seconds float64, committed time.Time, ok bool) {
	ev, err := (codecs.EventCodec{}).Decode(msg.Value)
	if err != nil || ev.Op == codecs.OpTruncate || ev.Op == codecs.OpSnapshot || !ev.Op.IsChange() || msg.Timestamp.IsZero() {
		return 0, time.Time{}, false // a snapshot row's commit time is when the copy started
	}
	return max(msg.Timestamp.Sub(ev.CommitTime).Seconds(), 0), ev.CommitTime, true
}

// appliedLatency is commit to snapshot of a table state.
func appliedLatency(st *codecs.State) (float64, bool) {
	if st.Truncated || st.Watermark || st.AppliedTime.IsZero() {
		return 0, false
	}
	return max(st.AppliedTime.Sub(st.CommitTime).Seconds(), 0), true
}
