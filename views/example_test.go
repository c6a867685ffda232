package views_test

import (
	"context"
	"fmt"
	"log"

	"github.com/changes-dev/changes/topology"
	"github.com/changes-dev/changes/views"
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
