// Package history answers point-in-time questions from the history topic:
// what an entity (or every entity of a type) was at a past moment, and
// which changes an entity went through.
//
// The history is one partition holding every committed change in commit
// order, with the commit time as the record timestamp, for the history
// retention (30 days by default). The state at time T is the state after
// every change in the history before the first change committed after T:
// Reader.OffsetAt finds that offset with Kafka's time index, then refines it
// with the events' microsecond commit times. Rebuilding replays the history
// from its start up to that offset, decoding only the records of the asked
// entity (the record key is "type/id").
//
// What the history cannot tell is said, never guessed: a time before the
// first record the history still holds is ErrBeforeHistory; an entity whose
// state at T was set by a change that retention already deleted is
// ErrOlderThanHistory, unless the caller can vouch for its current state
// (EntityAt's current argument, which the query server takes from its view).
//
// # The index
//
// Reader.EntityAt and Reader.TypeAt read the history from its start: about
// 30 s per question for a month at a million changes a day. An Index, kept
// by tailing the history into goleveldb beside the views (OpenIndex, Run),
// gives the same answers, errors included: in milliseconds for one entity,
// and for a whole type from the last checkpoint before the moment instead
// of the history's start. It stores each entity's change offsets with what
// the replay judges them by, and periodic checkpoints of every type's
// state (IndexConfig.CheckpointEvery).
// `changes serve` keeps one for /v1/history?at=; `changes asof`, a one-shot
// command, scans.
//
// A Reader asks only for the Kafka client settings and the history topic
// (Config, New); Open takes them from a deployment's Topology. The replay
// keeps each entity's state by the rule of the snapshot tables
// (codecs.Judge, codecs.VisibleAfter), so the history and a view agree.
package history

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"log/slog"
	"sync"
	"time"

	"github.com/IBM/sarama"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/internal/kread"
	"github.com/changes-dev/changes/topology"
)

// ErrBeforeHistory: the asked time is before the first change the history
// holds (older than its retention, or before the capture started).
var ErrBeforeHistory = errors.New("the asked time is older than the history")

// ErrOlderThanHistory: the entity's state at the asked time was set by a
// change the history no longer holds.
var ErrOlderThanHistory = errors.New("the entity's state at that time is older than the history")

// Reader reads the history topic. It is safe for concurrent use.
type Reader struct {
	topic     string
	brokers   []string
	scfg      *sarama.Config // for Follow's clients
	client    sarama.Client
	log       *slog.Logger
	retention time.Duration

	mu        sync.Mutex
	startAt   int64     // the offset startTime belongs to; -1 if none
	startTime time.Time // commit time of the record at startAt
}

// Config is what a Reader needs: how to reach Kafka and which topic is the
// history. It holds no database credentials; ConfigFor builds it from a
// deployment's Topology.
type Config struct {
	// Kafka says how to reach the brokers: Brokers (required), Version
	// (default 4.0.0), ClientID (default changes), TLS and SASL, as
	// topology.KafkaConfig documents them. The producer and topic settings
	// are not used.
	Kafka topology.KafkaConfig
	// Topic is the history topic, "<prefix>.history"
	// (topology.Topology.History), e.g. changes.history. Required.
	Topic string
	// Retention is the history topic's retention, which errors and Bounds
	// report (topics.history_retention). Default: 720h (30 days).
	Retention time.Duration
}

// ConfigFor returns the Config of topo's history.
func ConfigFor(topo *topology.Topology) Config {
	return Config{Kafka: topo.Config().Kafka, Topic: topo.History(), Retention: topo.Config().Topics.HistoryRetention}
}

// Validate checks c, its defaults applied, and names the first wrong field
// (a *topology.FieldError for the Kafka settings).
func (c Config) Validate() error { return c.check() }

