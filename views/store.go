package views

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	gokastorage "github.com/lovoo/goka/storage"
	"github.com/syndtr/goleveldb/leveldb"
	"github.com/syndtr/goleveldb/leveldb/filter"
	"github.com/syndtr/goleveldb/leveldb/iterator"
	"github.com/syndtr/goleveldb/leveldb/opt"
	lvlstorage "github.com/syndtr/goleveldb/leveldb/storage"
	"github.com/syndtr/goleveldb/leveldb/util"

	"github.com/changes-dev/changes/codecs"
)

// Local storage layout, one goleveldb database per table partition:
//
//	'e' + 8 bytes big-endian (id XOR 1<<63)   the state of an entity with an integer key
//	'k' + kind byte + key text                the state of an entity with a uuid, text or composite key
//	't'                                       the partition's TRUNCATE marker
//	'w'                                       the partition's progress watermark
//	"__offset"                                goka's offset key: the next record to read
//	"__format"                                storageFormat
//
// Local keys sort as codecs.Key.Compare orders keys (integers by value, the
// other kinds by the bytes of their text), so ranges and pages are ordered,
// and a merge over the partitions is ordered too. Storage written before
// other kinds existed holds 'e' keys only and is read as it is.
const (
	storageFormat = "changes.view.v1"
	formatKey     = "__format"
	offsetKey     = "__offset" // goka's storage.offsetKey
	entityPrefix  = 'e'
	keyedPrefix   = 'k'
	markerKey     = "t"
	watermarkKey  = "w"
)

// entityKeys is the range of every entity's local key: 'e' and 'k' keys.
var entityKeys = &util.Range{Start: []byte{entityPrefix}, Limit: []byte{keyedPrefix + 1}}

// localKey is the local key of the entity with key k.
func localKey(k codecs.Key) []byte {
	if id, ok := k.Int(); ok {
		return entityKey(id)
	}
	text := k.String()
	b := make([]byte, 2+len(text))
	b[0], b[1] = keyedPrefix, byte(k.Kind())
	copy(b[2:], text)
	return b
}

// keyOfLocal decodes a local entity key.
func keyOfLocal(b []byte) (codecs.Key, bool) {
	if id, ok := entityID(b); ok {
		return codecs.IntKey(id), true
	}
	if len(b) < 2 || b[0] != keyedPrefix {
		return codecs.Key{}, false
	}
	k, err := codecs.ParseKey(codecs.KeyKind(b[1]), string(b[2:]))
	return k, err == nil
}

// entityKey is the local key of entity id.
func entityKey(id int64) []byte {
	k := make([]byte, 9)
	k[0] = entityPrefix
	binary.BigEndian.PutUint64(k[1:], uint64(id)^(1<<63))
	return k
}

// entityID decodes an entityKey.
func entityID(k []byte) (int64, bool) {
	if len(k) != 9 || k[0] != entityPrefix {
		return 0, false
	}
	return int64(binary.BigEndian.Uint64(k[1:]) ^ (1 << 63)), true
}

// Flush thresholds of the write batch. While a partition recovers, records
// are written in batches of this size (goleveldb's cost is per write, not per
// record); once it runs, a record is written with its offset at once, or
// with the others of a burst (see liveBatchDelay).
//
// The bytes bound memory more than speed: a batch holds a copy of its
// records, and its pending map holds the records' values, which are slices of
// the Kafka fetch response they came in (sarama does not copy them), so a
// partition's batch keeps whole responses of every partition alive until it
// is written. 1 MiB per partition bootstraps a 1,000,000-entity view with the
// CPU 2 MiB took. (A smaller fetch, 256 KiB per partition instead of sarama's
// 1 MiB, saved another 20 MiB but cost 10 % more CPU: not taken.)
const (
	recoveryBatchRecords = 4096
	recoveryBatchBytes   = 1 << 20
)

// liveBatchDelay is how long a running view may hold records of a burst
// before committing them (and telling the hook and the subscribers); a
// record that comes alone is committed at once.
const liveBatchDelay = time.Millisecond

// storeOptions are the goleveldb options of a view's storage. Memory per
// partition stays near two write buffers (the memtable and the one being
// flushed), the block cache and a recovery batch, whatever the table's size:
// about 20 MiB. Larger write buffers did not recover faster (16 MiB: +4 %
// records/s for 2.3x the resident memory at 1,000,000 entities).
func storeOptions() *opt.Options {
	return &opt.Options{
		WriteBuffer:            4 << 20,
		BlockCacheCapacity:     8 << 20,
		CompactionTableSize:    8 << 20,
		OpenFilesCacheCapacity: 64,
		// Every applied record first reads the key's old value (to keep the
		// entity count): a bloom filter makes the miss of a new key cheap.
		Filter: filter.NewBloomFilter(10),
	}
}

