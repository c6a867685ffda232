package codecs_test

import (
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/changes-dev/changes/codecs"
)

// PostgreSQL type OIDs (pg_type.oid).
const (
	oidBool        = 16
	oidBytea       = 17
	oidInt8        = 20
	oidInt2        = 21
	oidInt4        = 23
	oidText        = 25
	oidOID         = 26
	oidJSON        = 114
	oidFloat4      = 700
	oidFloat8      = 701
	oidInt4Array   = 1007
	oidVarchar     = 1043
	oidTimestamptz = 1184
	oidNumeric     = 1700
	oidUUID        = 2950
	oidJSONB       = 3802
)

func TestColumnValue(t *testing.T) {
	tests := []struct {
		name string
		oid  uint32
		text string
		want string // the exact JSON
	}{
		{"int2", oidInt2, "-32768", `-32768`},
		{"int4", oidInt4, "2147483647", `2147483647`},
		{"int8 above 2^53", oidInt8, "9223372036854775807", `9223372036854775807`},
		{"int8 min", oidInt8, "-9223372036854775808", `-9223372036854775808`},
		{"int zero", oidInt8, "0", `0`},
		{"oid", oidOID, "4294967295", `4294967295`},
		{"float NaN", oidFloat8, "NaN", `"NaN"`},
		{"float Infinity", oidFloat8, "Infinity", `"Infinity"`},
		{"float -Infinity", oidFloat4, "-Infinity", `"-Infinity"`},
		{"float 1.5", oidFloat8, "1.5", `1.5`},
		{"float4 negative", oidFloat4, "-0.25", `-0.25`},
		{"float exponent", oidFloat8, "1e+100", `1e+100`},
		{"float small exponent", oidFloat8, "-1.5e-05", `-1.5e-05`},
		{"float -0", oidFloat8, "-0", `-0`},
		{"bool t", oidBool, "t", `true`},
		{"bool f", oidBool, "f", `false`},
		{"json", oidJSON, `{"a": [1, 2.50, null]}`, `{"a": [1, 2.50, null]}`},
		{"jsonb scalar", oidJSONB, `"x"`, `"x"`},
		{"jsonb number keeps digits", oidJSONB, `12345678901234567890.123456789`, `12345678901234567890.123456789`},
		{"numeric keeps every digit", oidNumeric, "12345678901234567890.123456789", `"12345678901234567890.123456789"`},
		{"numeric NaN", oidNumeric, "NaN", `"NaN"`},
		{"bytea", oidBytea, `\xdeadbeef`, `"\\xdeadbeef"`},
		{"uuid", oidUUID, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", `"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"`},
		{"timestamptz", oidTimestamptz, "2026-11-25 20:00:00.123456+00", `"2026-11-25 20:00:00.123456+00"`},
		{"array", oidInt4Array, "{1,2,NULL}", `"{1,2,NULL}"`},
		{"empty text", oidText, "", `""`},
		{"text that looks like a number", oidVarchar, "42", `"42"`},
		{"text that looks like json", oidText, `{"a":1}`, `"{\"a\":1}"`},
		// An unknown OID (an enum, a domain, a new type) is a string too.
		{"unknown type", 999999, "happy", `"happy"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := codecs.ColumnValue(tt.oid, []byte(tt.text))
			if err != nil {
				t.Fatalf("ColumnValue(%d, %q): %v", tt.oid, tt.text, err)
			}
			if string(got) != tt.want {
				t.Errorf("ColumnValue(%d, %q) = %s, want %s", tt.oid, tt.text, got, tt.want)
			}
			if !json.Valid(got) {
				t.Errorf("ColumnValue(%d, %q) = %s, which is not JSON", tt.oid, tt.text, got)
			}
		})
	}
}

func TestColumnValueTextRoundTrip(t *testing.T) {
	for name, text := range map[string]string{
		"quotes":      `he said "hi" and 'bye'`,
		"backslashes": `C:\path\to\x \\ \u0041`,
		"newlines":    "line 1\nline 2\r\n\ttabbed",
		"unicode":     "ünïcødé ✓ 日本語 🎉",
		"controls":    "\x00\x01\x1f\x7f",
		"html":        "<script>&amp;</script>",
		"separators":  "\u2028\u2029",
	} {
		t.Run(name, func(t *testing.T) {
			for _, oid := range []uint32{oidText, oidVarchar} {
				got, err := codecs.ColumnValue(oid, []byte(text))
				if err != nil {
					t.Fatalf("ColumnValue(%d): %v", oid, err)
				}
				var back string
				if err := json.Unmarshal(got, &back); err != nil {
					t.Fatalf("ColumnValue(%d) = %s: %v", oid, got, err)
				}
				if back != text {
					t.Errorf("ColumnValue(%d) = %s, which reads back as %q, want %q", oid, got, back, text)
				}
			}
		})
	}
}

func TestColumnValueErrors(t *testing.T) {
	tests := []struct {
		name string
		oid  uint32
		text string
	}{
		{"int letters", oidInt4, "12a"},
		{"int empty", oidInt8, ""},
		{"int fraction", oidInt4, "1.5"},
		{"int overflow", oidInt8, "9223372036854775808"},
		{"int space", oidInt2, " 1"},
		// strconv accepts these, JSON does not; PostgreSQL never prints them.
		{"int plus sign", oidInt8, "+1"},
		{"int leading zero", oidInt4, "01"},
		{"float letters", oidFloat8, "abc"},
		{"float empty", oidFloat4, ""},
		{"float lowercase inf", oidFloat8, "inf"},
		{"float lowercase nan", oidFloat8, "nan"},
		{"float leading dot", oidFloat8, ".5"},
		{"float trailing dot", oidFloat8, "5."},
		{"float plus sign", oidFloat8, "+1.5"},
		{"float hex", oidFloat8, "0x1p-2"},
		{"float underscore", oidFloat8, "1_000"},
		{"float out of range", oidFloat8, "1e400"},
		{"bool true", oidBool, "true"},
		{"bool empty", oidBool, ""},
		{"bool uppercase", oidBool, "T"},
		{"json invalid", oidJSON, `{"a":`},
		{"jsonb empty", oidJSONB, ""},
		{"jsonb two documents", oidJSONB, `{} {}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got, err := codecs.ColumnValue(tt.oid, []byte(tt.text)); err == nil {
				t.Errorf("ColumnValue(%d, %q) = %s, want an error", tt.oid, tt.text, got)
			}
		})
	}
}

func FuzzColumnValue(f *testing.F) {
	for _, s := range []struct {
		oid  uint32
		text string
	}{
		{oidInt8, "-9223372036854775808"}, {oidInt4, "+1"}, {oidInt2, "007"},
		{oidFloat8, "1.5"}, {oidFloat8, "NaN"}, {oidFloat4, "-Infinity"}, {oidFloat8, "1e+100"}, {oidFloat8, ".5"}, {oidFloat8, "inf"},
		{oidBool, "t"}, {oidBool, "f"},
		{oidJSON, `{"a": [1, 2]}`}, {oidJSONB, `"x"`},
		{oidNumeric, "12345678901234567890.123456789"}, {oidBytea, `\xdeadbeef`}, {oidText, "ü\"\n"},
		{oidText, "\xff\xfe"},
	} {
		f.Add(s.oid, []byte(s.text))
	}
	f.Fuzz(func(t *testing.T, oid uint32, text []byte) {
		got, err := codecs.ColumnValue(oid, text)
		if err != nil {
			return
		}
		if !json.Valid(got) {
			t.Fatalf("ColumnValue(%d, %q) = %q, which is not JSON", oid, text, got)
		}
		// A type without a JSON form of its own is written as encoding/json
		// writes its text as a string, byte for byte.
		if _, ok := map[uint32]bool{oidInt2: true, oidInt4: true, oidInt8: true, oidOID: true, oidFloat4: true, oidFloat8: true, oidBool: true, oidJSON: true, oidJSONB: true}[oid]; !ok {
			if want, _ := json.Marshal(string(text)); string(got) != string(want) {
				t.Fatalf("ColumnValue(%d, %q) = %s, encoding/json writes %s", oid, text, got, want)
			}
		}
		// Every other value that becomes a JSON string is PostgreSQL's text
		// form unchanged (NaN and Infinity included), if the text is UTF-8.
		// json and jsonb are embedded as they are.
		if oid != oidJSON && oid != oidJSONB && strings.HasPrefix(string(got), `"`) && utf8.Valid(text) {
			var back string
			if err := json.Unmarshal(got, &back); err != nil || back != string(text) {
				t.Fatalf("ColumnValue(%d, %q) = %s, which reads back as %q, %v", oid, text, got, back, err)
			}
		}
	})
}
