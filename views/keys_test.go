package views

import (
	"context"
	"encoding/json"
	"slices"
	"strconv"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/topology"
)

// keyed is the alive state of the entity with key k, its row naming it.
func keyed(k codecs.Key, lsn codecs.LSN) *codecs.State {
	name, _ := json.Marshal(k.String())
	return &codecs.State{EntityType: "account", EntityID: k, Row: codecs.Row{"name": name},
		Position: codecs.Position{CommitLSN: lsn}}
}

// keysOf collects the keys a sequence yields, failing on an error.
func keysOf(t *testing.T, seq func(func(*codecs.State, error) bool)) []codecs.Key {
	t.Helper()
	var out []codecs.Key
	for st, err := range seq {
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, st.EntityID)
	}
	return out
}

func sortedKeys(keys []codecs.Key) []codecs.Key {
	return slices.SortedFunc(slices.Values(keys), codecs.Key.Compare)
}

// checkKeyedView writes an entity for each of keys (out of order), then
// reads them back every way a view reads: GetKey, All, RangeKeys, After,
// Len, ParseKey.
func checkKeyedView(t *testing.T, n int, kind codecs.KeyKind, keys []codecs.Key) *partitioned {
	t.Helper()
	pt := newPartitioned(t, n)
	used := map[int32]bool{}
	for i, k := range slices.Backward(keys) {
		pt.putState(keyed(k, codecs.LSN(10+i)))
		used[topology.PartitionOf(k.String(), n)] = true
	}
	if len(used) < 2 {
		t.Fatalf("the keys fill %d of the %d partitions: the merge is not exercised", len(used), n)
	}
	ctx := context.Background()
	want := sortedKeys(keys)
	if got := keysOf(t, pt.v.All(ctx)); !slices.Equal(got, want) {
		t.Errorf("All = %q\nwant %q", got, want)
	}
	if got, err := pt.v.Len(); err != nil || got != len(keys) {
		t.Errorf("Len = %d, %v; want %d", got, err, len(keys))
	}
	for _, k := range keys {
		st, err := pt.v.GetKey(ctx, k)
		if err != nil || st == nil || st.EntityID != k {
			t.Errorf("GetKey(%s %q) = %+v, %v", k.Kind(), k, st, err)
			continue
		}
		var row struct{ Name string }
		if err := st.Row.Decode(&row); err != nil || row.Name != k.String() {
			t.Errorf("GetKey(%q) holds %q, %v", k, row.Name, err)
		}
		parsed, err := pt.v.ParseKey(k.String())
		if err != nil || parsed != k || parsed.Kind() != kind {
			t.Errorf("ParseKey(%q) = %s %q, %v; want %s", k, parsed.Kind(), parsed, err, kind)
		}
	}
	// Ranges over every pair of bounds, and the pages after every key.
	for i := range want {
		for j := i; j < len(want); j++ {
			if got := keysOf(t, pt.v.RangeKeys(ctx, want[i], want[j])); !slices.Equal(got, want[i:j+1]) {
				t.Errorf("RangeKeys(%q, %q) = %q, want %q", want[i], want[j], got, want[i:j+1])
			}
		}
		if got := keysOf(t, pt.v.After(ctx, want[i])); !slices.Equal(got, want[i+1:]) {
			t.Errorf("After(%q) = %q, want %q", want[i], got, want[i+1:])
		}
	}
	if len(want) > 1 {
		if got := keysOf(t, pt.v.RangeKeys(ctx, want[1], want[0])); len(got) != 0 {
			t.Errorf("RangeKeys(last, first) = %q, want nothing", got)
		}
	}
	// Paging by two with After, as the server's after= does.
	var paged []codecs.Key
	var last *codecs.Key
	for range len(want) + 1 {
		seq := pt.v.All(ctx)
		if last != nil {
			seq = pt.v.After(ctx, *last)
		}
		var page []codecs.Key
		for st, err := range seq {
			if err != nil {
				t.Fatal(err)
			}
			page = append(page, st.EntityID)
			if len(page) == 2 {
				break
			}
		}
		if len(page) == 0 {
			break
		}
		paged = append(paged, page...)
		last = &page[len(page)-1]
	}
	if !slices.Equal(paged, want) {
		t.Errorf("pages of two = %q, want %q", paged, want)
	}
	return pt
}

