package views

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strconv"
	"time"

	"github.com/lovoo/goka"
	"github.com/lovoo/goka/storage"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/internal/slogadapter"
	"github.com/changes-dev/changes/topology"
)

// Update is one change of a view's table, as seen by an UpdateHook.
type Update struct {
	// EntityID is the id of the changed entity.
	EntityID int64
	// State is the entity's new state; nil when it was deleted (a deleted
	// state or the tombstone that follows it).
	State *codecs.State
	// Partition and Offset locate the change in the table topic.
	Partition int32
	Offset    int64
}

// UpdateHook is called for every record the view applies, recovery
// included, after it is stored. It runs on the view's partition goroutine:
// keep it short and do not block.
type UpdateHook func(Update)

// Option configures a View.
type Option func(*View)

// WithLogger sets the logger. Default: slog.Default().
func WithLogger(l *slog.Logger) Option { return func(v *View) { v.log = l } }

// WithStorageDir sets where the view keeps its goleveldb copy. Default:
// <config storage>/views.
func WithStorageDir(dir string) Option { return func(v *View) { v.storageDir = dir } }

// WithUpdateHook calls hook for every update the view applies.
func WithUpdateHook(hook UpdateHook) Option { return func(v *View) { v.hook = hook } }

// WithGokaOptions appends raw goka view options, applied after the
// platform's own.
func WithGokaOptions(opts ...goka.ViewOption) Option {
	return func(v *View) { v.gokaOpts = append(v.gokaOpts, opts...) }
}

// View is the snapshot of one entity type. Get, Each and Len are safe for
// concurrent use with each other and with Run.
type View struct {
	entityType string
	partitions int
	view       *goka.View
	log        *slog.Logger
	storageDir string
	hook       UpdateHook
	gokaOpts   []goka.ViewOption
}

// New returns the view of entityType's snapshot table. Call Run to start it.
func New(topo *topology.Topology, entityType string, opts ...Option) (*View, error) {
	if _, ok := topo.Config().Entity(entityType); !ok {
		return nil, fmt.Errorf("view: entity type %q is not declared", entityType)
	}
	ent, _ := topo.Config().Entity(entityType)
	v := &View{
		entityType: entityType,
		partitions: ent.Partitions,
		log:        slog.Default(),
		storageDir: filepath.Join(topo.Config().Storage, "views"),
	}
	for _, o := range opts {
		o(v)
	}
	v.log = v.log.With("component", "view", "entity_type", entityType)
	kcfg := topo.Config().Kafka
	// Views only read partition counts through the topic manager; they never create topics.
	tmc := goka.NewTopicManagerConfig()
	gokaOpts := []goka.ViewOption{
		goka.WithViewClientID(kcfg.ClientID),
		goka.WithViewLogger(slogadapter.New(v.log, slog.LevelDebug)),
		goka.WithViewStorageBuilder(storage.DefaultBuilder(v.storageDir)),
		goka.WithViewConsumerSaramaBuilder(goka.SaramaConsumerBuilderWithConfig(topology.SaramaConfig(kcfg))),
		goka.WithViewTopicManagerBuilder(goka.TopicManagerBuilderWithConfig(topology.SaramaConfig(kcfg), tmc)),
		goka.WithViewCallback(v.update),
	}
	gv, err := goka.NewView(kcfg.Brokers, topo.Snapshot(entityType),
		codecs.GokaCodec[*codecs.State](codecs.StateCodec{}), append(gokaOpts, v.gokaOpts...)...)
	if err != nil {
		return nil, fmt.Errorf("view %s: %w", entityType, err)
	}
	v.view = gv
	return v, nil
}

