package views

import (
	"errors"
	"fmt"
	"path/filepath"

	"github.com/changes-dev/changes/topology"
)

// Config is what a View needs to know: which table to read and how to reach
// Kafka. It holds no database credentials and nothing of the deployment's
// other entity types, so a service that embeds a view builds it in code or
// from its own settings; ConfigFor builds it from a deployment's Topology.
type Config struct {
	// Kafka says how to reach the brokers: Brokers (required), Version
	// (default 4.0.0), ClientID (default changes), TLS and SASL, as
	// topology.KafkaConfig documents them. A view only reads: the producer
	// and topic settings (replication, linger, record size) are not used.
	Kafka topology.KafkaConfig
	// EntityType is the entity type the table holds; it names the view in
	// errors, logs and the changes_view_* metrics. Required.
	EntityType string
	// Topic is the type's snapshot table, "<prefix>.snapshot.<type>-table"
	// (topology.Topology.Snapshot), e.g. changes.snapshot.account-table.
	// Required.
	Topic string
	// Partitions is the table's partition count, the deployment's
	// entities[].partitions: Get finds an entity's partition with it.
	// Required, 1 to 10000.
	Partitions int
	// StorageDir is where the view keeps its goleveldb copy, one database
	// per partition; WithStorageDir overrides it. Default: data/views.
	StorageDir string
}

// DefaultStorageDir is Config.StorageDir's default: the platform's default
// storage (topology.DefaultStorage) and "views".
const DefaultStorageDir = topology.DefaultStorage + "/views"

// ConfigFor returns the Config of entityType's view in topo's deployment:
// its Kafka settings, its table and partitions, and <storage>/views. It
// fails if topo does not declare entityType.
func ConfigFor(topo *topology.Topology, entityType string) (Config, error) {
	ent, ok := topo.Config().Entity(entityType)
	if !ok {
		return Config{}, fmt.Errorf("view: entity type %q is not declared", entityType)
	}
	return Config{
		Kafka:      topo.Config().Kafka,
		EntityType: entityType,
		Topic:      topo.Snapshot(entityType),
		Partitions: ent.Partitions,
		StorageDir: filepath.Join(topo.Config().Storage, "views"),
	}, nil
}

// Validate checks c, its defaults applied, and names the first wrong field
// (a *topology.FieldError for the Kafka settings). It reads the TLS and
// SASL files c names, so a wrong path is reported before a view starts.
func (c Config) Validate() error { return c.check() }

// check applies the defaults to c, normalises it and validates it.
func (c *Config) check() error {
	if c.StorageDir == "" {
		c.StorageDir = DefaultStorageDir
	}
	if err := c.Kafka.ValidateClient(); err != nil {
		return err
	}
	switch {
	case c.EntityType == "":
		return errors.New("view config: EntityType is required")
	case c.Topic == "":
		return fmt.Errorf("view config: Topic is required (the snapshot table of %s, e.g. changes.snapshot.%s-table)", c.EntityType, c.EntityType)
	case c.Partitions < 1 || c.Partitions > 10000:
		return fmt.Errorf("view config: Partitions must be between 1 and 10000 (the table's partitions), got %d", c.Partitions)
	}
	return nil
}
