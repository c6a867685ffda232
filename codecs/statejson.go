package codecs

import "bytes"

// StateJSON is the JSON of a State as StateCodec encodes it, split into its
// members without decoding them: the row stays the bytes it was stored as.
// A reader that passes most stored states on unchanged (the history index,
// answering a whole type) reads the position and flags from it and copies
// the rest, where a decode would build a map of every row and an encode
// walk it again. Its slices are parts of the bytes SplitState was given.
type StateJSON struct {
	// Type and ID are the "type" and "id" members, JSON strings with their
	// quotes, as encoding/json writes EntityType and EntityID.String().
	Type, ID []byte
	// Row is the "row" member: a JSON object, or null for no row. As
	// StateCodec writes it, it is what encoding/json writes for the Row:
	// columns in byte order, values compacted and escaped for HTML.
	Row []byte
	// Deleted, Truncated and Watermark are the State's flags.
	Deleted, Truncated, Watermark bool
	// Position is the State's Position.
	Position Position
	// CommitTime and AppliedTime are JSON strings with their quotes, as
	// time.Time's MarshalJSON writes them.
	CommitTime, AppliedTime []byte
	// IDKind is the kind of the State's key ("id_kind").
	IDKind KeyKind
}

// The members around a state's row, as appendState writes them.
const (
	stateTypeMember = `{"type":`
	stateIDMember   = `,"id":`
	stateRowMember  = `,"row":`
)

// kindSuffixes are the "id_kind" members that end a state whose key is
// not an integer.
var kindSuffixes = func() (s [len(kindNames)][]byte) {
	for k, name := range kindNames {
		if KeyKind(k) != KeyInteger {
			s[k] = appendString([]byte(`,"id_kind":`), name)
		}
	}
	return s
}()

// SplitState splits b, the JSON of a State written by StateCodec.Encode,
// into its members. It checks the members around the row and parses the
// position, not the row or the times (their bytes were written by Encode):
// ok is false where the layout is not the one Encode writes (members in
// another order or spaced, a member it leaves out, a string with an
// escape in a name), which StateCodec.Decode then reads, or refuses. The
// strings and the row are not validated: bytes not written by Encode may
// be split, and pass on as they are, JSON that is invalid or not what
// encoding/json would write. Split only what Encode wrote.
func SplitState(b []byte) (s StateJSON, ok bool) {
	if !bytes.HasPrefix(b, []byte(stateTypeMember)) {
		return s, false
	}
	i := len(stateTypeMember)
	if s.Type, i, ok = memberString(b, i); !ok || !bytes.HasPrefix(b[i:], []byte(stateIDMember)) {
		return s, false
	}
	if s.ID, i, ok = memberString(b, i+len(stateIDMember)); !ok || !bytes.HasPrefix(b[i:], []byte(stateRowMember)) {
		return s, false
	}
	// The members after the row, from the end: none of them holds a quote
	// in its value, so each value's opening quote is the last one before
	// its closing quote.
	t, ok := bytes.CutSuffix(b[i+len(stateRowMember):], []byte("}"))
	if !ok {
		return s, false
	}
	s.IDKind = KeyInteger
	for k, suffix := range kindSuffixes {
		if suffix != nil && bytes.HasSuffix(t, suffix) {
			s.IDKind, t = KeyKind(k), t[:len(t)-len(suffix)]
			break
		}
	}
	if s.AppliedTime, t, ok = lastString(t, `,"applied_time":`); !ok {
		return s, false
	}
	if s.CommitTime, t, ok = lastString(t, `,"commit_time":`); !ok {
		return s, false
	}
	var pos []byte
	if pos, t, ok = lastString(t, `,"position":`); !ok {
		return s, false
	}
	if s.Position, ok = parsePositionText(pos[1 : len(pos)-1]); !ok {
		return s, false
	}
	t, s.Watermark = bytes.CutSuffix(t, []byte(`,"watermark":true`))
	t, s.Truncated = bytes.CutSuffix(t, []byte(`,"truncated":true`))
	t, s.Deleted = bytes.CutSuffix(t, []byte(`,"deleted":true`))
	if string(t) != "null" && (len(t) < 2 || t[0] != '{' || t[len(t)-1] != '}') {
		return s, false
	}
	s.Row = t
	return s, true
}

// memberString reads the JSON string at b[i]: it and where it ends.
func memberString(b []byte, i int) (str []byte, end int, ok bool) {
	if i >= len(b) || b[i] != '"' {
		return nil, 0, false
	}
	if end, _, ok = scanString(b, i); !ok {
		return nil, 0, false
	}
	return b[i:end], end, true
}

// lastString cuts the member name, then a JSON string without quotes or
// escapes in it, from the end of t: the string with its quotes, and what
// is left before the name.
func lastString(t []byte, name string) (str, rest []byte, ok bool) {
	if len(t) < 2 || t[len(t)-1] != '"' {
		return nil, nil, false
	}
	open := bytes.LastIndexByte(t[:len(t)-1], '"')
	if open < 0 || bytes.IndexByte(t[open:], '\\') >= 0 {
		return nil, nil, false
	}
	rest, ok = bytes.CutSuffix(t[:open], []byte(name))
	return t[open:], rest, ok
}

// parsePositionText is ParsePosition without its copies: 16 hex digits,
// ':', 8 hex digits.
func parsePositionText(b []byte) (Position, bool) {
	if len(b) != 25 || b[16] != ':' {
		return Position{}, false
	}
	lsn, ok := parseHex(b[:16])
	if !ok {
		return Position{}, false
	}
	idx, ok := parseHex(b[17:])
	return Position{CommitLSN: LSN(lsn), Index: uint32(idx)}, ok
}

// parseHex parses at most 16 hex digits, of either case.
func parseHex(b []byte) (uint64, bool) {
	var v uint64
	for _, c := range b {
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'a' && c <= 'f':
			c = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			c = c - 'A' + 10
		default:
			return 0, false
		}
		v = v<<4 | uint64(c)
	}
	return v, true
}
