package views_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/topology"
	"github.com/changes-dev/changes/views"
	"github.com/changes-dev/changes/views/viewstest"
)

// Account is a service's own type for the accounts table: the json tags name
// its columns.
type Account struct {
	Name   string `json:"name"`
	Budget string `json:"budget"` // numeric travels as a string: no precision lost
	Active bool   `json:"active"`
}

// A service embeds the snapshot of one entity type and reads it locally. It
// needs the brokers, the table and its partitions; no database credentials.
// The view needs a running Kafka cluster with the platform's topics, so
// this example is compiled but not run.
func Example() {
	accounts, err := views.OpenTyped[Account](views.Config{
		Kafka:      topology.KafkaConfig{Brokers: []string{"kafka-1:9092", "kafka-2:9092"}},
		EntityType: "account",
		Topic:      "changes.snapshot.account-table",
		Partitions: 8,
		StorageDir: "/var/lib/my-service/views",
	})
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		if err := accounts.Run(ctx); err != nil {
			log.Print(err)
		}
	}()
	if err := accounts.WaitRecovered(ctx); err != nil {
		log.Fatal(err)
	}

	acc, ok, err := accounts.Get(ctx, 42)
	if err != nil {
		log.Fatal(err)
	}
	if !ok {
		fmt.Println("no account 42")
		return
	}
	fmt.Printf("account 42 is %s with budget %s, as of %s\n", acc.Value.Name, acc.Value.Budget, acc.CommitTime)
}

// A service that runs next to the platform and reads its config file can
// build the view from the deployment's topology instead.
func ExampleNewTyped() {
	cfg, err := topology.Load("/etc/changes/changes.yaml")
	if err != nil {
		log.Fatal(err)
	}
	accounts, err := views.NewTyped[Account](topology.New(cfg), "account", views.WithStorageDir("/var/lib/my-service/views"))
	if err != nil {
		log.Fatal(err)
	}
	_ = accounts // run and read as in the package example
}

// Follow the changes of a Typed view, decoded.
func ExampleTypedSubscription_Changes() {
	var accounts *views.Typed[Account] // running, as in the package example
	ctx := context.Background()
	sub := accounts.Subscribe(1024)
	defer sub.Close()
	for c, err := range sub.Changes(ctx) {
		switch {
		case err != nil:
			log.Printf("account %s: %v", c.EntityID, err)
		case c.Entity == nil:
			fmt.Println("account", c.EntityID, "is gone")
		case !c.Entity.Value.Active:
			fmt.Println("account", c.EntityID, "is inactive")
		}
	}
	// The channel closed: sub.Err() says why (views.ErrSlowSubscriber: re-read and subscribe again).
}

// Iterate a range of ids in order, and stop early.
func ExampleTyped_Range() {
	var accounts *views.Typed[Account] // running, as in the package example
	ctx := context.Background()
	inactive := 0
	for acc, err := range accounts.Range(ctx, 1000, 1999) {
		if err != nil {
			log.Fatal(err)
		}
		if !acc.Value.Active {
			inactive++
		}
		if inactive == 10 {
			break
		}
	}
	fmt.Println(inactive, "inactive accounts among ids 1000-1999")
}

// React to changes as the view applies them, without ever blocking it.
func ExampleView_Subscribe() {
	var accounts *views.View // running, as in the package example
	for {
		sub := accounts.Subscribe(1024)
		for u := range sub.C() {
			if u.State == nil {
				fmt.Println("account", u.EntityID, "is gone")
			}
		}
		if sub.Err() != views.ErrSlowSubscriber {
			return // the view stopped
		}
		// Fell behind: re-read what matters with Get or Range, then subscribe again.
	}
}

// Placement is a row of a table keyed by two columns,
// primary key (campaign_id, site).
type Placement struct {
	CampaignID int64  `json:"campaign_id"`
	Site       string `json:"site"`
	Bid        string `json:"bid"`
}

// Read an entity by its composite key, then page through the view in key
// order: a page ends at a key, After continues after it. Here an in-memory
// table (views/viewstest, as a service's tests use it) stands in for the
// Kafka one.
func ExampleView_GetKey() {
	t := &exampleTB{}
	defer t.done()
	tbl := viewstest.New(t, "placement") // in a test: viewstest.New(t, "placement")
	for _, p := range []Placement{{7, "news.example/sports", "0.5000"}, {7, "news.example/tech", "0.4000"},
		{12, "video.example/home", "1.2500"}, {7, "shop.example/deals/summer", "0.7500"}} {
		k := codecs.CompositeKey(codecs.IntKey(p.CampaignID), codecs.TextKey(p.Site))
		var row codecs.Row // the columns, as the snapshot holds them
		b, _ := json.Marshal(p)
		if err := json.Unmarshal(b, &row); err != nil {
			log.Fatal(err)
		}
		tbl.PutKeyRow(k, row)
	}
	placements := &views.Typed[Placement]{View: tbl.View}
	ctx := context.Background()

	// A composite key from its parts: the slash in a site is just a character.
	p, ok, err := placements.GetKey(ctx, codecs.CompositeKey(codecs.IntKey(7), codecs.TextKey("news.example/sports")))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(ok, p.Key, p.Value.Bid)

	// Pages of two in key order (the bytes of the keys' canonical text):
	// each page starts after the last key of the one before.
	seq := tbl.View.All(ctx)
	for page := 1; ; page++ {
		var keys []codecs.Key
		for st, err := range seq {
			if err != nil {
				log.Fatal(err)
			}
			keys = append(keys, st.EntityID)
			if len(keys) == 2 {
				break
			}
		}
		if len(keys) == 0 {
			break
		}
		fmt.Println("page", page, keys)
		seq = tbl.View.After(ctx, keys[len(keys)-1])
	}
	// Output:
	// true ["7","news.example/sports"] 0.5000
	// page 1 [["12","video.example/home"] ["7","news.example/sports"]]
	// page 2 [["7","news.example/tech"] ["7","shop.example/deals/summer"]]
}

// exampleTB stands in for the *testing.T a test gives viewstest.New: a
// failure ends the program, done runs the cleanups.
type exampleTB struct{ cleanups []func() }

func (t *exampleTB) Helper()                           {}
func (t *exampleTB) Cleanup(f func())                  { t.cleanups = append(t.cleanups, f) }
func (t *exampleTB) Errorf(format string, args ...any) { log.Printf(format, args...) }
func (t *exampleTB) Fatal(args ...any)                 { log.Fatal(args...) }
func (t *exampleTB) Fatalf(format string, args ...any) { log.Fatalf(format, args...) }
func (t *exampleTB) done() {
	for i := len(t.cleanups) - 1; i >= 0; i-- {
		t.cleanups[i]()
	}
}
