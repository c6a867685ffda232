package codecs

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// KeyKind is the kind of an entity key, fixed per entity type by the types of
// its key columns.
type KeyKind uint8

// The key kinds. The zero kind is KeyInteger, the kind of every key written
// before other kinds existed.
const (
	// KeyInteger is one column of smallint, integer or bigint: the key is
	// its decimal form ("42", "-7"), with no sign for positive values and no
	// leading zeros.
	KeyInteger KeyKind = iota
	// KeyUUID is one uuid column: the key is its lowercase hyphenated form
	// ("0b6f3d6e-1c2a-4f6b-9a51-2f3c4d5e6f70").
	KeyUUID
	// KeyText is one text, varchar or char column: the key is the value
	// itself, UTF-8, byte for byte.
	KeyText
	// KeyComposite is several columns: the key is the JSON array of the
	// parts' own keys as strings, in the columns' order, written as RFC 8785
	// (JSON Canonicalization Scheme) writes it: no spaces; in strings only
	// '"', '\' and control characters escaped, as \b \t \n \f \r or \u00xx
	// (lowercase hex); everything else verbatim (["acme","42"]). It is what
	// JSON.stringify gives for the array, and Python's
	// json.dumps(parts, separators=(",", ":"), ensure_ascii=False).
	KeyComposite
)

// MaxKeyBytes is the longest key, in bytes of its encoding, that an entity
// may have. The capture stops at a longer one, naming the table and the key
// columns, before anything of its transaction is written.
const MaxKeyBytes = 1024

// ReservedKeyPrefix starts the keys of the snapshot tables' truncate markers
// (topology.TruncateKey). A text key that starts with it is refused like a
// key longer than MaxKeyBytes.
const ReservedKeyPrefix = "~truncate/"

var kindNames = [...]string{KeyInteger: "integer", KeyUUID: "uuid", KeyText: "text", KeyComposite: "composite"}

// String returns the kind's name: integer, uuid, text or composite.
func (k KeyKind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return "KeyKind(" + strconv.Itoa(int(k)) + ")"
}

