package processors

import (
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/lovoo/goka/storage"
	"github.com/syndtr/goleveldb/leveldb"
	"github.com/syndtr/goleveldb/leveldb/filter"
	ldbiter "github.com/syndtr/goleveldb/leveldb/iterator"
	"github.com/syndtr/goleveldb/leveldb/opt"
	"github.com/syndtr/goleveldb/leveldb/util"
)

// offsetKey is where goka's storage keeps the table's offset; batchStore
// keeps it there too, so a storage directory written by one reads with the
// other.
const offsetKey = "__offset"

// When batchStore commits its batch: after this many writes, or when a
// change's changelog record is acknowledged this long after the last
// commit, whichever comes first.
const (
	batchRecords = 1000
	batchAge     = 100 * time.Millisecond
)

// batchStore is the local storage of a snapshot processor's table
// partition: goka's goleveldb storage (same keys, same offset key), but its
// writes go to a batch that is committed together with the table offset, one
// goleveldb write per batch instead of two per change (the value, then the
// offset when the changelog acknowledges it), which were a tenth of the
// processors' CPU.
//
// Reads see the batch. A crash loses the batch, never the table: the local
// copy is then behind the changelog, and goka reads the changelog from the
// committed offset on, as it does after any crash. The values a batch holds
// may be ahead of its offset (goka stores a value before its changelog
// record is acknowledged), as with goka's own storage; the snapshot
// processor's rewrite of a change redelivered at its stored position covers
// it (see NewSnapshot).
type batchStore struct {
	db *leveldb.DB

	mu        sync.Mutex
	batch     leveldb.Batch
	pending   map[string][]byte // keys in batch; nil value = deleted
	offset    int64             // the table offset the batch brings the storage to; -1 if none
	stored    int64             // the offset committed to the database; -1 if none
	recovered bool
	committed time.Time // the last commit
}

var _ storage.Storage = (*batchStore)(nil)

// storeOptions are the goleveldb options of a snapshot processor's table
// partition. Every change reads the entity's stored state first: without a
// bloom filter (goleveldb's default), a read looks into every level-0 file
// and one file per level below, a data block each; with one, into the file
// that holds the key.
//
// BenchmarkBatchStore (250,000 entities of 600 bytes, then 500,000 random
// updates): 134-142 CPU-µs per change with goleveldb's defaults, 82-84 with
// the filter, at 10 bits of memory per entity. In changes-bench's catch-up
// (one run each) the processors took 164 CPU-s per million changes before,
// 158 after. Not taken: an 8 MiB write buffer (default 4), 73 µs in the
// benchmark and 147 CPU-s/M in the catch-up, for 190 MiB more resident
// memory over 20 partitions; no compression, 60 µs for twice the disk and
// no faster.
func storeOptions() *opt.Options {
	return &opt.Options{Filter: filter.NewBloomFilter(10)}
}

// batchStoreBuilder opens a batchStore per table partition under dir, at
// the path goka's storage.DefaultBuilder uses.
func batchStoreBuilder(dir string) storage.Builder {
	return func(topic string, partition int32) (storage.Storage, error) {
		path := filepath.Join(dir, fmt.Sprintf("%s.%d", topic, partition))
		db, err := leveldb.OpenFile(path, storeOptions())
		if err != nil {
			return nil, fmt.Errorf("open processor storage %s: %w", path, err)
		}
		s := &batchStore{db: db, pending: map[string][]byte{}, offset: -1, stored: -1}
		switch v, err := db.Get([]byte(offsetKey), nil); {
		case err == nil:
			if s.stored, err = strconv.ParseInt(string(v), 10, 64); err != nil {
				db.Close()
				return nil, fmt.Errorf("processor storage %s: offset %q: %w", path, v, err)
			}
		case !errors.Is(err, leveldb.ErrNotFound):
			db.Close()
			return nil, fmt.Errorf("processor storage %s: %w", path, err)
		}
		return s, nil
	}
}

// Open implements storage.Storage.
func (s *batchStore) Open() error { return nil }

// Close commits the batch and closes the database.
func (s *batchStore) Close() error {
	return errors.Join(s.commit(), s.db.Close())
}

