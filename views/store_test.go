package views

import (
	"bytes"
	"math"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/syndtr/goleveldb/leveldb"

	"github.com/changes-dev/changes/codecs"
)

func TestEntityKeysSortLikeIDs(t *testing.T) {
	ids := []int64{math.MinInt64, -1 << 40, -2, -1, 0, 1, 2, 255, 256, 1 << 53, math.MaxInt64}
	for i := 1; i < len(ids); i++ {
		if bytes.Compare(entityKey(ids[i-1]), entityKey(ids[i])) >= 0 {
			t.Errorf("key(%d) does not sort before key(%d)", ids[i-1], ids[i])
		}
	}
	for _, id := range ids {
		if got, ok := entityID(entityKey(id)); !ok || got != id {
			t.Errorf("entityID(entityKey(%d)) = %d, %v", id, got, ok)
		}
	}
	if _, ok := entityID([]byte(offsetKey)); ok {
		t.Error("goka's offset key decodes as an entity")
	}
}

func TestIsDeletedStateFollowsTheCodec(t *testing.T) {
	for _, st := range []*codecs.State{
		{EntityType: "a", EntityID: codecs.IntKey(1), Deleted: true, Position: codecs.Position{CommitLSN: 1}},
		{EntityType: "a", EntityID: codecs.IntKey(1), Row: codecs.Row{"deleted": []byte(`true`), "x": []byte(`",\"row\":null"`)}, Position: codecs.Position{CommitLSN: 1}},
	} {
		raw, err := (codecs.StateCodec{}).Encode(st)
		if err != nil {
			t.Fatal(err)
		}
		if got := isDeletedState(raw); got != st.Deleted {
			t.Errorf("isDeletedState(%s) = %v, want %v", raw, got, st.Deleted)
		}
	}
}

