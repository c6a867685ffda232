package processors

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/IBM/sarama"
	"github.com/lovoo/goka"
	"github.com/lovoo/goka/codec"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/internal/outage"
	"github.com/changes-dev/changes/internal/slogadapter"
	"github.com/changes-dev/changes/topology"
)

// Option configures the processors built by NewRouter, NewSnapshot and Run.
type Option func(*options)

type options struct {
	reg        prometheus.Registerer
	log        *slog.Logger
	metrics    *metrics
	storageDir string
	gokaOpts   []goka.ProcessorOption
}

// WithLogger sets the logger. Default: slog.Default().
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// WithRegisterer registers the processors' metrics with r; processors built
// with the same r count into the same series. Default: not registered.
func WithRegisterer(r prometheus.Registerer) Option {
	return func(o *options) { o.reg = r }
}

// WithStorageDir sets where group tables keep their local goleveldb copies.
// Default: <config storage>/processors.
func WithStorageDir(dir string) Option { return func(o *options) { o.storageDir = dir } }

// WithGokaOptions appends raw goka options, applied after the platform's own.
// Tests use it to plug in goka's tester.
func WithGokaOptions(opts ...goka.ProcessorOption) Option {
	return func(o *options) { o.gokaOpts = append(o.gokaOpts, opts...) }
}

func newOptions(topo *topology.Topology, opts []Option) (*options, error) {
	o := &options{
		log:        slog.Default(),
		storageDir: filepath.Join(topo.Config().Storage, "processors"),
	}
	for _, fn := range opts {
		fn(o)
	}
	var err error
	if o.metrics, err = newMetrics(o.reg); err != nil {
		return nil, fmt.Errorf("processor metrics: %w", err)
	}
	return o, nil
}

// gokaOptions are the safe client settings (see topology.SaramaConfig) wired
// into every goka builder, plus local storage and logging.
func (o *options) gokaOptions(topo *topology.Topology, log *slog.Logger, order *inOrder) ([]goka.ProcessorOption, error) {
	kcfg := topo.Config().Kafka
	var cfgs [4]*sarama.Config // one per builder: a config holds its client's metric registry
	for i := range cfgs {
		c, err := topology.SaramaConfig(kcfg)
		if err != nil {
			return nil, err
		}
		c.Consumer.Group.Rebalance.GroupStrategies = []sarama.BalanceStrategy{goka.CopartitioningStrategy}
		cfgs[i] = c
	}
	tmc := goka.NewTopicManagerConfig()
	// Topics are created with their full configuration by topology.EnsureTopics;
	// goka must not create a topic with its own defaults if one is missing.
	tmc.NoCreate = true
	tmc.MismatchBehavior = goka.TMConfigMismatchBehaviorFail
	if kcfg.ReplicationFactor > 0 {
		tmc.Table.Replication = kcfg.ReplicationFactor
		tmc.Stream.Replication = kcfg.ReplicationFactor
	} else {
		tmc.MismatchBehavior = goka.TMConfigMismatchBehaviorIgnore
	}
	out := []goka.ProcessorOption{
		goka.WithClientID(kcfg.ClientID),
		goka.WithLogger(slogadapter.New(log, slog.LevelDebug)),
		goka.WithStorageBuilder(batchStoreBuilder(o.storageDir)),
		goka.WithProducerBuilder(order.producerBuilder(goka.ProducerBuilderWithConfig(cfgs[0]), markerTopics(topo))),
		goka.WithConsumerGroupBuilder(goka.ConsumerGroupBuilderWithConfig(cfgs[1])),
		goka.WithConsumerSaramaBuilder(goka.SaramaConsumerBuilderWithConfig(cfgs[2])),
		goka.WithTopicManagerBuilder(goka.TopicManagerBuilderWithConfig(cfgs[3], tmc)),
	}
	return append(out, o.gokaOpts...), nil
}

