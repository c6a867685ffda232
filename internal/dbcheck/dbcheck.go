// Package dbcheck compares a table in PostgreSQL with the view of its entity
// type, value by value, for the demo, the monitor's audit and the
// end-to-end tests.
package dbcheck

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
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
// QuoteTable) as the capture would encode it, keyed by the id column. Values
// are read in text format, the form pgoutput sends, and mapped with
// codecs.ColumnValue.
func Rows(ctx context.Context, conn *pgx.Conn, table, idColumn string) (map[codecs.Key]codecs.Row, error) {
	return query(ctx, conn, table, idColumn, "select * from "+QuoteTable(table))
}

// Row reads the row of table whose id column is id, as Rows does; nil if
// there is none.
func Row(ctx context.Context, conn *pgx.Conn, table, idColumn string, id int64) (codecs.Row, error) {
	rows, err := query(ctx, conn, table, idColumn, "select * from "+QuoteTable(table)+" where "+pgx.Identifier{idColumn}.Sanitize()+" = $1", id)
	if err != nil {
		return nil, err
	}
	return rows[codecs.IntKey(id)], nil
}

// DiffRow describes the first difference between a row of the database and
// the row of a state; empty means equal.
func DiffRow(db, view codecs.Row) string { return diffRow(db, view) }

func query(ctx context.Context, conn *pgx.Conn, table, idColumn, sql string, args ...any) (map[codecs.Key]codecs.Row, error) {
	rows, err := conn.Query(ctx, sql, append([]any{pgx.QueryResultFormats{pgx.TextFormatCode}}, args...)...)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", table, err)
	}
	defer rows.Close()
	fields := rows.FieldDescriptions()
	names := make([]string, len(fields))
	oids := make([]uint32, len(fields))
	idIndex := -1
	for i, f := range fields {
		names[i], oids[i] = f.Name, f.DataTypeOID
		if f.Name == idColumn {
			idIndex = i
		}
	}
	if idIndex < 0 {
		return nil, fmt.Errorf("%s has no id column %s", table, idColumn)
	}
	out := map[codecs.Key]codecs.Row{}
	for rows.Next() {
		// RawValues reuses its buffers from row to row: the mapping copies.
		raw := rows.RawValues()
		row, err := codecs.TextRow(names, oids, raw)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", table, err)
		}
		id, err := strconv.ParseInt(string(raw[idIndex]), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%s.%s: %w", table, idColumn, err)
		}
		out[codecs.IntKey(id)] = row
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
