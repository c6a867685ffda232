package capture

import (
	"errors"
	"strings"

	"github.com/IBM/sarama"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/changes-dev/changes/internal/outage"
)

// ErrSlotLost is returned by Run when the replication slot exists but
// PostgreSQL has removed WAL it still needed (pg_replication_slots.wal_status
// = 'lost'): changes between the slot's position and the oldest kept WAL are
// gone from the stream. The capture never recreates the slot by itself: an
// operator starts it with WithResync (changes capture --resync), which
// drops the slot and recovers without a gap in the snapshot tables, or
// drops it and starts with WithRecreateSlot, accepting the gap.
var ErrSlotLost = errors.New("replication slot lost its WAL")

// ErrSetup is returned by New and Run when the database cannot be captured as
// configured: wal_level is not logical, a table or a key column is missing,
// nullable or of the wrong type, the key columns are not a unique key of
// their table, a table has no usable replica identity, or the slot uses
// another output plugin. The message names what is wrong.
var ErrSetup = errors.New("capture setup")

// ErrRecordTooLarge is returned by Run when a change encodes to more than
// kafka.max_record_bytes. The change is not skipped: the capture stops before
// acknowledging it, nothing of its PostgreSQL transaction is written to the
// history (the open Kafka transaction is aborted if it holds part of it),
// and the message names the table and the entity id.
var ErrRecordTooLarge = errors.New("change exceeds the maximum record size")

// ErrInvalidKey is returned by Run when a change has no valid entity key: a
// key column NULL or missing, a key longer than codecs.MaxKeyBytes, or a
// text key that starts with codecs.ReservedKeyPrefix. Like
// ErrRecordTooLarge it stops the capture before anything of the change's
// PostgreSQL transaction is written or acknowledged; the message names the
// table and the key column(s).
var ErrInvalidKey = errors.New("change has no valid entity key")

// ErrSlotMissing is returned by Run when the replication slot does not exist
// although the history holds changes: the slot was dropped, and the changes
// committed since are not in the stream. Run creates no slot then; an
// operator runs the capture with WithResync (changes capture --resync) to
// recover without a gap in the snapshot tables, or once with
// WithRecreateSlot (--recreate-slot) to accept the gap.
var ErrSlotMissing = errors.New("replication slot is missing")

// Retryable reports whether a session that ended with err can succeed when
// started again: true for outages of Kafka or PostgreSQL (refused or lost
// connections, timeouts, a broker without a leader, a failed write), false
// for what needs someone to act: a lost or missing slot, a setup error, a
// change too large to write or without a valid key, and what outage.Retryable refuses (a
// configuration Kafka or PostgreSQL rejects, refused credentials).
func Retryable(err error) bool {
	if errors.Is(err, ErrSlotLost) || errors.Is(err, ErrSetup) ||
		errors.Is(err, ErrRecordTooLarge) || errors.Is(err, ErrInvalidKey) || errors.Is(err, ErrSlotMissing) ||
		errors.Is(err, sarama.ErrMessageSizeTooLarge) || errors.Is(err, sarama.ErrTransactionalIDAuthorizationFailed) {
		return false
	}
	var parseErr *pgconn.ParseConfigError
	return !errors.As(err, &parseErr) && outage.Retryable(err)
}

// dependencyOf names the dependency an error of a session comes from, for
// logs and changes_capture_connected.
func dependencyOf(err error) string {
	var kErr sarama.KError
	msg := err.Error()
	if errors.As(err, &kErr) || strings.Contains(msg, "kafka") {
		return "kafka"
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) || strings.Contains(msg, "postgres") || strings.Contains(msg, "replication") {
		return "postgres"
	}
	return "kafka"
}