// update stores a table record, then tells the hook.
func (v *View) update(uctx goka.UpdateContext, s storage.Storage, key string, value []byte) error {
	if err := goka.DefaultUpdate(uctx, s, key, value); err != nil {
		return err
	}
	if v.hook == nil {
		return nil
	}
	if topology.IsTruncateKey(key) {
		return nil // a TRUNCATE marker: Get and Each apply it
	}
	id, err := strconv.ParseInt(key, 10, 64)
	if err != nil {
		v.log.Warn("table key is not an entity id", "key", key, "partition", uctx.Partition(), "offset", uctx.Offset())
		return nil
	}
	u := Update{EntityID: id, Partition: uctx.Partition(), Offset: uctx.Offset()}
	if value != nil {
		if u.State, err = (codecs.StateCodec{}).Decode(value); err != nil {
			v.log.Warn("table record does not decode", "entity_id", id, "partition", uctx.Partition(), "offset", uctx.Offset(), "err", err)
			return nil
		}
		if u.State.Deleted {
			u.State = nil
		} else if marker, err := s.Get(topology.TruncateKey(topology.PartitionOf(key, v.partitions), v.partitions)); err == nil && marker != nil {
			// s is this partition's storage: a later TRUNCATE hides the state.
			if m, err := (codecs.StateCodec{}).Decode(marker); err == nil && m.Truncated && u.State.Position.Compare(m.Position) <= 0 {
				u.State = nil
			}
		}
	}
	v.hook(u)
	return nil
}

// EntityType is the entity type this view holds.
func (v *View) EntityType() string { return v.entityType }

// Run keeps the view current until ctx is cancelled (then it returns nil) or
// it fails.
func (v *View) Run(ctx context.Context) error {
	err := v.view.Run(ctx)
	if err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("view %s: %w", v.entityType, err)
	}
	return nil
}

// Recovered reports whether every partition has caught up with its table.
func (v *View) Recovered() bool { return v.view.Recovered() }

// WaitRecovered blocks until Recovered or ctx is done.
func (v *View) WaitRecovered(ctx context.Context) error {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for !v.view.Recovered() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("view %s not recovered: %w", v.entityType, ctx.Err())
		case <-t.C:
		}
	}
	return nil
}

// Get returns the latest state of the entity with id, or nil if the view has
// none (never written, or deleted).
func (v *View) Get(id int64) (st *codecs.State, err error) {
	// goka's key lookup overflows for the rare key whose hash is 0x80000000
	// and indexes out of range: an error, not a crash of the service.
	defer func() {
		if r := recover(); r != nil {
			st, err = nil, fmt.Errorf("view %s get %d: goka cannot look this key up: %v", v.entityType, id, r)
		}
	}()
	val, err := v.view.Get(strconv.FormatInt(id, 10))
	if err != nil {
		return nil, fmt.Errorf("view %s get %d: %w", v.entityType, id, err)
	}
	st, _ = val.(*codecs.State)
	if st == nil || st.Deleted {
		return nil, nil
	}
	at, err := v.truncatedAt(topology.PartitionOf(strconv.FormatInt(id, 10), v.partitions))
	if err != nil {
		return nil, err
	}
	if st.Position.Compare(at) <= 0 {
		return nil, nil // the table was truncated after this state
	}
	return st, nil
}

// truncatedAt is the position of partition p's last TRUNCATE, or zero.
func (v *View) truncatedAt(p int32) (codecs.Position, error) {
	val, err := v.view.Get(topology.TruncateKey(p, v.partitions))
	if err != nil {
		return codecs.Position{}, fmt.Errorf("view %s truncate marker of partition %d: %w", v.entityType, p, err)
	}
	if st, _ := val.(*codecs.State); st != nil && st.Truncated {
		return st.Position, nil
	}
	return codecs.Position{}, nil
}

// Each calls fn for every entity in the view, in key order within each
// partition, until fn returns an error, which Each returns.
func (v *View) Each(fn func(*codecs.State) error) error {
	truncated := make([]codecs.Position, v.partitions)
	for p := range truncated {
		at, err := v.truncatedAt(int32(p))
		if err != nil {
			return err
		}
		truncated[p] = at
	}
	it, err := v.view.Iterator()
	if err != nil {
		return fmt.Errorf("view %s: %w", v.entityType, err)
	}
	defer it.Release()
	for it.Next() {
		if topology.IsTruncateKey(it.Key()) {
			continue
		}
		val, err := it.Value()
		if err != nil {
			return fmt.Errorf("view %s key %s: %w", v.entityType, it.Key(), err)
		}
		st, ok := val.(*codecs.State)
		if ok && !st.Deleted && st.Position.Compare(truncated[topology.PartitionOf(it.Key(), v.partitions)]) > 0 {
			if err := fn(st); err != nil {
				return err
			}
		}
	}
	return it.Err()
}

// Len counts the entities in the view.
func (v *View) Len() (int, error) {
	n := 0
	err := v.Each(func(*codecs.State) error { n++; return nil })
	return n, err
}
