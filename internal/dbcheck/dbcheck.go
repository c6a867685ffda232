// Package dbcheck compares a table in PostgreSQL with the view of its entity
// type, value by value, for the demo, the monitor's audit and the
// end-to-end tests.
package dbcheck

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/changes-dev/changes/codecs"
)

// QuoteTable quotes a table named as the config names it, [schema.]table,
// for SQL: each part double-quoted, so a mixed-case name keeps its case
// (unquoted, PostgreSQL would fold it to lower case). A name without a schema
// is still looked up through the search path.
func QuoteTable(table string) string {
	if schema, name, ok := strings.Cut(table, "."); ok {
		return pgx.Identifier{schema, name}.Sanitize()
	}
	return pgx.Identifier{table}.Sanitize()
}

// Rows reads every row of table ([schema.]table, exact names: see
// QuoteTable) as the capture would encode it, keyed by the entity key the
// capture computes from keyColumns (topology.EntityConfig.KeyColumns) with
// codecs.ColumnKey. Values are read in text format, the form pgoutput sends,
// and mapped with codecs.ColumnValue.
func Rows(ctx context.Context, conn *pgx.Conn, table string, keyColumns []string) (map[codecs.Key]codecs.Row, error) {
	return query(ctx, conn, table, keyColumns, "select * from "+QuoteTable(table))
}

// Row reads the row of table whose key, over keyColumns, is key, as Rows
// does; nil if there is none.
func Row(ctx context.Context, conn *pgx.Conn, table string, keyColumns []string, key codecs.Key) (codecs.Row, error) {
	values := KeyValues(key)
	if len(values) != len(keyColumns) {
		return nil, fmt.Errorf("%s: key %s has %d parts, the table has %d key columns", table, key, len(values), len(keyColumns))
	}
	// The values are cast to the columns' types, so the lookup uses the
	// key's index.
	conds := make([]string, len(keyColumns))
	args := make([]any, len(keyColumns))
	for i, col := range keyColumns {
		var typ string
		err := conn.QueryRow(ctx, `select format_type(atttypid, atttypmod) from pg_attribute
			where attrelid = $1::regclass and attname = $2 and attnum > 0 and not attisdropped`, QuoteTable(table), col).Scan(&typ)
		if err != nil {
			return nil, fmt.Errorf("type of %s.%s: %w", table, col, err)
		}
		conds[i] = fmt.Sprintf("%s = $%d::text::%s", pgx.Identifier{col}.Sanitize(), i+1, typ)
		args[i] = values[i]
	}
	rows, err := query(ctx, conn, table, keyColumns, "select * from "+QuoteTable(table)+" where "+strings.Join(conds, " and "), args...)
	if err != nil {
		return nil, err
	}
	return rows[key], nil
}

// KeyValues returns the text of each key column of key, in the key
// columns' order: a composite key's parts, else the key's text.
func KeyValues(key codecs.Key) []string {
	if key.Kind() == codecs.KeyComposite {
		return key.Parts()
	}
	return []string{key.String()}
}

// DiffRow describes the first difference between a row of the database and
// the row of a state; empty means equal.
func DiffRow(db, view codecs.Row) string { return diffRow(db, view) }

func query(ctx context.Context, conn *pgx.Conn, table string, keyColumns []string, sql string, args ...any) (map[codecs.Key]codecs.Row, error) {
	rows, err := conn.Query(ctx, sql, append([]any{pgx.QueryResultFormats{pgx.TextFormatCode}}, args...)...)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", table, err)
	}
	defer rows.Close()
	fields := rows.FieldDescriptions()
	names := make([]string, len(fields))
	oids := make([]uint32, len(fields))
	for i, f := range fields {
		names[i], oids[i] = f.Name, f.DataTypeOID
	}
	keyIndex := make([]int, len(keyColumns))
	keyOIDs := make([]uint32, len(keyColumns))
	for k, col := range keyColumns {
		if keyIndex[k] = slices.Index(names, col); keyIndex[k] < 0 {
			return nil, fmt.Errorf("%s has no key column %s", table, col)
		}
		keyOIDs[k] = oids[keyIndex[k]]
	}
	keyValues := make([][]byte, len(keyColumns))
	out := map[codecs.Key]codecs.Row{}
	for rows.Next() {
		// RawValues reuses its buffers from row to row: the mapping copies.
		raw := rows.RawValues()
		row, err := codecs.TextRow(names, oids, raw)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", table, err)
		}
		for k, i := range keyIndex {
			keyValues[k] = raw[i]
		}
		key, err := codecs.ColumnKey(keyColumns, keyOIDs, keyValues)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", table, err)
		}
		out[key] = row
	}
	return out, rows.Err()
}

// Diff lists the differences between the rows of a table and the states of a
// view, at most max of them, sorted; empty means equal.
func Diff(db map[codecs.Key]codecs.Row, view map[codecs.Key]*codecs.State, max int) []string {
	var diffs []string
	for id, row := range db {
		st, ok := view[id]
		if !ok {
			diffs = append(diffs, fmt.Sprintf("id %s: in the database, not in the view", id))
			continue
		}
		if d := diffRow(row, st.Row); d != "" {
			diffs = append(diffs, fmt.Sprintf("id %s: %s", id, d))
		}
	}
	for id := range view {
		if _, ok := db[id]; !ok {
			diffs = append(diffs, fmt.Sprintf("id %s: in the view, not in the database", id))
		}
	}
	sort.Strings(diffs)
	if len(diffs) > max {
		diffs = append(diffs[:max], fmt.Sprintf("... and %d more", len(diffs)-max))
	}
	return diffs
}

func diffRow(db, view codecs.Row) string {
	for col, v := range db {
		w, ok := view[col]
		if !ok {
			return fmt.Sprintf("column %s missing in the view", col)
		}
		if !jsonEqual(v, w) {
			return fmt.Sprintf("column %s is %s in the database, %s in the view", col, v, w)
		}
	}
	for col := range view {
		if _, ok := db[col]; !ok {
			return fmt.Sprintf("column %s is in the view, not in the database", col)
		}
	}
	return ""
}

// Each is the iteration a views.View offers.
type Each func(fn func(*codecs.State) error) error

// Collect gathers the states of a view by id.
func Collect(each Each) (map[codecs.Key]*codecs.State, error) {
	out := map[codecs.Key]*codecs.State{}
	err := each(func(s *codecs.State) error { out[s.EntityID] = s; return nil })
	return out, err
}

// jsonEqual compares two JSON values ignoring insignificant whitespace, which
// encoding/json drops from embedded json and jsonb documents.
func jsonEqual(a, b []byte) bool {
	var ca, cb bytes.Buffer
	if json.Compact(&ca, a) != nil || json.Compact(&cb, b) != nil {
		return bytes.Equal(a, b)
	}
	return bytes.Equal(ca.Bytes(), cb.Bytes())
}
