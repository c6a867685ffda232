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

// A service that embeds views sets the Kafka security in its own code; the
// password comes from its own secret store, never from a file in the
// repository. SaramaConfig (and every client the platform makes from the
// config) then speaks TLS and SCRAM.
func ExampleKafkaConfig_security() {
	k := topology.KafkaConfig{
		Brokers:        []string{"kafka-1.internal:9093"},
		Version:        topology.DefaultKafkaVersion,
		ClientID:       "orders-service",
		MaxRecordBytes: topology.DefaultMaxRecordBytes,
		TLS:            topology.KafkaTLSConfig{Enabled: true, ServerName: "kafka.internal"}, // the system's roots
		SASL: topology.KafkaSASLConfig{
			Mechanism: topology.SASLScramSHA512,
			Username:  "orders-service",
			Password:  "from-your-secret-store",
		},
	}
	c, err := topology.SaramaConfig(k)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("tls:", c.Net.TLS.Enable, "verify:", !c.Net.TLS.Config.InsecureSkipVerify, "sasl:", c.Net.SASL.Mechanism, c.Net.SASL.User)
	fmt.Println("warnings:", len(k.SecurityWarnings()))
	// Output:
	// tls: true verify: true sasl: SCRAM-SHA-512 orders-service
	// warnings: 0
}