// check applies the defaults to c, normalises it and validates it.
func (c *Config) check() error {
	if c.Retention == 0 {
		c.Retention = topology.DefaultHistoryRetention
	}
	if err := c.Kafka.ValidateClient(); err != nil {
		return err
	}
	if c.Topic == "" {
		return errors.New("history config: Topic is required (the history topic, e.g. changes.history)")
	}
	if c.Retention < 0 {
		return fmt.Errorf("history config: Retention must not be negative, got %s", c.Retention)
	}
	return nil
}

// Open connects a Reader to the history topic of topo: New with
// ConfigFor(topo).
func Open(topo *topology.Topology, log *slog.Logger) (*Reader, error) {
	return New(ConfigFor(topo), log)
}

// New connects a Reader to the history cfg names; log defaults to
// slog.Default(). It fails if cfg is not valid or the Kafka client cannot
// be made (no broker answers).
func New(cfg Config, log *slog.Logger) (*Reader, error) {
	if err := cfg.check(); err != nil {
		return nil, fmt.Errorf("history: %w", err)
	}
	scfg, err := topology.SaramaConfig(cfg.Kafka)
	if err != nil {
		return nil, fmt.Errorf("history: %w", err)
	}
	if scfg.Producer.MaxMessageBytes <= 0 {
		// A Reader produces nothing, but sarama checks the producer's
		// settings of every client: a Config that leaves the producer
		// settings empty, as its documentation allows, must not fail.
		scfg.Producer.MaxMessageBytes = topology.DefaultMaxRecordBytes
	}
	scfg.Consumer.Fetch.Default = 8 << 20 // replays read far; fewer, larger fetches
	client, err := sarama.NewClient(cfg.Kafka.Brokers, scfg)
	if err != nil {
		return nil, fmt.Errorf("history: kafka client: %w", err)
	}
	if log == nil {
		log = slog.Default()
	}
	fcfg := *scfg
	fcfg.Consumer.Fetch.Default = 1 << 20 // a follower reads what is new
	return &Reader{
		topic:     cfg.Topic,
		brokers:   cfg.Kafka.Brokers,
		scfg:      &fcfg,
		client:    client,
		log:       log.With("component", "history"),
		retention: cfg.Retention,
		startAt:   -1,
	}, nil
}

// Close closes the Reader's Kafka client.
func (r *Reader) Close() error { return r.client.Close() }

// Bounds is the part of the history Kafka still holds.
type Bounds struct {
	// Start is the first offset held; End the offset the next change gets.
	Start, End int64
	// StartTime is the commit time of the change at Start (zero if empty).
	StartTime time.Time
	// Retention is the history topic's configured retention.
	Retention time.Duration
}

// Bounds reads the history's current bounds.
func (r *Reader) Bounds(ctx context.Context) (Bounds, error) {
	b := Bounds{Retention: r.retention}
	var err error
	if b.Start, err = r.client.GetOffset(r.topic, 0, sarama.OffsetOldest); err != nil {
		return b, fmt.Errorf("history start: %w", err)
	}
	// The last stable offset: the capture writes in Kafka transactions, and
	// what is past it is not decided yet.
	if b.End, err = kread.End(r.client, r.topic, 0); err != nil {
		return b, fmt.Errorf("history end: %w", err)
	}
	r.mu.Lock()
	if r.startAt == b.Start {
		b.StartTime = r.startTime
	}
	r.mu.Unlock()
	if b.Start < b.End && b.StartTime.IsZero() {
		var first *codecs.Event
		// The first committed event (aborted records and markers hold offsets too).
		err := r.scan(ctx, b.Start, b.End, func(off int64, key []byte, value recordValue) (bool, error) {
			ev, err := value.event()
			first = ev
			return false, err
		})
		if err != nil {
			return b, err
		}
		if first != nil {
			b.StartTime = first.CommitTime
			r.mu.Lock()
			r.startAt, r.startTime = b.Start, b.StartTime
			r.mu.Unlock()
		}
	}
	return b, nil
}

// beforeHistory is ErrBeforeHistory, explained.
func beforeHistory(at time.Time, b Bounds) error {
	return fmt.Errorf("%w: %s is before the first change the history holds (offset %d, committed %s; retention %s)",
		ErrBeforeHistory, at.UTC().Format(time.RFC3339Nano), b.Start, b.StartTime.UTC().Format(time.RFC3339Nano), b.Retention)
}

