package codecs_test

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/changes-dev/changes/codecs"
)

func TestLSN(t *testing.T) {
	tests := []struct {
		lsn  codecs.LSN
		text string
	}{
		{0, "0/0"},
		{1, "0/1"},
		{0x16B374D848, "16/B374D848"},
		{1 << 32, "1/0"},
		{0xFFFFFFFF, "0/FFFFFFFF"},
		{math.MaxUint64, "FFFFFFFF/FFFFFFFF"},
	}
	for _, tt := range tests {
		t.Run(tt.text, func(t *testing.T) {
			if got := tt.lsn.String(); got != tt.text {
				t.Errorf("String() = %q, want %q", got, tt.text)
			}
			got, err := codecs.ParseLSN(tt.text)
			if err != nil || got != tt.lsn {
				t.Errorf("ParseLSN(%q) = %d, %v; want %d", tt.text, got, err, tt.lsn)
			}
			// PostgreSQL prints uppercase, but lowercase is the same LSN.
			if got, err := codecs.ParseLSN(strings.ToLower(tt.text)); err != nil || got != tt.lsn {
				t.Errorf("ParseLSN(lowercase) = %d, %v; want %d", got, err, tt.lsn)
			}
			b, err := json.Marshal(tt.lsn)
			if err != nil || string(b) != `"`+tt.text+`"` {
				t.Errorf("json.Marshal = %s, %v; want %q", b, err, tt.text)
			}
			var back codecs.LSN
			if err := json.Unmarshal(b, &back); err != nil || back != tt.lsn {
				t.Errorf("json.Unmarshal(%s) = %d, %v; want %d", b, back, err, tt.lsn)
			}
		})
	}
}

func TestParseLSNErrors(t *testing.T) {
	for _, s := range []string{
		"", "16", "16/", "/B374D848", "x/1", "1/x", "1/2/3",
		"100000000/0", "0/100000000", // each half is 32 bits
		"-1/0", "+1/0", "0x1/0", " 1/0", "1/0 ", "1_0/0",
	} {
		t.Run(s, func(t *testing.T) {
			if l, err := codecs.ParseLSN(s); err == nil {
				t.Errorf("ParseLSN(%q) = %s, want an error", s, l)
			}
			var l codecs.LSN = 7
			if err := l.UnmarshalText([]byte(s)); err == nil || l != 7 {
				t.Errorf("UnmarshalText(%q) = %v and set %s; want an error and no change", s, err, l)
			}
		})
	}
}

func TestPositionCompare(t *testing.T) {
	p := func(lsn codecs.LSN, i uint32) codecs.Position { return codecs.Position{CommitLSN: lsn, Index: i} }
	tests := []struct {
		name string
		a, b codecs.Position
		want int
	}{
		{"zero equals zero", p(0, 0), p(0, 0), 0},
		{"equal", p(5, 3), p(5, 3), 0},
		{"lower lsn", p(4, 9), p(5, 0), -1},
		{"higher lsn wins over index", p(6, 0), p(5, math.MaxUint32), 1},
		{"same lsn lower index", p(5, 1), p(5, 2), -1},
		{"same lsn higher index", p(5, 2), p(5, 1), 1},
		{"high bit of lsn", p(1<<63, 0), p(1<<63-1, 0), 1},
		{"zero before everything", p(0, 0), p(0, 1), -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.a.Compare(tt.b); got != tt.want {
				t.Errorf("%v.Compare(%v) = %d, want %d", tt.a, tt.b, got, tt.want)
			}
			if got := tt.b.Compare(tt.a); got != -tt.want {
				t.Errorf("%v.Compare(%v) = %d, want %d", tt.b, tt.a, got, -tt.want)
			}
		})
	}
}

func TestPositionString(t *testing.T) {
	tests := []struct {
		pos  codecs.Position
		text string
	}{
		{codecs.Position{}, "0000000000000000:00000000"},
		{codecs.Position{CommitLSN: 0x16B374D848, Index: 2}, "00000016B374D848:00000002"},
		{codecs.Position{CommitLSN: math.MaxUint64, Index: math.MaxUint32}, "FFFFFFFFFFFFFFFF:FFFFFFFF"},
	}
	for _, tt := range tests {
		t.Run(tt.text, func(t *testing.T) {
			if got := tt.pos.String(); got != tt.text {
				t.Errorf("String() = %q, want %q", got, tt.text)
			}
			got, err := codecs.ParsePosition(tt.text)
			if err != nil || got != tt.pos {
				t.Errorf("ParsePosition(%q) = %v, %v; want %v", tt.text, got, err, tt.pos)
			}
			b, err := json.Marshal(tt.pos)
			if err != nil || string(b) != `"`+tt.text+`"` {
				t.Errorf("json.Marshal = %s, %v", b, err)
			}
			var back codecs.Position
			if err := json.Unmarshal(b, &back); err != nil || back != tt.pos {
				t.Errorf("json.Unmarshal(%s) = %v, %v", b, back, err)
			}
			if got, want := tt.pos.IsZero(), tt.pos == (codecs.Position{}); got != want {
				t.Errorf("IsZero() = %v, want %v", got, want)
			}
		})
	}
}