// Why a record was dead-lettered: the reason label of
// changes_processor_deadletters_total, a fixed set whatever the records say.
const (
	// dlUndecodable: the record is not an event.
	dlUndecodable = "undecodable"
	// dlUndeclaredType: the router got an event of an entity type the
	// config does not declare.
	dlUndeclaredType = "undeclared_type"
	// dlBadTruncate: a TRUNCATE that is not what the router fans out (its
	// value is not a truncate of the type its key or topic names), or a
	// snapshot processor got one under another key than its partition's
	// truncate marker.
	dlBadTruncate = "bad_truncate"
	// dlWrongKey: an event of another type or entity than its key and
	// topic say.
	dlWrongKey = "wrong_key"
	// dlNotApplicable: an operation that cannot be applied to one entity.
	dlNotApplicable = "not_applicable"
	// dlTooLarge: the entity's new state would exceed
	// kafka.max_record_bytes.
	dlTooLarge = "too_large"
	// dlBadWatermark: a watermark that is not what the router fans out
	// (under another key than its partition's watermark key), or a record
	// under a watermark key that is no watermark.
	dlBadWatermark = "bad_watermark"
)

// deadLetter sends the record being processed to the dead-letter topic with
// detail as its reason header, counts it under reason (one of the dl*
// constants), and logs it; processing goes on with the next record.
func deadLetter(gctx goka.Context, o *options, topo *topology.Topology, raw []byte, reason, detail string) {
	group := string(gctx.Group())
	o.metrics.deadLetters.WithLabelValues(group, reason).Inc()
	o.log.Warn("dead-lettered a record", "group", group, "topic", string(gctx.Topic()),
		"partition", gctx.Partition(), "offset", gctx.Offset(), "reason", detail)
	hdr := goka.Headers{
		codecs.HeaderDeadLetterReason: []byte(detail),
		codecs.HeaderSourceTopic:      []byte(gctx.Topic()),
		codecs.HeaderSourcePartition:  []byte(strconv.Itoa(int(gctx.Partition()))),
		codecs.HeaderSourceOffset:     []byte(strconv.FormatInt(gctx.Offset(), 10)),
	}
	gctx.Emit(goka.Stream(topo.DeadLetter()), gctx.Key(), raw, goka.WithCtxEmitHeaders(hdr))
}

// decodeEvent decodes the record being processed, or dead-letters it.
func decodeEvent(gctx goka.Context, o *options, topo *topology.Topology, msg any) ([]byte, *codecs.Event, bool) {
	o.metrics.in.WithLabelValues(string(gctx.Group())).Inc()
	raw, _ := msg.([]byte)
	ev, err := codecs.EventCodec{}.Decode(raw)
	if err != nil {
		deadLetter(gctx, o, topo, raw, dlUndecodable, err.Error())
		return raw, nil, false
	}
	return raw, ev, true
}

// routeOf finds where a history record goes: from its key and op header
// when the capture wrote them, else by decoding it (dead-lettering it if it
// does not decode).
func routeOf(gctx goka.Context, o *options, topo *topology.Topology, msg any) (typ, id string, op codecs.Op, raw []byte, ok bool) {
	raw, _ = msg.([]byte)
	if hop, found := gctx.Headers()[codecs.HeaderOp]; found {
		op = codecs.Op(hop)
		// A type has no "/"; the key's text may (text and composite keys).
		t, idText, cut := strings.Cut(gctx.Key(), "/")
		if cut && idText != "" && op.Valid() {
			o.metrics.in.WithLabelValues(string(gctx.Group())).Inc()
			return t, idText, op, raw, true
		}
	}
	raw, ev, ok := decodeEvent(gctx, o, topo, msg)
	if !ok {
		return "", "", "", raw, false
	}
	return ev.EntityType, ev.EntityID.String(), ev.Op, raw, true
}

// NewRouter builds the processor that reads the history and emits every event
// to the events topic of its entity type, keyed by entity id, with the
// history record's headers. It emits raw bytes, never re-encoded.
//
// A record the capture wrote is routed by its key ("type/id") and its
// changes-op header, without decoding the event: the router is the one
// consumer of the single history partition, and decoding every event there
// cost a third of the processors' JSON work in changes-bench's catch-up. A
// record without them is decoded; one that does not decode goes to the
// dead-letter topic. An event whose value does not match its key reaches
// the snapshot processor, which checks it and dead-letters it.
//
// A resync marker (codecs.OpResync) is logged and not routed. A progress
// watermark (codecs.OpWatermark) goes, like a TRUNCATE, to every partition
// of every declared type, under the partition's watermark key
// (topology.WatermarkKeys): each snapshot processor keeps its partitions'
// latest, so a view knows which changes it has applied.
//
// What a record says never widens the router's work or its metrics: an
// entity type the config does not declare is dead-lettered, never a label
// value; a TRUNCATE is decoded and must be a truncate of the type its key
// names before it is fanned out, once to each of the type's declared
// partitions, under keys computed once (not per record: for 10000
// partitions that took 13 s of the single history partition's time).
func NewRouter(topo *topology.Topology, opts ...Option) (*goka.Processor, error) {
	o, err := newOptions(topo, opts)
	if err != nil {
		return nil, err
	}
	return newRouter(topo, o)
}

