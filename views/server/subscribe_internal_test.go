package server

import (
	"net/http/httptest"
	"testing"
)

func TestStreamStart(t *testing.T) {
	for _, c := range []struct {
		query, lastID string
		want          int64
		bad           bool
	}{
		{"", "", -1, false},                  // the history's end
		{"from=0", "", 0, false},             // from the start
		{"from=42", "", 42, false},           // the first offset sent
		{"from=42", "41", 42, false},         // Last-Event-ID wins: the next one
		{"", "99", 100, false},               // after the last id received
		{"from=-1", "", 0, true},             // not an offset
		{"from=x", "", 0, true},              // not an offset
		{"", "x", 0, true},                   // not an offset
		{"", "-5", 0, true},                  // not an offset
		{"", "9223372036854775807", 0, true}, // no offset after it
	} {
		r := httptest.NewRequest("GET", "/v1/changes/a?"+c.query, nil)
		if c.lastID != "" {
			r.Header.Set("Last-Event-ID", c.lastID)
		}
		got, err := streamStart(r)
		if (err != nil) != c.bad || (!c.bad && got != c.want) {
			t.Errorf("streamStart(%q, Last-Event-ID %q) = %d, %v; want %d (error: %v)", c.query, c.lastID, got, err, c.want, c.bad)
		}
	}
}
