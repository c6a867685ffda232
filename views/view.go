package views

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"iter"
	"log/slog"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/IBM/sarama"
	"github.com/lovoo/goka"
	"github.com/lovoo/goka/codec"
	gokastorage "github.com/lovoo/goka/storage"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/internal/outage"
	"github.com/changes-dev/changes/internal/slogadapter"
	"github.com/changes-dev/changes/topology"
)

// ErrNotRunning is returned by reads of a view whose Run has not started
// (or has returned).
var ErrNotRunning = errors.New("view is not running")

// Update is one change of a view's table, as seen by an UpdateHook or a
// Subscription.
type Update struct {
	// EntityID is the key of the changed entity.
	EntityID codecs.Key
	// State is the entity's new state; nil when it was deleted (a deleted
	// state, the tombstone that follows it, or a TRUNCATE that hides it).
	State *codecs.State
	// Partition and Offset locate the change in the table topic.
	Partition int32
	Offset    int64
	// Recovering is true for records applied while the record's partition
	// catches up with its table after Run starts.
	Recovering bool
	// Tombstone is true for the Kafka tombstone that finally removes an
	// entity the view already reported gone (deleted, or hidden by a
	// TRUNCATE); State is nil. Code that tracks deletions can skip it.
	Tombstone bool
}

// UpdateHook is called for every record the view applies, recovery
// included, once it is committed to the view's storage (Get and Range see
// it). It runs on the view's partition goroutine: keep it short and do not
// block.
type UpdateHook func(Update)

// Option configures a View.
type Option func(*View)

// WithLogger sets the logger. Default: slog.Default().
func WithLogger(l *slog.Logger) Option { return func(v *View) { v.log = l } }

// WithStorageDir sets where the view keeps its goleveldb copy, one database
// per partition, in place of Config.StorageDir. A view restarted on the
// same directory reopens its data and only reads what the table gained
// since. Default: Config.StorageDir (New: <config storage>/views).
func WithStorageDir(dir string) Option { return func(v *View) { v.storageDir = dir } }

// WithInMemory keeps the view's copy in memory (goleveldb on a memory
// storage): nothing is written to disk and every Run starts from the
// table's beginning. Meant for tests and small tables.
func WithInMemory() Option { return func(v *View) { v.inMemory = true } }

// WithUpdateHook calls hook for every update the view applies.
func WithUpdateHook(hook UpdateHook) Option { return func(v *View) { v.hook = hook } }

// WithRegisterer registers the changes_view_* metrics with r. Default: not
// registered.
func WithRegisterer(r prometheus.Registerer) Option { return func(v *View) { v.reg = r } }

// WithGokaOptions appends raw goka view options, applied after the
// platform's own (except the storage builder, which stays the view's).
func WithGokaOptions(opts ...goka.ViewOption) Option {
	return func(v *View) { v.gokaOpts = append(v.gokaOpts, opts...) }
}

// View is the snapshot of one entity type, replicated into local storage.
// Its reads are safe for concurrent use with each other and with Run.
type View struct {
	entityType string
	topic      string
	partitions int
	view       atomic.Pointer[goka.View] // nil until goka's view could be built (Kafka reachable)
	built      chan struct{}             // closed once view is set
	build      func() (*goka.View, error)
	kcfg       topology.KafkaConfig
	log        *slog.Logger
	storageDir string
	inMemory   bool
	hook       UpdateHook
	reg        prometheus.Registerer
	gokaOpts   []goka.ViewOption
	metrics    *metrics

	stores []atomic.Pointer[store] // by partition; set while goka has the partition open
	kinds  atomic.Uint32           // the key kinds of the entities stored, a bit (1 << kind) each
	alive  []atomic.Int64          // entities per partition
	queued []updateQueue           // by partition: updates to publish once committed

	clientMu sync.Mutex
	client   sarama.Client // for Lag; opened by the first Lag, closed by Run's end
	running  atomic.Bool

	kafka          *outage.State // whether Kafka answers the view's Lag
	syncedAt       atomic.Int64  // unix nanoseconds when the view last held its whole table
	recoveredBytes atomic.Int64  // bytes of records applied by recoveries since the view last completed one
	keepBuildError buildErrors
	openedMu       sync.Mutex
	opened         []time.Time // per partition: when its recovered storage was opened

	progress progress // wakes the readers waiting for a watermark (AtLeast)
	cuts     cuts     // the Group reads that hold the partitions at a watermark
	gates    []gate   // by partition: where it stands relative to the watermarks
	halt     chan struct{}
	haltOnce sync.Once // closes halt when Run's goka view stops: no partition waits for a cut then

	subsMu  sync.Mutex
	subs    map[*Subscription]struct{}
	stopped bool // Run returned; guarded by subsMu
}

