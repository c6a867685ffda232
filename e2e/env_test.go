package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/jackc/pgx/v5"

	"github.com/changes-dev/changes/internal/platform"
	"github.com/changes-dev/changes/topology"
)

// env is the real stack a test runs against, from the environment that
// stack/stack.sh env prints (and .ci/run exports).
type env struct {
	brokers string
	pgURL   string
}

// stack returns the stack's addresses. Without them the test is skipped on a
// developer's machine and fails under CI=true: CI must never pass by skipping.
func stack(t testing.TB) env {
	t.Helper()
	e := env{brokers: os.Getenv("CHANGES_KAFKA_BROKERS"), pgURL: os.Getenv("CHANGES_POSTGRES_URL")}
	if e.brokers == "" || e.pgURL == "" {
		msg := "end-to-end tests need CHANGES_KAFKA_BROKERS and CHANGES_POSTGRES_URL: run `stack/stack.sh up && eval \"$(stack/stack.sh env)\"`, or `make test`"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, e.pgURL)
	if err != nil {
		t.Fatalf("postgres at CHANGES_POSTGRES_URL is not reachable: %v", err)
	}
	defer conn.Close(ctx)
	dropStaleSlots.Do(func() {
		// A run killed by -timeout skips its cleanup; its slot would hold WAL
		// and a slot of the stack's limited number forever.
		_, err = conn.Exec(ctx, `select pg_drop_replication_slot(slot_name) from pg_replication_slots
			where not active and slot_name ~ '^e2e_[a-z_]+_[0-9a-f]{8}$'`)
		if err != nil {
			t.Logf("dropping stale test slots: %v", err)
		}
	})
	return e
}

var dropStaleSlots sync.Once

// uniqueName returns a name no other test run uses, for topics, slots and tables.
func uniqueName(prefix string) string {
	b := make([]byte, 4)
	rand.Read(b)
	return "e2e_" + prefix + "_" + hex.EncodeToString(b)
}

// testConfig builds a validated config for the stack with its own topic
// prefix, slot, publication and storage, and entity types for tables.
func testConfig(t testing.TB, e env, name string, entities []topology.EntityConfig) *topology.Config {
	t.Helper()
	rf := os.Getenv("CHANGES_KAFKA_REPLICATION_FACTOR")
	if rf == "" {
		rf = "1"
	}
	cfg, err := topology.Parse(fmt.Appendf(nil, "kafka: {brokers: [%q], replication_factor: %s}\npostgres: {url: %q}\nentities: [{type: placeholder, table: placeholder}]\n",
		e.brokers, rf, e.pgURL))
	if err != nil {
		t.Fatal(err)
	}
	// Fields set after Parse, so CHANGES_* variables cannot make two runs share them.
	cfg.Postgres.Slot = name
	cfg.Postgres.Publication = name
	cfg.Topics.Prefix = "e2e." + name
	cfg.Storage = t.TempDir()
	cfg.Metrics = ""
	cfg.Entities = entities
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// cleanupStack removes what a test left in PostgreSQL and Kafka. It runs after
// the platform stopped (t.Cleanup runs in reverse order).
func cleanupStack(t testing.TB, e env, cfg *topology.Config, tables ...string) {
	onCleanup(t, e, func(ctx context.Context, conn *pgx.Conn) {
		dropSlot(t, ctx, conn, cfg.Postgres.Slot)
		stmts := []string{"drop publication if exists " + pgx.Identifier{cfg.Postgres.Publication}.Sanitize()}
		for _, tb := range tables {
			stmts = append(stmts, "drop table if exists "+tb)
		}
		for _, s := range stmts {
			if _, err := conn.Exec(ctx, s); err != nil {
				t.Errorf("cleanup: %s: %v", s, err)
			}
		}
		deleteTopics(t, cfg)
	})
}

// onCleanup runs fn at the test's cleanup with a connection of its own.
func onCleanup(t testing.TB, e env, fn func(context.Context, *pgx.Conn)) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, e.pgURL)
		if err != nil {
			t.Errorf("cleanup: %v", err)
			return
		}
		defer conn.Close(ctx)
		fn(ctx, conn)
	})
}

// dropSlot drops a test's replication slot, waiting for the capture to let
// go of it: the slot stays active for a moment after the capture disconnects.
func dropSlot(t testing.TB, ctx context.Context, conn *pgx.Conn, slot string) {
	var err error
	for i := 0; i < 50; i++ {
		_, err = conn.Exec(ctx, "select pg_drop_replication_slot(slot_name) from pg_replication_slots where slot_name = $1", slot)
		if err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Errorf("cleanup: drop slot %s: %v", slot, err)
}

// deleteTopics deletes the topics of cfg; a topic that does not exist is fine.
func deleteTopics(t testing.TB, cfg *topology.Config) {
	admin, err := topology.NewClusterAdmin(cfg.Kafka)
	if err != nil {
		t.Errorf("cleanup: %v", err)
		return
	}
	defer admin.Close()
	for _, spec := range topology.New(cfg).Topics() {
		admin.DeleteTopic(spec.Name)
	}
}

// testLogger writes the platform's logs through t.Log, so they show with the
// failing test only. Lines logged after the test's last cleanup (goka leaves
// a goroutine or two behind) are dropped: t.Log would panic on them.
func testLogger(t testing.TB) *slog.Logger {
	w := &tWriter{t: t}
	// Runs after the cleanups registered later, such as the platform's stop.
	t.Cleanup(func() { w.done.Store(true) })
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type tWriter struct {
	t    testing.TB
	done atomic.Bool
}

func (w *tWriter) Write(p []byte) (int, error) {
	if !w.done.Load() {
		w.t.Log(string(p[:len(p)-1]))
	}
	return len(p), nil
}

// itemTable sets up a test of one entity type "item" (2 partitions) on its
// own table, created with columns: the config (tune may change it before
// the topics are created), a connection closed at the test's end, and the
// cleanup of everything it made.
func itemTable(t testing.TB, ctx context.Context, e env, prefix, columns string, partitions int, tune func(*topology.Config)) (*topology.Config, *topology.Topology, *pgx.Conn, string) {
	t.Helper()
	name := uniqueName(prefix)
	table := name + "_item"
	cfg := testConfig(t, e, name, []topology.EntityConfig{{Type: "item", Table: "public." + table, IDColumn: "id", Partitions: partitions}})
	if tune != nil {
		tune(cfg)
	}
	topo := topology.New(cfg)
	cleanupStack(t, e, cfg, table)
	db, err := pgx.Connect(ctx, e.pgURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close(context.Background()) })
	execSQL(t, ctx, db, "create table "+table+" ("+columns+")")
	if err := platform.EnsureTopics(topo); err != nil {
		t.Fatal(err)
	}
	return cfg, topo, db, table
}

// saramaConfig is topology.SaramaConfig that fails the test on an error.
func saramaConfig(t testing.TB, k topology.KafkaConfig) *sarama.Config {
	t.Helper()
	c, err := topology.SaramaConfig(k)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