// store is the goka storage of one table partition. goka writes it from one
// goroutine (the partition's); Get, Has and iterators may run concurrently.
//
// Writes go to a batch that is committed together with the offset: a crash
// never leaves an offset that is ahead of the records stored.
type store struct {
	db        *leveldb.DB
	recovered atomic.Bool // goka marked the partition recovered
	// ready is set after recovered, once the view has taken the recovery
	// into account (SyncedAt): View.Recovered reads it, so a caller that
	// waited for the recovery never sees a zero SyncedAt.
	ready atomic.Bool

	mu      sync.RWMutex
	batch   leveldb.Batch
	pending map[string][]byte // keys in batch; nil value = deleted
	offset  int64             // the offset the batch brings the storage to; -1 if none
	stored  atomic.Int64      // the last offset committed to the database; -1 if none

	marker atomic.Pointer[codecs.Position] // the TRUNCATE marker's position; nil if none

	// watermark is the partition's progress watermark (nil if none yet);
	// progressed, if set, is called after every one stored. While the
	// partition recovers, the last watermark read is only kept
	// (recoveryWatermark, under mu) and stored when the recovery
	// completes: the records read until then may come from compacted
	// segments, where a watermark survives while the older states of
	// entities changed after it do not, so it would say more than the
	// storage holds.
	watermark         atomic.Pointer[Watermark]
	progressed        func()
	recoveryWatermark []byte

	// committed, if set, is called under mu after every commit flush makes,
	// and the func it returns (if any) runs after it, outside mu. flushes
	// are serialized by flushMu, so those funcs run in commit order.
	committed func() (after func())
	flushMu   sync.Mutex

	// Live, a record is committed at once unless the last commit was less
	// than liveBatchDelay ago; then timer commits it (with the records
	// after it) liveBatchDelay later at the latest.
	committedAt time.Time
	delay       time.Duration // liveBatchDelay; tests set others
	timer       *time.Timer
	closed      bool
	lateErr     error // a commit of timer's that failed: the next SetOffset returns it

	// Readers outside goka (View.Get, Range) hold the store open: Close
	// waits for them, and refuses new ones (goleveldb must not be closed
	// under an iterator). A plain counter, not an RWMutex: a reader that
	// acquires again while Close waits gets false instead of a deadlock.
	guard      sync.Mutex
	closing    bool
	readers    int
	readersOut *sync.Cond
}

func openStore(dir, topic string, partition int32, inMemory bool) (*store, error) {
	var (
		db  *leveldb.DB
		err error
	)
	path := filepath.Join(dir, fmt.Sprintf("%s.%d", topic, partition))
	if inMemory {
		db, err = leveldb.Open(lvlstorage.NewMemStorage(), storeOptions())
	} else {
		db, err = leveldb.OpenFile(path, storeOptions())
	}
	if err != nil {
		return nil, fmt.Errorf("open view storage %s: %w", path, err)
	}
	format, err := db.Get([]byte(formatKey), nil)
	switch {
	case errors.Is(err, leveldb.ErrNotFound):
		// Empty, or goka's own layout from before this format (an offset
		// but no format key): a cache of the table, rebuilt from Kafka.
		if err := wipe(db); err != nil {
			db.Close()
			return nil, fmt.Errorf("view storage %s: clear the old layout: %w", path, err)
		}
		if err := db.Put([]byte(formatKey), []byte(storageFormat), &opt.WriteOptions{Sync: true}); err != nil {
			db.Close()
			return nil, fmt.Errorf("view storage %s: %w", path, err)
		}
	case err != nil:
		db.Close()
		return nil, fmt.Errorf("view storage %s: %w", path, err)
	case string(format) != storageFormat:
		db.Close()
		return nil, fmt.Errorf("view storage %s has format %q, this version reads %q: remove the directory, the view rebuilds it from Kafka", path, format, storageFormat)
	}
	s := &store{db: db, pending: map[string][]byte{}, offset: -1, delay: liveBatchDelay}
	s.readersOut = sync.NewCond(&s.guard)
	s.stored.Store(-1)
	if v, err := db.Get([]byte(offsetKey), nil); err == nil {
		off, err := strconv.ParseInt(string(v), 10, 64)
		if err != nil {
			db.Close()
			return nil, fmt.Errorf("view storage %s: offset %q: %w", path, v, err)
		}
		s.stored.Store(off)
	}
	if raw, err := db.Get([]byte(markerKey), nil); err == nil {
		if err := s.setMarker(raw); err != nil {
			db.Close()
			return nil, fmt.Errorf("view storage %s: %w", path, err)
		}
	}
	if raw, err := db.Get([]byte(watermarkKey), nil); err == nil {
		if err := s.setWatermark(raw); err != nil {
			db.Close()
			return nil, fmt.Errorf("view storage %s: %w", path, err)
		}
	}
	return s, nil
}

