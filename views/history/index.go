package history

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/IBM/sarama"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/syndtr/goleveldb/leveldb"
	"github.com/syndtr/goleveldb/leveldb/filter"
	"github.com/syndtr/goleveldb/leveldb/iterator"
	"github.com/syndtr/goleveldb/leveldb/opt"
	"github.com/syndtr/goleveldb/leveldb/util"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/internal/kread"
)

// DefaultCheckpointEvery is IndexConfig.CheckpointEvery's default: a
// checkpoint of every type's state each 250,000 history offsets, which
// keeps a whole type of a million entities at any moment about as long to
// read as the type read once from Kafka (BENCHMARKS.md).
const DefaultCheckpointEvery = 250_000

// IndexConfig is where an Index keeps its goleveldb database and how often
// it checkpoints the types' states.
type IndexConfig struct {
	// Dir is the index's goleveldb directory, created if missing; one
	// history's index per directory. Required.
	Dir string
	// CheckpointEvery is how many history offsets apart the checkpoints of
	// whole types are: TypeAt reads the checkpoint at or before the asked
	// offset, then replays at most this many records from the history.
	// More offsets between checkpoints make the index smaller and TypeAt
	// slower. Changing it rebuilds the index. Default:
	// DefaultCheckpointEvery (250,000).
	CheckpointEvery int64
	// Registerer, when not nil, receives the changes_history_index_*
	// metrics.
	Registerer prometheus.Registerer
	// Log receives the index's progress and warnings. Default:
	// the Reader's logger.
	Log *slog.Logger
}

// Index answers EntityAt in milliseconds, and TypeAt from the checkpoint
// before the asked offset, where the Reader's scans read the whole history
// (BENCHMARKS.md has the numbers: 2 ms for an entity at p50 on 10,000,000
// changes; a type of 1.2-1.4 million entities there in 0.8-2.6 s as JSON
// (TypeJSONAt: a read of the checkpoint's stored states, 0.5-0.9 s, and the
// replay of the history after it, which decodes no row it can pass on
// as JSON), less than reading as many records from Kafka once, and in
// 5-11 s as states (TypeAt, which decodes every row), bounded wherever the
// moment is, where the scan grows with the offset). It is built by tailing
// the history (Run) into a goleveldb database:
//
//   - for each entity, the offset of each of its changes with what the replay
//     judges it by (operation, position, key kind, unchanged columns), but
//     not its row: EntityAt replays those, then reads from Kafka the one
//     change that set the entity's state (and the earlier ones whose values
//     its unchanged TOASTed columns kept);
//   - for each type, the offsets of its truncates;
//   - the state of every entity of every type at each checkpoint
//     (CheckpointEvery offsets apart), stored as the versions of the
//     entities that changed in the checkpoint's interval, and every fourth
//     checkpoint whole: TypeAt merges the whole checkpoint at or before the
//     asked offset with the versions of at most three checkpoints after it,
//     reading each entity once and in the order of the answer, and
//     replays the history from the last checkpoint (at most
//     CheckpointEvery records) entity by entity: the entities it does not
//     change are passed on as stored, their rows not decoded.
//
// Its answers are the Reader's, byte for byte, errors included (they share
// the replay and its retention rules): the index only spares the reading.
// One difference: where retention has removed the start of the history,
// Reader.TypeAt answers ErrOlderThanHistory, while an index that read the
// history from offset 0 still knows every type's state at its checkpoints
// and answers TypeAt for any offset from its first checkpoint after the
// history's start on.
//
// An offset the index has not reached yet is read from the history: an
// answer is never stale, only slower while the index catches up (Position).
// EntityAt, TypeAt and TypeJSONAt are safe for concurrent use, with each
// other and with Run.
type Index struct {
	r     *Reader
	db    *leveldb.DB
	every int64
	log   *slog.Logger
	m     *indexMetrics

	next    atomic.Int64 // the first offset not indexed
	running atomic.Bool
	// use is held (read-locked) by each query while it reads the
	// database, and locked by Close: goleveldb must not close under an
	// open iterator.
	use        sync.RWMutex
	closed     bool
	sweepEvery time.Duration // how often Run looks at the history's start; tests shorten it
}