// TestViewTextKeys: text keys, digits and slashes and escapes and unicode
// and the empty text included, are found and ranged over in byte order.
func TestViewTextKeys(t *testing.T) {
	texts := []string{"42", "9", "10", "a/b", "ü", "", "50%", "a b", "%2F", "x%20y", `q"uote`, "A", "a", "0", "-1", "\u2028", "😀"}
	var keys []codecs.Key
	for _, s := range texts {
		keys = append(keys, codecs.TextKey(s))
	}
	pt := checkKeyedView(t, 4, codecs.KeyText, keys)
	ctx := context.Background()
	all := keysOf(t, pt.v.All(ctx))
	if i, j := slices.Index(all, codecs.TextKey("10")), slices.Index(all, codecs.TextKey("9")); i < 0 || j < 0 || i > j {
		t.Errorf(`"10" at %d, "9" at %d: text keys are not in byte order`, i, j)
	}
	// A text key and an integer key of the same text are not the same.
	if st, err := pt.v.GetKey(ctx, codecs.IntKey(42)); err != nil || st != nil {
		t.Errorf("GetKey(integer 42) in a view of text keys = %+v, %v", st, err)
	}
	if st, err := pt.v.Get(ctx, 42); err != nil || st != nil {
		t.Errorf("Get(42) in a view of text keys = %+v, %v", st, err)
	}
	if k, err := pt.v.ParseKey("\xff"); err == nil {
		t.Errorf("ParseKey(non-UTF-8) = %q", k)
	}

	// A delete, then its tombstone, removes the entity; the tombstone of an
	// entity the view never held is no bad record.
	n := len(texts)
	pt.putState(&codecs.State{EntityType: "account", EntityID: codecs.TextKey("a/b"), Deleted: true, Position: codecs.Position{CommitLSN: 100}})
	if st, err := pt.v.GetKey(ctx, codecs.TextKey("a/b")); err != nil || st != nil {
		t.Errorf("GetKey of a deleted entity = %+v, %v", st, err)
	}
	if got, _ := pt.v.Len(); got != n-1 {
		t.Errorf("Len after a delete = %d, want %d", got, n-1)
	}
	pt.put("a/b", nil)
	pt.put("never/seen", nil)
	if bad := testutil.ToFloat64(pt.v.metrics.badRecords); bad != 0 {
		t.Errorf("%v bad records after the tombstones", bad)
	}
	s := pt.stores[topology.PartitionOf("a/b", pt.n)].store
	if raw, err := s.Get(string(localKey(codecs.TextKey("a/b")))); err != nil || raw != nil {
		t.Errorf("the tombstone left %q, %v", raw, err)
	}
	if got, _ := pt.v.Len(); got != n-1 {
		t.Errorf("Len after the tombstone = %d, want %d", got, n-1)
	}
	if got := keysOf(t, pt.v.All(ctx)); slices.Contains(got, codecs.TextKey("a/b")) || len(got) != n-1 {
		t.Errorf("All after the delete = %q", got)
	}

	// Typed reads carry the key; ID is 0 for a text key.
	typed := &Typed[struct{ Name string }]{View: pt.v}
	e, ok, err := typed.GetKey(ctx, codecs.TextKey("ü"))
	if err != nil || !ok || e.Key != codecs.TextKey("ü") || e.ID != 0 || e.Value.Name != "ü" {
		t.Errorf("Typed.GetKey(ü) = %+v, %v, %v", e, ok, err)
	}
	var typedKeys []codecs.Key
	for e, err := range typed.RangeKeys(ctx, codecs.TextKey("10"), codecs.TextKey("9")) {
		if err != nil {
			t.Fatal(err)
		}
		typedKeys = append(typedKeys, e.Key)
	}
	if want := []codecs.Key{codecs.TextKey("10"), codecs.TextKey("42"), codecs.TextKey("50%"), codecs.TextKey("9")}; !slices.Equal(typedKeys, want) {
		t.Errorf("Typed.RangeKeys(10, 9) = %q, want %q", typedKeys, want)
	}
}

func TestViewUUIDKeys(t *testing.T) {
	var keys []codecs.Key
	for _, s := range []string{
		"0b6f3d6e-1c2a-4f6b-9a51-2f3c4d5e6f70",
		"FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF",
		"00000000000000000000000000000000",
		"a0000000-0000-0000-0000-000000000000",
		"90000000-0000-0000-0000-000000000001",
		"0b6f3d6e-1c2a-4f6b-9a51-2f3c4d5e6f71",
	} {
		k, err := codecs.UUIDKey(s)
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k)
	}
	pt := checkKeyedView(t, 3, codecs.KeyUUID, keys)
	if k, err := pt.v.ParseKey("0B6F3D6E-1C2A-4F6B-9A51-2F3C4D5E6F70"); err == nil {
		t.Errorf("ParseKey(uppercase uuid) = %q, want an error", k)
	}
	if k, err := pt.v.ParseKey("42"); err == nil {
		t.Errorf("ParseKey(42) in a view of uuids = %s %q, want an error", k.Kind(), k)
	}
}