// updateQueue holds a partition's updates until their batch is committed.
type updateQueue struct {
	mu      sync.Mutex
	updates []Update
}

// New returns the view of entityType's snapshot table in topo's
// deployment: Open with ConfigFor(topo, entityType). Call Run to start it.
func New(topo *topology.Topology, entityType string, opts ...Option) (*View, error) {
	cfg, err := ConfigFor(topo, entityType)
	if err != nil {
		return nil, err
	}
	return Open(cfg, opts...)
}

// Open returns the view cfg describes; it fails if cfg is not valid (see
// Config.Validate) or the view cannot be built for a reason retrying
// cannot fix (a refused password, a topic of another shape). Kafka being
// away is not an error: Run waits for it. Call Run to start the view.
func Open(cfg Config, opts ...Option) (*View, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	entityType := cfg.EntityType
	v := &View{
		entityType: entityType,
		topic:      cfg.Topic,
		partitions: cfg.Partitions,
		kcfg:       cfg.Kafka,
		log:        slog.Default(),
		storageDir: cfg.StorageDir,
		stores:     make([]atomic.Pointer[store], cfg.Partitions),
		opened:     make([]time.Time, cfg.Partitions),
		alive:      make([]atomic.Int64, cfg.Partitions),
		queued:     make([]updateQueue, cfg.Partitions),
		gates:      make([]gate, cfg.Partitions),
		subs:       map[*Subscription]struct{}{},
		built:      make(chan struct{}),
		halt:       make(chan struct{}),
	}
	for _, o := range opts {
		o(v)
	}
	v.log = v.log.With("component", "view", "entity_type", entityType)
	m, err := newMetrics(v.reg, entityType)
	if err != nil {
		return nil, fmt.Errorf("view %s metrics: %w", entityType, err)
	}
	v.metrics = m
	v.kafka = outage.NewState(v.log, m.connected, "kafka")
	// Views only read partition counts through the topic manager; they never create topics.
	tmc := goka.NewTopicManagerConfig()
	consumerCfg, err := topology.SaramaConfig(v.kcfg)
	if err != nil {
		return nil, fmt.Errorf("view %s: %w", entityType, err)
	}
	topicsCfg, err := topology.SaramaConfig(v.kcfg)
	if err != nil {
		return nil, fmt.Errorf("view %s: %w", entityType, err)
	}
	gokaOpts := []goka.ViewOption{
		goka.WithViewClientID(v.kcfg.ClientID),
		goka.WithViewLogger(slogadapter.New(v.log, slog.LevelDebug)),
		goka.WithViewConsumerSaramaBuilder(v.keepBuildError.consumer(goka.SaramaConsumerBuilderWithConfig(consumerCfg))),
		goka.WithViewTopicManagerBuilder(v.keepBuildError.topicManager(goka.TopicManagerBuilderWithConfig(topicsCfg, tmc))),
		goka.WithViewCallback(v.update),
		// Kafka away does not end Run: goka keeps the storage open (reads
		// go on from the local copy) and reconnects with our backoff.
		goka.WithViewAutoReconnect(),
		goka.WithViewBackoffBuilder(func() (goka.Backoff, error) { return new(outage.Backoff), nil }),
	}
	// The storage is the view's own whatever the options say: its layout is
	// what Get and Range read.
	gokaOpts = append(append(gokaOpts, v.gokaOpts...), goka.WithViewStorageBuilder(v.openStore))
	v.build = func() (*goka.View, error) {
		v.keepBuildError.reset()
		gv, err := goka.NewView(v.kcfg.Brokers, goka.Table(v.topic), new(codec.Bytes), gokaOpts...)
		if err != nil {
			return nil, fmt.Errorf("view %s: %w", entityType, v.keepBuildError.explain(v.kcfg, err))
		}
		if gv.Topic() != v.topic {
			return nil, fmt.Errorf("view %s: goka reads topic %s, expected %s", entityType, gv.Topic(), v.topic)
		}
		return gv, nil
	}
	// goka asks Kafka for the partitions: with Kafka away, Run builds it
	// once Kafka is back.
	if gv, err := v.build(); err == nil {
		v.setView(gv)
	} else if !outage.Retryable(err) {
		return nil, err
	}
	return v, nil
}

func (v *View) setView(gv *goka.View) {
	v.kafka.Up() // goka just read the partitions from Kafka
	v.view.Store(gv)
	close(v.built)
}

