package codecs

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
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
		if !json.Valid(text) {
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
		if !json.Valid(text) {
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
	return json.Marshal(string(text))
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