func TestViewCompositeKeys(t *testing.T) {
	var keys []codecs.Key
	for _, parts := range [][]string{{"acme", "42"}, {"acme", "4/2"}, {"acme", "5"}, {"b", "1"}, {"a,b", "c"}, {"a", "b,c"}, {`a"`, "b"}, {"ü", ""}, {"acme", "42", "x"}} {
		var ks []codecs.Key
		for _, p := range parts {
			ks = append(ks, codecs.TextKey(p))
		}
		keys = append(keys, codecs.CompositeKey(ks...))
	}
	keys = append(keys, codecs.CompositeKey(codecs.TextKey("acme"), codecs.IntKey(-3)))
	pt := checkKeyedView(t, 4, codecs.KeyComposite, keys)
	if k, err := pt.v.ParseKey(`["acme", "42"]`); err == nil {
		t.Errorf("ParseKey(non-canonical) = %q, want an error", k)
	}
}

// TestViewIntegerKeysUnchanged: integer views range numerically and take
// integers only, once they hold some.
func TestViewIntegerKeysUnchanged(t *testing.T) {
	ids := []int64{-10, -2, 0, 3, 9, 10, 42, 100}
	var keys []codecs.Key
	for _, id := range ids {
		keys = append(keys, codecs.IntKey(id))
	}
	pt := checkKeyedView(t, 3, codecs.KeyInteger, keys)
	ctx := context.Background()
	var got []int64
	for st, err := range pt.v.Range(ctx, -2, 42) {
		if err != nil {
			t.Fatal(err)
		}
		id, _ := st.EntityID.Int()
		got = append(got, id)
	}
	if want := []int64{-2, 0, 3, 9, 10, 42}; !slices.Equal(got, want) {
		t.Errorf("Range(-2, 42) = %v, want %v", got, want)
	}
	for _, id := range ids {
		if st, err := pt.v.Get(ctx, id); err != nil || st == nil || st.EntityID != codecs.IntKey(id) {
			t.Errorf("Get(%d) = %+v, %v", id, st, err)
		}
		// Integer keys keep their layout: 'e' + 8 bytes.
		if string(localKey(codecs.IntKey(id))) != string(entityKey(id)) {
			t.Errorf("the local key of %d is not its entity key", id)
		}
	}
	for _, s := range []string{"042", "x", "+1", "-0", ""} {
		if k, err := pt.v.ParseKey(s); err == nil {
			t.Errorf("ParseKey(%q) in a view of integers = %s %q, want an error", s, k.Kind(), k)
		}
	}
	if st, err := pt.v.GetKey(ctx, codecs.TextKey("42")); err != nil || st != nil {
		t.Errorf("GetKey(text 42) in a view of integers = %+v, %v", st, err)
	}
	// A tombstone removes an integer entity, as before.
	pt.putState(&codecs.State{EntityType: "account", EntityID: codecs.IntKey(9), Deleted: true, Position: codecs.Position{CommitLSN: 100}})
	pt.put("9", nil)
	if st, err := pt.v.Get(ctx, 9); err != nil || st != nil {
		t.Errorf("Get(9) after its delete = %+v, %v", st, err)
	}
	if n, _ := pt.v.Len(); n != len(ids)-1 {
		t.Errorf("Len = %d, want %d", n, len(ids)-1)
	}
	if bad := testutil.ToFloat64(pt.v.metrics.badRecords); bad != 0 {
		t.Errorf("%v bad records", bad)
	}
}

// TestViewParseKeyEmpty: a view that holds nothing takes an integer if the
// text is one, else a uuid, a composite key or a text.
func TestViewParseKeyEmpty(t *testing.T) {
	pt := newPartitioned(t, 2)
	for s, want := range map[string]codecs.KeyKind{
		"42": codecs.KeyInteger, "042": codecs.KeyText, "0b6f3d6e-1c2a-4f6b-9a51-2f3c4d5e6f70": codecs.KeyUUID,
		`["a","1"]`: codecs.KeyComposite, "a/b": codecs.KeyText, strconv.Itoa(-7): codecs.KeyInteger,
	} {
		if k, err := pt.v.ParseKey(s); err != nil || k.Kind() != want || k.String() != s {
			t.Errorf("ParseKey(%q) = %s %q, %v; want %s", s, k.Kind(), k, err, want)
		}
	}
}
