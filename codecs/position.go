package codecs

import (
	"fmt"
	"strconv"
	"strings"
)

// LSN is a PostgreSQL log sequence number, a byte position in the WAL.
type LSN uint64

// String formats the LSN the way PostgreSQL does, e.g. "0/1A2B3C4".
func (l LSN) String() string { return string(l.appendText(make([]byte, 0, 17))) }

// appendText appends String's form.
func (l LSN) appendText(b []byte) []byte { return appendLSN(b, l) }

// MarshalText implements encoding.TextMarshaler.
func (l LSN) MarshalText() ([]byte, error) { return []byte(l.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (l *LSN) UnmarshalText(b []byte) error {
	v, err := ParseLSN(string(b))
	if err != nil {
		return err
	}
	*l = v
	return nil
}

// ParseLSN parses PostgreSQL's "X/X" form.
func ParseLSN(s string) (LSN, error) {
	hi, lo, ok := strings.Cut(s, "/")
	if !ok {
		return 0, fmt.Errorf("lsn %q: want X/X", s)
	}
	h, err := strconv.ParseUint(hi, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("lsn %q: %w", s, err)
	}
	l, err := strconv.ParseUint(lo, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("lsn %q: %w", s, err)
	}
	return LSN(h<<32 | l), nil
}

// Position orders the changes of the history: the commit LSN of the change's
// transaction, then the change's index within it. Positions strictly increase
// along the history topic, so a consumer that remembers the last position it
// applied can recognise a redelivered or older change.
type Position struct {
	CommitLSN LSN
	Index     uint32
}

// Compare returns -1, 0 or +1 as p is before, equal to or after q.
func (p Position) Compare(q Position) int {
	switch {
	case p.CommitLSN < q.CommitLSN:
		return -1
	case p.CommitLSN > q.CommitLSN:
		return 1
	case p.Index < q.Index:
		return -1
	case p.Index > q.Index:
		return 1
	}
	return 0
}

// IsZero reports whether p is the zero position, before every change.
func (p Position) IsZero() bool { return p == Position{} }

// String returns the fixed-width form "%016X:%08X", which sorts as p does.
func (p Position) String() string { return string(p.appendText(make([]byte, 0, 25))) }

// MarshalText implements encoding.TextMarshaler.
func (p Position) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (p *Position) UnmarshalText(b []byte) error {
	v, err := ParsePosition(string(b))
	if err != nil {
		return err
	}
	*p = v
	return nil
}

// ParsePosition parses the form String returns.
func ParsePosition(s string) (Position, error) {
	lsn, idx, ok := strings.Cut(s, ":")
	if !ok || len(lsn) != 16 || len(idx) != 8 {
		return Position{}, fmt.Errorf("position %q: want 16 hex digits, ':', 8 hex digits", s)
	}
	l, err := strconv.ParseUint(lsn, 16, 64)
	if err != nil {
		return Position{}, fmt.Errorf("position %q: %w", s, err)
	}
	i, err := strconv.ParseUint(idx, 16, 32)
	if err != nil {
		return Position{}, fmt.Errorf("position %q: %w", s, err)
	}
	return Position{CommitLSN: LSN(l), Index: uint32(i)}, nil
}
