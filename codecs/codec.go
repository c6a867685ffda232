package codecs

import (
	"fmt"

	"github.com/lovoo/goka"
)

// Codec encodes values of type T to bytes and back. Decode(Encode(v)) equals v
// for every valid v; Decode returns an error, never a partial value, for
// anything else.
type Codec[T any] interface {
	Encode(v T) ([]byte, error)
	Decode(b []byte) (T, error)
}

// GokaCodec adapts c to goka.Codec. goka panics on codec errors inside a
// callback, so processors read raw bytes (goka's codec.Bytes) and decode with
// c themselves, sending what fails to a dead-letter topic; GokaCodec is for
// tables and views, whose records the platform wrote itself.
func GokaCodec[T any](c Codec[T]) goka.Codec { return gokaCodec[T]{c} }

type gokaCodec[T any] struct{ c Codec[T] }

func (g gokaCodec[T]) Encode(v any) ([]byte, error) {
	t, ok := v.(T)
	if !ok {
		var zero T
		return nil, fmt.Errorf("encode: got %T, want %T", v, zero)
	}
	return g.c.Encode(t)
}

func (g gokaCodec[T]) Decode(b []byte) (any, error) { return g.c.Decode(b) }