// wipe deletes every key of db.
func wipe(db *leveldb.DB) error {
	it := db.NewIterator(nil, nil)
	defer it.Release()
	var b leveldb.Batch
	for it.Next() {
		b.Delete(slices.Clone(it.Key()))
		if b.Len() >= 10000 {
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

var _ gokastorage.Storage = (*store)(nil)

// Open implements goka's storage.Storage.
func (s *store) Open() error { return nil }

// Close waits for the readers, commits what is pending and closes the
// database.
func (s *store) Close() error {
	s.guard.Lock()
	s.closing = true
	for s.readers > 0 {
		s.readersOut.Wait()
	}
	s.guard.Unlock()
	s.mu.Lock()
	s.closed = true
	if s.timer != nil {
		s.timer.Stop()
		s.timer = nil
	}
	s.mu.Unlock()
	ferr := s.flush()
	return errors.Join(ferr, s.db.Close())
}

// acquire registers a reader; false once the store closes.
func (s *store) acquire() bool {
	s.guard.Lock()
	defer s.guard.Unlock()
	if s.closing {
		return false
	}
	s.readers++
	return true
}

// release ends a reader's acquire.
func (s *store) release() {
	s.guard.Lock()
	s.readers--
	if s.readers == 0 {
		s.readersOut.Broadcast()
	}
	s.guard.Unlock()
}

// Has implements goka's storage.Storage.
func (s *store) Has(key string) (bool, error) {
	v, err := s.Get(key)
	return v != nil, err
}

// Get returns the value of key, pending writes included, or nil.
func (s *store) Get(key string) ([]byte, error) {
	s.mu.RLock()
	v, ok := s.pending[key]
	s.mu.RUnlock()
	if ok {
		return v, nil
	}
	v, err := s.db.Get([]byte(key), nil)
	if errors.Is(err, leveldb.ErrNotFound) {
		return nil, nil
	}
	return v, err
}

// Set implements goka's storage.Storage.
func (s *store) Set(key string, value []byte) error {
	if value == nil {
		value = []byte{}
	}
	if key == markerKey {
		if err := s.setMarker(value); err != nil {
			return err
		}
	}
	if key == watermarkKey {
		if !s.recovered.Load() {
			s.mu.Lock()
			s.recoveryWatermark = bytes.Clone(value)
			s.mu.Unlock()
			return nil
		}
		// Readers see the records before it already (Get reads the
		// batch, an iteration commits it first): the watermark may say so.
		if err := s.setWatermark(value); err != nil {
			return err
		}
	}
	s.mu.Lock()
	s.batch.Put([]byte(key), value)
	s.pending[key] = value
	s.mu.Unlock()
	if key == watermarkKey && s.progressed != nil {
		s.progressed()
	}
	return nil
}

// Delete implements goka's storage.Storage.
func (s *store) Delete(key string) error {
	if key == markerKey {
		s.marker.Store(nil)
	}
	s.mu.Lock()
	s.batch.Delete([]byte(key))
	s.pending[key] = nil
	s.mu.Unlock()
	return nil
}

// GetOffset returns the next offset to read's predecessor as goka stores it:
// the last offset applied, or def.
func (s *store) GetOffset(def int64) (int64, error) {
	s.mu.RLock()
	off := s.offset
	s.mu.RUnlock()
	if off >= 0 {
		return off, nil
	}
	if off := s.stored.Load(); off >= 0 {
		return off, nil
	}
	return def, nil
}

// SetOffset records that every record up to offset is applied and commits
// the batch when it is due.
func (s *store) SetOffset(offset int64) error {
	s.mu.Lock()
	s.offset = offset
	if err := s.lateErr; err != nil {
		s.mu.Unlock()
		return err
	}
	due := s.batch.Len() >= recoveryBatchRecords || len(s.batch.Dump()) >= recoveryBatchBytes
	if s.recovered.Load() && !due {
		// A record that comes alone is committed at once; the records of
		// a burst (a catch-up, a fetch of many) one write per
		// liveBatchDelay: a goleveldb write per record was most of a live
		// view's CPU.
		if time.Since(s.committedAt) >= s.delay {
			due = true
		} else if s.timer == nil && !s.closed {
			s.timer = time.AfterFunc(s.delay, s.flushLate)
		}
	}
	s.mu.Unlock()
	if due {
		return s.flush()
	}
	return nil
}

// flushLate is the timer's commit of the records a burst left in the batch.
func (s *store) flushLate() {
	s.mu.Lock()
	s.timer = nil
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return
	}
	if err := s.flush(); err != nil {
		s.mu.Lock()
		s.lateErr = err
		s.mu.Unlock()
	}
}

// flush commits the batch and the offset in one write, then runs what
// committed returned.
func (s *store) flush() error {
	s.flushMu.Lock()
	defer s.flushMu.Unlock()
	s.mu.Lock()
	err := s.commitLocked()
	var after func()
	if err == nil && s.committed != nil {
		after = s.committed()
	}
	s.mu.Unlock()
	if err != nil {
		return err
	}
	if after != nil {
		after()
	}
	return nil
}

func (s *store) commit() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.commitLocked()
}

func (s *store) commitLocked() error {
	if s.offset < 0 && s.batch.Len() == 0 {
		return nil
	}
	s.committedAt = time.Now()
	if s.offset >= 0 {
		s.batch.Put([]byte(offsetKey), []byte(strconv.FormatInt(s.offset, 10)))
	}
	if err := s.db.Write(&s.batch, nil); err != nil {
		return fmt.Errorf("view storage write: %w", err)
	}
	if s.offset >= 0 {
		s.stored.Store(s.offset)
	}
	s.batch.Reset()
	clear(s.pending)
	s.offset = -1
	return nil
}

// MarkRecovered commits the recovery's last batch; from now on every record
// is committed as it comes. The batch's buffer and the pending map, grown to
// a recovery batch, are let go: a record at a time needs neither.
func (s *store) MarkRecovered() error {
	s.recovered.Store(true)
	// The partition holds its whole table now: every change before the
	// last watermark read is in it.
	s.mu.Lock()
	wm := s.recoveryWatermark
	s.recoveryWatermark = nil
	s.mu.Unlock()
	if wm != nil {
		if err := s.Set(watermarkKey, wm); err != nil {
			return err
		}
	}
	if err := s.flush(); err != nil {
		return err
	}
	s.mu.Lock()
	s.batch = leveldb.Batch{}
	s.pending = map[string][]byte{}
	s.mu.Unlock()
	return nil
}

// lastOffset is the last offset committed or pending, or -1.
func (s *store) lastOffset() int64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.offset >= 0 {
		return s.offset
	}
	return s.stored.Load()
}