// openStore is the view's goka storage builder.
func (v *View) openStore(topic string, partition int32) (gokastorage.Storage, error) {
	if int(partition) >= v.partitions {
		return nil, fmt.Errorf("view %s: table %s has partition %d, the config declares %d partitions", v.entityType, topic, partition, v.partitions)
	}
	s, err := openStore(v.storageDir, topic, partition, v.inMemory)
	if err != nil {
		return nil, err
	}
	n, err := s.countAlive()
	if err != nil {
		s.Close()
		return nil, err
	}
	v.alive[partition].Store(n)
	v.sawKinds(s.kinds())
	// Whether the storage ends right at its watermark is not known: a cut
	// waits for the next watermark the partition reads.
	g := &v.gates[partition]
	g.mu.Lock()
	g.recovered(Watermark{}, 1)
	g.mu.Unlock()
	s.progressed = func() {
		v.setAppliedMetrics()
		v.progress.advanced()
	}
	s.committed = func() func() {
		updates := v.takeQueued(partition)
		if len(updates) == 0 {
			return nil
		}
		return func() { v.publishUpdates(updates) }
	}
	v.stores[partition].Store(s)
	return &partitionStore{store: s, v: v, partition: partition, opened: time.Now()}, nil
}

// releaseAfterBytes is how many bytes of records a recovery applies before
// the view, once recovered, returns the memory the recovery freed to the
// operating system (debug.FreeOSMemory). A recovery allocates about three
// times the table's size; the Go runtime would keep the free part for
// minutes.
const releaseAfterBytes = 32 << 20

// partitionStore is the storage goka holds for one partition: closing it
// takes it out of the view's reach first.
type partitionStore struct {
	*store
	v         *View
	partition int32
	opened    time.Time // before goka asked Kafka for the end it recovers to
}

// MarkRecovered is called by goka once the partition holds its table up to
// the end goka read after opening the storage. When that completes the
// view, the view is synced as of the earliest such opening: SyncedAt is
// set at once, not at the next lag check, which a broker lost right after
// recovery would never answer.
func (ps *partitionStore) MarkRecovered() error {
	if err := ps.store.MarkRecovered(); err != nil {
		return err
	}
	g := &ps.v.gates[ps.partition]
	g.mu.Lock()
	g.recovered(ps.store.appliedThrough(), g.since)
	g.mu.Unlock()
	if ps.v.recoverySynced(ps.partition, ps.opened) {
		// The last partition: give back what the recovery freed before
		// the view says it is recovered, so that a process measured (or
		// sized) once the view is ready holds the view, not its recovery.
		if n := ps.v.recoveredBytes.Swap(0); n >= releaseAfterBytes {
			start := time.Now()
			debug.FreeOSMemory()
			ps.v.log.Debug("recovery memory returned to the operating system", "recovered_bytes", n, "seconds", time.Since(start).Seconds())
		}
	}
	// Ready only now: whoever sees the view recovered also sees SyncedAt.
	ps.store.ready.Store(true)
	return nil
}

// recoverySynced records that partition p, opened at opened, recovered;
// if that completes the view, it sets SyncedAt and returns true.
func (v *View) recoverySynced(p int32, opened time.Time) bool {
	v.openedMu.Lock()
	defer v.openedMu.Unlock()
	v.opened[p] = opened
	// Under openedMu: of two partitions recovering at once, the second to
	// get here sees both recovered and sets SyncedAt.
	complete := v.running.Load()
	for p := range v.stores {
		st := v.stores[p].Load()
		if st == nil || !st.recovered.Load() {
			complete = false
			break
		}
	}
	if !complete {
		return false
	}
	at := opened
	for _, o := range v.opened {
		if !o.IsZero() && o.Before(at) {
			at = o
		}
	}
	for {
		old := v.syncedAt.Load()
		if old >= at.UnixNano() || v.syncedAt.CompareAndSwap(old, at.UnixNano()) {
			break
		}
	}
	return true
}

func (ps *partitionStore) Close() error {
	ps.v.stores[ps.partition].CompareAndSwap(ps.store, nil)
	return ps.store.Close()
}

// queue holds u until the partition's batch is committed.
func (v *View) queue(p int32, u Update) {
	q := &v.queued[p]
	q.mu.Lock()
	q.updates = append(q.updates, u)
	q.mu.Unlock()
}

// takeQueued takes the partition's queued updates. The store calls it
// right after a commit, under its lock: a record's update is queued after
// its write to the batch, which takes that lock, so every update taken was
// committed.
func (v *View) takeQueued(p int32) []Update {
	q := &v.queued[p]
	q.mu.Lock()
	updates := q.updates
	q.updates = nil
	q.mu.Unlock()
	return updates
}

// publishUpdates tells the hook and the subscribers about committed updates.
func (v *View) publishUpdates(updates []Update) {
	for _, u := range updates {
		if v.hook != nil {
			v.hook(u)
		}
		v.publish(u)
	}
}

