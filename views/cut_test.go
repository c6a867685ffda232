package views_test

import (
	"context"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/views"
	"github.com/changes-dev/changes/views/viewstest"
)

// TestGroupReadsACut: a Group's read sees both views held at the same
// watermark: the changes before it in each view, none after, however the
// two views' records interleave. Views that stand at a watermark already
// (the tables are quiet) are read there at once.
func TestGroupReadsACut(t *testing.T) {
	a, b := viewstest.New(t, "advertiser"), viewstest.New(t, "campaign")
	put := func(tbl *viewstest.Table, id int64, lsn codecs.LSN, version int) {
		tbl.Put(&codecs.State{EntityType: tbl.View.EntityType(), EntityID: codecs.IntKey(id),
			Row:      codecs.Row{"id": json.RawMessage("1"), "version": json.RawMessage(jsonInt(version))},
			Position: codecs.Position{CommitLSN: lsn}, CommitTime: time.Now().UTC()})
	}
	put(a, 1, 0x08, 1)
	put(b, 1, 0x09, 1)
	a.Watermark(0x10)
	b.Watermark(0x10)

	g := views.NewGroup(a.View, b.View)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	quiet := time.Now()
	err := g.Read(ctx, func(cut views.Cut) error {
		if cut.LSN != 0x10 {
			t.Errorf("quiet views read at cut %s, want 0/10, where they stand", cut.LSN)
		}
		return nil
	})
	if err != nil || time.Since(quiet) > time.Second {
		t.Fatalf("a read of quiet views: %v after %s", err, time.Since(quiet))
	}
	// Changes after the watermark: the next read waits for the next one.
	put(a, 1, 0x15, 2)
	put(b, 1, 0x18, 2)
	type seen struct {
		cut  views.Cut
		a, b string
	}
	got := make(chan seen, 1)
	go func() {
		err := g.Read(ctx, func(cut views.Cut) error {
			sa, err := a.View.Get(ctx, 1)
			if err != nil {
				return err
			}
			sb, err := b.View.Get(ctx, 1)
			if err != nil {
				return err
			}
			got <- seen{cut, string(sa.Row["version"]), string(sb.Row["version"])}
			return nil
		})
		if err != nil {
			t.Error(err)
			close(got)
		}
	}()
	time.Sleep(100 * time.Millisecond) // the read registers its cut

	// Each view: the watermark 0x20, a change after it. The partitions
	// are held at the watermark, so the changes after it wait.
	var feed sync.WaitGroup
	feed.Go(func() { a.Watermark(0x20); put(a, 1, 0x25, 3) })
	feed.Go(func() { b.Watermark(0x20); put(b, 1, 0x28, 3) })
	s, ok := <-got
	if !ok {
		t.Fatal("no cut")
	}
	if s.cut.LSN != 0x20 || s.a != "2" || s.b != "2" {
		t.Errorf("read at cut %s: advertiser version %s, campaign version %s; want the cut 0/20 and version 2 of both", s.cut.LSN, s.a, s.b)
	}
	feed.Wait() // released: the changes after the watermark apply
	if st, err := a.View.Get(ctx, 1); err != nil || string(st.Row["version"]) != "3" {
		t.Errorf("after the read: %+v, %v; want version 3", st, err)
	}

	// No watermark comes: the read gives up with the context.
	short, stop := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer stop()
	err = g.Read(short, func(views.Cut) error { t.Error("read without a cut"); return nil })
	if err == nil {
		t.Error("a read without a watermark succeeded")
	}
}

func jsonInt(n int) string { b, _ := json.Marshal(n); return string(b) }