// The index's goleveldb keys. Offsets are big-endian, so that the keys of
// an entity or a type sort by offset; no entity type or key text holds a
// NUL byte (PostgreSQL text cannot). entity is the entity's key as
// entityKey writes it, which sorts as codecs.Key.Compare.
//
//	m                                  meta (indexMeta)
//	e \0 type \0 id \0 offset          a change of entity id (entryValue)
//	t \0 type \0 offset                a truncate of the type (truncValue)
//	v \0 type \0 checkpoint entity      the entity's state at that checkpoint,
//	                                   if it changed since the one before
//	                                   (StateCodec; empty: it did not exist)
//	f \0 type \0 checkpoint entity      every fullEvery checkpoints: the state
//	                                   of every entity of the type there
//	p \0 type \0 entity                 the checkpoint of its last version,
//	                                   and the position of its state then
//
// The versions are laid out by checkpoint, then entity: the type at
// checkpoint c is the last full checkpoint at or before c merged with the
// versions of the checkpoints after it up to c, at most fullEvery sorted
// runs read side by side, each entity decoded once, in the order of the
// answer.
const (
	metaKey     = "m"
	entryTag    = 'e'
	truncTag    = 't'
	versionTag  = 'v'
	fullTag     = 'f'
	pointerTag  = 'p'
	metaVersion = 2 // 1: versions by entity, then checkpoint; no full checkpoints
	offsetBytes = 8
	// fullEvery is how many checkpoints apart the full ones are: more
	// make the index smaller, and TypeAt merge more runs of versions (a
	// full checkpoint holds every entity; a checkpoint's versions, those
	// that changed in its interval).
	fullEvery     = 4
	flushRecords  = 20_000 // a write batch; goleveldb's cost is per write
	sweepInterval = 30 * time.Second
)

// indexMeta is what the index knows of itself, written with every batch.
type indexMeta struct {
	next     int64 // the first offset not indexed
	states   bool  // the versions hold every type's state: the index read every record from offset 0
	prunedTo int64 // entries before it are gone (retention removed their records)
	every    int64 // CheckpointEvery the versions were written with
	full     int64 // the last full checkpoint written (0: none; the types are empty there)
}

func (m indexMeta) encode() []byte {
	b := []byte{metaVersion}
	b = binary.BigEndian.AppendUint64(b, uint64(m.next))
	if m.states {
		b = append(b, 1)
	} else {
		b = append(b, 0)
	}
	b = binary.BigEndian.AppendUint64(b, uint64(m.prunedTo))
	b = binary.BigEndian.AppendUint64(b, uint64(m.every))
	return binary.BigEndian.AppendUint64(b, uint64(m.full))
}

// errOldLayout is decodeMeta's error for the meta of an index written with
// an earlier layout: OpenIndex rebuilds it.
var errOldLayout = errors.New("history index: written with an earlier layout")

func decodeMeta(b []byte) (indexMeta, error) {
	switch {
	case len(b) > 0 && b[0] < metaVersion:
		return indexMeta{}, fmt.Errorf("%w (format %d, this version writes %d)", errOldLayout, b[0], metaVersion)
	case len(b) != 34 || b[0] != metaVersion:
		return indexMeta{}, fmt.Errorf("history index: a meta record of %d bytes (%x...): not written by this version of changes (format %d); delete the index's directory to rebuild it",
			len(b), b[:min(len(b), 1)], metaVersion)
	}
	return indexMeta{
		next:     int64(binary.BigEndian.Uint64(b[1:])),
		states:   b[9] == 1,
		prunedTo: int64(binary.BigEndian.Uint64(b[10:])),
		every:    int64(binary.BigEndian.Uint64(b[18:])),
		full:     int64(binary.BigEndian.Uint64(b[26:])),
	}, nil
}

// OpenIndex opens (or creates) the index of r's history in cfg.Dir. It
// fails if cfg is not valid or the directory cannot be opened (another
// process holds it). Run builds it; Close closes it.
func OpenIndex(r *Reader, cfg IndexConfig) (*Index, error) {
	switch {
	case cfg.Dir == "":
		return nil, errors.New("history index: Dir is required")
	case cfg.CheckpointEvery < 0:
		return nil, fmt.Errorf("history index: CheckpointEvery must not be negative, got %d", cfg.CheckpointEvery)
	case cfg.CheckpointEvery == 0:
		cfg.CheckpointEvery = DefaultCheckpointEvery
	}
	log := cfg.Log
	if log == nil {
		log = r.log
	}
	m, err := newIndexMetrics(cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("history index: %w", err)
	}
	db, err := leveldb.OpenFile(cfg.Dir, &opt.Options{
		WriteBuffer:            8 << 20,
		BlockCacheCapacity:     32 << 20,
		CompactionTableSize:    8 << 20,
		OpenFilesCacheCapacity: 128,
		// The indexer looks up each changed entity's last version: most
		// are in the block cache or the batch, the others need the filter.
		Filter: filter.NewBloomFilter(10),
	})
	if err != nil {
		return nil, fmt.Errorf("history index: open %s: %w", cfg.Dir, err)
	}
	x := &Index{r: r, db: db, every: cfg.CheckpointEvery, log: log.With("component", "history-index", "topic", r.topic), m: m,
		sweepEvery: sweepInterval}
	meta, found, err := x.meta(db)
	switch {
	case errors.Is(err, errOldLayout):
		x.log.Warn("the history index was written by an earlier version of changes, in another layout; rebuilding it", "err", err)
		if err := wipe(db); err != nil {
			db.Close()
			return nil, fmt.Errorf("history index: %w", err)
		}
		found = false
	case err != nil:
		db.Close()
		return nil, err
	case found && meta.every != x.every:
		x.log.Warn("the history index was built with another checkpoint interval; rebuilding it", "was", meta.every, "now", x.every)
		if err := wipe(db); err != nil {
			db.Close()
			return nil, fmt.Errorf("history index: %w", err)
		}
		found = false
	}
	x.next.Store(-1)
	if found {
		x.next.Store(meta.next)
	}
	return x, nil
}