// update stores a table record under its local key and queues it for the
// hook and the subscribers.
func (v *View) update(uctx goka.UpdateContext, s gokastorage.Storage, key string, value []byte) error {
	p := uctx.Partition()
	st := v.stores[p].Load()
	if st == nil {
		return fmt.Errorf("view %s: partition %d has no storage", v.entityType, p)
	}
	// A Group's read may hold the partition at the watermark it stands
	// at: nothing more is applied until it lets go.
	g := &v.gates[p]
	g.enter(v.halt)
	defer g.leave()
	recovering := !st.recovered.Load()
	v.metrics.updated(recovering)
	if recovering {
		v.recoveredBytes.Add(int64(len(key) + len(value)))
	}
	notify := v.hook != nil || v.hasSubscribers()
	if topology.IsWatermarkKey(key) {
		// The partition's progress: not an entity, for no hook. One that
		// does not decode is passed over, loudly, like a bad marker.
		if value == nil {
			return nil
		}
		m, err := (codecs.StateCodec{}).Decode(value)
		if err != nil || !m.Watermark {
			v.metrics.badRecords.Inc()
			v.log.Error("progress watermark does not decode as one: record not applied", "key", key, "partition", p, "offset", uctx.Offset(), "err", err)
			return nil
		}
		if err := s.Set(watermarkKey, value); err != nil {
			return err
		}
		if recovering {
			g.since = 0 // the store keeps it for the recovery's end
		} else {
			// A Group's read may hold the partition here, before the
			// changes after the watermark.
			g.passed(v, p, Watermark{LSN: m.Position.CommitLSN, CommitTime: m.CommitTime})
		}
		return nil
	}
	if topology.IsTruncateKey(key) {
		if value != nil {
			// A marker that does not decode would stop Run on every start:
			// pass it over, loudly.
			if m, err := (codecs.StateCodec{}).Decode(value); err != nil || !m.Truncated {
				v.metrics.badRecords.Inc()
				v.log.Error("truncate marker does not decode as one: record not applied", "key", key, "partition", p, "offset", uctx.Offset(), "err", err)
				return nil
			}
		}
		before := st.truncatedAt()
		g.applied()
		if err := setOrDelete(s, markerKey, value); err != nil {
			return err
		}
		// Entities before the marker are hidden now: count again, and tell
		// who is gone.
		n, err := st.countAlive()
		if err != nil {
			return err
		}
		v.alive[p].Store(n)
		if notify {
			return st.hidden(before, st.truncatedAt(), func(id codecs.Key) {
				v.queue(p, Update{EntityID: id, Partition: p, Offset: uctx.Offset(), Recovering: recovering})
			})
		}
		return nil
	}
	k, lk, err := v.localKeyOf(s, key, value)
	if err != nil {
		v.metrics.badRecords.Inc()
		v.log.Error("table key is not an entity key: record not applied", "key", key, "partition", p, "offset", uctx.Offset(), "err", err)
		return nil
	}
	old, err := s.Get(lk)
	if err != nil {
		return err
	}
	if value != nil || st.alive(old) {
		g.applied() // a tombstone of a state no reader sees changes nothing
	}
	if err := setOrDelete(s, lk, value); err != nil {
		return err
	}
	v.alive[p].Add(int64(b2i(st.alive(value)) - b2i(st.alive(old))))
	if !notify {
		return nil
	}
	u := Update{EntityID: k, Partition: p, Offset: uctx.Offset(), Recovering: recovering, Tombstone: value == nil}
	if st.alive(value) {
		if u.State, err = (codecs.StateCodec{}).Decode(value); err != nil {
			v.metrics.badRecords.Inc()
			v.log.Error("table record does not decode", "entity_id", key, "partition", p, "offset", uctx.Offset(), "err", err)
			return nil
		}
	}
	v.queue(p, u)
	return nil
}

// kindSuffixes end the JSON of a state whose key is not an integer:
// StateCodec writes "id_kind" last, and the JSON ends there, so a value
// inside the row can never be taken for it.
var kindSuffixes = [...][]byte{
	codecs.KeyUUID:      []byte(`,"id_kind":"uuid"}`),
	codecs.KeyText:      []byte(`,"id_kind":"text"}`),
	codecs.KeyComposite: []byte(`,"id_kind":"composite"}`),
}

// stateKind reads the key kind of a state's JSON without decoding it.
func stateKind(value []byte) (codecs.KeyKind, error) {
	for k := codecs.KeyUUID; k <= codecs.KeyComposite; k++ {
		if bytes.HasSuffix(value, kindSuffixes[k]) {
			return k, nil
		}
	}
	return codecs.KeyInteger, nil
}

