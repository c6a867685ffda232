package codecs

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// PostgreSQL type OIDs with a JSON form other than a string.
const (
	oidBool   = 16
	oidInt8   = 20
	oidInt2   = 21
	oidInt4   = 23
	oidOID    = 26
	oidJSON   = 114
	oidFloat4 = 700
	oidFloat8 = 701
	oidJSONB  = 3802
)

// ColumnValue maps PostgreSQL's text form of a value of the type with OID
// typeOID to its JSON form in a Row, without loss (see the package doc). It
// fails on text that is not a valid value of a type it maps to a JSON number,
// boolean or document. The result never shares memory with text.
func ColumnValue(typeOID uint32, text []byte) (json.RawMessage, error) {
	switch typeOID {
	case oidInt2, oidInt4, oidInt8, oidOID:
		if _, err := strconv.ParseInt(string(text), 10, 64); err != nil {
			return nil, fmt.Errorf("integer %q: %w", text, err)
		}
		// strconv also accepts "+1" and "01", which are not JSON numbers.
		if !isJSONNumber(text) {
			return nil, fmt.Errorf("integer %q is not a JSON number", text)
		}
		return json.RawMessage(bytes.Clone(text)), nil
	case oidFloat4, oidFloat8:
		switch s := string(text); s {
		case "NaN", "Infinity", "-Infinity":
			return json.Marshal(s)
		}
		// PostgreSQL 12+ prints the shortest text that reads back exactly.
		if _, err := strconv.ParseFloat(string(text), 64); err != nil {
			return nil, fmt.Errorf("float %q: %w", text, err)
		}
		// strconv also accepts "inf", ".5", "+1" and "0x1p-2", which are not
		// JSON numbers.
		if !isJSONNumber(text) {
			return nil, fmt.Errorf("float %q is not a JSON number", text)
		}
		return json.RawMessage(bytes.Clone(text)), nil
	case oidBool:
		switch string(text) {
		case "t":
			return json.RawMessage("true"), nil
		case "f":
			return json.RawMessage("false"), nil
		}
		return nil, fmt.Errorf("boolean %q", text)
	case oidJSON, oidJSONB:
		if !json.Valid(text) {
			return nil, fmt.Errorf("invalid json value")
		}
		return json.RawMessage(bytes.Clone(text)), nil
	}
	// What json.Marshal(string(text)) writes, without its reflection and
	// copies: the capture maps every text column of every change here.
	return appendString(make([]byte, 0, len(text)+2), text), nil
}

// TextRow builds a Row from a row in PostgreSQL's text format: column names,
// their type OIDs and their values, nil for NULL. It is the mapping of
// ColumnValue applied to every column.
func TextRow(names []string, typeOIDs []uint32, values [][]byte) (Row, error) {
	if len(names) != len(values) || len(typeOIDs) != len(values) {
		return nil, fmt.Errorf("row: %d names, %d types, %d values", len(names), len(typeOIDs), len(values))
	}
	row := make(Row, len(values))
	for i, v := range values {
		if v == nil {
			row[names[i]] = json.RawMessage("null")
			continue
		}
		j, err := ColumnValue(typeOIDs[i], v)
		if err != nil {
			return nil, fmt.Errorf("column %s: %w", names[i], err)
		}
		row[names[i]] = j
	}
	return row, nil
}

// PostgreSQL type OIDs a key column may have besides the integers.
const (
	oidText    = 25
	oidBPChar  = 1042
	oidVarchar = 1043
	oidUUID    = 2950
)

// KeyColumnKind returns the kind of the key of one column of the type with
// OID typeOID (a domain's base type): KeyInteger for smallint, integer and
// bigint, KeyUUID for uuid, KeyText for text, varchar and char(n); ok is
// false for every other type, which cannot hold a key.
func KeyColumnKind(typeOID uint32) (kind KeyKind, ok bool) {
	switch typeOID {
	case oidInt2, oidInt4, oidInt8:
		return KeyInteger, true
	case oidUUID:
		return KeyUUID, true
	case oidText, oidVarchar, oidBPChar:
		return KeyText, true
	}
	return 0, false
}

// KeyTypes names the column types KeyColumnKind accepts, for messages.
const KeyTypes = "smallint, integer, bigint, uuid, text, varchar or char(n)"

// ColumnKey builds an entity's key from its key columns in PostgreSQL's text
// format: their names (for errors), type OIDs and values, in the order of
// the key's parts. One column gives a key of its KeyColumnKind: an integer
// in decimal, a uuid in lowercase hyphenated form, a text as it is (a
// char(n) with its padding, as PostgreSQL prints it); several give a
// KeyComposite of the parts' own keys. It is the one place keys come from,
// so the stream, the snapshot and checks against the database agree. It
// fails on a NULL value, a type that cannot hold a key, text that is not a
// value of its type or not UTF-8, a key longer than MaxKeyBytes and a text
// key that starts with ReservedKeyPrefix; the error names the column.
func ColumnKey(names []string, typeOIDs []uint32, values [][]byte) (Key, error) {
	if len(values) == 0 || len(names) != len(values) || len(typeOIDs) != len(values) {
		return Key{}, fmt.Errorf("key: %d names, %d types, %d values", len(names), len(typeOIDs), len(values))
	}
	parts := make([]Key, len(values))
	for i, v := range values {
		p, err := columnKeyPart(typeOIDs[i], v)
		if err != nil {
			return Key{}, fmt.Errorf("key column %s: %w", names[i], err)
		}
		parts[i] = p
	}
	k := parts[0]
	if len(parts) > 1 {
		k = CompositeKey(parts...)
	}
	if n := len(k.String()); n > MaxKeyBytes {
		return Key{}, fmt.Errorf("key column(s) %s: the key is %d bytes, longer than the %d an entity key may have", strings.Join(names, ", "), n, MaxKeyBytes)
	}
	if k.Kind() == KeyText && strings.HasPrefix(k.String(), ReservedKeyPrefix) {
		return Key{}, fmt.Errorf("key column %s: the key %q starts with %q, which is reserved for the snapshot tables' truncate markers", names[0], k.String(), ReservedKeyPrefix)
	}
	return k, nil
}

func columnKeyPart(typeOID uint32, v []byte) (Key, error) {
	if v == nil {
		return Key{}, errors.New("is NULL")
	}
	kind, ok := KeyColumnKind(typeOID)
	if !ok {
		return Key{}, fmt.Errorf("type %d cannot hold a key (%s)", typeOID, KeyTypes)
	}
	switch kind {
	case KeyInteger:
		n, err := strconv.ParseInt(string(v), 10, 64)
		if err != nil {
			return Key{}, fmt.Errorf("integer %q: %w", v, err)
		}
		return IntKey(n), nil
	case KeyUUID:
		return UUIDKey(string(v))
	default:
		if !utf8.Valid(v) {
			return Key{}, fmt.Errorf("text %q is not UTF-8", v)
		}
		return TextKey(string(v)), nil
	}
}
