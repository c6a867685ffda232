package topology_test

import (
	"hash/fnv"
	"strings"
	"testing"

	"github.com/IBM/sarama"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/topology"
)

func TestPartitionOfMatchesSaramaWithGokaHasher(t *testing.T) {
	p := sarama.NewCustomHashPartitioner(fnv.New32a)("t")
	for _, n := range []int{1, 2, 3, 7, 12} {
		for _, key := range []string{"0", "1", "42", "9007199254740993", "-5", "~truncate/3", "abc", "2304669687"} {
			want, err := p.Partition(&sarama.ProducerMessage{Key: sarama.StringEncoder(key)}, int32(n))
			if err != nil {
				t.Fatal(err)
			}
			if got := topology.PartitionOf(key, n); got != want {
				t.Errorf("PartitionOf(%q, %d) = %d, sarama says %d", key, n, got, want)
			}
		}
	}
}

func TestTruncateKey(t *testing.T) {
	for _, n := range []int{1, 4, 9} {
		seen := map[string]bool{}
		for p := range int32(n) {
			k := topology.TruncateKey(p, n)
			if topology.PartitionOf(k, n) != p || !topology.IsTruncateKey(k) || seen[k] {
				t.Errorf("TruncateKey(%d, %d) = %q", p, n, k)
			}
			seen[k] = true
		}
	}
	if topology.IsTruncateKey("42") {
		t.Error("an entity id is not a truncate key")
	}
}

func TestTruncateKeys(t *testing.T) {
	// Every key, as TruncateKey finds it one partition at a time.
	for _, n := range []int{1, 4, 9, 97, 1000} {
		keys := topology.TruncateKeys(n)
		if len(keys) != n {
			t.Fatalf("TruncateKeys(%d) has %d keys", n, len(keys))
		}
		for p := range int32(n) {
			if want := topology.TruncateKey(p, n); keys[p] != want {
				t.Errorf("TruncateKeys(%d)[%d] = %q, TruncateKey says %q", n, p, keys[p], want)
			}
		}
	}
	// The largest table: each key in its partition, once; a few partitions
	// checked against TruncateKey (all of them would take seconds).
	const n = 10000
	keys := topology.TruncateKeys(n)
	seen := map[string]bool{}
	for p, k := range keys {
		if topology.PartitionOf(k, n) != int32(p) || seen[k] {
			t.Fatalf("TruncateKeys(%d)[%d] = %q", n, p, k)
		}
		seen[k] = true
	}
	for _, p := range []int32{0, 1, 4999, n - 1} {
		if want := topology.TruncateKey(p, n); keys[p] != want {
			t.Errorf("TruncateKeys(%d)[%d] = %q, TruncateKey says %q", n, p, keys[p], want)
		}
	}
}

func TestWatermarkKeys(t *testing.T) {
	for _, n := range []int{1, 4, 9, 97} {
		keys := topology.WatermarkKeys(n)
		seen := map[string]bool{}
		for p, k := range keys {
			if topology.PartitionOf(k, n) != int32(p) || !topology.IsWatermarkKey(k) || topology.IsTruncateKey(k) || seen[k] {
				t.Errorf("WatermarkKeys(%d)[%d] = %q", n, p, k)
			}
			if !strings.HasPrefix(k, codecs.ReservedKeyPrefix) {
				t.Errorf("watermark key %q is outside the reserved prefix %q: an entity key could collide", k, codecs.ReservedKeyPrefix)
			}
			seen[k] = true
		}
		for _, k := range topology.TruncateKeys(n) {
			if topology.IsWatermarkKey(k) {
				t.Errorf("truncate key %q is taken for a watermark key", k)
			}
		}
	}
	if topology.IsWatermarkKey("42") || topology.IsWatermarkKey("~truncate/3") {
		t.Error("an entity id or a truncate key is not a watermark key")
	}
}
