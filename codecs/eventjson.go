package codecs

import (
	"bytes"
	"encoding/json"
	"errors"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"
)

// The hand-written JSON encoder of an Event. EventCodec.Encode is on the
// capture's path for every change; encoding/json spent most of its time
// there reflecting over the struct, sorting the rows' keys through
// reflect.Value and scanning every value byte by byte to compact it (an
// 8 KB text value is 8,000 calls of its scanner). This writes the same
// bytes as encoding/json does for Event.wire() (TestEventEncodeMatchesJSON
// and FuzzEventEncodeMatchesJSON hold it to that): the same field order,
// omitempty, sorted row keys, strings escaped the same way (HTML-safe), raw
// values compacted. A raw value that is not a JSON string, number or literal
// already in compact, HTML-safe form (a jsonb document, say) goes through
// json.Compact and json.HTMLEscape, which is what encoding/json does with it.

// appendEvent appends the JSON form of e, which must be valid.
func appendEvent(b []byte, e *Event) ([]byte, error) {
	var err error
	b = append(b, `{"type":`...)
	b = appendJSONString(b, e.EntityType)
	b = append(b, `,"id":`...)
	b = appendJSONString(b, e.EntityID.String())
	b = append(b, `,"op":`...)
	b = appendJSONString(b, string(e.Op))
	if len(e.After) > 0 {
		b = append(b, `,"after":`...)
		if b, err = appendRow(b, e.After); err != nil {
			return nil, err
		}
	}
	if len(e.Before) > 0 {
		b = append(b, `,"before":`...)
		if b, err = appendRow(b, e.Before); err != nil {
			return nil, err
		}
	}
	if len(e.Unchanged) > 0 {
		b = append(b, `,"unchanged":[`...)
		for i, c := range e.Unchanged {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendJSONString(b, c)
		}
		b = append(b, ']')
	}
	b = append(b, `,"xid":`...)
	b = strconv.AppendUint(b, uint64(e.TxID), 10)
	b = append(b, `,"commit_lsn":"`...)
	b = e.CommitLSN.appendText(b)
	b = append(b, `","position":"`...)
	b = e.Position.appendText(b)
	b = append(b, `","commit_time":`...)
	if b, err = appendJSONTime(b, e.CommitTime); err != nil {
		return nil, err
	}
	b = append(b, `,"capture_time":`...)
	if b, err = appendJSONTime(b, e.CaptureTime); err != nil {
		return nil, err
	}
	if k := e.EntityID.Kind(); k != KeyInteger {
		if int(k) >= len(kindNames) {
			return nil, errors.New("json: unknown key kind " + strconv.Itoa(int(k)))
		}
		b = append(b, `,"id_kind":"`...)
		b = append(b, kindNames[k]...)
		b = append(b, '"')
	}
	return append(b, '}'), nil
}

// appendRow appends a row as encoding/json writes a map: keys sorted.
func appendRow(b []byte, r Row) ([]byte, error) {
	var small [32]string
	keys := small[:0]
	for k := range r {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	b = append(b, '{')
	var err error
	for i, k := range keys {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, k)
		b = append(b, ':')
		if b, err = appendRawJSON(b, r[k]); err != nil {
			return nil, err
		}
	}
	return append(b, '}'), nil
}

// appendRawJSON appends a raw value as encoding/json does: nil as null,
// the rest compacted and HTML-escaped, an error if it is not JSON.
func appendRawJSON(b []byte, v json.RawMessage) ([]byte, error) {
	if v == nil {
		return append(b, "null"...), nil
	}
	if compactSafe(v) {
		return append(b, v...), nil
	}
	if out, ok := appendCompactFast(b, v); ok {
		return out, nil
	}
	var c bytes.Buffer
	if err := json.Compact(&c, v); err != nil {
		return nil, err
	}
	var h bytes.Buffer
	json.HTMLEscape(&h, c.Bytes())
	return append(b, h.Bytes()...), nil
}

