package dbcheck

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/changes-dev/changes/codecs"
)

func row(kv ...string) codecs.Row {
	r := codecs.Row{}
	for i := 0; i < len(kv); i += 2 {
		r[kv[i]] = json.RawMessage(kv[i+1])
	}
	return r
}

func TestDiff(t *testing.T) {
	db := map[int64]codecs.Row{
		1: row("id", "1", "doc", `{"a": [1, 2]}`),
		2: row("id", "2", "name", `"b"`),
		3: row("id", "3"),
	}
	view := map[int64]*codecs.State{
		1: {Row: row("id", "1", "doc", `{"a":[1,2]}`)}, // the same document, compacted
		2: {Row: row("id", "2", "name", `"B"`)},
		4: {Row: row("id", "4")},
	}
	got := strings.Join(Diff(db, view, 10), "\n")
	for _, want := range []string{
		`id 2: column name is "b" in the database, "B" in the view`,
		"id 3: in the database, not in the view",
		"id 4: in the view, not in the database",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("diff lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "id 1") {
		t.Errorf("json documents that differ only in whitespace were reported:\n%s", got)
	}
	if d := Diff(db, view, 1); len(d) != 2 || !strings.Contains(d[1], "2 more") {
		t.Errorf("Diff with max 1 = %q", d)
	}
	if d := Diff(map[int64]codecs.Row{1: row("id", "1")}, map[int64]*codecs.State{1: {Row: row("id", "1", "x", "null")}}, 5); len(d) != 1 {
		t.Errorf("an extra column in the view was not reported: %q", d)
	}
}

func TestQuoteTable(t *testing.T) {
	tests := []struct{ table, want string }{
		{"public.accounts", `"public"."accounts"`},
		{"MixedCase.Accounts", `"MixedCase"."Accounts"`},
		{"accounts", `"accounts"`},
		{"Accounts", `"Accounts"`},
		{`s.we"ird`, `"s"."we""ird"`},
	}
	for _, tt := range tests {
		if got := QuoteTable(tt.table); got != tt.want {
			t.Errorf("QuoteTable(%q) = %s, want %s", tt.table, got, tt.want)
		}
	}
}