// The offset is committed with the records it covers, never ahead of them.
func TestStoreCommitsOffsetWithRecords(t *testing.T) {
	dir := t.TempDir()
	s, err := openStore(dir, "t", 0, false)
	if err != nil {
		t.Fatal(err)
	}
	for i := range int64(10) {
		if err := s.Set(string(entityKey(i)), []byte("v")); err != nil {
			t.Fatal(err)
		}
		if err := s.SetOffset(i); err != nil {
			t.Fatal(err)
		}
	}
	if v, _ := s.Get(string(entityKey(9))); string(v) != "v" {
		t.Errorf("a pending write is not readable: %q", v)
	}
	if got := s.stored.Load(); got != -1 {
		t.Errorf("recovery committed offset %d before its batch was due", got)
	}
	if err := s.MarkRecovered(); err != nil {
		t.Fatal(err)
	}
	// Live, a record that comes alone is committed at once; one that
	// follows within the delay waits for the timer.
	s.mu.Lock()
	s.committedAt = time.Time{}
	s.delay = time.Hour
	s.mu.Unlock()
	s.Set(string(entityKey(10)), []byte("v"))
	s.SetOffset(10)
	if got := s.stored.Load(); got != 10 {
		t.Errorf("after recovery, stored offset = %d, want 10 (a record alone is committed at once)", got)
	}
	s.Set(string(entityKey(11)), []byte("v"))
	s.SetOffset(11)
	if got := s.stored.Load(); got != 10 {
		t.Errorf("stored offset = %d right after a commit, want 10 (batched)", got)
	}
	s.mu.Lock()
	armed := s.timer != nil
	s.mu.Unlock()
	if !armed {
		t.Fatal("a record left in the batch armed no timer")
	}
	s.flushLate() // the timer firing
	if got := s.stored.Load(); got != 11 {
		t.Errorf("stored offset = %d after the timer, want 11", got)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = openStore(dir, "t", 0, false)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if off, _ := s.GetOffset(-2); off != 11 {
		t.Errorf("reopened offset = %d, want 11", off)
	}
}

// A directory in goka's own layout (decimal keys, no format key) is a cache
// of the table: it is cleared and rebuilt, not read as if it were ours. A
// format this version does not know is an error.
func TestStoreFormat(t *testing.T) {
	dir := t.TempDir()
	db, err := leveldb.OpenFile(filepath.Join(dir, "t.0"), nil)
	if err != nil {
		t.Fatal(err)
	}
	db.Put([]byte("42"), []byte(`{"type":"a"}`), nil)
	db.Put([]byte(offsetKey), []byte("7"), nil)
	db.Close()
	s, err := openStore(dir, "t", 0, false)
	if err != nil {
		t.Fatal(err)
	}
	if off, _ := s.GetOffset(-2); off != -2 {
		t.Errorf("offset after clearing goka's layout = %d, want none (-2)", off)
	}
	if v, _ := s.Get("42"); v != nil {
		t.Errorf("old key survived: %q", v)
	}
	s.Close()

	db, _ = leveldb.OpenFile(filepath.Join(dir, "t.0"), nil)
	db.Put([]byte(formatKey), []byte("changes.view.v9"), nil)
	db.Close()
	if _, err := openStore(dir, "t", 0, false); err == nil || !strings.Contains(err.Error(), `format "changes.view.v9"`) {
		t.Errorf("unknown format: %v", err)
	}
}

// A recovery's batch grows to recoveryBatchBytes; once the partition is
// recovered, records are written one at a time and that buffer is let go,
// with every record still stored.
func TestStoreReleasesRecoveryBatch(t *testing.T) {
	s, err := openStore(t.TempDir(), "t", 0, true)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	value := bytes.Repeat([]byte("v"), 300)
	n := int64(recoveryBatchRecords + recoveryBatchRecords/2)
	for i := range n {
		if err := s.Set(string(entityKey(i)), value); err != nil {
			t.Fatal(err)
		}
		if err := s.SetOffset(i); err != nil {
			t.Fatal(err)
		}
	}
	if c := cap(s.batch.Dump()); c < 300*recoveryBatchRecords/4 {
		t.Fatalf("recovery batch capacity %d before MarkRecovered: the test does not fill a batch", c)
	}
	if err := s.MarkRecovered(); err != nil {
		t.Fatal(err)
	}
	if c := cap(s.batch.Dump()); c != 0 {
		t.Errorf("recovery batch capacity %d after MarkRecovered, want it released", c)
	}
	if err := s.Set(string(entityKey(n)), value); err != nil {
		t.Fatal(err)
	}
	if err := s.SetOffset(n); err != nil {
		t.Fatal(err)
	}
	for _, i := range []int64{0, n - 1, n} {
		if v, err := s.db.Get(entityKey(i), nil); err != nil || !bytes.Equal(v, value) {
			t.Errorf("entity %d: %q, %v", i, v, err)
		}
	}
	if got := s.stored.Load(); got != n {
		t.Errorf("stored offset %d, want %d", got, n)
	}
}

// TestStoreWatermarkAfterRecovery: a watermark read while the partition
// recovers (maybe from compacted segments, where it says more than the
// records before it hold) is neither published nor stored until the
// recovery completes; the one the storage held before stays meanwhile.
func TestStoreWatermarkAfterRecovery(t *testing.T) {
	dir := t.TempDir()
	wm := func(lsn codecs.LSN) []byte {
		b, err := (codecs.StateCodec{}).Encode(&codecs.State{EntityType: "t", Watermark: true, Position: codecs.Position{CommitLSN: lsn}, CommitTime: time.Now().UTC()})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	s, err := openStore(dir, "t", 0, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.MarkRecovered(); err != nil {
		t.Fatal(err)
	}
	if err := s.Set(watermarkKey, wm(0x100)); err != nil {
		t.Fatal(err)
	}
	if err := s.SetOffset(0); err != nil {
		t.Fatal(err)
	}
	if got := s.appliedThrough().LSN; got != 0x100 {
		t.Fatalf("live watermark %s, want 0/100", got)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s, err = openStore(dir, "t", 0, false)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got := s.appliedThrough().LSN; got != 0x100 {
		t.Fatalf("reopened: watermark %s, want the stored 0/100", got)
	}
	if err := s.Set(watermarkKey, wm(0x900)); err != nil {
		t.Fatal(err)
	}
	if err := s.SetOffset(1); err != nil {
		t.Fatal(err)
	}
	if err := s.flush(); err != nil {
		t.Fatal(err)
	}
	if got := s.appliedThrough().LSN; got != 0x100 {
		t.Errorf("recovering: watermark %s, want 0/100 until the recovery completes", got)
	}
	raw, err := s.db.Get([]byte(watermarkKey), nil)
	if err != nil {
		t.Fatal(err)
	}
	if st, err := (codecs.StateCodec{}).Decode(raw); err != nil || st.Position.CommitLSN != 0x100 {
		t.Errorf("recovering: the storage holds the watermark %+v (%v), want 0/100", st, err)
	}
	if err := s.MarkRecovered(); err != nil {
		t.Fatal(err)
	}
	if got := s.appliedThrough().LSN; got != 0x900 {
		t.Errorf("recovered: watermark %s, want 0/900", got)
	}
}
