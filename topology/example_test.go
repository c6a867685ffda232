package topology_test

import (
	"fmt"
	"log"

	"github.com/changes-dev/changes/topology"
)

// Parse a config and list the topics the deployment needs. Environment
// variables (CHANGES_TOPIC_PREFIX, ...) would win over the YAML.
func Example() {
	cfg, err := topology.Parse([]byte(`
kafka: {brokers: ["127.0.0.1:9092"]}
postgres: {url: "postgres://postgres@127.0.0.1/app"}
entities:
  - {type: account, table: accounts, partitions: 4}
`))
	if err != nil {
		log.Fatal(err)
	}
	topo := topology.New(cfg)
	for _, s := range topo.Topics() {
		fmt.Printf("%-31s partitions=%d cleanup.policy=%s\n", s.Name, s.Partitions, s.Configs["cleanup.policy"])
	}
	fmt.Println("group:", topo.SnapshotGroup("account"))
	// Output:
	// changes.history                 partitions=1 cleanup.policy=delete
	// changes.capture-state           partitions=1 cleanup.policy=compact
	// changes.deadletter              partitions=1 cleanup.policy=delete
	// changes.events.account          partitions=4 cleanup.policy=delete
	// changes.snapshot.account-table  partitions=4 cleanup.policy=compact
	// group: changes.snapshot.account
}