// MarshalText implements encoding.TextMarshaler.
func (k KeyKind) MarshalText() ([]byte, error) {
	if int(k) >= len(kindNames) {
		return nil, fmt.Errorf("key kind %d is unknown", k)
	}
	return []byte(kindNames[k]), nil
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (k *KeyKind) UnmarshalText(b []byte) error {
	for i, name := range kindNames {
		if string(b) == name {
			*k = KeyKind(i)
			return nil
		}
	}
	return fmt.Errorf("key kind %q is not integer, uuid, text or composite", b)
}

// Key is an entity's key: its kind and its canonical text form, which is the
// record key of the entity in its events topic and snapshot table, the "id"
// of its events and states, and, URL-escaped, its path segment over HTTP.
// Keys are comparable: two keys are the same entity's exactly when they are
// ==. The zero Key is the integer 0.
type Key struct {
	kind KeyKind
	text string // "" for the integer 0
}

// IntKey returns the key of an integer id.
func IntKey(id int64) Key {
	if id == 0 {
		return Key{}
	}
	return Key{KeyInteger, strconv.FormatInt(id, 10)}
}

// TextKey returns the key of a text value.
func TextKey(s string) Key { return Key{KeyText, s} }

// UUIDKey returns the key of a uuid, given in any form PostgreSQL accepts
// for one without braces (upper or lower case hex, with or without hyphens);
// the key holds its lowercase hyphenated form.
func UUIDKey(s string) (Key, error) {
	if isCanonicalUUID(s) {
		return Key{KeyUUID, s}, nil // as PostgreSQL prints one
	}
	canonical, ok := canonicalUUID(s)
	if !ok {
		return Key{}, fmt.Errorf("%q is not a uuid", s)
	}
	return Key{KeyUUID, canonical}, nil
}

// CompositeKey returns the key of several columns' values, each given as
// its own key.
func CompositeKey(parts ...Key) Key {
	text := make([]string, len(parts))
	for i, p := range parts {
		text[i] = p.String()
	}
	return Key{KeyComposite, encodeParts(text)}
}

// ParseKey returns the key of kind with canonical text s, or an error that
// says why s is not one: an integer not in its decimal form, a uuid not in
// its lowercase hyphenated form, a composite that is not the canonical JSON
// array of at least two strings, a text that is not UTF-8, or any key longer
// than MaxKeyBytes.
func ParseKey(kind KeyKind, s string) (Key, error) {
	if len(s) > MaxKeyBytes {
		return Key{}, fmt.Errorf("%s key of %d bytes is longer than %d", kind, len(s), MaxKeyBytes)
	}
	switch kind {
	case KeyInteger:
		if !canonicalInt(s) {
			return Key{}, fmt.Errorf("integer key %q is not a 64-bit integer in decimal", s)
		}
		if s == "0" {
			return Key{}, nil
		}
	case KeyUUID:
		if !isCanonicalUUID(s) {
			return Key{}, fmt.Errorf("uuid key %q is not a lowercase hyphenated uuid", s)
		}
	case KeyText:
		if !utf8.ValidString(s) {
			return Key{}, fmt.Errorf("text key %q is not UTF-8", s)
		}
	case KeyComposite:
		n, ok := canonicalParts(s)
		if !ok {
			_, err := decodeParts(s) // says why
			if err == nil {
				err = fmt.Errorf("composite key %q is not in canonical form", s)
			}
			return Key{}, err
		}
		if n < 2 {
			return Key{}, fmt.Errorf("composite key %q has fewer than two parts", s)
		}
	default:
		return Key{}, fmt.Errorf("key kind %d is unknown", kind)
	}
	return Key{kind, s}, nil
}

// Kind returns the key's kind.
func (k Key) Kind() KeyKind { return k.kind }

// String returns the key's canonical text.
func (k Key) String() string {
	if k.text == "" && k.kind == KeyInteger {
		return "0"
	}
	return k.text
}

// Int returns an integer key's id; ok is false for the other kinds.
func (k Key) Int() (id int64, ok bool) {
	if k.kind != KeyInteger {
		return 0, false
	}
	if k.text == "" {
		return 0, true
	}
	n, err := strconv.ParseInt(k.text, 10, 64)
	return n, err == nil
}

// Parts returns the text of each part of a composite key; nil for the other
// kinds.
func (k Key) Parts() []string {
	if k.kind != KeyComposite {
		return nil
	}
	parts, _ := decodeParts(k.text)
	return parts
}

// Validate checks that the key's text is canonical for its kind (see
// ParseKey).
func (k Key) Validate() error {
	_, err := ParseKey(k.kind, k.String())
	return err
}

// MarshalJSON writes the key's canonical text as a JSON string; the kind
// travels beside it (Event and State write it as "id_kind").
func (k Key) MarshalJSON() ([]byte, error) { return json.Marshal(k.String()) }

// canonicalInt reports whether s is a 64-bit integer as strconv.FormatInt
// writes it (no '+', no leading zero, no "-0"), without allocating.
func canonicalInt(s string) bool {
	digits := strings.TrimPrefix(s, "-")
	if digits == "" || (digits[0] == '0' && (len(digits) > 1 || len(s) > 1)) || digits[0] == '+' {
		return false
	}
	_, err := strconv.ParseInt(s, 10, 64)
	return err == nil
}

// canonicalUUID returns s in lowercase hyphenated form if it is a uuid.
func canonicalUUID(s string) (string, bool) {
	hex := make([]byte, 0, 32)
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= '0' && c <= '9', c >= 'a' && c <= 'f':
			hex = append(hex, c)
		case c >= 'A' && c <= 'F':
			hex = append(hex, c+'a'-'A')
		case c == '-':
		default:
			return "", false
		}
	}
	if len(hex) != 32 {
		return "", false
	}
	h := string(hex)
	c := h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
	// PostgreSQL accepts hyphens only after groups of four hex digits; the
	// canonical form and the plain 32 digits are what anyone sends.
	if s != c && !strings.EqualFold(s, c) && len(s) != 32 {
		return "", false
	}
	return c, true
}

// isCanonicalUUID reports whether s is a uuid in lowercase hyphenated
// form, as canonicalUUID returns it, without allocating.
func isCanonicalUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
				return false
			}
		}
	}
	return true
}