// compactSafe reports whether v is a JSON string, number or literal that
// compacting and HTML-escaping leave as it is. It is false for everything
// else, valid or not (objects, arrays, whitespace), which then takes the
// slow path.
func compactSafe(v []byte) bool {
	if len(v) == 0 {
		return false
	}
	switch c := v[0]; {
	case c == '"':
		return safeString(v)
	case c == '-' || (c >= '0' && c <= '9'):
		return isJSONNumber(v)
	}
	s := string(v) // no allocation: compared only
	return s == "true" || s == "false" || s == "null"
}

// appendCompactFast appends v compacted, as json.Compact and
// json.HTMLEscape would write it, when v is a JSON document nested at most
// maxFastDepth deep whose strings need no escape; ok is false for anything
// else, valid or not, which then takes encoding/json's path. PostgreSQL
// writes jsonb with a space after ':' and ',', so every jsonb value needs
// compacting.
func appendCompactFast(b, v []byte) (out []byte, ok bool) {
	start := len(b)
	b, i, ok := compactValue(b, v, skipSpace(v, 0), 0)
	if !ok || skipSpace(v, i) != len(v) {
		return b[:start], false
	}
	return b, true
}

const maxFastDepth = 64

func skipSpace(v []byte, i int) int {
	for i < len(v) && (v[i] == ' ' || v[i] == '\t' || v[i] == '\n' || v[i] == '\r') {
		i++
	}
	return i
}

// compactValue appends the value at v[i:] compacted and returns the index
// after it.
func compactValue(b, v []byte, i, depth int) ([]byte, int, bool) {
	if i >= len(v) || depth > maxFastDepth {
		return b, i, false
	}
	switch c := v[i]; {
	case c == '"':
		end, ok := stringEnd(v, i)
		if !ok {
			return b, i, false
		}
		return append(b, v[i:end]...), end, true
	case c == '{' || c == '[':
		closing := byte('}')
		if c == '[' {
			closing = ']'
		}
		b = append(b, c)
		i = skipSpace(v, i+1)
		if i < len(v) && v[i] == closing {
			return append(b, closing), i + 1, true
		}
		for {
			var ok bool
			if c == '{' {
				end, ok := stringEnd(v, i)
				if !ok {
					return b, i, false
				}
				b = append(b, v[i:end]...)
				i = skipSpace(v, end)
				if i >= len(v) || v[i] != ':' {
					return b, i, false
				}
				b = append(b, ':')
				i = skipSpace(v, i+1)
			}
			if b, i, ok = compactValue(b, v, i, depth+1); !ok {
				return b, i, false
			}
			i = skipSpace(v, i)
			if i >= len(v) {
				return b, i, false
			}
			switch v[i] {
			case ',':
				b = append(b, ',')
				i = skipSpace(v, i+1)
			case closing:
				return append(b, closing), i + 1, true
			default:
				return b, i, false
			}
		}
	case c == '-' || (c >= '0' && c <= '9'):
		end := i
		for end < len(v) && (v[end] == '-' || v[end] == '+' || v[end] == '.' || v[end] == 'e' || v[end] == 'E' || (v[end] >= '0' && v[end] <= '9')) {
			end++
		}
		if !isJSONNumber(v[i:end]) {
			return b, i, false
		}
		return append(b, v[i:end]...), end, true
	}
	for _, lit := range []string{"true", "false", "null"} {
		if len(v)-i >= len(lit) && string(v[i:i+len(lit)]) == lit {
			return append(b, lit...), i + len(lit), true
		}
	}
	return b, i, false
}

// stringEnd returns the index after the JSON string at v[i:] if it needs
// no escape (see safeString).
func stringEnd(v []byte, i int) (int, bool) {
	if i >= len(v) || v[i] != '"' {
		return i, false
	}
	for j := i + 1; j < len(v); j++ {
		if v[j] == '"' {
			return j + 1, safeString(v[i : j+1])
		}
		if v[j] == '\\' {
			j++ // an escaped character, maybe '"'; safeString checks it
		}
	}
	return i, false
}

