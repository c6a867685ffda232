package codecs_test

import (
	"strings"
	"testing"

	"github.com/changes-dev/changes/codecs"
)

func TestColumnKey(t *testing.T) {
	const (
		int2, int4, int8, text, bpchar, varchar, uuid, numeric = 21, 23, 20, 25, 1042, 1043, 2950, 1700
	)
	tests := []struct {
		name   string
		oids   []uint32
		values []string
		kind   codecs.KeyKind
		text   string
	}{
		{"bigint", []uint32{int8}, []string{"42"}, codecs.KeyInteger, "42"},
		{"negative integer", []uint32{int4}, []string{"-7"}, codecs.KeyInteger, "-7"},
		{"smallint zero", []uint32{int2}, []string{"0"}, codecs.KeyInteger, "0"},
		{"uuid", []uint32{uuid}, []string{"0B6F3D6E-1C2A-4F6B-9A51-2F3C4D5E6F70"}, codecs.KeyUUID, "0b6f3d6e-1c2a-4f6b-9a51-2f3c4d5e6f70"},
		{"text", []uint32{text}, []string{"acme/ü"}, codecs.KeyText, "acme/ü"},
		{"varchar", []uint32{varchar}, []string{"x"}, codecs.KeyText, "x"},
		{"char keeps its padding", []uint32{bpchar}, []string{"ab   "}, codecs.KeyText, "ab   "},
		{"empty text", []uint32{text}, []string{""}, codecs.KeyText, ""},
		{"composite", []uint32{text, int8}, []string{"acme", "42"}, codecs.KeyComposite, `["acme","42"]`},
		{"composite with uuid", []uint32{int4, uuid}, []string{"1", "0b6f3d6e1c2a4f6b9a512f3c4d5e6f70"}, codecs.KeyComposite, `["1","0b6f3d6e-1c2a-4f6b-9a51-2f3c4d5e6f70"]`},
		{"composite part with the reserved prefix", []uint32{text, int4}, []string{"~truncate/x", "1"}, codecs.KeyComposite, `["~truncate/x","1"]`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			names := make([]string, len(tt.values))
			values := make([][]byte, len(tt.values))
			for i, v := range tt.values {
				names[i], values[i] = "c", []byte(v)
			}
			k, err := codecs.ColumnKey(names, tt.oids, values)
			if err != nil {
				t.Fatal(err)
			}
			if k.Kind() != tt.kind || k.String() != tt.text {
				t.Errorf("got %s %q, want %s %q", k.Kind(), k, tt.kind, tt.text)
			}
			if err := k.Validate(); err != nil {
				t.Errorf("key is not canonical: %v", err)
			}
		})
	}
	if k, _ := codecs.ColumnKey([]string{"id"}, []uint32{int8}, [][]byte{[]byte("42")}); k != codecs.IntKey(42) {
		t.Errorf("integer key %v is not IntKey(42): keys must stay what they were", k)
	}

	bad := []struct {
		name   string
		oids   []uint32
		values [][]byte
		want   string
	}{
		{"null", []uint32{text, int4}, [][]byte{[]byte("a"), nil}, "key column c1: is NULL"},
		{"numeric", []uint32{numeric}, [][]byte{[]byte("1.5")}, "key column c0: type 1700 cannot hold a key"},
		{"not an integer", []uint32{int8}, [][]byte{[]byte("x")}, "key column c0: integer"},
		{"not a uuid", []uint32{uuid}, [][]byte{[]byte("nope")}, "key column c0"},
		{"not UTF-8", []uint32{text}, [][]byte{{0xff}}, "not UTF-8"},
		{"too long", []uint32{text}, [][]byte{[]byte(strings.Repeat("x", codecs.MaxKeyBytes+1))}, "longer than"},
		{"composite too long", []uint32{text, text}, [][]byte{[]byte(strings.Repeat("x", 600)), []byte(strings.Repeat("y", 600))}, "key column(s) c0, c1"},
		{"reserved prefix", []uint32{text}, [][]byte{[]byte(codecs.ReservedKeyPrefix + "t")}, "reserved"},
		{"no columns", nil, nil, "key:"},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			names := make([]string, len(tt.values))
			for i := range names {
				names[i] = "c" + string(rune('0'+i))
			}
			k, err := codecs.ColumnKey(names, tt.oids, tt.values)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, %v; want an error with %q", k, err, tt.want)
			}
		})
	}
	if k := codecs.MaxKeyBytes; k != 1024 {
		t.Errorf("MaxKeyBytes = %d", k)
	}
}