// localKeyOf returns the entity key and the local key of a table record
// with key text and value (nil: a tombstone). A state says its key's kind;
// for a tombstone it is the kind of the state stored under text, looked up
// among the kinds text can be.
func (v *View) localKeyOf(s gokastorage.Storage, text string, value []byte) (codecs.Key, string, error) {
	if value != nil {
		kind, err := stateKind(value)
		if err != nil {
			return codecs.Key{}, "", err
		}
		key, err := codecs.ParseKey(kind, text)
		if err != nil {
			return key, "", err
		}
		v.sawKinds(1 << kind)
		return key, string(localKey(key)), nil
	}
	for k := codecs.KeyInteger; k <= codecs.KeyComposite; k++ {
		key, err := codecs.ParseKey(k, text)
		if err != nil {
			continue
		}
		lk := string(localKey(key))
		if old, err := s.Get(lk); err != nil || old != nil {
			return key, lk, err
		}
	}
	// Nothing stored under text: a tombstone whose deleted state was
	// compacted away or came before the view's data. It deletes nothing,
	// and is no bad record: its key is the one the view would look up.
	key, err := v.ParseKey(text)
	if err != nil {
		return key, "", err
	}
	return key, string(localKey(key)), nil
}

// sawKinds adds the bit set kinds to the kinds the view holds.
func (v *View) sawKinds(kinds uint32) {
	for {
		old := v.kinds.Load()
		if old|kinds == old || v.kinds.CompareAndSwap(old, old|kinds) {
			return
		}
	}
}

// ParseKey returns the key of this view's entity whose key text is s (an
// HTTP path segment, unescaped): of the kind of the keys the view holds. A
// view that holds no entity yet takes s as an integer if it is one, else as
// a uuid, a composite key or a text, in that order; every key of a
// view is of one kind, the kind of its table's key columns.
func (v *View) ParseKey(s string) (codecs.Key, error) {
	kinds := v.kinds.Load()
	for k := codecs.KeyInteger; k <= codecs.KeyComposite; k++ {
		if kinds == 1<<k {
			key, err := codecs.ParseKey(k, s)
			if err != nil {
				return key, fmt.Errorf("view %s holds %s keys: %w", v.entityType, k, err)
			}
			return key, nil
		}
	}
	for _, k := range []codecs.KeyKind{codecs.KeyInteger, codecs.KeyUUID, codecs.KeyComposite, codecs.KeyText} {
		if key, err := codecs.ParseKey(k, s); err == nil {
			return key, nil
		}
	}
	return codecs.ParseKey(codecs.KeyText, s)
}

func setOrDelete(s gokastorage.Storage, key string, value []byte) error {
	if value == nil {
		return s.Delete(key)
	}
	return s.Set(key, value)
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// EntityType is the entity type this view holds.
func (v *View) EntityType() string { return v.entityType }

// Run keeps the view current until ctx is cancelled (then it returns nil) or
// it fails. A View runs once: it closes its storage when Run returns.
//
// An outage of Kafka, at the start or later, does not end Run: it waits
// for Kafka (1 s doubling to 5 s between tries), logging once when Kafka
// is lost and once when it is back; meanwhile a recovered view answers
// reads from its local copy, Status says StatusDisconnected and SyncedAt
// says how old its data may be.
func (v *View) Run(ctx context.Context) error {
	v.running.Store(true)
	defer func() {
		v.running.Store(false)
		v.subsMu.Lock()
		v.stopped = true
		v.subsMu.Unlock()
		v.clientMu.Lock()
		client := v.client
		v.client = nil
		v.clientMu.Unlock()
		if client != nil {
			if err := outage.CloseWithin(outage.CloseTimeout, "kafka client", client.Close); err != nil {
				v.log.Warn("shutdown", "err", err)
			}
		}
	}()
	if v.view.Load() == nil {
		var gv *goka.View
		err := outage.Retry(ctx, v.kafka, func(context.Context) (err error) {
			gv, err = v.build()
			return err
		})
		if ctx.Err() != nil {
			v.closeSubscriptions()
			return nil
		}
		if err != nil {
			v.closeSubscriptions()
			return err
		}
		v.setView(gv)
	}
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	context.AfterFunc(rctx, func() { v.haltOnce.Do(func() { close(v.halt) }) })
	done := make(chan struct{})
	go func() {
		defer close(done)
		v.watch(rctx)
	}()
	err := v.view.Load().Run(rctx)
	cancel()
	<-done
	v.closeSubscriptions()
	if err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("view %s: %w", v.entityType, err)
	}
	return nil
}

