// Package e2e holds the end-to-end tests: real PostgreSQL, real Kafka, the
// real capture, processors and views. They read the stack's addresses from
// CHANGES_POSTGRES_URL and CHANGES_KAFKA_BROKERS (stack/stack.sh env prints
// them); without them they skip, except under CI=true, where they fail.
package e2e