func newRouter(topo *topology.Topology, o *options) (*goka.Processor, error) {
	log := o.log.With("component", "router")
	type destination struct {
		stream    goka.Stream
		truncates []string // the type's truncate marker keys, by partition
	}
	routes := map[string]destination{}
	edges := []goka.Edge{goka.Output(goka.Stream(topo.DeadLetter()), new(codec.Bytes))}
	// Where a watermark goes: every partition of every type.
	type copyTo struct {
		stream goka.Stream
		key    string
	}
	var watermarkCopies []copyTo
	for _, e := range topo.Config().Entities {
		routes[e.Type] = destination{stream: goka.Stream(topo.Events(e.Type)), truncates: topology.TruncateKeys(e.Partitions)}
		edges = append(edges, goka.Output(goka.Stream(topo.Events(e.Type)), new(codec.Bytes)))
		for _, key := range topology.WatermarkKeys(e.Partitions) {
			watermarkCopies = append(watermarkCopies, copyTo{goka.Stream(topo.Events(e.Type)), key})
		}
	}
	order := new(inOrder)
	route := func(gctx goka.Context, msg any) {
		order.commitAfterEarlier(gctx)
		typ, id, op, raw, ok := routeOf(gctx, o, topo, msg)
		if !ok {
			return
		}
		if op == codecs.OpResync {
			// A marker, not a change: the resync's own events follow it.
			log.Info("the history records a resync after a lost replication slot", "offset", gctx.Offset())
			return
		}
		if op == codecs.OpWatermark {
			// Decoded first, as a truncate is: a record that only says it
			// is a watermark must not become a copy in every partition.
			if ev, err := (codecs.EventCodec{}).Decode(raw); err != nil || ev.Op != codecs.OpWatermark {
				detail := "a watermark whose value is not one"
				if err != nil {
					detail += ": " + err.Error()
				}
				deadLetter(gctx, o, topo, raw, dlBadWatermark, detail)
				return
			}
			for _, c := range watermarkCopies {
				gctx.Emit(c.stream, c.key, raw, goka.WithCtxEmitHeaders(gctx.Headers()))
			}
			o.metrics.watermarks.Inc()
			return
		}
		r, ok := routes[typ]
		if !ok {
			deadLetter(gctx, o, topo, raw, dlUndeclaredType, fmt.Sprintf("entity type %q is not declared", typ))
			return
		}
		if op == codecs.OpTruncate {
			// A truncate concerns every entity: one copy to each partition,
			// under the key of that partition's truncate marker. Its copies
			// are checked by the snapshot processors, so one that would
			// fail there is refused here, once, not once per partition.
			if ev, err := (codecs.EventCodec{}).Decode(raw); err != nil || ev.Op != codecs.OpTruncate || ev.EntityType != typ {
				detail := fmt.Sprintf("a truncate of %s whose value is not one", typ)
				if err != nil {
					detail += ": " + err.Error()
				} else {
					detail += fmt.Sprintf(": %s of %s", ev.Op, ev.EntityType)
				}
				deadLetter(gctx, o, topo, raw, dlBadTruncate, detail)
				return
			}
			for _, key := range r.truncates {
				gctx.Emit(r.stream, key, raw, goka.WithCtxEmitHeaders(gctx.Headers()))
			}
			o.metrics.routed.WithLabelValues(typ).Inc()
			return
		}
		gctx.Emit(r.stream, id, raw, goka.WithCtxEmitHeaders(gctx.Headers()))
		o.metrics.routed.WithLabelValues(typ).Inc()
	}
	edges = append([]goka.Edge{goka.Input(goka.Stream(topo.History()), new(codec.Bytes), route)}, edges...)
	g := goka.DefineGroup(goka.Group(topo.RouterGroup()), edges...)
	gopts, err := o.gokaOptions(topo, log, order)
	if err != nil {
		return nil, fmt.Errorf("router: %w", err)
	}
	assigned := goka.WithRebalanceCallback(logAssignment(log, string(g.Group())))
	p, err := goka.NewProcessor(topo.Config().Kafka.Brokers, g, append([]goka.ProcessorOption{assigned}, gopts...)...)
	if err != nil {
		return nil, fmt.Errorf("router: %w", err)
	}
	return p, nil
}

