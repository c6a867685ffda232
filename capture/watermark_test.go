package capture

import (
	"testing"
	"time"
)

// TestWatermarksDue: a watermark is due once something new is covered and
// the interval since the last one has passed; never for what is written.
func TestWatermarksDue(t *testing.T) {
	now := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	w := watermarks{interval: 100 * time.Millisecond}
	if d := w.wait(now); d >= 0 {
		t.Fatalf("nothing covered: wait %s, want none", d)
	}
	w.advance(0x100, now)
	if d := w.wait(now); d != 0 {
		t.Fatalf("covered 0/100, none written: wait %s, want 0", d)
	}
	w.written, w.writtenAt = 0x100, now
	w.advance(0x80, now) // a keepalive behind a transaction's end: no step back
	if w.covered != 0x100 {
		t.Fatalf("covered went back to %s", w.covered)
	}
	if d := w.wait(now.Add(10 * time.Millisecond)); d >= 0 {
		t.Fatalf("nothing new: wait %s, want none", d)
	}
	w.advance(0x200, now.Add(10*time.Millisecond))
	if d := w.wait(now.Add(30 * time.Millisecond)); d != 70*time.Millisecond {
		t.Fatalf("0/200 covered 30 ms after the last watermark: wait %s, want 70ms", d)
	}
	if d := w.wait(now.Add(150 * time.Millisecond)); d != 0 {
		t.Fatalf("interval over: wait %s, want 0", d)
	}
}
