package codecs

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"unicode/utf8"
)

// The wire formats were written with encoding/json, whose output is the
// format's definition: the functions here append exactly the bytes
// json.Marshal writes for the same values (strings and raw values
// HTML-escaped, raw values compacted, map keys sorted), without its
// reflection, so encoding an event costs a fraction of what it did. The
// tests compare them with json.Marshal on random values.

const hexDigits = "0123456789abcdef"

// htmlSafe marks the ASCII bytes json.Marshal writes as they are inside a
// string: everything from space on but '"', '\\', '<', '>' and '&'.
var htmlSafe = func() (t [utf8.RuneSelf]bool) {
	for b := ' '; b < utf8.RuneSelf; b++ {
		t[b] = b != '"' && b != '\\' && b != '<' && b != '>' && b != '&'
	}
	return t
}()

// appendString appends s as json.Marshal writes a string: quoted, with
// '"', '\\' and control characters escaped (\b \f \n \r \t or \u00xx),
// '<', '>' and '&' as \u003c \u003e \u0026, U+2028 and U+2029 as \u2028
// and \u2029, and each byte of invalid UTF-8 as \ufffd.
func appendString[T []byte | string](dst []byte, s T) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		if b := s[i]; b < utf8.RuneSelf {
			if htmlSafe[b] {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch b {
			case '\\', '"':
				dst = append(dst, '\\', b)
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[b>>4], hexDigits[b&0xF])
			}
			i++
			start = i
			continue
		}
		n := min(len(s)-i, utf8.UTFMax)
		c, size := utf8.DecodeRuneInString(string(s[i : i+n]))
		if c == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if c == '\u2028' || c == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[c&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// compactSkip marks the bytes appendCompact cannot copy as they are:
// whitespace, the HTML characters it escapes and the first byte of U+2028
// and U+2029.
var compactSkip = func() (t [256]bool) {
	for _, b := range []byte{' ', '\t', '\n', '\r', '<', '>', '&', 0xE2} {
		t[b] = true
	}
	return t
}()

// appendCompact appends the valid JSON value v as json.Marshal writes a
// json.RawMessage: without whitespace outside strings, with '<', '>', '&',
// U+2028 and U+2029 escaped as in appendString. v must be valid JSON
// (json.Valid); appendRaw checks.
func appendCompact(dst, v []byte) []byte {
	if !slices.ContainsFunc(v, func(c byte) bool { return compactSkip[c] }) {
		return append(dst, v...) // the common case: nothing to change
	}
	start, inString := 0, false
	for i := 0; i < len(v); i++ {
		c := v[i]
		switch {
		case c == '<' || c == '>' || c == '&':
			dst = append(dst, v[start:i]...)
			dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			start = i + 1
		case c == 0xE2 && i+2 < len(v) && v[i+1] == 0x80 && v[i+2]&^1 == 0xA8:
			dst = append(dst, v[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[v[i+2]&0xF])
			i += 2
			start = i + 1
		case inString:
			switch c {
			case '\\':
				i++ // the escaped byte: never a quote that ends the string
			case '"':
				inString = false
			}
		case c == '"':
			inString = true
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			dst = append(dst, v[start:i]...)
			start = i + 1
		}
	}
	return append(dst, v[start:]...)
}

// appendRaw appends a raw JSON value as json.Marshal writes a
// json.RawMessage: null for nil, an error for anything that is not valid
// JSON, else compacted (appendCompact).
func appendRaw(dst, v []byte) ([]byte, error) {
	if v == nil {
		return append(dst, "null"...), nil
	}
	// The values the platform encodes were decoded by this package (or
	// written by its encoders): valid and compact. scanValue checks that a
	// few times faster than json.Valid; anything else, leading space
	// included, takes encoding/json's check.
	if end, clean, ok := scanValue(v, 0); ok && end == len(v) && clean {
		return append(dst, v...), nil
	}
	if !json.Valid(v) {
		return dst, errors.New("invalid JSON value")
	}
	return appendCompact(dst, v), nil
}

// appendRow appends r as json.Marshal writes a map: its keys in byte
// order, each value as appendRaw writes it.
func appendRow(dst []byte, r Row) ([]byte, error) {
	var buf [32]string
	keys := buf[:0]
	for k := range r {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	dst = append(dst, '{')
	for i, k := range keys {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendString(dst, k)
		dst = append(dst, ':')
		var err error
		if dst, err = appendRaw(dst, r[k]); err != nil {
			return dst, fmt.Errorf("column %q: %w", k, err)
		}
	}
	return append(dst, '}'), nil
}

// appendHex appends v in upper-case hexadecimal, at least width digits
// (zero-padded), as fmt's %0*X does.
func appendHex(dst []byte, v uint64, width int) []byte {
	const upper = "0123456789ABCDEF"
	var buf [16]byte
	i := len(buf)
	for v > 0 || len(buf)-i < width || i == len(buf) {
		i--
		buf[i] = upper[v&0xF]
		v >>= 4
	}
	return append(dst, buf[i:]...)
}

// appendLSN appends l.String().
func appendLSN(dst []byte, l LSN) []byte {
	dst = appendHex(dst, uint64(l>>32), 1)
	dst = append(dst, '/')
	return appendHex(dst, uint64(uint32(l)), 1)
}

// AppendText implements encoding.TextAppender: it appends p.String().
func (p Position) AppendText(dst []byte) ([]byte, error) {
	return p.appendText(dst), nil
}

func (p Position) appendText(dst []byte) []byte {
	dst = appendHex(dst, uint64(p.CommitLSN), 16)
	dst = append(dst, ':')
	return appendHex(dst, uint64(p.Index), 8)
}

// appendUint appends v in decimal.
func appendUint(dst []byte, v uint64) []byte { return strconv.AppendUint(dst, v, 10) }
