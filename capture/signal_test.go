package capture

import (
	"strings"
	"testing"
)

func TestParseSignal(t *testing.T) {
	for _, c := range []struct {
		content, err string
		want         signal
	}{
		{content: `{"snapshot":"campaign"}`, want: signal{Snapshot: "campaign"}},
		{content: `{"snapshot":"campaign","from":"10","to":"20"}`, want: signal{Snapshot: "campaign", From: "10", To: "20"}},
		{content: `{"cancel":"campaign"}`, want: signal{Cancel: "campaign"}},
		{content: `{"watermark":"low","id":"0/16B3748","chunk":3,"run":"ab"}`, want: signal{Watermark: "low", ID: "0/16B3748", Chunk: 3, Run: "ab"}},
		{content: `snapshot campaign`, err: "invalid character"},
		{content: `{}`, err: "exactly one of"},
		{content: `{"snapshot":"a","cancel":"a"}`, err: "exactly one of"},
		{content: `{"watermark":"middle","id":"x","chunk":1}`, err: `must be "low" or "high"`},
		{content: `{"watermark":"high","id":"x"}`, err: "needs an id and a chunk"},
	} {
		got, err := parseSignal([]byte(c.content))
		switch {
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
			t.Errorf("parseSignal(%s): error %v, want one saying %q", c.content, err, c.err)
		case c.err == "" && err != nil:
			t.Errorf("parseSignal(%s): %v", c.content, err)
		case c.err == "" && got != c.want:
			t.Errorf("parseSignal(%s) = %+v, want %+v", c.content, got, c.want)
		}
	}
}

func TestPGSnapshot(t *testing.T) {
	sn, err := parsePGSnapshot("4294967290:4294967300:4294967295,4294967297")
	if err != nil {
		t.Fatal(err)
	}
	// xmax 4294967300 is 4 as a 32-bit id; 4294967295 and 4294967297 (1)
	// were running.
	for xid, want := range map[uint32]bool{4294967294: true, 4294967295: false, 0: true, 1: false, 3: true, 4: false, 5: false} {
		if got := sn.visible(xid); got != want {
			t.Errorf("visible(%d) = %v, want %v", xid, got, want)
		}
	}
	if _, err := parsePGSnapshot("1:2"); err == nil {
		t.Error("parsePGSnapshot(1:2): no error")
	}
	if sn, err := parsePGSnapshot("10:12:"); err != nil || !sn.visible(11) || sn.visible(12) {
		t.Errorf("parsePGSnapshot(10:12:) = %+v, %v", sn, err)
	}
}