// watch updates the gauges and logs recovery progress until ctx is done.
func (v *View) watch(ctx context.Context) {
	const every = 5 * time.Second
	t := time.NewTicker(time.Second)
	defer t.Stop()
	start := time.Now()
	var lastLog time.Time
	var lastRecords float64
	logged, lagAnswered := false, false
	var lagWithin outage.Bounded[int64]
	defer lagWithin.Wait()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		recovered := v.Recovered()
		v.metrics.setRecovered(recovered)
		n, _ := v.Len()
		v.metrics.entities.Set(float64(n))
		// Bounded: sarama tries every broker and retries, so a paused
		// broker can hold one Lag for many times its network timeouts.
		lag, err := lagWithin.Run(outage.ProbeTimeout, func() (int64, error) { return v.Lag(ctx) })
		switch {
		case err == nil:
			lagAnswered = true
			v.kafka.Up()
			v.metrics.lag.Set(float64(lag))
			if lag == 0 && recovered {
				now := time.Now()
				v.syncedAt.Store(now.UnixNano())
				v.metrics.synced.Set(float64(now.UnixNano()) / 1e9)
			}
		case ctx.Err() == nil && (lagAnswered || errors.Is(err, outage.ErrNoAnswer)):
			// A refused lag counts once Kafka answered one: goka's tester
			// has no Kafka. A lag with no answer at all is an outage
			// whenever it comes, also before the first answer (a broker
			// paused just after the view was built).
			v.kafka.Down(err)
		}
		records := v.metrics.recoveryRecords()
		switch {
		case !recovered && time.Since(lastLog) >= every:
			rate := (records - lastRecords) / time.Since(lastLog).Seconds()
			if lastLog.IsZero() {
				rate = records / time.Since(start).Seconds()
			}
			v.log.Info("view recovering", "records", int64(records), "remaining", lag, "records_per_second", int64(rate))
			lastLog, lastRecords, logged = time.Now(), records, true
		case recovered && logged:
			v.log.Info("view recovered", "records", int64(records), "entities", n, "seconds", time.Since(start).Seconds())
			logged = false
		}
	}
}

// Recovered reports whether Run runs and every partition has caught up with
// its table.
func (v *View) Recovered() bool {
	if !v.running.Load() {
		return false
	}
	for p := range v.stores {
		st := v.stores[p].Load()
		if st == nil || !st.ready.Load() {
			return false
		}
	}
	return true
}

// WaitRecovered blocks until Recovered or ctx is done.
func (v *View) WaitRecovered(ctx context.Context) error {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for !v.Recovered() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("view %s not recovered: %w", v.entityType, ctx.Err())
		case <-t.C:
		}
	}
	return nil
}

// Status is a view's lifecycle state.
type Status int

// The statuses of a view, in the order a view goes through them.
const (
	// StatusIdle: Run has not started or has returned.
	StatusIdle Status = iota
	// StatusConnecting: opening storage and connecting to Kafka.
	StatusConnecting
	// StatusCatchingUp: reading the table up to where it ended at the start.
	StatusCatchingUp
	// StatusRunning: recovered, applying the table's new records as they come.
	StatusRunning
	// StatusDisconnected: recovered, but Kafka does not answer: reads are
	// answered from the local copy, as of SyncedAt.
	StatusDisconnected
)

func (s Status) String() string {
	switch s {
	case StatusIdle:
		return "idle"
	case StatusConnecting:
		return "connecting"
	case StatusCatchingUp:
		return "catching-up"
	case StatusRunning:
		return "running"
	case StatusDisconnected:
		return "disconnected"
	}
	return "status(" + strconv.Itoa(int(s)) + ")"
}

func statusOf(s goka.ViewState) Status {
	switch s {
	case goka.ViewStateInitializing, goka.ViewStateConnecting:
		return StatusConnecting
	case goka.ViewStateCatchUp:
		return StatusCatchingUp
	case goka.ViewStateRunning:
		return StatusRunning
	}
	return StatusIdle
}

// Status is the view's current status.
func (v *View) Status() Status {
	gv := v.view.Load()
	switch {
	case gv == nil && v.running.Load():
		return StatusConnecting
	case gv == nil:
		return StatusIdle
	}
	s := statusOf(gv.CurrentState())
	if s != StatusIdle && v.running.Load() && !v.kafka.Connected() && v.Recovered() {
		return StatusDisconnected
	}
	return s
}

// Connected reports whether Kafka answered the view's last check (every
// second while Run runs).
func (v *View) Connected() bool { return v.kafka.Connected() }

