package codecs_test

import (
	"reflect"
	"strings"
	"testing"

	"github.com/lovoo/goka"

	"github.com/changes-dev/changes/codecs"
)

// The adapters must satisfy goka.Codec; this fails to compile otherwise.
var (
	_ goka.Codec = codecs.GokaCodec[*codecs.Event](codecs.EventCodec{})
	_ goka.Codec = codecs.GokaCodec[*codecs.State](codecs.StateCodec{})

	_ codecs.Codec[*codecs.Event] = codecs.EventCodec{}
	_ codecs.Codec[*codecs.State] = codecs.StateCodec{}
)

func TestGokaCodecRoundTrip(t *testing.T) {
	tests := []struct {
		name  string
		codec goka.Codec
		value any
	}{
		{"event", codecs.GokaCodec[*codecs.Event](codecs.EventCodec{}), event(codecs.OpUpdate)},
		{"state", codecs.GokaCodec[*codecs.State](codecs.StateCodec{}), state()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := tt.codec.Encode(tt.value)
			if err != nil {
				t.Fatalf("Encode: %v", err)
			}
			got, err := tt.codec.Decode(b)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			// goka hands the value to callbacks as any; it must be the
			// pointer type, not a value or a map.
			if reflect.TypeOf(got) != reflect.TypeOf(tt.value) {
				t.Fatalf("Decode returned %T, want %T", got, tt.value)
			}
			if !reflect.DeepEqual(got, tt.value) {
				t.Errorf("Decode(Encode(v))\n got %+v\nwant %+v", got, tt.value)
			}
		})
	}
}

func TestGokaCodecEncodeWrongType(t *testing.T) {
	c := codecs.GokaCodec[*codecs.State](codecs.StateCodec{})
	tests := []struct {
		name  string
		value any
		want  string
	}{
		{"nil", nil, "got <nil>"},
		{"value instead of pointer", *state(), "got codecs.State"},
		{"another codec's type", event(codecs.OpInsert), "got *codecs.Event"},
		{"bytes", []byte(validStateJSON), "got []uint8"},
		{"typed nil", (*codecs.State)(nil), "nil"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := c.Encode(tt.value)
			if err == nil {
				t.Fatalf("Encode(%T) = %s, want an error", tt.value, b)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not contain %q", err, tt.want)
			}
		})
	}
}

func TestGokaCodecDecodeError(t *testing.T) {
	c := codecs.GokaCodec[*codecs.Event](codecs.EventCodec{})
	if v, err := c.Decode([]byte(validStateJSON)); err == nil {
		t.Errorf("decoding a state as an event = %+v, want an error", v)
	}
}