// Iterator implements goka's storage.Storage. Like every iteration of
// the store, it commits the batch first: an iteration sees what Get sees.
func (s *store) Iterator() (gokastorage.Iterator, error) {
	if err := s.commit(); err != nil {
		return nil, err
	}
	return &storeIterator{s.db.NewIterator(nil, &opt.ReadOptions{DontFillCache: true})}, nil
}

// IteratorWithRange implements goka's storage.Storage.
func (s *store) IteratorWithRange(start, limit []byte) (gokastorage.Iterator, error) {
	if err := s.commit(); err != nil {
		return nil, err
	}
	r := &util.Range{Start: start, Limit: limit}
	if len(limit) == 0 {
		r = util.BytesPrefix(start)
	}
	return &storeIterator{s.db.NewIterator(r, &opt.ReadOptions{DontFillCache: true})}, nil
}

// entities iterates the entities with keys in [from, to] (as
// codecs.Key.Compare orders them); a nil bound is the first or last key of
// all.
func (s *store) entities(from, to *codecs.Key) iterator.Iterator {
	if err := s.commit(); err != nil {
		return iterator.NewEmptyIterator(err)
	}
	r := *entityKeys
	if from != nil {
		r.Start = localKey(*from)
	}
	if to != nil {
		r.Limit = append(localKey(*to), 0) // the smallest key after to's
	}
	return s.db.NewIterator(&r, &opt.ReadOptions{DontFillCache: true})
}

// allEntities iterates every entity, of every key kind.
func (s *store) allEntities() iterator.Iterator { return s.entities(nil, nil) }

// kinds returns the key kinds the storage holds entities of, as a bit set
// (1 << kind).
func (s *store) kinds() uint32 {
	var set uint32
	it := s.db.NewIterator(nil, &opt.ReadOptions{DontFillCache: true})
	defer it.Release()
	if it.Seek([]byte{entityPrefix}) && it.Key()[0] == entityPrefix {
		set |= 1 << codecs.KeyInteger
	}
	for kind := codecs.KeyUUID; kind <= codecs.KeyComposite; kind++ {
		if it.Seek([]byte{keyedPrefix, byte(kind)}) && len(it.Key()) >= 2 && it.Key()[0] == keyedPrefix && it.Key()[1] == byte(kind) {
			set |= 1 << kind
		}
	}
	return set
}