// OffsetAt returns the end of the history as of time at: the offset of the
// first change committed after at, or the history's end if there is none
// yet. Replaying up to it (exclusive) gives the state at at.
func (r *Reader) OffsetAt(ctx context.Context, at time.Time) (int64, error) {
	b, err := r.Bounds(ctx)
	if err != nil {
		return 0, err
	}
	if b.Start == b.End || at.Before(b.StartTime) {
		if b.Start == b.End && b.Start == 0 {
			return 0, fmt.Errorf("%w: the history is empty", ErrBeforeHistory)
		}
		return 0, beforeHistory(at, b)
	}
	// The first record whose millisecond timestamp is at at's millisecond or
	// later; every earlier record was committed before at.
	from, err := r.client.GetOffset(r.topic, 0, at.Truncate(time.Millisecond).UnixMilli())
	if err != nil {
		return 0, fmt.Errorf("history offset for %s: %w", at.Format(time.RFC3339Nano), err)
	}
	if from < 0 || from >= b.End {
		return b.End, nil
	}
	end := b.End
	// The first record committed after at is within a few of from: read
	// batches, not 8 MiB at once (that was most of a point-in-time read
	// from the index).
	err = r.scanSized(ctx, max(from, b.Start), b.End, smallFetch, func(off int64, _ []byte, value recordValue) (bool, error) {
		ev, err := value.event()
		if err != nil {
			return false, err
		}
		// A watermark's time is the server's when the capture got it, not
		// a commit's: it does not end the replay.
		if ev.Op != codecs.OpWatermark && ev.CommitTime.After(at) {
			end = off
			return false, nil
		}
		return true, nil
	})
	return end, err
}

// OffsetAtLSN returns the end of the history as of lsn: the offset of the
// first change committed at or after lsn, or the history's end if there is
// none yet. Replaying up to it (exclusive) gives what a consistent cut at
// lsn holds (views.Cut): every transaction that committed before lsn,
// whole, in every type. TypeAt of several types at that offset is the
// same cut in the past. It is a binary search over the history (the
// changes are in commit order), reading a few records per step.
func (r *Reader) OffsetAtLSN(ctx context.Context, lsn codecs.LSN) (int64, error) {
	b, err := r.Bounds(ctx)
	if err != nil {
		return 0, err
	}
	if b.Start == b.End {
		return 0, fmt.Errorf("%w: the history is empty", ErrBeforeHistory)
	}
	lo, hi := b.Start, b.End
	for lo < hi {
		mid := lo + (hi-lo)/2
		// The first change at mid or after: markers and watermarks are
		// no changes, and control records of transactions take offsets
		// without being read.
		found, at := false, int64(0)
		var commit codecs.LSN
		err := r.scan(ctx, mid, hi, func(off int64, _ []byte, value recordValue) (bool, error) {
			ev, err := value.event()
			if err != nil {
				return false, err
			}
			if !ev.Op.IsChange() {
				return true, nil
			}
			found, at, commit = true, off, ev.CommitLSN
			return false, nil
		})
		switch {
		case err != nil:
			return 0, err
		case !found || commit >= lsn:
			if !found {
				at = mid
			}
			hi = at
		default:
			lo = at + 1
		}
	}
	if lo == b.Start && b.Start > 0 {
		return 0, fmt.Errorf("%w: %s is at or before the first change the history holds (offset %d; retention %s)", ErrBeforeHistory, lsn, b.Start, b.Retention)
	}
	return lo, nil
}

// Change is one change of an entity, where the history holds it.
type Change struct {
	Offset int64         `json:"offset"`
	Event  *codecs.Event `json:"event"`
}