// Has implements storage.Storage.
func (s *batchStore) Has(key string) (bool, error) {
	v, err := s.Get(key)
	return v != nil, err
}

// Get returns key's value, the batch's if it holds one, or nil.
func (s *batchStore) Get(key string) ([]byte, error) {
	s.mu.Lock()
	v, ok := s.pending[key]
	s.mu.Unlock()
	if ok {
		return v, nil
	}
	v, err := s.db.Get([]byte(key), nil)
	switch {
	case errors.Is(err, leveldb.ErrNotFound):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("processor storage get: %w", err)
	}
	return v, nil
}

// Set implements storage.Storage.
func (s *batchStore) Set(key string, value []byte) error {
	if value == nil {
		value = []byte{}
	}
	s.mu.Lock()
	s.batch.Put([]byte(key), value)
	s.pending[key] = value
	s.mu.Unlock()
	return nil
}

// Delete implements storage.Storage.
func (s *batchStore) Delete(key string) error {
	s.mu.Lock()
	s.batch.Delete([]byte(key))
	s.pending[key] = nil
	s.mu.Unlock()
	return nil
}

// GetOffset returns the table offset the storage holds, the batch's
// included, or def.
func (s *batchStore) GetOffset(def int64) (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.offset >= 0:
		return s.offset, nil
	case s.stored >= 0:
		return s.stored, nil
	}
	return def, nil
}

// SetOffset records that the storage holds the table up to offset, and
// commits the batch when it is due.
func (s *batchStore) SetOffset(offset int64) error {
	s.mu.Lock()
	s.offset = offset
	due := s.batch.Len() >= batchRecords || (s.recovered && time.Since(s.committed) >= batchAge)
	s.mu.Unlock()
	if due {
		return s.commit()
	}
	return nil
}

// MarkRecovered commits the recovery's last batch.
func (s *batchStore) MarkRecovered() error {
	s.mu.Lock()
	s.recovered = true
	s.mu.Unlock()
	return s.commit()
}

// commit writes the batch and the offset in one goleveldb write.
func (s *batchStore) commit() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.committed = time.Now()
	if s.offset < 0 && s.batch.Len() == 0 {
		return nil
	}
	if s.offset >= 0 {
		s.batch.Put([]byte(offsetKey), []byte(strconv.FormatInt(s.offset, 10)))
	}
	if err := s.db.Write(&s.batch, nil); err != nil {
		return fmt.Errorf("processor storage write: %w", err)
	}
	if s.offset >= 0 {
		s.stored = s.offset
	}
	s.batch.Reset()
	clear(s.pending)
	s.offset = -1
	return nil
}

// Iterator commits the batch, then iterates over every key but the offset.
func (s *batchStore) Iterator() (storage.Iterator, error) {
	if err := s.commit(); err != nil {
		return nil, err
	}
	return &batchIterator{s.db.NewIterator(nil, &opt.ReadOptions{DontFillCache: true})}, nil
}

// IteratorWithRange is Iterator over [start, limit), or over the keys with
// prefix start if limit is empty, as goka's storage does.
func (s *batchStore) IteratorWithRange(start, limit []byte) (storage.Iterator, error) {
	if err := s.commit(); err != nil {
		return nil, err
	}
	r := util.BytesPrefix(start)
	if len(limit) > 0 {
		r = &util.Range{Start: start, Limit: limit}
	}
	return &batchIterator{s.db.NewIterator(r, nil)}, nil
}

// batchIterator is goka's storage iterator: it skips the offset key.
type batchIterator struct{ it ldbiter.Iterator }

func (i *batchIterator) Next() bool {
	for i.it.Next() {
		if string(i.it.Key()) != offsetKey {
			return true
		}
	}
	return false
}

func (i *batchIterator) Err() error             { return i.it.Error() }
func (i *batchIterator) Key() []byte            { return i.it.Key() }
func (i *batchIterator) Value() ([]byte, error) { return i.it.Value(), nil }
func (i *batchIterator) Release()               { i.it.Release() }
func (i *batchIterator) Seek(key []byte) bool {
	if !i.it.Seek(key) {
		return false
	}
	if string(i.it.Key()) == offsetKey {
		return i.Next()
	}
	return true
}
