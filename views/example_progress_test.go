package views_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"sync"
	"time"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/views"
	"github.com/changes-dev/changes/views/viewstest"
)

// A service that has just committed reads its own write. It asks
// PostgreSQL where the WAL is after its COMMIT, on the same connection:
//
//	var lsnText string
//	err := conn.QueryRow(ctx, "select pg_current_wal_insert_lsn()::text").Scan(&lsnText)
//	lsn, err := codecs.ParseLSN(lsnText)
//
// and reads with views.AtLeast(lsn): the read waits until the view has
// applied every transaction committed up to there. Here a viewstest table
// plays the platform, which delivers the write 20 ms later.
func ExampleAtLeast() {
	t := &exampleTB{}
	defer t.done()
	tbl := viewstest.New(t, "account")
	tbl.PutRow(42, codecs.Row{"name": json.RawMessage(`"old name"`)})
	tbl.Watermark(0x1000)

	lsn, _ := codecs.ParseLSN("0/1A00") // pg_current_wal_insert_lsn() after the COMMIT
	var delivering sync.WaitGroup
	delivering.Go(func() {
		time.Sleep(20 * time.Millisecond)
		tbl.PutRow(42, codecs.Row{"name": json.RawMessage(`"new name"`)})
		tbl.Watermark(0x1A00) // returns once the view applied it, maybe after the read
	})
	defer delivering.Wait() // before the view stops

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := tbl.View.Get(ctx, 42, views.AtLeast(lsn))
	if err != nil {
		log.Fatal(err) // the context's error if the platform did not deliver in time
	}
	fmt.Println(string(st.Row["name"]), "applied through", tbl.View.AppliedThrough().LSN)
	// Output: "new name" applied through 0/1A00
}

// Two entity types read at one cut: an advertiser's budget and its
// campaigns' spend, changed together in one transaction, are never seen
// half changed. Here viewstest tables play the platform: the transaction
// at 0/2000 moves 30 from the advertiser to campaign 7, and watermarks
// follow it into both views every 10 ms, as the capture writes them.
func ExampleGroup_Read() {
	t := &exampleTB{}
	defer t.done()
	advertisers, campaigns := viewstest.New(t, "advertiser"), viewstest.New(t, "campaign")
	put := func(tbl *viewstest.Table, id int64, lsn codecs.LSN, col, value string) {
		tbl.Put(&codecs.State{EntityType: tbl.View.EntityType(), EntityID: codecs.IntKey(id),
			Row:      codecs.Row{"id": json.RawMessage(fmt.Sprint(id)), col: json.RawMessage(value)},
			Position: codecs.Position{CommitLSN: lsn}, CommitTime: time.Now().UTC()})
	}
	put(advertisers, 1, 0x1000, "budget", "100")
	put(campaigns, 7, 0x1000, "spent", "0")

	g := views.NewGroup(advertisers.View, campaigns.View)
	done := make(chan struct{})
	platform := func(tbl *viewstest.Table, id int64, col, value string) {
		time.Sleep(20 * time.Millisecond)
		put(tbl, id, 0x2000, col, value)
		for lsn := codecs.LSN(0x2100); ; lsn += 0x100 {
			tbl.Watermark(lsn) // a cut may hold the view here
			select {
			case <-done:
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}
	var feeding sync.WaitGroup
	feeding.Go(func() { platform(advertisers, 1, "budget", "70") })
	feeding.Go(func() { platform(campaigns, 7, "spent", "30") })
	defer feeding.Wait() // before the views stop
	defer close(done)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := g.Read(ctx, func(cut views.Cut) error {
		a, err := advertisers.View.Get(ctx, 1)
		if err != nil {
			return err
		}
		c, err := campaigns.View.Get(ctx, 7)
		if err != nil {
			return err
		}
		fmt.Printf("budget %s, spent %s: a cut after the transaction: %v\n", a.Row["budget"], c.Row["spent"], cut.LSN > 0x2000)
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}
	// Output: budget 70, spent 30: a cut after the transaction: true
}
