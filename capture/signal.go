package capture

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// Signals reach the capture through the WAL, in commit order with the
// changes around them: a logical decoding message
//
//	select pg_logical_emit_message(true, 'changes:<slot>', '<json>')
//
// that the slot's stream carries (pgoutput's messages option) and no table
// holds. A request for an incremental snapshot is one (what changes
// snapshot writes, and what a DBA may write by hand); so are the watermarks
// the capture writes around each chunk it copies (see incremental.go). A
// message is the slot's own by its prefix: several deployments may capture
// one database, each from its own slot.

// SignalPrefix is the logical decoding message prefix of slot's signals.
func SignalPrefix(slot string) string { return "changes:" + slot }

// signal is a message of the capture's, in JSON. One of Snapshot, Cancel
// and Watermark is set.
type signal struct {
	// Snapshot requests an incremental snapshot of the entity type's
	// table, of the keys from From to To (each included; "" is the first
	// or the last key), in key text as the history writes it.
	Snapshot string `json:"snapshot,omitempty"`
	From     string `json:"from,omitempty"`
	To       string `json:"to,omitempty"`
	// Cancel ends the incremental snapshots of an entity type, running or
	// waiting.
	Cancel string `json:"cancel,omitempty"`
	// Watermark is "low" or "high": the capture's marks around chunk Chunk
	// of incremental snapshot ID.
	Watermark string `json:"watermark,omitempty"`
	ID        string `json:"id,omitempty"`
	Chunk     int64  `json:"chunk,omitempty"`
	// Run is the copier's nonce: a watermark an earlier session wrote is
	// not this one's.
	Run string `json:"run,omitempty"`
}

// Watermark kinds.
const (
	lowWatermark  = "low"
	highWatermark = "high"
)

// parseSignal reads a message's content; a message that is not a signal is
// an error naming what is wrong.
func parseSignal(content []byte) (signal, error) {
	var s signal
	if err := json.Unmarshal(content, &s); err != nil {
		return s, fmt.Errorf("signal %q: %w", content, err)
	}
	set := 0
	for _, v := range []string{s.Snapshot, s.Cancel, s.Watermark} {
		if v != "" {
			set++
		}
	}
	switch {
	case set != 1:
		return s, fmt.Errorf("signal %q: exactly one of snapshot, cancel and watermark must be set", content)
	case s.Watermark != "" && s.Watermark != lowWatermark && s.Watermark != highWatermark:
		return s, fmt.Errorf("signal %q: watermark must be %q or %q", content, lowWatermark, highWatermark)
	case s.Watermark != "" && (s.ID == "" || s.Chunk <= 0):
		return s, fmt.Errorf("signal %q: a watermark needs an id and a chunk above 0", content)
	}
	return s, nil
}

// emitSignal writes s to the WAL as slot's signal, in a transaction of its
// own, and returns once it is committed.
func emitSignal(ctx context.Context, conn *pgx.Conn, slot string, s signal) error {
	content, err := json.Marshal(s)
	if err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, "select pg_logical_emit_message(true, $1, $2::text)", SignalPrefix(slot), string(content)); err != nil {
		return fmt.Errorf("write signal %s: %w", content, err)
	}
	return nil
}

// RequestSnapshot asks the capture of slot for an incremental snapshot of
// entityType's table, of the keys from from to to (each included, "" for
// no bound), through the WAL (see SignalPrefix): the capture starts it when
// its stream reaches the request, after any it is running, and resumes it
// after a restart. conn is a connection to the captured database.
func RequestSnapshot(ctx context.Context, conn *pgx.Conn, slot, entityType, from, to string) error {
	if entityType == "" {
		return errors.New("request snapshot: no entity type")
	}
	return emitSignal(ctx, conn, slot, signal{Snapshot: entityType, From: from, To: to})
}

// CancelSnapshot asks the capture of slot to end the incremental snapshots
// of entityType, running or waiting. What they copied stays in the history.
func CancelSnapshot(ctx context.Context, conn *pgx.Conn, slot, entityType string) error {
	if entityType == "" {
		return errors.New("cancel snapshot: no entity type")
	}
	return emitSignal(ctx, conn, slot, signal{Cancel: entityType})
}
