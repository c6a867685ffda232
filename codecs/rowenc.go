package codecs

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// RowEncoder encodes rows of one set of columns, given in PostgreSQL's text
// format, as the JSON an Event holds for them: exactly what encoding an
// Event whose After is TextRow(names, typeOIDs, values) writes for the row,
// without building the Row. The initial snapshot encodes millions of rows
// of the same columns with it (see EventCodec.AppendWithAfter). A
// RowEncoder is safe for concurrent use: Append changes nothing.
type RowEncoder struct {
	cols     []rowColumn // in the order of their names' bytes: a JSON object's order
	shadowed []rowColumn // columns whose name a later column has: checked, not written
	width    int         // how many values a row has
}

type rowColumn struct {
	index  int    // in values
	name   string // for errors
	prefix []byte // `{"name":` for the first column, `,"name":` for the others
	oid    uint32
}

// NewRowEncoder returns the RowEncoder of rows whose columns have names and
// type OIDs (a domain's base type, as for ColumnValue). A name given twice
// keeps its last column, as TextRow does. It fails when the lengths differ
// or there are no columns.
func NewRowEncoder(names []string, typeOIDs []uint32) (*RowEncoder, error) {
	if len(names) != len(typeOIDs) {
		return nil, fmt.Errorf("row encoder: %d names, %d types", len(names), len(typeOIDs))
	}
	if len(names) == 0 {
		return nil, errors.New("row encoder: no columns")
	}
	last := map[string]int{}
	for i, n := range names {
		last[n] = i
	}
	var cols, shadowed []rowColumn
	for i, n := range names {
		c := rowColumn{index: i, name: n, oid: typeOIDs[i]}
		if last[n] == i {
			cols = append(cols, c)
		} else {
			shadowed = append(shadowed, c)
		}
	}
	slices.SortFunc(cols, func(a, b rowColumn) int { return strings.Compare(a.name, b.name) })
	for k := range cols {
		sep := byte(',')
		if k == 0 {
			sep = '{'
		}
		cols[k].prefix = append(appendString([]byte{sep}, cols[k].name), ':')
	}
	return &RowEncoder{cols: cols, shadowed: shadowed, width: len(names)}, nil
}

// Append appends the JSON of the row values (nil for NULL), one a column
// in the order NewRowEncoder was given, to dst. It fails as TextRow does,
// naming the column, and then returns dst as it was.
func (r *RowEncoder) Append(dst []byte, values [][]byte) ([]byte, error) {
	if len(values) != r.width {
		return dst, fmt.Errorf("row: %d values for %d columns", len(values), r.width)
	}
	orig := len(dst)
	for _, c := range r.shadowed {
		if v := values[c.index]; v != nil {
			if _, err := appendColumnValue(dst, c.oid, v); err != nil {
				return dst[:orig], fmt.Errorf("column %s: %w", c.name, err)
			}
		}
	}
	for _, c := range r.cols {
		dst = append(dst, c.prefix...)
		v := values[c.index]
		if v == nil {
			dst = append(dst, "null"...)
			continue
		}
		var err error
		if dst, err = appendColumnValue(dst, c.oid, v); err != nil {
			return dst[:orig], fmt.Errorf("column %s: %w", c.name, err)
		}
	}
	return append(dst, '}'), nil
}

// appendColumnValue appends ColumnValue(typeOID, text) as an Event's
// encoding writes it (compacted, HTML-escaped), failing where ColumnValue
// fails. The frequent types take no detour through a json.RawMessage.
func appendColumnValue(dst []byte, typeOID uint32, text []byte) ([]byte, error) {
	switch typeOID {
	case oidInt2, oidInt4, oidInt8, oidOID:
		if !jsonInteger(text) {
			return dst, fmt.Errorf("integer %q is not a 64-bit integer in decimal", text)
		}
		return append(dst, text...), nil
	case oidBool:
		switch string(text) {
		case "t":
			return append(dst, "true"...), nil
		case "f":
			return append(dst, "false"...), nil
		}
		return dst, fmt.Errorf("boolean %q", text)
	case oidJSON, oidJSONB:
		if !json.Valid(text) {
			return dst, fmt.Errorf("invalid json value")
		}
		return appendCompact(dst, text), nil
	case oidFloat4, oidFloat8:
		v, err := ColumnValue(typeOID, text)
		if err != nil {
			return dst, err
		}
		return appendCompact(dst, v), nil
	}
	return appendString(dst, text), nil
}

// jsonInteger reports whether text is what ColumnValue accepts for an
// integer: a JSON number without fraction or exponent that fits 64 bits.
func jsonInteger(text []byte) bool {
	digits := text
	if len(digits) > 0 && digits[0] == '-' {
		digits = digits[1:]
	}
	if len(digits) == 0 || (digits[0] == '0' && len(digits) > 1) {
		return false
	}
	for _, c := range digits {
		if c < '0' || c > '9' {
			return false
		}
	}
	if len(digits) < 19 {
		return true // at most 18 digits always fit
	}
	_, err := strconv.ParseInt(string(text), 10, 64)
	return err == nil
}
