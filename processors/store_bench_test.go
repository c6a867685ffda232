package processors

import (
	"math/rand/v2"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/syndtr/goleveldb/leveldb"
	"github.com/syndtr/goleveldb/leveldb/opt"

	"github.com/changes-dev/changes/internal/procstat"
)

// BenchmarkBatchStore measures a snapshot processor's storage on the work
// of a catch-up: a partition of 250,000 entities of 600 bytes (JSON-like,
// compressible), then 500,000 changes to random entities, each a read of
// the stored state, a write of the new one and the table offset, with
// goleveldb's default options and with storeOptions. cpu-µs/op is the
// process's CPU time per change, compactions included.
func BenchmarkBatchStore(b *testing.B) {
	for _, v := range []struct {
		name string
		opts *opt.Options
	}{{"goleveldb-defaults", nil}, {"store-options", storeOptions()}} {
		b.Run(v.name, func(b *testing.B) {
			path := b.TempDir()
			db, err := leveldb.OpenFile(path, v.opts)
			if err != nil {
				b.Fatal(err)
			}
			st := &batchStore{db: db, pending: map[string][]byte{}, offset: -1, stored: -1}
			defer st.Close()
			const entities, changes = 250000, 500000
			rng := rand.New(rand.NewPCG(1, 2))
			val := make([]byte, 600)
			state := func(version int) []byte {
				n := copy(val, `{"entity_type":"campaign","version":`+strconv.Itoa(version)+`,"row":{"name":"`)
				for i := n; i < len(val); i++ {
					if i%8 == 0 {
						val[i] = "abcdefghij0123456789 ,:"[rng.IntN(23)]
					} else {
						val[i] = "row_field"[i%9]
					}
				}
				return val
			}
			offset := int64(0)
			apply := func(key string, version int) {
				if _, err := st.Get(key); err != nil {
					b.Fatal(err)
				}
				if err := st.Set(key, state(version)); err != nil {
					b.Fatal(err)
				}
				if err := st.SetOffset(offset); err != nil {
					b.Fatal(err)
				}
				offset++
			}
			for i := range entities {
				apply(strconv.Itoa(i), 1)
			}
			if err := st.MarkRecovered(); err != nil {
				b.Fatal(err)
			}
			start, cpu := time.Now(), selfCPU(b)
			for i := range changes {
				apply(strconv.Itoa(rng.IntN(entities)), 2+i)
			}
			b.ReportMetric(float64(changes)/time.Since(start).Seconds(), "changes/s")
			b.ReportMetric((selfCPU(b)-cpu).Seconds()/changes*1e6, "cpu-µs/op")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// selfCPU is the CPU time this process has used so far.
func selfCPU(b *testing.B) time.Duration {
	st, err := procstat.Read(os.Getpid())
	if err != nil {
		b.Fatal(err)
	}
	return st.CPU
}