// markerKey is markers[p], or "none" past the declared partitions.
func markerKey(markers []string, p int) string {
	if p < len(markers) {
		return markers[p]
	}
	return "none"
}

// sweepVisitor is the visitor of a snapshot processor that replaces deleted
// states older than topics.delete_grace by Kafka tombstones; Sweep runs it.
const sweepVisitor = "sweep-deleted"

// Sweep writes a Kafka tombstone for every deleted entity of a snapshot
// processor's partitions whose grace period is over, so compaction removes
// it. Run calls it every sweepInterval; it blocks until the visit is done.
func Sweep(ctx context.Context, p *goka.Processor) error {
	return p.VisitAll(ctx, sweepVisitor, nil)
}

// rewrite writes the stored state cur again, for a change redelivered at
// exactly cur's position. goka writes a state to the local storage before
// the changelog record is acknowledged, so after a crash the local copy can
// hold a state the table topic never got; the change is delivered again
// (its offset was not committed), and writing the state again is the only
// way it reaches the changelog, which is all views read. When the state did
// reach it, the record is a harmless duplicate that compaction removes.
func rewrite(gctx goka.Context, o *options, entityType string, cur *codecs.State) {
	gctx.SetValue(cur)
	o.metrics.rewrites.WithLabelValues(entityType).Inc()
}

// NewSnapshot builds the processor that keeps the latest State of every entity
// of entityType in its group table (topo.Snapshot(entityType)).
//
// What a change does to the stored state is codecs.Judge's verdict, the
// rule the views and the history reader share. A change is applied only if
// its position is after the stored state's and after the partition's last
// TRUNCATE. A change redelivered at exactly the stored state's position
// writes that state again (changes_processor_rewrites_total): the local copy
// may be ahead of the changelog after a crash, and only the changelog
// reaches the views. An older change is skipped. A snapshot row, insert or
// update stores the row after; columns PostgreSQL did not send (unchanged
// TOASTed values) keep their stored value. A delete stores a deleted state that keeps the position
// for topics.delete_grace; Sweep then replaces it by a Kafka tombstone
// (codecs.State.Obsolete).
func NewSnapshot(topo *topology.Topology, entityType string, opts ...Option) (*goka.Processor, error) {
	o, err := newOptions(topo, opts)
	if err != nil {
		return nil, err
	}
	return newSnapshot(topo, entityType, o)
}