// Changes lists the changes of one entity in [from, to) in history order,
// truncates of its type included (their entity id is 0). It holds them all
// in memory; ChangesSeq reads them one by one.
func (r *Reader) Changes(ctx context.Context, entityType string, id codecs.Key, from, to int64) ([]Change, error) {
	var out []Change
	for c, err := range r.ChangesSeq(ctx, entityType, id, from, to) {
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

// ChangesSeq yields the changes Changes lists, as it reads them: a caller
// that stops early (a page of the query server) stops the read there. An
// error ends the sequence.
func (r *Reader) ChangesSeq(ctx context.Context, entityType string, id codecs.Key, from, to int64) iter.Seq2[Change, error] {
	return func(yield func(Change, error) bool) {
		key := entityType + "/" + id.String()
		truncKey := entityType + "/0"
		stopped := false
		err := r.scan(ctx, from, to, func(off int64, k []byte, value recordValue) (bool, error) {
			if string(k) != key && string(k) != truncKey {
				return true, nil
			}
			ev, err := value.event()
			if err != nil {
				return false, err
			}
			if ev.EntityType == entityType && (ev.Op == codecs.OpTruncate || ev.EntityID.String() == id.String()) {
				stopped = !yield(Change{Offset: off, Event: ev}, nil)
			}
			return !stopped, nil
		})
		if err != nil && !stopped {
			yield(Change{}, err)
		}
	}
}

// CurrentFunc returns an entity's current state (nil if it has none) from a
// source the caller trusts to be caught up with the history, such as a
// recovered view.
type CurrentFunc func(ctx context.Context, id codecs.Key) (*codecs.State, error)

// EntityAt returns the state of one entity after the history's changes
// before offset end (see OffsetAt), or nil if it did not exist then.
//
// When retention has deleted the start of the history and the entity has no
// change before end, its state then is unknown to the history: if its first
// change after end is an insert it did not exist; if it has no change at
// all, current (when not nil) gives it, checked against the history's
// changes made meanwhile; otherwise the answer is ErrOlderThanHistory.
func (r *Reader) EntityAt(ctx context.Context, entityType string, id codecs.Key, end int64, current CurrentFunc) (*codecs.State, error) {
	b, err := r.Bounds(ctx)
	if err != nil {
		return nil, err
	}
	return r.entityAt(ctx, b, entityType, id, end, current, entitySource{list: r.Changes})
}

// entitySource is where entityAt reads an entity's changes: the history
// itself (the scan), or an Index that lists them without their rows.
type entitySource struct {
	// list lists the changes of an entity in [from, to) as Changes does;
	// the index's events carry no rows, only what the replay judges by.
	list func(ctx context.Context, entityType string, id codecs.Key, from, to int64) ([]Change, error)
	// settle, when not nil, turns the state the replay arrived at into the
	// answer: trail says, for each state the replay made, the change that
	// made it and the state it was applied to.
	settle func(ctx context.Context, st *codecs.State, trail map[*codecs.State]step) (*codecs.State, error)
}

// step is how the replay made a state: the change at offset applied to base.
type step struct {
	offset int64
	event  *codecs.Event
	base   *codecs.State
}

// entityAt is EntityAt on the history bounds b, reading from src. The
// scan and the index share it, so they answer alike, errors included.
func (r *Reader) entityAt(ctx context.Context, b Bounds, entityType string, id codecs.Key, end int64, current CurrentFunc, src entitySource) (*codecs.State, error) {
	end = min(end, b.End)
	changes, err := src.list(ctx, entityType, id, b.Start, end)
	if err != nil {
		return nil, err
	}
	// The replay keeps the entity's state as its snapshot table does: the
	// history holds every position once, in order, so every change
	// supersedes the one before.
	rp := newReplay(false)
	var trail map[*codecs.State]step
	if src.settle != nil {
		trail = map[*codecs.State]step{}
	}
	for _, c := range changes {
		base, missing, applied := rp.apply(c.Event)
		if applied && len(missing) > 0 && b.Start > 0 && base == nil {
			return nil, fmt.Errorf("%w: columns %v of %s %s kept their value from before offset %d, where the history starts",
				ErrOlderThanHistory, missing, entityType, id, b.Start)
		}
		if applied && trail != nil {
			if st := rp.states[c.Event.EntityID]; st != nil {
				trail[st] = step{offset: c.Offset, event: c.Event, base: base}
			}
		}
	}
	for _, c := range changes {
		if c.Event.Op != codecs.OpTruncate {
			// The changes match id by its text; the replay holds the
			// entity under its key as the events give it, of the type's
			// kind (`changes asof --id` cannot tell "42" the text from 42).
			id = c.Event.EntityID
			break
		}
	}
	if len(changes) > 0 || b.Start == 0 {
		st := rp.entity(id)
		if st == nil || src.settle == nil {
			return st, nil
		}
		return src.settle(ctx, st, trail)
	}
	// Nothing before end, and the history has lost its beginning: what
	// follows end decides.
	later := func(from, to int64) (decided bool, err error) {
		after, err := src.list(ctx, entityType, id, from, to)
		if err != nil || len(after) == 0 {
			return false, err
		}
		if after[0].Event.Op == codecs.OpInsert {
			return true, nil // it came into being after end
		}
		// An update or delete needs the state from before the history's
		// start; a snapshot (a re-created slot) does not say whether the
		// entity existed at end.
		return true, fmt.Errorf("%w: %s %s was last changed before offset %d, where the history starts (retention %s)",
			ErrOlderThanHistory, entityType, id, b.Start, b.Retention)
	}
	if decided, err := later(end, b.End); decided || err != nil {
		return nil, err
	}
	if current == nil {
		return nil, fmt.Errorf("%w: %s %s has no change since offset %d, where the history starts (retention %s); its current state in the snapshot is its state then",
			ErrOlderThanHistory, entityType, id, b.Start, b.Retention)
	}
	// The entity has not changed in the history held up to b.End. Take the
	// current state, then make sure no change reached the history since:
	// what current saw comes from the history, so a change it reflects is
	// in the history before the end read afterwards.
	cur, err := current(ctx, id)
	if err != nil {
		return nil, err
	}
	now, err := r.Bounds(ctx)
	if err != nil {
		return nil, err
	}
	if decided, err := later(b.End, now.End); decided || err != nil {
		return nil, err
	}
	return cur, nil
}

// TypeAt returns every entity of entityType that existed after the
// history's changes before offset end, in id order. If retention has
// deleted the start of the history, entities not changed since cannot be
// known and TypeAt returns ErrOlderThanHistory.
func (r *Reader) TypeAt(ctx context.Context, entityType string, end int64, progress func(done, total int64)) ([]*codecs.State, error) {
	b, err := r.Bounds(ctx)
	if err != nil {
		return nil, err
	}
	if b.Start > 0 {
		return nil, fmt.Errorf("%w: the history starts at offset %d (retention %s); entities not changed since are not in it", ErrOlderThanHistory, b.Start, b.Retention)
	}
	end = min(end, b.End)
	rp := newReplay(true)
	if err := r.replayType(ctx, entityType, b.Start, end, progress, rp.applyWithoutRow); err != nil {
		return nil, err
	}
	if err := rp.decodeRows(); err != nil {
		return nil, fmt.Errorf("history: %w", err)
	}
	return rp.entities(), nil
}

// TypeJSONAt answers what TypeAt answers, entity by entity, as
// Index.TypeJSONAt does: it calls fn with the JSON of each entity's Entity
// (what json.Marshal writes of EntityOf(st), without a newline), in id
// order, and returns TypeAt's error, fn's first one, or json.Marshal's for
// an entity it cannot write (a commit time after the year 9999). The bytes
// are fn's only until it returns. The entities are written without
// encoding/json's reflection, several times faster.
func (r *Reader) TypeJSONAt(ctx context.Context, entityType string, end int64, progress func(done, total int64), fn func(entity []byte) error) error {
	states, err := r.TypeAt(ctx, entityType, end, progress)
	if err != nil {
		return err
	}
	var buf []byte
	for _, st := range states {
		if buf, err = appendEntity(buf[:0], st); err != nil {
			return err
		}
		if err := fn(buf); err != nil {
			return err
		}
	}
	return nil
}

// replayType calls apply with the changes of entityType in [from, to), in
// order: every record whose key starts with "<type>/" and whose event is
// of the type, truncates included, decoded without its rows, and the JSON
// of its after (see codecs.EventCodec.DecodeWithoutRows); it stops at
// apply's first error. progress, when not nil, hears how far it is about
// once a second, and at the end.
func (r *Reader) replayType(ctx context.Context, entityType string, from, to int64, progress func(done, total int64), apply func(ev *codecs.Event, after []byte) error) error {
	prefix := entityType + "/"
	last := time.Now()
	err := r.scan(ctx, from, to, func(off int64, k []byte, value recordValue) (bool, error) {
		if progress != nil && time.Since(last) >= time.Second {
			progress(off-from, to-from)
			last = time.Now()
		}
		if len(k) <= len(prefix) || string(k[:len(prefix)]) != prefix {
			return true, nil
		}
		ev, after, err := value.eventWithoutRows()
		if err != nil {
			return false, err
		}
		if ev.EntityType == entityType {
			if err := apply(ev, after); err != nil {
				return false, err
			}
		}
		return true, nil
	})
	if err != nil {
		return err
	}
	if progress != nil {
		progress(max(to-from, 0), max(to-from, 0))
	}
	return nil
}

// scan reads the history's committed records in [from, to) and calls fn
// with each record's offset, key and a decoder for its value, until fn
// returns false or an error. A record that does not decode (written by
// something other than the capture) is passed over with a warning: it must
// not make the entity or type it concerns unreadable for the retention.
func (r *Reader) scan(ctx context.Context, from, to int64, fn func(off int64, key []byte, value recordValue) (bool, error)) error {
	return r.scanSized(ctx, from, to, 8<<20, fn)
}

// smallFetch is the fetch size of a scan that likely stops after a few
// records (OffsetAt): about a batch of the capture's.
const smallFetch = 64 << 10

// scanSized is scan with fetches of at most maxBytes.
func (r *Reader) scanSized(ctx context.Context, from, to int64, maxBytes int32, fn func(off int64, key []byte, value recordValue) (bool, error)) error {
	if from >= to {
		return nil
	}
	err := kread.RangeSized(ctx, r.client, r.topic, 0, from, to, maxBytes, func(rec *kread.Record) (bool, error) {
		more, err := fn(rec.Offset, rec.Key, recordValue{rec.Value, rec.Offset})
		if errors.Is(err, errUndecodable) {
			r.log.Warn("passed over a history record that is not an event", "offset", rec.Offset, "err", err)
			return true, nil
		}
		return more, err
	})
	if errors.Is(err, kread.ErrOffsetOutOfRange) {
		return fmt.Errorf("%w: retention removed offset %d while it was being read; ask again", ErrBeforeHistory, from)
	}
	if err != nil {
		return fmt.Errorf("history: %w", err)
	}
	return nil
}

// recordValue is the value of the history record at offset, which scan
// hands on for its callback to decode, if it needs it.
type recordValue struct {
	b      []byte
	offset int64
}

// event decodes the value.
func (v recordValue) event() (*codecs.Event, error) {
	ev, err := (codecs.EventCodec{}).Decode(v.b)
	if err != nil {
		return nil, fmt.Errorf("%w: history offset %d: %w", errUndecodable, v.offset, err)
	}
	return ev, nil
}

// eventWithoutRows decodes the value without its rows, and returns the
// JSON of its after (see codecs.EventCodec.DecodeWithoutRows).
func (v recordValue) eventWithoutRows() (*codecs.Event, []byte, error) {
	ev, after, err := (codecs.EventCodec{}).DecodeWithoutRows(v.b)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: history offset %d: %w", errUndecodable, v.offset, err)
	}
	return ev, after, nil
}

// errUndecodable marks a record scan passes over.
var errUndecodable = errors.New("not an event")
