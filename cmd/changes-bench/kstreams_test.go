package main

import (
	"reflect"
	"testing"
)

func TestParseStamps(t *testing.T) {
	raw := []byte("12 1795652000777000001\nbad\n0 5\n13 1795652000777000002\n14 17956")
	got, used := parseStamps(raw)
	want := []commit{{12, 1795652000777000001}, {13, 1795652000777000002}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("stamps = %v, want %v", got, want)
	}
	if rest := string(raw[used:]); rest != "14 17956" {
		t.Errorf("left %q, want the partial last line", rest)
	}
	// The rest, completed by the next read.
	got, used = parseStamps(append(raw[used:], "00\n"...))
	if !reflect.DeepEqual(got, []commit{{14, 1795600}}) || used != 11 {
		t.Errorf("after the next read: %v, %d bytes", got, used)
	}
	if got, used := parseStamps(nil); len(got) != 0 || used != 0 {
		t.Errorf("empty: %v, %d", got, used)
	}
}

func TestKStreamsStatus(t *testing.T) {
	raw := []byte(`{"state":"RUNNING","tables":{
		"account":{"topic":"dbz.public.a","applied":10,"next_offset":10,"entries":7},
		"campaign":{"topic":"dbz.public.c","applied":4,"next_offset":5,"entries":null}}}`)
	s, err := parseStatus(raw)
	if err != nil {
		t.Fatal(err)
	}
	if s.applied() != 14 || s.Tables["account"].Entries == nil || *s.Tables["account"].Entries != 7 || s.Tables["campaign"].Entries != nil {
		t.Errorf("status = %+v", s)
	}
	for _, c := range []struct {
		ends map[string]int64
		want bool
	}{
		{map[string]int64{"dbz.public.a": 10, "dbz.public.c": 5}, true},
		{map[string]int64{"dbz.public.a": 10, "dbz.public.c": 6}, false},
		{map[string]int64{"dbz.public.a": 10, "dbz.public.other": 1}, false}, // a topic the app does not read
	} {
		if got := s.caughtUp(c.ends); got != c.want {
			t.Errorf("caughtUp(%v) = %v", c.ends, got)
		}
	}
	s.State = "REBALANCING"
	if s.caughtUp(map[string]int64{"dbz.public.a": 1}) {
		t.Error("caught up while REBALANCING")
	}
	for _, bad := range []string{`{}`, `not json`, `{"state":""}`} {
		if _, err := parseStatus([]byte(bad)); err == nil {
			t.Errorf("parseStatus(%s): no error", bad)
		}
	}
}

func TestPathEscape(t *testing.T) {
	for in, want := range map[string]string{
		"42":                                   "42",
		"0b6f3d6e-1c2a-4f6b-9a51-2f3c4d5e6f70": "0b6f3d6e-1c2a-4f6b-9a51-2f3c4d5e6f70",
		`["3","creative/3"]`:                   "%5B%223%22%2C%22creative%2F3%22%5D",
		"a b+ü":                                "a%20b%2B%C3%BC",
	} {
		if got := pathEscape(in); got != want {
			t.Errorf("pathEscape(%q) = %q, want %q", in, got, want)
		}
	}
}