func newSnapshot(topo *topology.Topology, entityType string, o *options) (*goka.Processor, error) {
	if _, ok := topo.Config().Entity(entityType); !ok {
		return nil, fmt.Errorf("snapshot: entity type %q is not declared", entityType)
	}
	log := o.log.With("component", "snapshot", "entity_type", entityType)
	// The processor reads its partitions' truncate markers from its own
	// table; it exists only once NewProcessor returns.
	var proc *goka.Processor
	ent, _ := topo.Config().Entity(entityType)
	markers := topology.TruncateKeys(ent.Partitions)
	watermarkKeys := topology.WatermarkKeys(ent.Partitions)
	truncated := newTruncations(func(key string) (*codecs.State, error) {
		v, err := proc.Get(key)
		st, _ := v.(*codecs.State)
		return st, err
	}, markers)
	order := new(inOrder)
	apply := func(gctx goka.Context, msg any) {
		order.commitAfterEarlier(gctx)
		raw, ev, ok := decodeEvent(gctx, o, topo, msg)
		if !ok {
			return
		}
		if ev.Op == codecs.OpWatermark || topology.IsWatermarkKey(gctx.Key()) {
			keepWatermark(gctx, o, topo, entityType, watermarkKeys, raw, ev)
			return
		}
		if ev.Op == codecs.OpTruncate || topology.IsTruncateKey(gctx.Key()) {
			// Only the router's copy, under this partition's marker key,
			// may set the marker: another key would be a marker no one
			// reads, one more table record per forged key.
			if p := int(gctx.Partition()); ev.Op != codecs.OpTruncate || ev.EntityType != entityType || p >= len(markers) || gctx.Key() != markers[p] {
				deadLetter(gctx, o, topo, raw, dlBadTruncate, fmt.Sprintf("%s of %s under key %q in partition %d of the %s topic, whose truncate marker key is %q",
					ev.Op, ev.EntityType, gctx.Key(), p, entityType, markerKey(markers, p)))
				return
			}
			// The stored marker and the cached position are the same
			// record; one that cannot be read, or is no marker, is taken
			// as none, and the marker is set.
			m, _ := gctx.Value().(*codecs.State)
			at, err := truncated.at(gctx.Partition())
			if err != nil || m == nil || !m.Truncated {
				m, at = nil, codecs.Position{}
			}
			switch codecs.Judge(m, ev, at) {
			case codecs.Rewrite:
				rewrite(gctx, o, entityType, m)
				return
			case codecs.Skip:
				o.metrics.skipped.WithLabelValues(entityType).Inc()
				return
			}
			gctx.SetValue(&codecs.State{
				EntityType: ev.EntityType, Truncated: true, Position: ev.Position,
				CommitTime: ev.CommitTime, AppliedTime: time.Now().UTC(),
			})
			truncated.set(gctx.Partition(), ev.Position)
			o.metrics.applied.WithLabelValues(entityType, string(ev.Op)).Inc()
			return
		}
		if ev.EntityType != entityType || ev.EntityID.String() != gctx.Key() {
			deadLetter(gctx, o, topo, raw, dlWrongKey, fmt.Sprintf("event of %s %s under key %q in the %s topic", ev.EntityType, ev.EntityID, gctx.Key(), entityType))
			return
		}
		cur, _ := gctx.Value().(*codecs.State)
		at, err := truncated.at(gctx.Partition())
		if err != nil {
			log.Error("cannot read the partition's truncate marker", "partition", gctx.Partition(), "err", err)
			gctx.Fail(err) // goka stops; the supervisor restarts
			return
		}
		switch codecs.Judge(cur, ev, at) {
		case codecs.Rewrite:
			rewrite(gctx, o, entityType, cur)
			return
		case codecs.Skip:
			// Older than the stored state; or an older change delivered
			// again after a TRUNCATE: the marker, not this entity's
			// state, is what must be in the changelog, and its own
			// redelivery rewrites it.
			o.metrics.skipped.WithLabelValues(entityType).Inc()
			return
		}
		// A delete keeps the entity's position for the grace period, so an
		// older change delivered again cannot bring it back; the sweep then
		// writes the Kafka tombstone. A stored state that predates a
		// TRUNCATE is gone: the change applies to nothing.
		next, missing := codecs.Apply(codecs.Base(cur, at), ev)
		if next == nil {
			deadLetter(gctx, o, topo, raw, dlNotApplicable, fmt.Sprintf("operation %s cannot be applied to one entity", ev.Op))
			return
		}
		for _, col := range missing {
			log.Warn("unchanged TOASTed column has no stored value", "entity_id", ev.EntityID, "column", col)
		}
		next.AppliedTime = time.Now().UTC()
		if size, over := tooLarge(next, topo.Config().Kafka.MaxRecordBytes); over {
			// Kafka would refuse it, and a processor that fails on it would
			// restart into the same change forever.
			deadLetter(gctx, o, topo, raw, dlTooLarge, fmt.Sprintf("the entity's new state is %d bytes, above kafka.max_record_bytes %d (an unchanged TOASTed column carried over?): the table keeps the previous state",
				size, topo.Config().Kafka.MaxRecordBytes))
			return
		}
		gctx.SetValue(next)
		o.metrics.applied.WithLabelValues(entityType, string(ev.Op)).Inc()
	}
	grace := topo.Config().Topics.DeleteGrace
	sweep := func(gctx goka.Context, _ any) {
		cur, _ := gctx.Value().(*codecs.State)
		if cur.Obsolete(truncatedAt(truncated, gctx.Partition()), time.Now(), grace) {
			gctx.Delete()
			o.metrics.tombstones.WithLabelValues(entityType).Inc()
		}
	}
	g := goka.DefineGroup(goka.Group(topo.SnapshotGroup(entityType)),
		goka.Input(goka.Stream(topo.Events(entityType)), new(codec.Bytes), apply),
		goka.Visitor(sweepVisitor, sweep),
		goka.Persist(tableCodec{entityType: entityType, o: o}),
		goka.Output(goka.Stream(topo.DeadLetter()), new(codec.Bytes)),
	)
	// Partitions may come back from another instance with a newer marker.
	assigned := logAssignment(log, string(g.Group()))
	reset := goka.WithRebalanceCallback(func(a goka.Assignment) { truncated.reset(); assigned(a) })
	gopts, err := o.gokaOptions(topo, log, order)
	if err != nil {
		return nil, fmt.Errorf("snapshot %s: %w", entityType, err)
	}
	p, err := goka.NewProcessor(topo.Config().Kafka.Brokers, g, append([]goka.ProcessorOption{reset}, gopts...)...)
	if err != nil {
		return nil, fmt.Errorf("snapshot %s: %w", entityType, err)
	}
	proc = p
	return p, nil
}

