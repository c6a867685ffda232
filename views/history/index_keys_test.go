package history

import (
	"bytes"
	"errors"
	"slices"
	"testing"

	"github.com/changes-dev/changes/codecs"
)

// TestEntryRoundTrip: an entry keeps what the replay judges a change by.
func TestEntryRoundTrip(t *testing.T) {
	uuid, err := codecs.UUIDKey("0b7a4f0e-4d3c-4a59-9d84-2b1f0a3e5c71")
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range []*codecs.Event{
		{EntityType: "account", EntityID: codecs.IntKey(42), Op: codecs.OpUpdate, Position: codecs.Position{CommitLSN: 0x1_0000_0001, Index: 7}, Unchanged: []string{"blob", "ü", ""}},
		{EntityType: "account", EntityID: codecs.TextKey("a/b"), Op: codecs.OpInsert, Position: codecs.Position{CommitLSN: 9}},
		{EntityType: "account", EntityID: uuid, Op: codecs.OpDelete, Position: codecs.Position{CommitLSN: 10, Index: 1}},
		{EntityType: "account", EntityID: codecs.CompositeKey(codecs.TextKey("acme"), codecs.IntKey(1)), Op: codecs.OpSnapshot, Position: codecs.Position{CommitLSN: 11}},
		{EntityType: "account", EntityID: codecs.IntKey(0), Op: codecs.OpTruncate, Position: codecs.Position{CommitLSN: 12}},
	} {
		got, err := decodeEntry("account", map[codecs.KeyKind]codecs.Key{}, ev.EntityID.String(), entryValue(ev))
		if err != nil {
			t.Fatalf("%s of %s: %v", ev.Op, ev.EntityID, err)
		}
		if got.Op != ev.Op || got.EntityID != ev.EntityID || got.Position != ev.Position || got.CommitLSN != ev.Position.CommitLSN ||
			!slices.Equal(got.Unchanged, ev.Unchanged) || got.EntityType != "account" {
			t.Errorf("%s of %s: decoded %+v", ev.Op, ev.EntityID, got)
		}
	}
}

func FuzzDecodeEntry(f *testing.F) {
	f.Add("42", entryValue(&codecs.Event{EntityID: codecs.IntKey(42), Op: codecs.OpUpdate, Position: codecs.Position{CommitLSN: 1}, Unchanged: []string{"x"}}))
	f.Add("a", []byte{3, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, id string, b []byte) {
		ev, err := decodeEntry("t", map[codecs.KeyKind]codecs.Key{}, id, b)
		if err == nil && ev.Op != codecs.OpTruncate {
			// What decodes encodes back to the same bytes.
			if again := entryValue(ev); string(again) != string(b) && len(ev.Unchanged) > 0 {
				t.Errorf("entry %x decodes to %+v, which encodes to %x", b, ev, again)
			}
		}
		_, _, _ = decodeTrunc(b)
		_, _ = decodePointer(b)
		_, _ = decodeMeta(b)
	})
}

// TestPointerAndMetaRoundTrip: the small records of the index decode to
// what was encoded.
func TestPointerAndMetaRoundTrip(t *testing.T) {
	pos := codecs.Position{CommitLSN: 77, Index: 3}
	for _, p := range []pointer{{checkpoint: 5_000_000}, {checkpoint: 1, position: &pos}} {
		got, err := decodePointer(p.encode())
		if err != nil || got.checkpoint != p.checkpoint || (got.position == nil) != (p.position == nil) || (p.position != nil && *got.position != *p.position) {
			t.Errorf("pointer %+v decodes to %+v, %v", p, got, err)
		}
	}
	for _, m := range []indexMeta{{next: 123, states: true, prunedTo: 7, every: 1_000_000, full: 4_000_000}, {next: -1, every: 1}} {
		if got, err := decodeMeta(m.encode()); err != nil || got != m {
			t.Errorf("meta %+v decodes to %+v, %v", m, got, err)
		}
	}
	typeWide, got, err := decodeTrunc(truncValue(true, pos))
	if err != nil || !typeWide || got != pos {
		t.Errorf("truncate decodes to %v %v %v", typeWide, got, err)
	}
}

// TestEntityKeyOrder: the checkpoints' entity keys sort as codecs.Key.Compare
// (TypeAt answers in their order without sorting) and parse back.
func TestEntityKeyOrder(t *testing.T) {
	uuid, err := codecs.UUIDKey("0b6f3d6e-1c2a-4f6b-9a51-2f3c4d5e6f70")
	if err != nil {
		t.Fatal(err)
	}
	keys := []codecs.Key{codecs.IntKey(0), codecs.IntKey(-1), codecs.IntKey(1), codecs.IntKey(-1 << 63), codecs.IntKey(1<<63 - 1),
		codecs.IntKey(9), codecs.IntKey(10), codecs.IntKey(256), uuid, codecs.TextKey("a"), codecs.TextKey("ab"), codecs.TextKey("b"),
		codecs.TextKey(""), codecs.TextKey("é")}
	for _, a := range keys {
		got, err := parseEntityKey(entityKey(nil, a))
		if err != nil || got != a {
			t.Errorf("%v: parses back to %v, %v", a, got, err)
		}
		for _, b := range keys {
			if want, got := a.Compare(b), bytes.Compare(entityKey(nil, a), entityKey(nil, b)); want != got {
				t.Errorf("%v vs %v: Compare %d, the entity keys %d", a, b, want, got)
			}
		}
	}
}

// TestOldLayoutMeta: the meta of an index of the first layout is told
// apart, for OpenIndex to rebuild it.
func TestOldLayoutMeta(t *testing.T) {
	old := indexMeta{next: 5, states: true, every: 1_000_000}.encode()[:26]
	old[0] = 1
	if _, err := decodeMeta(old); !errors.Is(err, errOldLayout) {
		t.Errorf("a meta of format 1: %v, want errOldLayout", err)
	}
	newer := indexMeta{}.encode()
	newer[0] = metaVersion + 1
	if _, err := decodeMeta(newer); err == nil || errors.Is(err, errOldLayout) {
		t.Errorf("a meta of a later format: %v, want an error that is not errOldLayout", err)
	}
}