// canonicalParts reports whether s is a JSON array of strings exactly as
// encodeParts writes it, and how many strings it holds, without decoding
// it: what decodeParts accepts, at a fraction of its cost (an event's key
// is checked at every encode and decode).
func canonicalParts(s string) (n int, ok bool) {
	if !utf8.ValidString(s) || len(s) < 2 || s[0] != '[' || s[len(s)-1] != ']' {
		return 0, false
	}
	if len(s) == 2 {
		return 0, true
	}
	i := 1
	for {
		if i >= len(s)-1 || s[i] != '"' {
			return 0, false
		}
		i++
		for ; i < len(s) && s[i] != '"'; i++ {
			c := s[i]
			if c < 0x20 {
				return 0, false
			}
			if c != '\\' {
				continue
			}
			if i+1 >= len(s) {
				return 0, false
			}
			i++
			switch s[i] {
			case '"', '\\', 'b', 't', 'n', 'f', 'r':
			case 'u':
				// Only control characters without a short escape, in
				// lower-case hex.
				if i+4 >= len(s) || s[i+1] != '0' || s[i+2] != '0' || (s[i+3] != '0' && s[i+3] != '1') {
					return 0, false
				}
				h := s[i+4]
				var v byte
				switch {
				case h >= '0' && h <= '9':
					v = h - '0'
				case h >= 'a' && h <= 'f':
					v = h - 'a' + 10
				default:
					return 0, false
				}
				v += (s[i+3] - '0') << 4
				if v == '\b' || v == '\t' || v == '\n' || v == '\f' || v == '\r' {
					return 0, false
				}
				i += 4
			default:
				return 0, false
			}
		}
		if i >= len(s) {
			return 0, false
		}
		i++ // the closing quote
		n++
		switch {
		case i == len(s)-1:
			return n, true
		case s[i] == ',':
			i++
		default:
			return 0, false
		}
	}
}

// encodeParts writes parts as RFC 8785 writes an array of strings.
func encodeParts(parts []string) string {
	var b strings.Builder
	b.WriteByte('[')
	for i, p := range parts {
		if i > 0 {
			b.WriteByte(',')
		}
		writeJSONString(&b, p)
	}
	b.WriteByte(']')
	return b.String()
}

// writeJSONString writes s as a JSON string the way RFC 8785 does.
func writeJSONString(b *strings.Builder, s string) {
	const hexDigits = "0123456789abcdef"
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch c {
		case '"':
			b.WriteString(`\"`)
		case '\\':
			b.WriteString(`\\`)
		case '\b':
			b.WriteString(`\b`)
		case '\t':
			b.WriteString(`\t`)
		case '\n':
			b.WriteString(`\n`)
		case '\f':
			b.WriteString(`\f`)
		case '\r':
			b.WriteString(`\r`)
		default:
			if c < 0x20 {
				b.WriteString(`\u00`)
				b.WriteByte(hexDigits[c>>4])
				b.WriteByte(hexDigits[c&0xf])
			} else {
				b.WriteByte(c)
			}
		}
	}
	b.WriteByte('"')
}

// decodeParts reads a composite key's text, which must be canonical.
func decodeParts(s string) ([]string, error) {
	var parts []string
	if err := json.Unmarshal([]byte(s), &parts); err != nil || parts == nil {
		return nil, fmt.Errorf("composite key %q is not a JSON array of strings", s)
	}
	for _, p := range parts {
		if !utf8.ValidString(p) {
			return nil, fmt.Errorf("composite key %q has a part that is not UTF-8", s)
		}
	}
	if encodeParts(parts) != s {
		return nil, fmt.Errorf("composite key %q is not in canonical form (%s)", s, encodeParts(parts))
	}
	return parts, nil
}

// errNoKey is returned for an event or state without "id".
var errNoKey = errors.New("id is missing")

// Compare orders keys as views range over them: integer keys by their value,
// keys of the other kinds by the bytes of their text (for uuids and text, their
// natural order; for composite keys, the order of their JSON text); keys of
// different kinds by kind. It returns -1, 0 or +1.
func (k Key) Compare(o Key) int {
	if k.kind != o.kind {
		return cmp.Compare(k.kind, o.kind)
	}
	if k.kind == KeyInteger {
		a, _ := k.Int()
		b, _ := o.Int()
		return cmp.Compare(a, b)
	}
	return strings.Compare(k.text, o.text)
}
