package views_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/lovoo/goka/tester"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/topology"
	"github.com/changes-dev/changes/views"
)

// watermarkState is a partition's progress watermark as the snapshot
// processor stores it.
func watermarkState(lsn codecs.LSN) *codecs.State {
	return &codecs.State{EntityType: "account", Watermark: true, Position: codecs.Position{CommitLSN: lsn},
		CommitTime: time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC), AppliedTime: time.Date(2026, 12, 2, 12, 0, 0, 1000, time.UTC)}
}

// TestViewAppliedThrough: a view takes its progress from the watermark
// records of its table, hides them from reads, and a read with AtLeast
// waits for the watermark that covers it.
func TestViewAppliedThrough(t *testing.T) {
	topo := testTopology(t)
	tt := tester.New(t)
	reg := prometheus.NewRegistry()
	v := runView(t, topo, tt, views.WithInMemory(), views.WithRegisterer(reg))
	table := topo.Snapshot("account")
	wmKey := topology.WatermarkKeys(1)[0]
	if w := v.AppliedThrough(); !w.IsZero() {
		t.Fatalf("AppliedThrough before any watermark = %+v", w)
	}
	tt.Consume(table, "1", enc(t, state(1, 0x100, "a")))
	tt.Consume(table, wmKey, enc(t, watermarkState(0x200)))
	if w := v.AppliedThrough(); w.LSN != 0x200 || !w.CommitTime.Equal(watermarkState(0).CommitTime) {
		t.Fatalf("AppliedThrough = %+v, want 0/200", w)
	}
	if n, err := v.Len(); err != nil || n != 1 {
		t.Errorf("Len = %d, %v: the watermark is no entity", n, err)
	}

	// A read of something committed up to 0/300 waits for it.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	got := make(chan *codecs.State, 1)
	go func() {
		st, err := v.Get(ctx, 1, views.AtLeast(0x300))
		if err != nil {
			t.Error(err)
		}
		got <- st
	}()
	select {
	case st := <-got:
		t.Fatalf("Get with AtLeast(0/300) answered %+v before the view applied 0/300", st)
	case <-time.After(100 * time.Millisecond):
	}
	tt.Consume(table, "1", enc(t, state(1, 0x280, "b")))
	tt.Consume(table, wmKey, enc(t, watermarkState(0x300)))
	select {
	case st := <-got:
		if st == nil || string(st.Row["name"]) != `"b"` {
			t.Errorf("Get with AtLeast(0/300) = %+v, want the write committed before 0/300", st)
		}
	case <-ctx.Done():
		t.Fatal("Get with AtLeast(0/300) still waits after the watermark 0/300")
	}
	// Covered already: no wait. A deadline that passes: its error.
	if st, err := v.Get(context.Background(), 1, views.AtLeast(0x2f0)); err != nil || st == nil {
		t.Errorf("Get with AtLeast(0/2F0) = %+v, %v", st, err)
	}
	short, stop := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer stop()
	if _, err := v.Get(short, 1, views.AtLeast(0x400)); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Get with AtLeast beyond the watermark until the deadline: %v, want context.DeadlineExceeded", err)
	}
	if err := v.WaitApplied(context.Background(), 0x300); err != nil {
		t.Errorf("WaitApplied(0/300): %v", err)
	}
	want := `
# HELP changes_view_applied_lsn WAL position (as a number) before which a view has applied every committed change: its progress watermark (View.AppliedThrough).
# TYPE changes_view_applied_lsn gauge
changes_view_applied_lsn{entity_type="account"} 768
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "changes_view_applied_lsn"); err != nil {
		t.Error(err)
	}
	// A record under the watermark key that is no watermark is passed over.
	tt.Consume(table, wmKey, enc(t, state(9, 0x500, "forged")))
	if w := v.AppliedThrough(); w.LSN != 0x300 {
		t.Errorf("AppliedThrough after a forged watermark = %s, want 0/300", w.LSN)
	}
}

// TestWatermarkCoversPageHeader: an LSN inside a WAL page's header (where
// pg_current_wal_insert_lsn points after a record that ended at the page's
// end) is covered by a watermark at the page's start; one past the header
// is not.
func TestWatermarkCoversPageHeader(t *testing.T) {
	w := views.Watermark{LSN: 0x4000} // a page boundary
	for lsn, want := range map[codecs.LSN]bool{0x3ff8: true, 0x4000: true, 0x4018: true, 0x4028: true, 0x4030: false, 0x5000: false} {
		if got := w.Covers(lsn); got != want {
			t.Errorf("watermark 0/4000 covers %s: %v, want %v", lsn, got, want)
		}
	}
	if (views.Watermark{}).Covers(0) {
		t.Error("no watermark covers nothing, not even 0")
	}
}