// safeString reports whether v is one JSON string whose bytes compacting
// with HTML escapes keeps: no '<', '>', '&', U+2028 or U+2029 to escape,
// only valid escapes, no control character, nothing after its end.
func safeString(v []byte) bool {
	n := len(v)
	if n < 2 || v[n-1] != '"' {
		return false
	}
	for i := 1; i < n-1; i++ {
		if plainInString[v[i]] {
			continue // most bytes: one look-up
		}
		switch c := v[i]; {
		case c == '"' || c < 0x20 || c == '<' || c == '>' || c == '&':
			return false
		case c == '\\':
			if i+1 >= n-1 {
				return false
			}
			switch v[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i++
			case 'u':
				if i+5 >= n-1 || !isHex(v[i+2]) || !isHex(v[i+3]) || !isHex(v[i+4]) || !isHex(v[i+5]) {
					return false
				}
				i += 5
			default:
				return false
			}
		case c == 0xE2:
			// U+2028 and U+2029 (E2 80 A8, E2 80 A9) are escaped.
			if i+2 < n && v[i+1] == 0x80 && v[i+2]&^1 == 0xA8 {
				return false
			}
		}
	}
	return true
}

// plainInString holds the bytes a JSON string carries as they are with
// HTML escaping: not '"', '\\', a control character, '<', '>', '&', and not
// 0xE2, which starts U+2028 and U+2029.
var plainInString = func() (t [256]bool) {
	for c := 0x20; c < 256; c++ {
		t[c] = c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' && c != 0xE2
	}
	return t
}()

func isHex(c byte) bool {
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')
}

// isJSONNumber reports whether v is exactly one JSON number.
func isJSONNumber(v []byte) bool {
	if len(v) == 0 {
		return false
	}
	i := 0
	if v[i] == '-' {
		i++
	}
	digits := func() int {
		start := i
		for i < len(v) && v[i] >= '0' && v[i] <= '9' {
			i++
		}
		return i - start
	}
	switch {
	case i < len(v) && v[i] == '0':
		i++
	case digits() == 0:
		return false
	}
	if i < len(v) && v[i] == '.' {
		i++
		if digits() == 0 {
			return false
		}
	}
	if i < len(v) && (v[i] == 'e' || v[i] == 'E') {
		i++
		if i < len(v) && (v[i] == '+' || v[i] == '-') {
			i++
		}
		if digits() == 0 {
			return false
		}
	}
	return i == len(v)
}

const lowerHex = "0123456789abcdef"

// appendJSONString appends s as a JSON string the way encoding/json does
// with HTML escaping: '"', '\\', control characters, '<', '>', '&', U+2028
// and U+2029 escaped, invalid UTF-8 as U+FFFD.
func appendJSONString[T string | []byte](b []byte, s T) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if plainInString[c] {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '\\', '"':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', lowerHex[c>>4], lowerHex[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(string(s[i : i+min(len(s)-i, utf8.UTFMax)])) // on the stack
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', lowerHex[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// appendJSONTime appends t as time.Time's MarshalJSON does.
func appendJSONTime(b []byte, t time.Time) ([]byte, error) {
	_, off := t.Zone()
	if y := t.Year(); y < 0 || y > 9999 || off <= -24*60*60 || off >= 24*60*60 {
		// What MarshalJSON refuses, or close to it: let it say.
		j, err := t.MarshalJSON()
		if err != nil {
			return nil, err
		}
		return append(b, j...), nil
	}
	b = append(b, '"')
	b = t.AppendFormat(b, time.RFC3339Nano)
	return append(b, '"'), nil
}

const upperHex = "0123456789ABCDEF"

// appendUpperHex appends v in uppercase hexadecimal, at least width digits.
func appendUpperHex(b []byte, v uint64, width int) []byte {
	var buf [16]byte
	i := len(buf)
	for v != 0 || i > len(buf)-width || i == len(buf) {
		i--
		buf[i] = upperHex[v&0xF]
		v >>= 4
	}
	return append(b, buf[i:]...)
}
