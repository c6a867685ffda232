package capture

import (
	"context"
	"errors"
	"fmt"
	"maps"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// connectPG connects to the PostgreSQL at url with params set over the
// run-time parameters the URL gives. what says what the connection is for
// in the error when it cannot be made.
func connectPG(ctx context.Context, url, what string, params map[string]string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("postgres url: %w", err)
	}
	maps.Copy(cfg.RuntimeParams, params)
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return conn, nil
}

// connectReplication opens a connection in logical replication mode.
// Closing the returned connection closes it.
func connectReplication(ctx context.Context, url string) (*pgconn.PgConn, error) {
	conn, err := connectPG(ctx, url, "connect to postgres for replication", map[string]string{
		"replication": "database",
		// After EXPORT_SNAPSHOT the connection idles in a transaction for
		// the whole copy.
		"idle_in_transaction_session_timeout": "0",
	})
	if err != nil {
		return nil, err
	}
	// pgx sends nothing on connecting: the connection is the replication
	// protocol's alone, and pgx.Conn.Close only closes it.
	return conn.PgConn(), nil
}

// errSlotBusy is returned by lockSlot when another capture holds the slot.
var errSlotBusy = errors.New("another capture holds the slot")

// lockSlot takes a session advisory lock named after the slot on a
// connection of its own; closing the connection releases it.
func lockSlot(ctx context.Context, url, slot string) (*pgx.Conn, error) {
	// The connection idles while it holds the lock: no server timeout may end it.
	conn, err := connectPG(ctx, url, "connect to postgres", map[string]string{
		"idle_session_timeout":                "0",
		"idle_in_transaction_session_timeout": "0",
	})
	if err != nil {
		return nil, err
	}
	var ok bool
	if err := conn.QueryRow(ctx, "select pg_try_advisory_lock(hashtextextended($1, 0))", "changes.capture/"+slot).Scan(&ok); err != nil {
		conn.Close(context.Background())
		return nil, fmt.Errorf("lock slot %s: %w", slot, err)
	}
	if !ok {
		conn.Close(context.Background())
		return nil, fmt.Errorf("%w %s", errSlotBusy, slot)
	}
	return conn, nil
}