type storeIterator struct{ it iterator.Iterator }

func (i *storeIterator) Next() bool             { return i.it.Next() }
func (i *storeIterator) Err() error             { return i.it.Error() }
func (i *storeIterator) Key() []byte            { return i.it.Key() }
func (i *storeIterator) Value() ([]byte, error) { return i.it.Value(), nil }
func (i *storeIterator) Release()               { i.it.Release() }
func (i *storeIterator) Seek(key []byte) bool   { return i.it.Seek(key) }

// isDeletedState reports whether raw, a table value, is a deleted state,
// without decoding it: StateCodec writes the row right after the id, and a
// deleted state has none. Type names cannot hold `,"row":`. It is the fast
// path of codecs.VisibleAfter for a partition without a TRUNCATE marker,
// where a state is visible unless it is deleted (or a marker, which has no
// row either): callers decode and ask VisibleAfter when there is a marker.
func isDeletedState(raw []byte) bool {
	i := bytes.Index(raw, []byte(`,"row":`))
	if i < 0 {
		st, err := (codecs.StateCodec{}).Decode(raw)
		return err == nil && st.Deleted
	}
	return bytes.HasPrefix(raw[i+len(`,"row":`):], []byte("null"))
}

// countAlive counts the entities stored that are neither deleted nor hidden
// by the partition's TRUNCATE marker. It commits the pending batch first.
func (s *store) countAlive() (int64, error) {
	if err := s.flush(); err != nil {
		return 0, err
	}
	at := s.truncatedAt()
	it := s.allEntities()
	defer it.Release()
	var n int64
	for it.Next() {
		if isDeletedState(it.Value()) {
			continue
		}
		if !at.IsZero() {
			st, err := (codecs.StateCodec{}).Decode(it.Value())
			if err != nil || !codecs.VisibleAfter(at, st) {
				continue
			}
		}
		n++
	}
	return n, it.Error()
}

// setMarker caches the position of a TRUNCATE marker.
func (s *store) setMarker(raw []byte) error {
	m, err := (codecs.StateCodec{}).Decode(raw)
	if err != nil {
		return fmt.Errorf("truncate marker: %w", err)
	}
	if !m.Truncated {
		return fmt.Errorf("truncate marker: the record is not one (entity %s)", m.EntityID)
	}
	s.marker.Store(&m.Position)
	return nil
}

// setWatermark caches a progress watermark.
func (s *store) setWatermark(raw []byte) error {
	m, err := (codecs.StateCodec{}).Decode(raw)
	if err != nil {
		return fmt.Errorf("watermark: %w", err)
	}
	if !m.Watermark {
		return fmt.Errorf("watermark: the record is not one (entity %s)", m.EntityID)
	}
	s.watermark.Store(&Watermark{LSN: m.Position.CommitLSN, CommitTime: m.CommitTime})
	return nil
}

// appliedThrough is the partition's progress watermark, zero if none.
func (s *store) appliedThrough() Watermark {
	if w := s.watermark.Load(); w != nil {
		return *w
	}
	return Watermark{}
}

// truncatedAt is the position of the partition's last TRUNCATE, or zero:
// states at or before it are gone.
func (s *store) truncatedAt() codecs.Position {
	if p := s.marker.Load(); p != nil {
		return *p
	}
	return codecs.Position{}
}

// alive reports whether raw, an entity's stored value, is an entity a reader
// sees: not deleted, not hidden by a TRUNCATE.
func (s *store) alive(raw []byte) bool {
	if raw == nil || isDeletedState(raw) {
		return false
	}
	at := s.truncatedAt()
	if at.IsZero() {
		return true
	}
	st, err := (codecs.StateCodec{}).Decode(raw)
	return err == nil && codecs.VisibleAfter(at, st)
}

// hidden calls fn with the id of every entity a TRUNCATE at position at
// hides that was visible under the marker before, at position before.
func (s *store) hidden(before, at codecs.Position, fn func(id codecs.Key)) error {
	if err := s.commit(); err != nil {
		return err
	}
	it := s.allEntities()
	defer it.Release()
	for it.Next() {
		if isDeletedState(it.Value()) {
			continue
		}
		st, err := (codecs.StateCodec{}).Decode(it.Value())
		if err != nil {
			continue
		}
		if codecs.VisibleAfter(before, st) && !codecs.VisibleAfter(at, st) {
			fn(st.EntityID)
		}
	}
	return it.Error()
}
