package capture

import "errors"

// ErrSlotLost is returned by Run when the replication slot exists but
// PostgreSQL has removed WAL it still needed (pg_replication_slots.wal_status
// = 'lost'): changes between the slot's position and the oldest kept WAL are
// gone from the stream. The capture never recreates the slot by itself; an
// operator drops it and starts again, accepting the gap.
var ErrSlotLost = errors.New("replication slot lost its WAL")

// ErrSetup is returned by New and Run when the database cannot be captured as
// configured: wal_level is not logical, a table or its id column is missing or
// of the wrong type, a table has no usable replica identity, or the slot uses
// another output plugin. The message names what is wrong.
var ErrSetup = errors.New("capture setup")

// ErrRecordTooLarge is returned by Run when a change encodes to more than
// kafka.max_record_bytes. The change is not skipped: the capture stops before
// acknowledging it, and the message names the table and the entity id.
var ErrRecordTooLarge = errors.New("change exceeds the maximum record size")

// ErrSlotMissing is returned by Run when the replication slot does not exist
// although the history holds changes: the slot was dropped, and the changes
// committed since are not in the stream. Run creates no slot then; an
// operator who accepts the gap runs the capture once with WithRecreateSlot
// (changes capture --recreate-slot).
var ErrSlotMissing = errors.New("replication slot is missing")

// ErrHistoryGap is returned by Run when a change PostgreSQL resends is missing
// from the history although later changes are in it: a Kafka write failed
// after later writes succeeded (sarama goes on with later batches). Writing
// the change now would break the history's order, skipping it would lose it,
// so the capture stops. The history must be rebuilt: stop the platform, drop
// the slot, delete the topics, and start again (a new snapshot is taken).
var ErrHistoryGap = errors.New("the history has a gap")
