package views_test

import (
	"context"
	"fmt"
	"log"

	"github.com/changes-dev/changes/topology"
	"github.com/changes-dev/changes/views"
)

// A service embeds the snapshot of one entity type and reads it locally. The
// view needs a running Kafka cluster with the platform's topics, so this
// example is compiled but not run.
func Example() {
	cfg, err := topology.Load("/etc/changes/changes.yaml")
	if err != nil {
		log.Fatal(err)
	}
	accounts, err := views.New(topology.New(cfg), "account", views.WithStorageDir("/var/lib/my-service/views"))
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

	st, err := accounts.Get(ctx, 42)
	if err != nil {
		log.Fatal(err)
	}
	if st == nil {
		fmt.Println("no account 42")
		return
	}
	var acc struct {
		Name   string `json:"name"`
		Budget string `json:"budget"` // numeric travels as a string: no precision lost
	}
	if err := st.Row.Decode(&acc); err != nil {
		log.Fatal(err)
	}
	fmt.Printf("account 42 is %s with budget %s, as of %s\n", acc.Name, acc.Budget, st.CommitTime)
}