// SyncedAt is when the view last held every record of its table: set when
// the view recovers, then checked every second while Run runs (the zero
// time before the recovery): its reads reflect the table at least as of then. While Kafka is away it
// stays put, so time.Since(SyncedAt()) is how stale the reads may be.
func (v *View) SyncedAt() time.Time {
	n := v.syncedAt.Load()
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

// StatusChanges sends the view's status, then every change of it, until ctx
// is done; then it closes the channel. A slow reader sees the latest status
// (intermediate ones can be skipped) and never blocks the view.
//
// It follows goka's lifecycle of the view: StatusDisconnected is seen by
// Status, not here.
func (v *View) StatusChanges(ctx context.Context) <-chan Status {
	out := make(chan Status, 1)
	go func() {
		defer close(out)
		select {
		case <-v.built: // Kafka may be away when New runs
		case <-ctx.Done():
			return
		}
		obs := v.view.Load().ObserveStateChanges()
		defer obs.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case s, ok := <-obs.C():
				if !ok {
					return
				}
				select {
				case <-out: // drop the unread older status
				default:
				}
				out <- statusOf(goka.ViewState(s))
			}
		}
	}()
	return out
}

// Lag is how many records of its table the view has not applied yet, over
// all partitions: the view's staleness. It asks Kafka for the partitions'
// ends, so it costs a round trip.
func (v *View) Lag(ctx context.Context) (int64, error) {
	client, err := v.lagClient()
	if err != nil {
		return 0, err
	}
	var lag int64
	for p := range v.partitions {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		hwm, err := client.GetOffset(v.topic, int32(p), sarama.OffsetNewest)
		if err != nil {
			return 0, fmt.Errorf("view %s lag: end of partition %d: %w", v.entityType, p, err)
		}
		next := int64(0)
		if st := v.stores[p].Load(); st != nil {
			next = st.lastOffset() + 1
		}
		if next == 0 {
			if next, err = client.GetOffset(v.topic, int32(p), sarama.OffsetOldest); err != nil {
				return 0, fmt.Errorf("view %s lag: start of partition %d: %w", v.entityType, p, err)
			}
		}
		lag += max(hwm-next, 0)
	}
	return lag, nil
}

func (v *View) lagClient() (sarama.Client, error) {
	v.clientMu.Lock()
	defer v.clientMu.Unlock()
	if !v.running.Load() {
		return nil, ErrNotRunning
	}
	if v.client == nil {
		// Short timeouts: a broker that stopped answering shows as
		// disconnected within seconds.
		cfg, err := outage.ProbeConfig(v.kcfg)
		if err != nil {
			return nil, fmt.Errorf("view %s: %w", v.entityType, err)
		}
		c, err := sarama.NewClient(v.kcfg.Brokers, cfg)
		if err != nil {
			err = topology.ExplainKafkaError(v.kcfg, err)
			return nil, fmt.Errorf("view %s: kafka client: %w", v.entityType, err)
		}
		v.client = c
	}
	return v.client, nil
}

// Get returns the latest state of the entity with integer id, or nil if the
// view has none (never written, deleted or truncated). It is GetKey for an
// integer key, without building one. With AtLeast, it first waits until
// the view has applied every change committed up to the LSN given.
func (v *View) Get(ctx context.Context, id int64, opts ...ReadOption) (*codecs.State, error) {
	return v.get(ctx, strconv.FormatInt(id, 10), entityKey(id), opts)
}

// GetKey returns the latest state of the entity with key k, of any kind, or
// nil if the view has none. It takes Get's options.
func (v *View) GetKey(ctx context.Context, k codecs.Key, opts ...ReadOption) (*codecs.State, error) {
	return v.get(ctx, k.String(), localKey(k), opts)
}

// get reads the entity whose key has text and local key lk.
func (v *View) get(ctx context.Context, text string, lk []byte, opts []ReadOption) (*codecs.State, error) {
	if o := readOpts(opts); o.atLeast > 0 {
		if err := v.waitPartitionApplied(ctx, text, o.atLeast); err != nil {
			return nil, err
		}
	}
	start := time.Now()
	defer v.metrics.observeGet(start)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	st := v.stores[topology.PartitionOf(text, v.partitions)].Load()
	if st == nil || !st.acquire() {
		return nil, fmt.Errorf("view %s get %q: %w", v.entityType, text, ErrNotRunning)
	}
	defer st.release()
	raw, err := st.Get(string(lk))
	if err != nil {
		return nil, fmt.Errorf("view %s get %q: %w", v.entityType, text, err)
	}
	if raw == nil || isDeletedState(raw) {
		return nil, nil
	}
	state, err := (codecs.StateCodec{}).Decode(raw)
	if err != nil {
		return nil, fmt.Errorf("view %s get %q: %w", v.entityType, text, err)
	}
	if !codecs.VisibleAfter(st.truncatedAt(), state) {
		return nil, nil
	}
	return state, nil
}

// All iterates every entity of the view in key order (see RangeKeys).
func (v *View) All(ctx context.Context) iter.Seq2[*codecs.State, error] {
	return v.iterate(ctx, nil, nil)
}