// keepWatermark stores ev, a progress watermark, as its partition's
// watermark (a codecs.State with Watermark set, under the partition's
// watermark key) if it is later than the one stored: every change of the
// partition that committed before it has been applied, since the events
// topic holds them before it. One at or before the stored position is
// skipped, unlike a change at it (see rewrite): after a crash that lost
// the changelog's tail, the changes before a redelivered watermark are
// skipped as older than their stored state, or written again after it,
// so a watermark written again would reach the views before the changes
// it covers; the next new one comes after them. Only the router's copy,
// under the partition's watermark key, is taken: another is
// dead-lettered.
func keepWatermark(gctx goka.Context, o *options, topo *topology.Topology, entityType string, keys []string, raw []byte, ev *codecs.Event) {
	if p := int(gctx.Partition()); ev.Op != codecs.OpWatermark || p >= len(keys) || gctx.Key() != keys[p] {
		deadLetter(gctx, o, topo, raw, dlBadWatermark, fmt.Sprintf("%s under key %q in partition %d of the %s topic, whose watermark key is %q",
			ev.Op, gctx.Key(), p, entityType, markerKey(keys, p)))
		return
	}
	cur, _ := gctx.Value().(*codecs.State)
	if cur != nil && cur.Watermark && ev.Position.Compare(cur.Position) <= 0 {
		return
	}
	gctx.SetValue(&codecs.State{
		EntityType: entityType, Watermark: true, Position: ev.Position,
		CommitTime: ev.CommitTime, AppliedTime: time.Now().UTC(),
	})
	o.metrics.watermarksKept.WithLabelValues(entityType).Inc()
}

