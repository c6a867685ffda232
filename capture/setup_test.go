package capture

import (
	"strings"
	"testing"
)

// splitIdentifiers reads a publication_names value as PostgreSQL does: the
// replication grammar's string literal (a doubled single quote is one), then pgoutput's
// SplitIdentifierString (a double-quoted name is kept as is, "" being a
// double quote; an unquoted one is folded to lower case).
func splitIdentifiers(t *testing.T, literal string) []string {
	t.Helper()
	if len(literal) < 2 || literal[0] != '\'' || literal[len(literal)-1] != '\'' {
		t.Fatalf("%s is not a string literal", literal)
	}
	body := literal[1 : len(literal)-1]
	if strings.Contains(strings.ReplaceAll(body, "''", ""), "'") {
		t.Fatalf("%s has an undoubled quote", literal)
	}
	s := strings.ReplaceAll(body, "''", "'")
	var names []string
	for {
		s = strings.TrimLeft(s, " ")
		var name string
		if strings.HasPrefix(s, `"`) {
			i := 1
			for ; i < len(s); i++ {
				if s[i] == '"' {
					if i+1 < len(s) && s[i+1] == '"' {
						name += `"`
						i++
						continue
					}
					break
				}
				name += string(s[i])
			}
			if i == len(s) {
				t.Fatalf("%s: unterminated quoted name", literal)
			}
			s = s[i+1:]
		} else {
			end := strings.IndexAny(s, ", ")
			if end < 0 {
				end = len(s)
			}
			name, s = strings.ToLower(s[:end]), s[end:]
		}
		names = append(names, name)
		s = strings.TrimLeft(s, " ")
		if s == "" {
			return names
		}
		if s[0] != ',' {
			t.Fatalf("%s: junk after a name", literal)
		}
		s = s[1:]
	}
}

// TestPublicationNames checks the START_REPLICATION option that names the
// publication: unquoted inside its literal, PostgreSQL folded ChangesPub to
// changespub ("publication does not exist", seen on PostgreSQL 15).
func TestPublicationNames(t *testing.T) {
	tests := []struct{ name, want string }{
		{"changes", `publication_names '"changes"'`},
		{"ChangesPub", `publication_names '"ChangesPub"'`},
		{"Pub_$1", `publication_names '"Pub_$1"'`},
		// Not valid in the config, but quoted right all the same.
		{`we"ird`, `publication_names '"we""ird"'`},
		{`it's`, `publication_names '"it''s"'`},
		{"a, b", `publication_names '"a, b"'`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := publicationNames(tt.name)
			if got != tt.want {
				t.Errorf("publicationNames(%q) = %s, want %s", tt.name, got, tt.want)
			}
			value, ok := strings.CutPrefix(got, "publication_names ")
			if !ok {
				t.Fatalf("%s is not the publication_names option", got)
			}
			if names := splitIdentifiers(t, value); len(names) != 1 || names[0] != tt.name {
				t.Errorf("PostgreSQL would read %s as %q, want [%q]", value, names, tt.name)
			}
		})
	}
	// The reading is PostgreSQL's: unquoted, a mixed-case name is folded.
	if names := splitIdentifiers(t, "'ChangesPub'"); names[0] != "changespub" {
		t.Errorf("an unquoted name reads as %q, want it folded to changespub", names[0])
	}
}

func TestTableQuoted(t *testing.T) {
	tests := []struct {
		t    table
		want string
	}{
		{table{schema: "public", name: "accounts"}, `"public"."accounts"`},
		{table{schema: "MixedCase", name: "Accounts"}, `"MixedCase"."Accounts"`},
		{table{schema: "s", name: `a"b`}, `"s"."a""b"`},
	}
	for _, tt := range tests {
		if got := tt.t.quoted(); got != tt.want {
			t.Errorf("%s.quoted() = %s, want %s", tt.t.qualified(), got, tt.want)
		}
	}
}
