// Package topology turns one configuration into everything the parts of the
// platform must agree on: the entity types and their tables, the names of the
// topics and consumer groups (Topology), the shape of every topic (Topics,
// EnsureTopics) and the Kafka client settings (SaramaConfig).
//
// # Configuration
//
// The configuration is one YAML file (see configs/local.yaml), read by Load.
// Every field's default and environment variable is documented on Config.
// Unknown fields are errors, and Validate names the first wrong field by its
// YAML path, e.g. "entities[1].partitions: must be between 1 and 10000, got 0".
//
// # Topics
//
// The history topic has exactly one partition, so every consumer sees the
// same order; the snapshot tables are compacted; every topic accepts the
// largest record the capture may write. EnsureTopics creates what is missing
// and refuses to work with a topic of another shape.
//
// # Client settings
//
// goka's and sarama's defaults lose or reorder data for this platform
// (acks=1, no idempotence, new groups starting at the newest offset); use
// SaramaConfig for every client.
package topology