// meta reads the index's meta record from r (the database or a snapshot).
func (x *Index) meta(r dbReader) (indexMeta, bool, error) {
	b, err := r.Get([]byte(metaKey), nil)
	if errors.Is(err, leveldb.ErrNotFound) {
		return indexMeta{every: x.every, next: -1}, false, nil
	}
	if err != nil {
		return indexMeta{}, false, fmt.Errorf("history index: %w", err)
	}
	m, err := decodeMeta(b)
	return m, err == nil, err
}

// wipe deletes everything db holds.
func wipe(db *leveldb.DB) error {
	it := db.NewIterator(nil, nil)
	defer it.Release()
	var b leveldb.Batch
	for it.Next() {
		b.Delete(bytes.Clone(it.Key()))
		if b.Len() >= flushRecords {
			if err := db.Write(&b, nil); err != nil {
				return err
			}
			b.Reset()
		}
	}
	if err := it.Error(); err != nil {
		return err
	}
	return db.Write(&b, nil)
}

// Close closes the index's database, once the queries reading it have
// returned; later queries return ErrIndexClosed. Call it after Run has
// returned.
func (x *Index) Close() error {
	x.use.Lock()
	defer x.use.Unlock()
	if x.closed {
		return nil
	}
	x.closed = true
	return x.db.Close()
}

// ErrIndexClosed is what a query of a closed Index returns.
var ErrIndexClosed = errors.New("history index: closed")

// acquire keeps the database open until release is called.
func (x *Index) acquire() (release func(), err error) {
	x.use.RLock()
	if x.closed {
		x.use.RUnlock()
		return nil, ErrIndexClosed
	}
	return x.use.RUnlock, nil
}

// Position is the first history offset the index has not stored yet (-1
// before Run's first batch): EntityAt and TypeAt read what is at or after
// it from the history.
func (x *Index) Position() int64 { return x.next.Load() }

// KeepsTypes reports whether the index keeps checkpoints of the types'
// states, from which TypeAt and TypeJSONAt answer. An index that did not
// read the history from offset 0 (retention had removed it, or removed
// records the index had not read yet) keeps none: TypeAt and TypeJSONAt
// then answer as Reader.TypeAt does, by a scan of the history. It is false
// too for a closed index or one that cannot read its database.
func (x *Index) KeepsTypes() bool {
	release, err := x.acquire()
	if err != nil {
		return false
	}
	defer release()
	meta, found, err := x.meta(x.db)
	return err == nil && found && meta.states
}

// ---------------------------------------------------------------- building

