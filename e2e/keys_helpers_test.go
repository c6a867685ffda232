package e2e

import "github.com/changes-dev/changes/codecs"

// idOf is the id of an integer key: the e2e tables' keys are bigints, and
// another kind there is a bug.
func idOf(k codecs.Key) int64 {
	id, ok := k.Int()
	if !ok {
		panic("key " + k.Kind().String() + " " + k.String() + " is not an integer")
	}
	return id
}

// keysOf turns a map by integer id into the map by key dbcheck compares.
func keysOf[V any](m map[int64]V) map[codecs.Key]V {
	out := make(map[codecs.Key]V, len(m))
	for id, v := range m {
		out[codecs.IntKey(id)] = v
	}
	return out
}

// idsOf turns a map by integer key, as dbcheck reads a table, into the map
// by id the e2e checks keep.
func idsOf[V any](m map[codecs.Key]V) map[int64]V {
	out := make(map[int64]V, len(m))
	for k, v := range m {
		out[idOf(k)] = v
	}
	return out
}