// After iterates the entities whose keys come after k (k excluded) to the
// end, in key order (see RangeKeys): the next page after a page that ended
// at k.
func (v *View) After(ctx context.Context, k codecs.Key) iter.Seq2[*codecs.State, error] {
	return func(yield func(*codecs.State, error) bool) {
		for st, err := range v.iterate(ctx, &k, nil) {
			if err == nil && st.EntityID == k {
				continue
			}
			if !yield(st, err) {
				return
			}
		}
	}
}

// Range iterates the entities with ids from first to last (both included) in
// id order. It reads a snapshot of each partition's committed records taken
// when the iteration starts (every record the hook and the subscribers were
// told about; while a partition recovers, Get may already see up to a batch
// more); records the view applies meanwhile are not seen. An error ends the
// iteration. The view's storage stays open until the iteration ends: do not
// keep an iteration open for long.
func (v *View) Range(ctx context.Context, first, last int64) iter.Seq2[*codecs.State, error] {
	if first > last {
		return func(func(*codecs.State, error) bool) {}
	}
	f, l := codecs.IntKey(first), codecs.IntKey(last)
	return v.iterate(ctx, &f, &l)
}

// RangeKeys iterates the entities with keys from first to last (both
// included) in the order of codecs.Key.Compare: integer keys by value, uuid
// and text keys by the bytes of their text (their natural order, as
// PostgreSQL's "C" collation sorts text), composite keys by the bytes of
// their canonical JSON text. It reads as Range does.
func (v *View) RangeKeys(ctx context.Context, first, last codecs.Key) iter.Seq2[*codecs.State, error] {
	if first.Compare(last) > 0 {
		return func(func(*codecs.State, error) bool) {}
	}
	return v.iterate(ctx, &first, &last)
}

// iterate iterates the keys from first to last, both included; nil for
// the first or the last key of all.
func (v *View) iterate(ctx context.Context, first, last *codecs.Key) iter.Seq2[*codecs.State, error] {
	return func(yield func(*codecs.State, error) bool) {
		m, err := v.merge(first, last)
		if err != nil {
			yield(nil, err)
			return
		}
		defer m.release()
		for m.next() {
			if err := ctx.Err(); err != nil {
				yield(nil, err)
				return
			}
			raw := m.value()
			if isDeletedState(raw) {
				continue
			}
			state, err := (codecs.StateCodec{}).Decode(raw)
			if err != nil {
				yield(nil, fmt.Errorf("view %s: entity %q: %w", v.entityType, m.key(), err))
				return
			}
			if !codecs.VisibleAfter(m.truncatedAt(), state) {
				continue
			}
			if !yield(state, nil) {
				return
			}
		}
		if err := m.err(); err != nil {
			yield(nil, fmt.Errorf("view %s: %w", v.entityType, err))
		}
	}
}

// Each calls fn for every entity in key order until fn returns an error,
// which Each returns.
func (v *View) Each(fn func(*codecs.State) error) error {
	for st, err := range v.All(context.Background()) {
		if err != nil {
			return err
		}
		if err := fn(st); err != nil {
			return err
		}
	}
	return nil
}

// Len is the number of entities in the view, kept as records are applied.
func (v *View) Len() (int, error) {
	var n int64
	for p := range v.stores {
		if v.stores[p].Load() == nil {
			return 0, fmt.Errorf("view %s: %w", v.entityType, ErrNotRunning)
		}
		n += v.alive[p].Load()
	}
	return int(n), nil
}

// buildErrors keeps the last error of the sarama clients goka builds for a
// view: goka reports them with %v, which loses what they wrap, so a refused
// password would look like an outage and be retried for good.
type buildErrors struct{ last atomic.Pointer[error] }

func (b *buildErrors) reset() { b.last.Store(nil) }

func (b *buildErrors) keep(err error) {
	if err != nil {
		b.last.Store(&err)
	}
}

func (b *buildErrors) consumer(f goka.SaramaConsumerBuilder) goka.SaramaConsumerBuilder {
	return func(brokers []string, clientID string) (sarama.Consumer, error) {
		c, err := f(brokers, clientID)
		b.keep(err)
		return c, err
	}
}

func (b *buildErrors) topicManager(f goka.TopicManagerBuilder) goka.TopicManagerBuilder {
	return func(brokers []string) (goka.TopicManager, error) {
		tm, err := f(brokers)
		b.keep(err)
		return tm, err
	}
}

// explain returns the kept client error, explained, in place of goka's
// flattened err when there is one.
func (b *buildErrors) explain(k topology.KafkaConfig, err error) error {
	if last := b.last.Load(); last != nil {
		return topology.ExplainKafkaError(k, *last)
	}
	return err
}
