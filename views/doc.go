// Package views gives a service a locally replicated, query-able snapshot of
// one entity type, embedded in-process: a goka view of the type's snapshot
// table, stored in goleveldb and kept current from the table's compacted
// changelog.
//
// A View answers Get(id) from local storage, without a network round trip.
// While it recovers (right after Run starts) it may return stale states;
// WaitRecovered blocks until every partition has caught up with the end of
// its changelog as of the start.
//
// This package pulls in neither the capture nor the processors: a service that
// embeds views depends on goka, sarama and goleveldb only.
package views
