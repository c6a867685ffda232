package codecs

// States written, and events and states read, by hand (events are written
// by appendEvent, event.go, with the helpers of jsonenc.go).
//
// encoding/json was most of the processors' work: each change is decoded
// once as an event, and its entity's state decoded and encoded once, all by
// reflection, with a validating scan of every record before decoding it and
// an allocation per column. The functions here do the same work directly:
//
//   - appendState writes what encoding/json writes, byte for byte (members
//     in the same order, a Row's columns sorted, strings and raw values
//     escaped for HTML the same way).
//   - decodeEvent and decodeState read the forms the platform writes:
//     known member names, values of the expected JSON type, strings
//     unquoted as encoding/json unquotes them. Anything else (an unknown
//     member name, a member twice, a null where a value is expected, a
//     number encoding/json would refuse, invalid JSON) makes them give up, and
//     EventCodec and StateCodec use encoding/json instead: every error and
//     every corner of encoding/json's behaviour stays as it was.
//
// FuzzFastEvent and FuzzFastState check that both paths agree.

import (
	"bytes"
	"encoding/json"
	"errors"
	"strconv"
	"time"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"
)

// errSlowPath: the value needs encoding/json (see above).
var errSlowPath = errors.New("codecs: encoding/json needed")

// appendState appends s's JSON form, as json.Marshal(s.wire()) writes it.
// s must be valid.
func appendState(dst []byte, s *State) ([]byte, error) {
	return appendStateWithRow(dst, s, nil)
}

// appendStateWithRow is appendState, which writes row, if not nil, as
// s's row.
func appendStateWithRow(dst []byte, s *State, row []byte) ([]byte, error) {
	dst = append(dst, `{"type":`...)
	dst = appendString(dst, s.EntityType)
	dst = append(dst, `,"id":`...)
	dst = appendString(dst, s.EntityID.String())
	dst = append(dst, `,"row":`...)
	var err error
	if row != nil {
		dst = append(dst, row...)
	} else if s.Row == nil {
		dst = append(dst, "null"...)
	} else if dst, err = appendRow(dst, s.Row); err != nil {
		return nil, err
	}
	if s.Deleted {
		dst = append(dst, `,"deleted":true`...)
	}
	if s.Truncated {
		dst = append(dst, `,"truncated":true`...)
	}
	if s.Watermark {
		dst = append(dst, `,"watermark":true`...)
	}
	dst = append(dst, `,"position":"`...)
	dst = s.Position.appendText(dst)
	dst = append(dst, `","commit_time":`...)
	if dst, err = appendTime(dst, s.CommitTime); err != nil {
		return nil, err
	}
	dst = append(dst, `,"applied_time":`...)
	if dst, err = appendTime(dst, s.AppliedTime); err != nil {
		return nil, err
	}
	return appendKindAndClose(dst, s.EntityID.Kind())
}

// appendKindAndClose appends "id_kind" unless it is the integer kind
// (omitempty), and the closing brace.
func appendKindAndClose(dst []byte, k KeyKind) ([]byte, error) {
	if k != KeyInteger {
		if int(k) >= len(kindNames) {
			return nil, errSlowPath // encoding/json says why
		}
		dst = append(dst, `,"id_kind":`...)
		dst = appendString(dst, kindNames[k])
	}
	return append(dst, '}'), nil
}

// appendTime appends t as time.Time's MarshalJSON does.
func appendTime(dst []byte, t time.Time) ([]byte, error) {
	dst = append(dst, '"')
	dst, err := t.AppendText(dst)
	if err != nil {
		return nil, errSlowPath
	}
	return append(dst, '"'), nil
}

// isSpace reports JSON's insignificant whitespace.
func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

