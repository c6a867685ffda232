package topology

import (
	"hash/fnv"
	"strconv"
	"strings"
)

// PartitionOf is the partition of key in a topic of n partitions, as the
// producers compute it: sarama's hash partitioner with goka's FNV-1a hasher
// (remainder first, then the sign). goka's own lookup takes the sign first;
// the two differ only for a key whose hash is exactly 0x80000000.
func PartitionOf(key string, n int) int32 {
	h := fnv.New32a()
	h.Write([]byte(key))
	p := int32(h.Sum32()) % int32(n)
	if p < 0 {
		p = -p
	}
	return p
}

// truncatePrefix starts the keys of the snapshot tables' markers (truncate
// markers and progress watermarks): codecs.ReservedKeyPrefix, which no
// entity key may start with.
const truncatePrefix = "~truncate/"

// watermarkPrefix starts the keys of progress watermarks. It lies inside
// the reserved prefix, so that no entity key collides with it and the
// capture refuses no key it took before watermarks existed.
const watermarkPrefix = truncatePrefix + "~watermark/"

// TruncateKey is the key of partition p's truncate marker in a snapshot
// table of n partitions: the first key "~truncate/<i>" that hashes to p.
// The router sends a TRUNCATE to every partition under these keys, and the
// snapshot processor keeps the marker there.
func TruncateKey(p int32, n int) string {
	for i := 0; ; i++ {
		k := truncatePrefix + strconv.Itoa(i)
		if PartitionOf(k, n) == p {
			return k
		}
	}
}

// TruncateKeys returns TruncateKey(p, n) for every partition p of a table
// of n partitions, in one pass over the candidate keys: about n·ln(n)
// hashes, where calling TruncateKey for each partition takes about n² (13 s
// for 10000 partitions). The router and the snapshot processors compute
// them once, not per TRUNCATE.
func TruncateKeys(n int) []string { return markerKeys(truncatePrefix, n) }

// WatermarkKeys returns, for every partition p of a table of n partitions,
// the key of p's progress watermark: the first key "~truncate/~watermark/<i>"
// that hashes to p. The router sends each watermark (codecs.OpWatermark) to
// every partition under these keys, and the snapshot processor keeps the
// partition's latest one there.
func WatermarkKeys(n int) []string { return markerKeys(watermarkPrefix, n) }

// markerKeys returns, for each partition of n, the first key prefix+<i>
// that hashes to it.
func markerKeys(prefix string, n int) []string {
	keys := make([]string, n)
	for i, found := 0, 0; found < n; i++ {
		k := prefix + strconv.Itoa(i)
		if p := PartitionOf(k, n); keys[p] == "" {
			keys[p] = k
			found++
		}
	}
	return keys
}

// IsTruncateKey reports whether key is a truncate marker's key.
func IsTruncateKey(key string) bool {
	return strings.HasPrefix(key, truncatePrefix) && !IsWatermarkKey(key)
}

// IsWatermarkKey reports whether key is a progress watermark's key.
func IsWatermarkKey(key string) bool { return strings.HasPrefix(key, watermarkPrefix) }
