package capture

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
)

// testPostgresURL is the PostgreSQL of the test stack (CHANGES_POSTGRES_URL,
// as .ci/run and stack/stack.sh env set it). Without it the test is
// skipped, or fails under CI=true.
func testPostgresURL(t *testing.T) string {
	t.Helper()
	url := os.Getenv("CHANGES_POSTGRES_URL")
	if url == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("CHANGES_POSTGRES_URL is not set: run the tests through .ci/run")
		}
		t.Skip("CHANGES_POSTGRES_URL is not set: eval \"$(bash stack/stack.sh env)\" to run against the test stack")
	}
	return url
}

// withParams adds query parameters to a PostgreSQL URL.
func withParams(url, params string) string {
	if strings.Contains(url, "?") {
		return url + "&" + params
	}
	return url + "?" + params
}

func TestConnectErrors(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := connectPG(ctx, "postgres://%zz", "connect to postgres", nil)
	if err == nil || !strings.HasPrefix(err.Error(), "postgres url: ") {
		t.Errorf("an unparsable URL: %v, want a postgres url error", err)
	}
	// Port 1 refuses: the error says what the connection was for, and Run
	// counts it as PostgreSQL's outage.
	_, err = connectReplication(ctx, "postgres://u@127.0.0.1:1/db?connect_timeout=5")
	if err == nil || !strings.HasPrefix(err.Error(), "connect to postgres for replication: ") {
		t.Errorf("a refused replication connection: %v", err)
	} else if dep := dependencyOf(err); dep != "postgres" {
		t.Errorf("a refused replication connection is an outage of %s, want postgres", dep)
	}
}

// TestConnections: the run-time parameters each connection needs reach
// the server, and the advisory lock keeps a second capture off the slot.
func TestConnections(t *testing.T) {
	// The URL asks for timeouts: the capture's parameters win over it.
	url := withParams(testPostgresURL(t), "idle_session_timeout=60s&idle_in_transaction_session_timeout=60s")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	slot := fmt.Sprintf("test_lock_%d", time.Now().UnixNano())

	lock, err := lockSlot(ctx, url, slot)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lock.Close(context.Background()) })
	for _, name := range []string{"idle_session_timeout", "idle_in_transaction_session_timeout"} {
		var v string
		if err := lock.QueryRow(ctx, "select current_setting($1)", name).Scan(&v); err != nil {
			t.Fatal(err)
		}
		if v != "0" {
			t.Errorf("the lock's connection has %s = %s, want 0", name, v)
		}
	}
	if _, err := lockSlot(ctx, url, slot); !errors.Is(err, errSlotBusy) {
		t.Errorf("a second lock of the slot: %v, want errSlotBusy", err)
	}

	repl, err := connectReplication(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { repl.Close(context.Background()) })
	// Only a replication connection takes replication commands.
	if _, err := pglogrepl.IdentifySystem(ctx, repl); err != nil {
		t.Errorf("IDENTIFY_SYSTEM on the replication connection: %v", err)
	}
	res, err := repl.Exec(ctx, "show idle_in_transaction_session_timeout").ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if got := string(res[0].Rows[0][0]); got != "0" {
		t.Errorf("the replication connection has idle_in_transaction_session_timeout = %s, want 0", got)
	}

	if err := lock.Close(ctx); err != nil {
		t.Fatal(err)
	}
	again, err := lockSlot(ctx, url, slot)
	if err != nil {
		t.Fatalf("closing the lock's connection releases the slot: %v", err)
	}
	again.Close(context.Background())
}