// scanValue validates the JSON value that starts at b[i] (no leading
// space) and returns where it ends. clean reports that encoding/json's
// compact-and-escape would leave it as it is: no space between its tokens,
// no '<', '>', '&', U+2028 or U+2029 in its strings.
func scanValue(b []byte, i int) (end int, clean, ok bool) {
	var stackBuf [16]byte
	stack := stackBuf[:0] // the open objects ('{') and arrays ('[')
	clean = true
	space := func() {
		j := i
		for j < len(b) && isSpace(b[j]) {
			j++
		}
		if j != i {
			clean = false
			i = j
		}
	}
	var sc bool
value:
	if i >= len(b) {
		return 0, false, false
	}
	switch c := b[i]; {
	case c == '{':
		i++
		space()
		if i < len(b) && b[i] == '}' {
			i++
			goto closed
		}
		stack = append(stack, '{')
		goto member
	case c == '[':
		i++
		space()
		if i < len(b) && b[i] == ']' {
			i++
			goto closed
		}
		stack = append(stack, '[')
		goto value
	case c == '"':
		if i, sc, ok = scanString(b, i); !ok {
			return 0, false, false
		}
		clean = clean && sc
	case c == '-' || (c >= '0' && c <= '9'):
		if i, ok = scanNumber(b, i); !ok {
			return 0, false, false
		}
	case c == 't':
		if i, ok = literal(b, i, "true"); !ok {
			return 0, false, false
		}
	case c == 'f':
		if i, ok = literal(b, i, "false"); !ok {
			return 0, false, false
		}
	case c == 'n':
		if i, ok = literal(b, i, "null"); !ok {
			return 0, false, false
		}
	default:
		return 0, false, false
	}
closed: // a value ended at i
	if len(stack) == 0 {
		return i, clean, true
	}
	space()
	if i >= len(b) {
		return 0, false, false
	}
	switch top := stack[len(stack)-1]; b[i] {
	case ',':
		i++
		space()
		if top == '{' {
			goto member
		}
		goto value
	case '}', ']':
		if (b[i] == '}') != (top == '{') {
			return 0, false, false
		}
		stack = stack[:len(stack)-1]
		i++
		goto closed
	default:
		return 0, false, false
	}
member: // a member's name is at i
	if i >= len(b) || b[i] != '"' {
		return 0, false, false
	}
	if i, sc, ok = scanString(b, i); !ok {
		return 0, false, false
	}
	clean = clean && sc
	space()
	if i >= len(b) || b[i] != ':' {
		return 0, false, false
	}
	i++
	space()
	goto value
}

// scanString validates the string that starts at b[i] ('"') and returns
// where it ends; clean as in scanValue.
func scanString(b []byte, i int) (end int, clean, ok bool) {
	clean = true
	for i++; i < len(b); i++ {
		switch c := b[i]; {
		case c == '"':
			return i + 1, clean, true
		case c < 0x20:
			return 0, false, false
		case c == '\\':
			i++
			if i >= len(b) {
				return 0, false, false
			}
			switch b[i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				if i+4 >= len(b) {
					return 0, false, false
				}
				for _, h := range b[i+1 : i+5] {
					if !isHex(h) {
						return 0, false, false
					}
				}
				i += 4
			default:
				return 0, false, false
			}
		case c == '<' || c == '>' || c == '&':
			clean = false
		case c == 0xE2 && i+2 < len(b) && b[i+1] == 0x80 && (b[i+2] == 0xA8 || b[i+2] == 0xA9):
			clean = false
		}
	}
	return 0, false, false
}

