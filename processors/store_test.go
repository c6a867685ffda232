package processors

import (
	"fmt"
	"path/filepath"
	"testing"

	"github.com/lovoo/goka/storage"
	"github.com/syndtr/goleveldb/leveldb"
)

func TestBatchStore(t *testing.T) {
	dir := t.TempDir()
	open := func() storage.Storage {
		t.Helper()
		st, err := batchStoreBuilder(dir)("table", 3)
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	st := open()
	if off, err := st.GetOffset(-2); err != nil || off != -2 {
		t.Fatalf("GetOffset of a new storage = %d, %v; want the default -2", off, err)
	}
	// Recovery: nothing is written until the batch is full.
	for i := range batchRecords - 1 {
		if err := st.Set(fmt.Sprint("k", i), []byte(fmt.Sprint("v", i))); err != nil {
			t.Fatal(err)
		}
		if err := st.SetOffset(int64(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.Delete("k1"); err != nil {
		t.Fatal(err)
	}
	if v, _ := st.Get("k2"); string(v) != "v2" {
		t.Errorf("Get(k2) from the batch = %q, want v2", v)
	}
	if ok, _ := st.Has("k1"); ok {
		t.Error("Has(k1) after Delete in the batch")
	}
	if off, _ := st.GetOffset(-1); off != batchRecords-2 {
		t.Errorf("GetOffset = %d, want the batch's %d", off, batchRecords-2)
	}
	bs := st.(*batchStore)
	if bs.stored != -1 {
		t.Errorf("committed offset %d before the batch was full", bs.stored)
	}
	if err := st.MarkRecovered(); err != nil {
		t.Fatal(err)
	}
	if bs.stored != batchRecords-2 || len(bs.pending) != 0 {
		t.Errorf("after MarkRecovered: stored %d, %d pending; want %d, 0", bs.stored, len(bs.pending), batchRecords-2)
	}
	// Iterators see everything committed, never the offset key.
	if err := st.Set("k0", []byte("new")); err != nil {
		t.Fatal(err)
	}
	it, err := st.Iterator()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for it.Next() {
		n++
		if string(it.Key()) == offsetKey {
			t.Error("the iterator returned the offset key")
		}
		if string(it.Key()) == "k0" {
			if v, _ := it.Value(); string(v) != "new" {
				t.Errorf("iterator k0 = %q, want the value set before it", v)
			}
		}
	}
	it.Release()
	if n != batchRecords-2 {
		t.Errorf("iterator: %d keys, want %d", n, batchRecords-2)
	}
	if err := st.Set("k5", []byte("last")); err != nil {
		t.Fatal(err)
	}
	if err := st.SetOffset(5000); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}

	// goka's own storage reads what it wrote, offset included, and the
	// other way round.
	db, err := leveldb.OpenFile(filepath.Join(dir, "table.3"), nil)
	if err != nil {
		t.Fatal(err)
	}
	gs, err := storage.New(db)
	if err != nil {
		t.Fatal(err)
	}
	if off, err := gs.GetOffset(-1); err != nil || off != 5000 {
		t.Errorf("goka's GetOffset = %d, %v; want 5000", off, err)
	}
	if v, _ := gs.Get("k5"); string(v) != "last" {
		t.Errorf("goka's Get(k5) = %q, want last", v)
	}
	if err := gs.Set("g", []byte("from goka")); err != nil {
		t.Fatal(err)
	}
	if err := db.Put([]byte(offsetKey), []byte("6000"), nil); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	st = open()
	defer st.Close()
	if off, _ := st.GetOffset(-1); off != 6000 {
		t.Errorf("GetOffset of goka's storage = %d, want 6000", off)
	}
	if v, _ := st.Get("g"); string(v) != "from goka" {
		t.Errorf("Get(g) = %q, want goka's value", v)
	}
}

// TestBatchStoreCommitsWhenLive: once recovered, a batch is committed by
// age, so a crash loses at most batchAge of the local copy (the changelog
// has it all).
func TestBatchStoreCommitsWhenLive(t *testing.T) {
	st, err := batchStoreBuilder(t.TempDir())("table", 0)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.MarkRecovered(); err != nil {
		t.Fatal(err)
	}
	bs := st.(*batchStore)
	bs.committed = bs.committed.Add(-batchAge)
	if err := st.Set("a", []byte("1")); err != nil {
		t.Fatal(err)
	}
	if err := st.SetOffset(7); err != nil {
		t.Fatal(err)
	}
	if bs.stored != 7 {
		t.Errorf("stored offset %d, want 7: the batch was older than %s", bs.stored, batchAge)
	}
	if err := st.Set("b", []byte("2")); err != nil {
		t.Fatal(err)
	}
	if err := st.SetOffset(8); err != nil {
		t.Fatal(err)
	}
	if bs.stored != 7 {
		t.Errorf("stored offset %d right after a commit, want 7 (batched)", bs.stored)
	}
}