// TestPositionTextSorts checks the promise consumers rely on: sorting the
// text forms (e.g. in a database column or a log search) orders positions as
// Compare does.
func TestPositionTextSorts(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	ps := []codecs.Position{
		{}, {CommitLSN: 0xA}, {CommitLSN: 0x10}, {CommitLSN: 0xA, Index: 0x10}, {CommitLSN: 0xA, Index: 0xB},
		{CommitLSN: math.MaxUint64, Index: math.MaxUint32}, {CommitLSN: 1 << 32},
	}
	for range 1000 {
		// Small ranges too, so equal LSNs with different indexes occur.
		lsn := r.Uint64()
		if r.IntN(2) == 0 {
			lsn = r.Uint64N(300)
		}
		ps = append(ps, codecs.Position{CommitLSN: codecs.LSN(lsn), Index: r.Uint32N(300)})
	}
	byCompare := slices.Clone(ps)
	slices.SortFunc(byCompare, codecs.Position.Compare)
	texts := make([]string, len(ps))
	for i, p := range ps {
		texts[i] = p.String()
	}
	slices.Sort(texts)
	for i := range byCompare {
		if texts[i] != byCompare[i].String() {
			t.Fatalf("at %d: text sort gives %s, Compare sort gives %s", i, texts[i], byCompare[i])
		}
	}
}

func TestParsePositionErrors(t *testing.T) {
	for _, s := range []string{
		"",
		"0000000000000001",
		"0000000000000001:",
		"000000000000001:00000000",   // 15 LSN digits
		"00000000000000001:00000000", // 17
		"0000000000000001:0000000",   // 7 index digits
		"0000000000000001:000000001", // 9
		"0000000000000001-00000000",
		"000000000000000G:00000000",
		"0000000000000001:0000000G",
		"+000000000000001:00000000",
		"0000000000000001:+0000000",
		"0000000000000001:00000000:",
		" 000000000000001:00000000",
		"16/B374D848", // an LSN is not a position
	} {
		t.Run(s, func(t *testing.T) {
			if p, err := codecs.ParsePosition(s); err == nil {
				t.Errorf("ParsePosition(%q) = %v, want an error", s, p)
			}
			p := codecs.Position{CommitLSN: 7}
			if err := p.UnmarshalText([]byte(s)); err == nil || p.CommitLSN != 7 {
				t.Errorf("UnmarshalText(%q) = %v and set %v; want an error and no change", s, err, p)
			}
		})
	}
}

func FuzzParsePosition(f *testing.F) {
	f.Add("0000000000000000:00000000")
	f.Add("00000016B374D848:00000002")
	f.Add("00000016b374d848:0000000a")
	f.Add("FFFFFFFFFFFFFFFF:FFFFFFFF")
	f.Add("16/B374D848")
	f.Add("")
	f.Fuzz(func(t *testing.T, s string) {
		p, err := codecs.ParsePosition(s)
		if err != nil {
			return
		}
		text := p.String()
		// The only accepted form is the canonical one, up to hex case.
		if !strings.EqualFold(text, s) {
			t.Fatalf("ParsePosition(%q) = %v, whose text %q differs", s, p, text)
		}
		back, err := codecs.ParsePosition(text)
		if err != nil || back != p {
			t.Fatalf("ParsePosition(%q) = %v, %v; want %v", text, back, err, p)
		}
	})
}

func FuzzParseLSN(f *testing.F) {
	f.Add("0/0")
	f.Add("16/B374D848")
	f.Add("FFFFFFFF/FFFFFFFF")
	f.Add("0000000000000000:00000000")
	f.Fuzz(func(t *testing.T, s string) {
		l, err := codecs.ParseLSN(s)
		if err != nil {
			return
		}
		back, err := codecs.ParseLSN(l.String())
		if err != nil || back != l {
			t.Fatalf("ParseLSN(%q) = %s, but ParseLSN(%q) = %d, %v", s, l, l.String(), back, err)
		}
	})
}