func isHex(c byte) bool { return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F' }

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// scanNumber validates the number that starts at b[i] and returns where it
// ends.
func scanNumber(b []byte, i int) (end int, ok bool) {
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && b[i] >= '1' && b[i] <= '9':
		for i++; i < len(b) && isDigit(b[i]); i++ {
		}
	default:
		return 0, false
	}
	if i < len(b) && b[i] == '.' {
		i++
		if i >= len(b) || !isDigit(b[i]) {
			return 0, false
		}
		for ; i < len(b) && isDigit(b[i]); i++ {
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if i >= len(b) || !isDigit(b[i]) {
			return 0, false
		}
		for ; i < len(b) && isDigit(b[i]); i++ {
		}
	}
	return i, true
}

// isJSONNumber reports whether v is exactly one JSON number.
func isJSONNumber(v []byte) bool {
	end, ok := scanNumber(v, 0)
	return ok && end == len(v)
}

// literal checks that lit (true, false or null) is at b[i].
func literal(b []byte, i int, lit string) (end int, ok bool) {
	if len(b)-i < len(lit) || string(b[i:i+len(lit)]) != lit {
		return 0, false
	}
	return i + len(lit), true
}

// reader reads a JSON document the way the decoders above need: plain
// strings and raw values, giving up (false) at anything else.
type reader struct {
	b []byte
	i int
}

func (r *reader) space() {
	for r.i < len(r.b) && isSpace(r.b[r.i]) {
		r.i++
	}
}

// next reports whether c is the next token, and consumes it if so.
func (r *reader) next(c byte) bool {
	r.space()
	if r.i < len(r.b) && r.b[r.i] == c {
		r.i++
		return true
	}
	return false
}

// null consumes a null if it is next.
func (r *reader) null() bool {
	r.space()
	if end, ok := literal(r.b, r.i, "null"); ok {
		r.i = end
		return true
	}
	return false
}

// quoted reads a string with no escape, no control character and valid
// UTF-8, the form in which encoding/json's unquoting changes nothing, and
// returns it with its quotes (for time.Time's UnmarshalJSON).
func (r *reader) quoted() ([]byte, bool) {
	r.space()
	if r.i >= len(r.b) || r.b[r.i] != '"' {
		return nil, false
	}
	for j := r.i + 1; j < len(r.b); j++ {
		switch c := r.b[j]; {
		case c == '"':
			s := r.b[r.i : j+1]
			if !utf8.Valid(s) {
				return nil, false
			}
			r.i = j + 1
			return s, true
		case c == '\\' || c < 0x20:
			return nil, false
		}
	}
	return nil, false
}

// plain reads a string and returns its value, unquoted as encoding/json
// does.
func (r *reader) plain() ([]byte, bool) {
	r.space()
	if r.i >= len(r.b) || r.b[r.i] != '"' {
		return nil, false
	}
	end, _, ok := scanString(r.b, r.i)
	if !ok {
		return nil, false
	}
	s, ok := unquote(r.b[r.i+1 : end-1])
	if !ok {
		return nil, false
	}
	r.i = end
	return s, true
}

// unquote is the value of a JSON string's contents s, which scanString
// found valid: s itself when it holds no escape and only valid UTF-8, else
// what encoding/json's unquoteBytes makes of it (this is a copy of it).
func unquote(s []byte) ([]byte, bool) {
	r := 0
	for r < len(s) {
		c := s[r]
		if c == '\\' || c == '"' || c < ' ' {
			break
		}
		if c < utf8.RuneSelf {
			r++
			continue
		}
		rr, size := utf8.DecodeRune(s[r:])
		if rr == utf8.RuneError && size == 1 {
			break
		}
		r += size
	}
	if r == len(s) {
		return s, true
	}
	b := make([]byte, len(s)+2*utf8.UTFMax)
	w := copy(b, s[0:r])
	for r < len(s) {
		if w >= len(b)-2*utf8.UTFMax {
			nb := make([]byte, (len(b)+utf8.UTFMax)*2)
			copy(nb, b[0:w])
			b = nb
		}
		switch c := s[r]; {
		case c == '\\':
			r++
			if r >= len(s) {
				return nil, false
			}
			switch s[r] {
			default:
				return nil, false
			case '"', '\\', '/', '\'':
				b[w] = s[r]
				r++
				w++
			case 'b':
				b[w] = '\b'
				r++
				w++
			case 'f':
				b[w] = '\f'
				r++
				w++
			case 'n':
				b[w] = '\n'
				r++
				w++
			case 'r':
				b[w] = '\r'
				r++
				w++
			case 't':
				b[w] = '\t'
				r++
				w++
			case 'u':
				r--
				rr := getu4(s[r:])
				if rr < 0 {
					return nil, false
				}
				r += 6
				if utf16.IsSurrogate(rr) {
					rr1 := getu4(s[r:])
					if dec := utf16.DecodeRune(rr, rr1); dec != unicode.ReplacementChar {
						r += 6
						w += utf8.EncodeRune(b[w:], dec)
						break
					}
					rr = unicode.ReplacementChar
				}
				w += utf8.EncodeRune(b[w:], rr)
			}
		case c == '"', c < ' ':
			return nil, false
		case c < utf8.RuneSelf:
			b[w] = c
			r++
			w++
		default:
			rr, size := utf8.DecodeRune(s[r:])
			r += size
			w += utf8.EncodeRune(b[w:], rr)
		}
	}
	return b[0:w], true
}

// getu4 decodes \uXXXX at the start of s, or returns -1.
func getu4(s []byte) rune {
	if len(s) < 6 || s[0] != '\\' || s[1] != 'u' {
		return -1
	}
	var r rune
	for _, c := range s[2:6] {
		switch {
		case '0' <= c && c <= '9':
			c = c - '0'
		case 'a' <= c && c <= 'f':
			c = c - 'a' + 10
		case 'A' <= c && c <= 'F':
			c = c - 'A' + 10
		default:
			return -1
		}
		r = r*16 + rune(c)
	}
	return r
}

// open reads the '{' of an object; empty reports that its '}' follows.
func (r *reader) open() (empty, ok bool) {
	if !r.next('{') {
		return false, false
	}
	return r.next('}'), true
}

// name reads a member's plain name and its ':'.
func (r *reader) name() ([]byte, bool) {
	n, ok := r.plain()
	if !ok || !r.next(':') {
		return nil, false
	}
	r.space()
	return n, true
}

// more reads what follows a member: ',' (more) or '}' (no more).
func (r *reader) more() (more, ok bool) {
	switch {
	case r.next(','):
		return true, true
	case r.next('}'):
		return false, true
	}
	return false, false
}

// end reports whether only space is left.
func (r *reader) end() bool {
	r.space()
	return r.i == len(r.b)
}

// row reads an object of raw values, or null (a nil Row). The values are
// slices of r.b, which the caller owns.
func (r *reader) row() (Row, bool) {
	if r.null() {
		return nil, true
	}
	empty, ok := r.open()
	if !ok {
		return nil, false
	}
	row := make(Row, 16)
	if empty {
		return row, true
	}
	for {
		name, ok := r.name()
		if !ok {
			return nil, false
		}
		end, _, ok := scanValue(r.b, r.i)
		if !ok {
			return nil, false
		}
		row[string(name)] = json.RawMessage(r.b[r.i:end:end])
		r.i = end
		if more, ok := r.more(); !ok {
			return nil, false
		} else if !more {
			return row, true
		}
	}
}

// strings reads an array of plain strings, or null.
func (r *reader) strings() ([]string, bool) {
	if r.null() {
		return nil, true
	}
	if !r.next('[') {
		return nil, false
	}
	out := []string{}
	if r.next(']') {
		return out, true
	}
	for {
		s, ok := r.plain()
		if !ok {
			return nil, false
		}
		out = append(out, string(s))
		switch {
		case r.next(','):
		case r.next(']'):
			return out, true
		default:
			return nil, false
		}
	}
}

// uint32 reads a number that is a uint32 written without fraction or
// exponent.
func (r *reader) uint32() (uint32, bool) {
	r.space()
	start := r.i
	end, ok := scanNumber(r.b, r.i)
	if !ok || r.b[start] == '-' {
		return 0, false
	}
	v, err := strconv.ParseUint(string(r.b[start:end]), 10, 32)
	if err != nil {
		return 0, false
	}
	r.i = end
	return uint32(v), true
}

// bool reads true or false.
func (r *reader) bool() (v, ok bool) {
	r.space()
	if end, ok := literal(r.b, r.i, "true"); ok {
		r.i = end
		return true, true
	}
	if end, ok := literal(r.b, r.i, "false"); ok {
		r.i = end
		return false, true
	}
	return false, false
}

// time reads a time as time.Time's UnmarshalJSON does.
func (r *reader) time() (time.Time, bool) {
	q, ok := r.quoted()
	if !ok {
		return time.Time{}, false
	}
	var t time.Time
	if t.UnmarshalJSON(q) != nil {
		return time.Time{}, false
	}
	return t, true
}

// position reads a Position's text.
func (r *reader) position() (Position, bool) {
	s, ok := r.plain()
	if !ok {
		return Position{}, false
	}
	p, err := ParsePosition(string(s))
	return p, err == nil
}

// key reads "id"'s text, the key's kind comes later.
func (r *reader) keyKind() (KeyKind, bool) {
	s, ok := r.plain()
	if !ok {
		return 0, false
	}
	var k KeyKind
	return k, k.UnmarshalText(s) == nil
}

// member bits: a member seen twice is left to encoding/json.
const (
	mType = 1 << iota
	mID
	mOp
	mAfter
	mBefore
	mUnchanged
	mXID
	mCommitLSN
	mPosition
	mCommitTime
	mCaptureTime
	mIDKind
	mRow
	mDeleted
	mTruncated
	mAppliedTime
	mWatermark
)

// object reads an object member by member: member reads the value of the
// member it is given the name of, and returns the member's bit, 0 for a
// name it does not know. false if anything is not as expected: an unknown
// member, a member twice, a value member could not read, trailing data.
func (r *reader) object(member func(name []byte) (bit int, ok bool)) bool {
	if empty, ok := r.open(); !ok || empty {
		return false
	}
	for seen := 0; ; {
		name, ok := r.name()
		if !ok {
			return false
		}
		bit, ok := member(name)
		if !ok || bit == 0 || seen&bit != 0 {
			return false
		}
		seen |= bit
		more, ok := r.more()
		if !ok {
			return false
		}
		if !more {
			return r.end()
		}
	}
}

// key is the Key of "id" and "id_kind"; false if there was no "id" or it is
// no key of that kind.
func key(id []byte, kind KeyKind) (Key, bool) {
	if id == nil {
		return Key{}, false
	}
	k, err := ParseKey(kind, string(id))
	return k, err == nil
}

// text reads a string member into *dst.
func (r *reader) text(dst *string) bool {
	s, ok := r.plain()
	*dst = string(s)
	return ok
}

// decodeEvent decodes b, a valid event in the platform's form; false if it
// is anything else (encoding/json then decides).
func decodeEvent(b []byte) (*Event, bool) {
	e, _, ok := decodeEventRows(b, true)
	return e, ok
}

// decodeEventRows is decodeEvent, which decodes the rows if rows is true.
// If it is false, it reads the rows as decodeEvent does, accepting what it
// accepts, without building them: After and Before are left nil, and it
// returns a copy of the JSON of "after", as b holds it (nil for null or
// absent).
func decodeEventRows(b []byte, rows bool) (*Event, []byte, bool) {
	r := reader{b: b}
	if rows {
		r.b = bytes.Clone(b) // the row's values are slices of it
	}
	var e Event
	var id []byte
	var kind KeyKind
	var after, before []byte
	var afterEmpty, beforeEmpty bool
	ok := r.object(func(name []byte) (bit int, ok bool) {
		switch string(name) {
		case "type":
			return mType, r.text(&e.EntityType)
		case "id":
			id, ok = r.plain()
			return mID, ok
		case "op":
			var op string
			ok = r.text(&op)
			e.Op = Op(op)
			return mOp, ok
		case "after":
			if !rows {
				after, afterEmpty, ok = r.skipRow()
				return mAfter, ok
			}
			e.After, ok = r.row()
			return mAfter, ok
		case "before":
			if !rows {
				before, beforeEmpty, ok = r.skipRow()
				return mBefore, ok
			}
			e.Before, ok = r.row()
			return mBefore, ok
		case "unchanged":
			e.Unchanged, ok = r.strings()
			return mUnchanged, ok
		case "xid":
			e.TxID, ok = r.uint32()
			return mXID, ok
		case "commit_lsn":
			var s string
			if ok = r.text(&s); ok {
				var err error
				e.CommitLSN, err = ParseLSN(s)
				ok = err == nil
			}
			return mCommitLSN, ok
		case "position":
			e.Position, ok = r.position()
			return mPosition, ok
		case "commit_time":
			e.CommitTime, ok = r.time()
			return mCommitTime, ok
		case "capture_time":
			e.CaptureTime, ok = r.time()
			return mCaptureTime, ok
		case "id_kind":
			kind, ok = r.keyKind()
			return mIDKind, ok
		}
		return 0, false
	})
	if !ok {
		return nil, nil, false
	}
	if e.EntityID, ok = key(id, kind); !ok {
		return nil, nil, false
	}
	if !rows {
		// Validate sees the rows as present, or as the empty Rows they
		// are.
		e.After, e.Before = skippedRow(after, afterEmpty), skippedRow(before, beforeEmpty)
	}
	if e.Validate() != nil {
		return nil, nil, false
	}
	if !rows {
		e.After, e.Before = nil, nil
		after = bytes.Clone(after)
	}
	return &e, after, true
}

// skippedRow is a Row that Validate sees as it would see the row whose
// JSON skipRow read: nil for null, empty, or holding something.
func skippedRow(raw []byte, empty bool) Row {
	switch {
	case raw == nil:
		return nil
	case empty:
		return Row{}
	}
	return placeholderRow
}

// skipRow reads what row reads, and accepts what it accepts, without
// building the Row: it returns the object's JSON (nil for null) and
// whether the object is empty.
func (r *reader) skipRow() (raw []byte, empty, ok bool) {
	if r.null() {
		return nil, false, true
	}
	r.space()
	start := r.i
	if empty, ok = r.open(); !ok {
		return nil, false, false
	}
	if empty {
		return r.b[start:r.i], true, true
	}
	for {
		if _, ok := r.name(); !ok {
			return nil, false, false
		}
		end, _, ok := scanValue(r.b, r.i)
		if !ok {
			return nil, false, false
		}
		r.i = end
		if more, ok := r.more(); !ok {
			return nil, false, false
		} else if !more {
			return r.b[start:r.i], false, true
		}
	}
}

// canonicalRow reports whether b is a JSON object in the form
// encoding/json writes a Row in: members in the byte order of their names,
// each name once, with no escape and in valid UTF-8, and no space or
// character encoding/json escapes for HTML in names or values.
func canonicalRow(b []byte) bool {
	if len(b) < 2 || b[0] != '{' {
		return false
	}
	if b[1] == '}' {
		return len(b) == 2
	}
	var prev []byte
	for i := 1; ; {
		if i >= len(b) || b[i] != '"' {
			return false
		}
		end, clean, ok := scanString(b, i)
		if !ok || !clean {
			return false
		}
		name := b[i+1 : end-1]
		if bytes.IndexByte(name, '\\') >= 0 || !utf8.Valid(name) || (prev != nil && bytes.Compare(prev, name) >= 0) {
			return false
		}
		prev = name
		if end >= len(b) || b[end] != ':' {
			return false
		}
		end, clean, ok = scanValue(b, end+1)
		if !ok || !clean || end >= len(b) {
			return false
		}
		switch b[end] {
		case ',':
			i = end + 1
		case '}':
			return end+1 == len(b)
		default:
			return false
		}
	}
}

// decodeState is decodeEvent for a State.
func decodeState(b []byte) (*State, bool) {
	r := reader{b: bytes.Clone(b)}
	var s State
	var id []byte
	var kind KeyKind
	ok := r.object(func(name []byte) (bit int, ok bool) {
		switch string(name) {
		case "type":
			return mType, r.text(&s.EntityType)
		case "id":
			id, ok = r.plain()
			return mID, ok
		case "row":
			s.Row, ok = r.row()
			return mRow, ok
		case "deleted":
			s.Deleted, ok = r.bool()
			return mDeleted, ok
		case "truncated":
			s.Truncated, ok = r.bool()
			return mTruncated, ok
		case "watermark":
			s.Watermark, ok = r.bool()
			return mWatermark, ok
		case "position":
			s.Position, ok = r.position()
			return mPosition, ok
		case "commit_time":
			s.CommitTime, ok = r.time()
			return mCommitTime, ok
		case "applied_time":
			s.AppliedTime, ok = r.time()
			return mAppliedTime, ok
		case "id_kind":
			kind, ok = r.keyKind()
			return mIDKind, ok
		}
		return 0, false
	})
	if !ok {
		return nil, false
	}
	if s.EntityID, ok = key(id, kind); !ok || s.Validate() != nil {
		return nil, false
	}
	return &s, true
}

// rowSize is about the length of r's JSON form.
func rowSize(r Row) int {
	n := 2
	for k, v := range r {
		n += len(k) + len(v) + 4
	}
	return n
}