// Run tails the history into the index until ctx is done (it returns nil)
// or the database fails (it returns the error). It resumes after the last
// batch it stored: each batch carries the offset it brings the index to,
// so a crash loses at most the batches not yet written, which it indexes
// again. A fetch that fails (a broker away, at the start too) is logged
// and tried again every second. Every fourth checkpoint, it stops to write
// the whole checkpoint of every type (about 10 s for a million entities).
// Records retention removes are swept from the index (about
// every 30 s, once the history's start moved by CheckpointEvery). Run must
// not be called twice at once.
func (x *Index) Run(ctx context.Context) error {
	if !x.running.CompareAndSwap(false, true) {
		return errors.New("history index: Run is already running")
	}
	defer x.running.Store(false)
	w := &indexWriter{x: x, overlay: map[string]*codecs.State{}, trunc: map[string]codecs.Position{}, rp: newReplay(true)}
	var client sarama.Client
	defer func() {
		if client != nil {
			client.Close()
		}
	}()
	for {
		var err error
		if client == nil {
			// A client of its own, as Follow's: the index waits on the
			// broker for new records, and the Reader's reads must not
			// queue behind it.
			client, err = sarama.NewClient(x.r.brokers, x.r.scfg)
			if err != nil {
				client, err = nil, fmt.Errorf("kafka client: %w", err)
			}
		}
		if client != nil {
			err = w.run(ctx, client)
		}
		if ctx.Err() != nil {
			return nil
		}
		var dbErr dbError
		if errors.As(err, &dbErr) {
			return err
		}
		x.log.Warn("indexing the history: reading failed, trying again in a second", "err", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
	}
}

// dbError is a failure of the index's database: Run stops on it.
type dbError struct{ error }

func (e dbError) Unwrap() error { return e.error }

// indexWriter is Run's state: the batch being built and what the batch
// changed, which the database does not hold yet.
type indexWriter struct {
	x     *Index
	meta  indexMeta
	batch leveldb.Batch
	// overlay holds the last version of each entity written in the batch,
	// by version prefix (nil: it does not exist).
	overlay map[string]*codecs.State
	// trunc is each type's last truncate (Reader.TypeAt's replay rule).
	trunc map[string]codecs.Position
	rp    *replay // reused for each change, holding one entity
}

// run opens the index where it stands and indexes until ctx is done or a
// read fails.
func (w *indexWriter) run(ctx context.Context, client sarama.Client) error {
	x := w.x
	meta, found, err := x.meta(x.db)
	if err != nil {
		return dbError{err}
	}
	start, err := kread.Start(client, x.r.topic, 0)
	if err != nil {
		return err
	}
	end, err := kread.End(client, x.r.topic, 0)
	if err != nil {
		return err
	}
	switch {
	case !found:
		meta = indexMeta{next: start, states: start == 0, prunedTo: start, every: x.every}
		x.log.Info("building the history index", "from", start, "to", end, "checkpoint_every", x.every)
	case meta.next > end:
		// The topic holds less than the index read: it was deleted and
		// created again. Nothing the index holds is about it.
		x.log.Warn("the history ends before the index's position: the topic was created again; rebuilding the index", "position", meta.next, "end", end)
		if err := wipe(x.db); err != nil {
			return dbError{err}
		}
		meta = indexMeta{next: start, states: start == 0, prunedTo: start, every: x.every}
	case meta.next < start:
		// Retention removed records the index never read: the entities'
		// changes from start on are all it needs, but the types' states
		// miss those changes.
		x.log.Warn("retention removed history records the index had not read; continuing from the history's start without the types' checkpoints",
			"position", meta.next, "start", start)
		meta.next, meta.states = start, false
	}
	w.meta = meta
	w.batch.Reset() // what a failed run left unwritten is read again
	clear(w.overlay)
	if err := w.loadTruncates(); err != nil {
		return dbError{err}
	}
	// A full checkpoint that a stop kept from being written.
	if err := w.buildFulls(meta.next); err != nil {
		return dbError{err}
	}
	x.next.Store(meta.next)
	rd := kread.New(client, x.r.topic, 0, meta.next)
	began, beganAt := time.Now(), meta.next
	var lastLog, lastLag, lastSweep time.Time
	caughtUp := false
	for {
		recs, err := rd.Fetch(ctx, 500*time.Millisecond)
		if err != nil {
			// ErrOffsetOutOfRange too: retention passed the index's
			// position while it read, and the next run continues from
			// the history's start.
			return err
		}
		for _, rec := range recs {
			if err := w.add(rec); err != nil {
				return dbError{err}
			}
		}
		x.m.records.Add(float64(len(recs)))
		if rd.Offset() != w.meta.next {
			if err := w.flush(rd.Offset()); err != nil {
				return dbError{err}
			}
		}
		now := time.Now()
		if now.Sub(lastLag) >= time.Second {
			lastLag = now
			if end, err = kread.End(client, x.r.topic, 0); err == nil {
				x.m.lag.Set(float64(max(end-w.meta.next, 0)))
			}
		}
		switch behind := end - w.meta.next; {
		case behind > flushRecords && now.Sub(lastLog) >= 10*time.Second:
			if !lastLog.IsZero() {
				x.log.Info("indexing the history", "offset", w.meta.next, "end", end,
					"records_per_second", int64(float64(w.meta.next-beganAt)/now.Sub(began).Seconds()))
			}
			lastLog = now
		case behind <= 0 && !caughtUp:
			caughtUp = true
			x.log.Info("the history index has caught up", "offset", w.meta.next, "records", w.meta.next-beganAt,
				"seconds", now.Sub(began).Seconds())
		}
		if now.Sub(lastSweep) >= x.sweepEvery {
			lastSweep = now
			if err := w.sweepIfDue(client); err != nil {
				return err
			}
		}
	}
}

// loadTruncates reads each type's last truncate from the index.
func (w *indexWriter) loadTruncates() error {
	clear(w.trunc)
	it := w.x.db.NewIterator(util.BytesPrefix([]byte{truncTag, 0}), nil)
	defer it.Release()
	for it.Next() {
		k := it.Key()
		typ := string(k[2 : len(k)-offsetBytes-1])
		_, pos, err := decodeTrunc(it.Value())
		if err != nil {
			return err
		}
		if pos.Compare(w.trunc[typ]) > 0 {
			w.trunc[typ] = pos
		}
	}
	return it.Error()
}

// add indexes one committed record of the history.
//
// A record counts for an entity as Reader.Changes matches it: its key is
// "<type>/<id>" or "<type>/0", its event of the type with the id's text, or a truncate
// under "<type>/0" (every entity of the type) or "<type>/<id>" (that
// entity). A record counts for a type's state as Reader.TypeAt's replay
// takes it: its key starts with "<type>/" followed by something, its event
// is of the type. A record with no entity type (a resync marker, a
// watermark), whose key does not start with its type, or that is not an
// event, counts for nothing.
func (w *indexWriter) add(rec *kread.Record) error {
	if w.meta.states && rec.Offset >= w.meta.full+w.x.every*fullEvery {
		// The versions before the full checkpoint are all read: write
		// them, then the full checkpoint from them.
		if err := w.flush(rec.Offset); err != nil {
			return err
		}
		if err := w.buildFulls(rec.Offset); err != nil {
			return err
		}
	}
	ev, err := (codecs.EventCodec{}).Decode(rec.Value)
	if err != nil {
		w.x.m.skipped.Inc()
		return nil
	}
	typ := ev.EntityType
	if typ == "" || len(rec.Key) <= len(typ) || string(rec.Key[:len(typ)]) != typ || rec.Key[len(typ)] != '/' {
		w.x.m.skipped.Inc()
		return nil
	}
	rest := string(rec.Key[len(typ)+1:])
	typeRule := rest != ""
	if ev.Op == codecs.OpTruncate {
		if typeRule {
			w.batch.Put(truncKey(typ, rec.Offset), truncValue(rest == "0", ev.Position))
			if ev.Position.Compare(w.trunc[typ]) > 0 {
				w.trunc[typ] = ev.Position
			}
		}
		if rest != "0" {
			w.batch.Put(entryKey(typ, rest, rec.Offset), entryValue(ev))
		}
		return nil
	}
	// Reader.Changes takes an entity's change under the type's truncate
	// key too.
	if id := ev.EntityID.String(); rest == id || rest == "0" {
		w.batch.Put(entryKey(typ, id, rec.Offset), entryValue(ev))
	}
	if typeRule && w.meta.states {
		return w.version(typ, rec.Offset, ev)
	}
	return nil
}

// version applies ev, at offset off, to its entity's last version by the
// replay of Reader.TypeAt, and writes the result as the entity's version
// of the checkpoint that follows off.
func (w *indexWriter) version(typ string, off int64, ev *codecs.Event) error {
	pkey := pointerKey(typ, ev.EntityID)
	cur, ok := w.overlay[string(pkey)]
	if !ok {
		p, found, err := w.x.lastPointer(w.x.db, pkey)
		switch {
		case err != nil:
			return err
		case !found || p.position == nil:
		case len(ev.Unchanged) > 0:
			// Its values are needed.
			if cur, err = w.x.versionAt(w.x.db, typ, ev.EntityID, p.checkpoint, w.meta.full); err != nil {
				return err
			}
		default:
			// Judge and Base need the position alone, and Apply takes
			// nothing from the state a change without unchanged columns
			// is applied to.
			cur = &codecs.State{EntityType: typ, EntityID: ev.EntityID, Position: *p.position, Row: codecs.Row{}}
		}
	}
	// A state a truncate removed is not in the replay's map.
	truncatedAt := w.trunc[typ]
	if cur != nil && !cur.Holds(truncatedAt) {
		cur = nil
	}
	clear(w.rp.states)
	if cur != nil {
		w.rp.states[ev.EntityID] = cur
	}
	w.rp.truncatedAt = truncatedAt
	if _, _, applied := w.rp.apply(ev); !applied {
		return nil
	}
	next := w.rp.states[ev.EntityID] // nil: deleted, and forgotten
	checkpoint := (off/w.x.every + 1) * w.x.every
	key := layerKey(versionTag, typ, checkpoint, ev.EntityID)
	var value []byte
	if next != nil {
		b, err := (codecs.StateCodec{}).Encode(next)
		if err != nil {
			// A state the codec refuses (an event without a position,
			// written by something else) cannot be checkpointed: TypeAt
			// then reads the history, as it does without an index.
			w.x.log.Error("a state cannot be stored; the index stops keeping the types' checkpoints", "offset", off,
				"entity_type", typ, "entity_id", ev.EntityID.String(), "err", err)
			w.meta.states = false
			return nil
		}
		value = b
	}
	w.batch.Put(key, value)
	p := pointer{checkpoint: checkpoint}
	if next != nil {
		p.position = &next.Position
	}
	w.batch.Put(pkey, p.encode())
	w.overlay[string(pkey)] = next
	return nil
}

// pointer is what the index knows of an entity's last version without
// reading it: its checkpoint, and the position of its state (nil when it
// did not exist then).
type pointer struct {
	checkpoint int64
	position   *codecs.Position
}

func (p pointer) encode() []byte {
	b := binary.BigEndian.AppendUint64(make([]byte, 0, 20), uint64(p.checkpoint))
	if p.position != nil {
		b = binary.BigEndian.AppendUint64(b, uint64(p.position.CommitLSN))
		b = binary.BigEndian.AppendUint32(b, p.position.Index)
	}
	return b
}

func decodePointer(b []byte) (pointer, error) {
	switch len(b) {
	case offsetBytes:
		return pointer{checkpoint: int64(binary.BigEndian.Uint64(b))}, nil
	case offsetBytes + 12:
		pos := codecs.Position{CommitLSN: codecs.LSN(binary.BigEndian.Uint64(b[8:])), Index: binary.BigEndian.Uint32(b[16:])}
		return pointer{checkpoint: int64(binary.BigEndian.Uint64(b)), position: &pos}, nil
	}
	return pointer{}, fmt.Errorf("history index: a pointer of %d bytes", len(b))
}

// lastPointer reads the pointer to the last version of an entity, under
// its pointerKey; found is false if it has none. A read of the
// pointer, not of the version: the replay needs only the position of the
// entity's state to judge a change, and its row only for the values of
// unchanged columns (seeking the last version with an iterator, or reading
// it, was more than half of the indexing, most of it reading blocks that
// the cache had not).
func (x *Index) lastPointer(r dbReader, key []byte) (p pointer, found bool, err error) {
	b, err := r.Get(key, nil)
	if errors.Is(err, leveldb.ErrNotFound) {
		return p, false, nil
	}
	if err != nil {
		return p, false, err
	}
	p, err = decodePointer(b)
	return p, err == nil, err
}

// versionAt reads entity id's version of checkpoint c, its last one (a
// pointer names it). Where a sweep removed the versions of c, the entity's
// state is in every full checkpoint after c (fullTo is the last written),
// unless a truncate removed it before one: then it is nil.
func (x *Index) versionAt(r dbReader, typ string, id codecs.Key, c, fullTo int64) (*codecs.State, error) {
	key := layerKey(versionTag, typ, c, id)
	v, err := r.Get(key, nil)
	if err == nil {
		return decodeVersion(key, v)
	}
	if !errors.Is(err, leveldb.ErrNotFound) {
		return nil, fmt.Errorf("history index: the version %q: %w", key, err)
	}
	span := x.every * fullEvery
	first := (c + span - 1) / span * span
	if first > fullTo {
		return nil, fmt.Errorf("history index: the version %q is missing, and no full checkpoint follows it", key)
	}
	for f := first; f <= fullTo; f += span {
		fkey := layerKey(fullTag, typ, f, id)
		v, err := r.Get(fkey, nil)
		if errors.Is(err, leveldb.ErrNotFound) {
			continue // swept, or removed by a truncate
		}
		if err != nil {
			return nil, fmt.Errorf("history index: the version %q: %w", fkey, err)
		}
		return decodeVersion(fkey, v)
	}
	return nil, nil
}

// decodeVersion decodes the version stored under key.
func decodeVersion(key, value []byte) (*codecs.State, error) {
	if len(value) == 0 {
		return nil, nil
	}
	// The iterator's value is not ours to keep: Decode copies what the
	// state keeps of it.
	st, err := (codecs.StateCodec{}).Decode(value)
	if err != nil {
		return nil, fmt.Errorf("history index: version %q: %w", key, err)
	}
	return st, nil
}

// buildFulls writes the full checkpoints due at or before next, the first
// offset whose versions are not all written.
func (w *indexWriter) buildFulls(next int64) error {
	for span := w.x.every * fullEvery; w.meta.states && w.meta.full+span <= next; {
		if err := w.buildFull(w.meta.full + span); err != nil {
			return err
		}
	}
	return nil
}

// buildFull writes the full checkpoint f of every type, merged from the
// last one and the versions since, in write batches; the meta record comes
// last, so a query does not read the full checkpoint before it is whole,
// and a stop before it writes it again. The entities a truncate before f
// removed are left out.
func (w *indexWriter) buildFull(f int64) error {
	x := w.x
	began := time.Now()
	snap, err := x.db.GetSnapshot()
	if err != nil {
		return err
	}
	defer snap.Release()
	types, err := layerTypes(snap, versionTag)
	if err != nil {
		return err
	}
	fullTypes, err := layerTypes(snap, fullTag)
	if err != nil {
		return err
	}
	for _, typ := range fullTypes {
		if !slices.Contains(types, typ) {
			types = append(types, typ)
		}
	}
	var b leveldb.Batch
	entities := 0
	for _, typ := range types {
		truncatedAt, err := truncatedBefore(snap, typ, f)
		if err != nil {
			return err
		}
		prefix := layerPrefix(fullTag, typ, f)
		err = x.mergeLayers(snap, typ, w.meta.full, f, func(entity, value []byte) error {
			if truncatedAt != (codecs.Position{}) {
				st, err := decodeVersion(entity, value)
				if err != nil {
					return err
				}
				if !st.Holds(truncatedAt) {
					return nil
				}
			}
			b.Put(append(bytes.Clone(prefix), entity...), value)
			entities++
			if b.Len() < flushRecords {
				return nil
			}
			err := x.db.Write(&b, nil)
			b.Reset()
			return err
		})
		if err != nil {
			return err
		}
	}
	meta := w.meta
	meta.full = f
	b.Put([]byte(metaKey), meta.encode())
	if err := x.db.Write(&b, nil); err != nil {
		return err
	}
	w.meta = meta
	x.log.Info("wrote a full checkpoint of the types", "checkpoint", f, "types", len(types), "entities", entities,
		"seconds", time.Since(began).Seconds())
	return nil
}

// truncatedBefore is the position of typ's last truncate before offset c.
func truncatedBefore(r dbReader, typ string, c int64) (codecs.Position, error) {
	var at codecs.Position
	it := r.NewIterator(&util.Range{Start: truncPrefix(typ), Limit: truncKey(typ, c)}, nil)
	defer it.Release()
	for it.Next() {
		_, pos, err := decodeTrunc(it.Value())
		if err != nil {
			return at, err
		}
		if pos.Compare(at) > 0 {
			at = pos
		}
	}
	if err := it.Error(); err != nil {
		return at, fmt.Errorf("history index: %w", err)
	}
	return at, nil
}

// mergeLayers calls fn with the state of each entity of typ at checkpoint
// c, in entity order, as the full checkpoint full (none if 0) and the
// versions of the checkpoints after it up to c hold it: of each entity its
// version in the latest of those, or its state in the full checkpoint.
// The entities that did not exist (an empty version) are passed over.
// entity is the entity's entityKey; entity and value are fn's only until
// it returns.
func (x *Index) mergeLayers(r dbReader, typ string, full, c int64, fn func(entity, value []byte) error) error {
	type run struct {
		it     iterator.Iterator
		prefix int // the length of the layer's prefix
		ok     bool
	}
	var runs []*run // oldest first
	defer func() {
		for _, rn := range runs {
			rn.it.Release()
		}
	}()
	open := func(tag byte, at int64) {
		p := layerPrefix(tag, typ, at)
		it := r.NewIterator(util.BytesPrefix(p), nil)
		runs = append(runs, &run{it: it, prefix: len(p), ok: it.Next()})
	}
	if full > 0 {
		open(fullTag, full)
	}
	for at := full + x.every; at <= c; at += x.every {
		open(versionTag, at)
	}
	for {
		// The smallest entity of the runs; of the runs that hold it, the
		// latest's value.
		var least []byte
		var from *run
		for _, rn := range runs {
			if !rn.ok {
				continue
			}
			e := rn.it.Key()[rn.prefix:]
			if from == nil || bytes.Compare(e, least) < 0 {
				least, from = e, rn
			} else if bytes.Equal(e, least) {
				from = rn
			}
		}
		if from == nil {
			break
		}
		if v := from.it.Value(); len(v) > 0 {
			if err := fn(least, v); err != nil {
				return err
			}
		}
		// Step the others past it, then from: least is from's key
		// (another run's may change under it when that one steps).
		least = from.it.Key()[from.prefix:]
		for _, rn := range runs {
			if rn.ok && rn != from && bytes.Equal(rn.it.Key()[rn.prefix:], least) {
				rn.ok = rn.it.Next()
			}
		}
		from.ok = from.it.Next()
	}
	for _, rn := range runs {
		if err := rn.it.Error(); err != nil {
			return fmt.Errorf("history index: %w", err)
		}
	}
	return nil
}

// dbReader is what the index reads: its database, or a snapshot of it.
type dbReader interface {
	Get(key []byte, ro *opt.ReadOptions) ([]byte, error)
	NewIterator(slice *util.Range, ro *opt.ReadOptions) iterator.Iterator
}

// flush writes the batch with the offset it brings the index to.
func (w *indexWriter) flush(next int64) error {
	w.meta.next = next
	w.batch.Put([]byte(metaKey), w.meta.encode())
	if err := w.x.db.Write(&w.batch, nil); err != nil {
		return err
	}
	w.batch.Reset()
	clear(w.overlay)
	w.x.next.Store(next)
	w.x.m.position.Set(float64(next))
	return nil
}

// sweepIfDue drops what retention made useless, once the history's start
// has moved CheckpointEvery offsets past the last sweep, and refreshes the
// size metric.
func (w *indexWriter) sweepIfDue(client sarama.Client) error {
	x := w.x
	if size, err := x.db.SizeOf([]util.Range{{}}); err == nil {
		x.m.size.Set(float64(size.Sum()))
	}
	start, err := kread.Start(client, x.r.topic, 0)
	if err != nil {
		return err
	}
	if start < w.meta.prunedTo+x.every && (w.meta.states || start == w.meta.prunedTo) {
		return nil
	}
	began := time.Now()
	deleted, err := w.sweep(start)
	if err != nil {
		return dbError{err}
	}
	x.log.Info("swept the history index after retention", "start", start, "deleted_keys", deleted, "seconds", time.Since(began).Seconds())
	return nil
}

// sweep deletes the entries of changes before start, and the versions and
// full checkpoints no checkpoint at or after start needs: those before the
// last full checkpoint at or before the first checkpoint after start (the
// versions of that one too). Without the types' states, every version,
// full checkpoint and pointer goes. Truncates stay (they are few): a checkpoint's replay needs
// the type's last one before it. A query reads the history's start after
// taking its snapshot of the index, so it never asks for what the sweep
// removed from under it.
func (w *indexWriter) sweep(start int64) (int, error) {
	x := w.x
	first := (start + x.every - 1) / x.every * x.every
	var b leveldb.Batch
	deleted := 0
	del := func(k []byte) error {
		b.Delete(bytes.Clone(k))
		deleted++
		if b.Len() < flushRecords {
			return nil
		}
		err := x.db.Write(&b, nil)
		b.Reset()
		return err
	}
	snap, err := x.db.GetSnapshot()
	if err != nil {
		return 0, err
	}
	defer snap.Release()
	it := snap.NewIterator(util.BytesPrefix([]byte{entryTag, 0}), nil)
	for it.Next() {
		if keyOffset(it.Key()) < start {
			if err := del(it.Key()); err != nil {
				it.Release()
				return deleted, err
			}
		}
	}
	it.Release()
	if err := it.Error(); err != nil {
		return deleted, err
	}
	// The first checkpoint's answers merge the last full checkpoint at or
	// before it (keep) with the versions after keep: what is before goes.
	// The pointers of entities that did not exist at keep go too: no
	// pointer and such a pointer read alike.
	keep := min(first/(x.every*fullEvery)*(x.every*fullEvery), w.meta.full)
	for _, tag := range []byte{versionTag, fullTag} {
		types, err := layerTypes(snap, tag)
		if err != nil {
			return deleted, err
		}
		for _, typ := range types {
			rg := util.BytesPrefix(layerPrefix(tag, typ, 0)[:3+len(typ)])
			switch {
			case !w.meta.states:
			case tag == versionTag:
				rg.Limit = layerPrefix(tag, typ, keep+1)
			default:
				rg.Limit = layerPrefix(tag, typ, keep)
			}
			it := snap.NewIterator(rg, nil)
			for it.Next() {
				if err := del(it.Key()); err != nil {
					it.Release()
					return deleted, err
				}
			}
			it.Release()
			if err := it.Error(); err != nil {
				return deleted, err
			}
		}
	}
	pit := snap.NewIterator(util.BytesPrefix([]byte{pointerTag, 0}), nil)
	defer pit.Release()
	for pit.Next() {
		p, err := decodePointer(pit.Value())
		if err != nil {
			return deleted, err
		}
		if !w.meta.states || (p.position == nil && p.checkpoint <= keep) {
			if err := del(pit.Key()); err != nil {
				return deleted, err
			}
		}
	}
	if err := pit.Error(); err != nil {
		return deleted, err
	}
	w.meta.prunedTo = start
	b.Put([]byte(metaKey), w.meta.encode())
	return deleted, x.db.Write(&b, nil)
}