// Run runs the router and one snapshot processor per entity type until ctx
// is cancelled (then it returns nil). goka stops a processor on any error by
// design, and on Kafka being away for longer than its clients' timeouts:
// Run rebuilds and restarts it with backoff (1 s doubling to 5 s), forever
// while the error is one retrying can fix (see outage.Retryable), counting
// restarts in changes_processor_restarts_total. It logs the first failure of
// a series and the return to running, not every retry. It returns, stopping
// the others, when one processor fails with an error retrying cannot fix (a
// topic of the wrong shape, a refused configuration).
//
// changes_processor_connected{group} is 1 while the group's processor runs
// and Kafka answers a probe (every 2 s, with 5 s timeouts), 0 otherwise.
func Run(ctx context.Context, topo *topology.Topology, opts ...Option) error {
	o, err := newOptions(topo, opts)
	if err != nil {
		return err
	}
	type member struct {
		group   string
		build   func() (*goka.Processor, error)
		sweep   bool
		first   *goka.Processor // built up front, so a configuration error fails at once
		running atomic.Bool
	}
	members := []*member{{group: topo.RouterGroup(), build: func() (*goka.Processor, error) { return newRouter(topo, o) }}}
	for _, typ := range topo.EntityTypes() {
		members = append(members, &member{
			group: topo.SnapshotGroup(typ),
			build: func() (*goka.Processor, error) { return newSnapshot(topo, typ, o) },
			sweep: true,
		})
	}
	for _, m := range members {
		o.metrics.connected.WithLabelValues(m.group).Set(0)
		// Kafka away at the start: the supervisor builds it when it is back.
		if m.first, err = m.build(); err != nil && !outage.Retryable(err) {
			return err
		}
	}
	g, gctx := errgroup.WithContext(ctx)
	kafka := outage.NewState(o.log.With("component", "processors"), nil, "kafka")
	g.Go(func() error {
		probe := outage.NewProbe(topo.Config().Kafka, topo.History())
		defer func() {
			err := outage.CloseWithin(outage.CloseTimeout, "kafka probe", func() error { probe.Close(); return nil })
			if err != nil {
				o.log.Warn("shutdown", "err", err)
			}
		}()
		t := time.NewTicker(2 * time.Second)
		defer t.Stop()
		for {
			if err := probe.Check(); err != nil {
				kafka.Down(err)
			} else {
				kafka.Up()
			}
			for _, m := range members {
				o.metrics.connected.WithLabelValues(m.group).Set(b2f(m.running.Load() && kafka.Connected()))
			}
			select {
			case <-gctx.Done():
				return nil
			case <-t.C:
			}
		}
	})
	for _, m := range members {
		sup := supervisor{
			name: m.group, log: o.log, storageDir: o.storageDir,
			first: firstBackoff, max: maxBackoff, stable: stableAfter,
			restarts: func() { o.metrics.restarts.WithLabelValues(m.group).Inc() },
		}
		restarted := false
		g.Go(func() error {
			return sup.run(gctx, func(ctx context.Context) error {
				defer func() {
					m.running.Store(false)
					o.metrics.connected.WithLabelValues(m.group).Set(0)
				}()
				p := m.first
				m.first = nil // a goka processor runs once
				if p == nil {
					var err error
					if p, err = m.build(); err != nil {
						restarted = true
						return err
					}
				}
				// The sweep, the lag gauges and the readiness watch live
				// as long as this run of p: they are stopped and waited
				// for before the next run (or Run) starts, so none of them
				// touches a stopped processor or marks it running after
				// it stopped.
				runCtx, stop := context.WithCancel(ctx)
				var alongside sync.WaitGroup
				defer func() {
					stop()
					alongside.Wait()
				}()
				if m.sweep {
					alongside.Go(func() { sweepEvery(runCtx, p, sweepInterval(topo.Config().Topics.DeleteGrace), o.log) })
				}
				alongside.Go(func() { reportLag(runCtx, p, m.group, o.metrics.lag) })
				again := restarted
				restarted = true
				alongside.Go(func() {
					if p.WaitForReadyContext(runCtx) != nil {
						return
					}
					m.running.Store(true)
					o.metrics.connected.WithLabelValues(m.group).Set(b2f(kafka.Connected()))
					if again {
						o.log.Info("processor running again", "group", m.group)
					}
				})
				return p.Run(runCtx)
			})
		})
	}
	return g.Wait()
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// reportLag sets the lag gauges of p's partitions every 5 s until ctx is done.
func reportLag(ctx context.Context, p *goka.Processor, group string, lag *prometheus.GaugeVec) {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	// Partitions this instance no longer owns must not keep their last value.
	defer lag.DeletePartialMatch(prometheus.Labels{"group": group})
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		statsCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
		stats := p.StatsWithContext(statsCtx)
		cancel()
		if stats == nil {
			continue
		}
		lag.DeletePartialMatch(prometheus.Labels{"group": group})
		for partition, ps := range stats.Group {
			for topic, in := range ps.Input {
				lag.WithLabelValues(group, topic, strconv.Itoa(int(partition))).Set(float64(in.OffsetLag))
			}
		}
	}
}

// sweepInterval runs the tombstone sweep four times per grace period, at
// least every hour and at most every second.
func sweepInterval(grace time.Duration) time.Duration {
	return min(max(grace/4, time.Second), time.Hour)
}

// sweepEvery runs Sweep on p every interval until ctx is done. A failed
// sweep is logged and tried again: the deleted states stay correct meanwhile.
func sweepEvery(ctx context.Context, p *goka.Processor, interval time.Duration, log *slog.Logger) {
	if err := p.WaitForReadyContext(ctx); err != nil {
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		switch err := Sweep(ctx, p); {
		case err == nil || ctx.Err() != nil:
		case errors.Is(err, goka.ErrVisitAborted):
			log.Debug("tombstone sweep interrupted by a rebalance; it runs again next time")
		default:
			log.Warn("tombstone sweep failed", "err", err)
		}
	}
}
