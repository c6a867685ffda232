package e2e

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/topology"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// database creates a database of its own for a test that needs fixed table
// names (the demo's), and drops it (with the slot in it) at the end.
func database(t testing.TB, e env, slot string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	name := uniqueName("db")
	conn, err := pgx.Connect(ctx, e.pgURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "create database "+name); err != nil {
		t.Fatal(err)
	}
	onCleanup(t, e, func(ctx context.Context, conn *pgx.Conn) {
		dropSlot(t, ctx, conn, slot)
		if _, err := conn.Exec(ctx, "drop database if exists "+name+" with (force)"); err != nil {
			t.Errorf("cleanup: drop database %s: %v", name, err)
		}
	})
	u, err := url.Parse(e.pgURL)
	if err != nil {
		t.Fatalf("CHANGES_POSTGRES_URL must be a URL for this test: %v", err)
	}
	u.Path = "/" + name
	return u.String()
}

// TestDemoCommand runs `changes demo` as a newcomer would, in a database of
// its own, and checks that it ends by itself with a summary showing every
// view equal to its table and no change lost or duplicated.
func TestDemoCommand(t *testing.T) {
	e := stack(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	name := uniqueName("demo")
	extra := map[string]string{
		"CHANGES_POSTGRES_URL":   database(t, e, name),
		"CHANGES_POSTGRES_SLOT":  name,
		"CHANGES_TOPIC_PREFIX":   "e2e." + name,
		"CHANGES_STORAGE_DIR":    t.TempDir(),
		"CHANGES_METRICS_LISTEN": "",
	}
	deleteTopicsAfter(t, e, "e2e."+name)
	cmd, stdout, stderr := command(ctx, t, extra, "demo", "--config", "../configs/local.yaml", "--transactions", "200", "--rate", "400")
	if err := cmd.Run(); err != nil {
		t.Fatalf("changes demo: %v\nstdout:\n%s\nstderr:\n%s", err, stdout, stderr)
	}
	out := stdout.String()
	for _, want := range []string{
		"changes demo: summary",
		"none lost, none duplicated",
		"view account", "view campaign", "view creative", "view placement",
		"commit -> history", "commit -> view",
		"stopped cleanly",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
	if strings.Count(out, ": equal, value by value") != 4 {
		t.Errorf("demo output does not show the four views equal to their tables:\n%s", out)
	}
}

// TestDemoAfterAnOlderDemo runs `changes demo` where an older demo, which
// captured only accounts and campaigns, left its slot: the capture copies
// the tables of the newer types by incremental snapshots while it streams,
// the rows written before the demo included.
func TestDemoAfterAnOlderDemo(t *testing.T) {
	e := stack(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	name := uniqueName("olddemo")
	dbURL := database(t, e, name)
	extra := map[string]string{
		"CHANGES_POSTGRES_URL":   dbURL,
		"CHANGES_POSTGRES_SLOT":  name,
		"CHANGES_TOPIC_PREFIX":   "e2e." + name,
		"CHANGES_STORAGE_DIR":    t.TempDir(),
		"CHANGES_METRICS_LISTEN": "",
	}
	deleteTopicsAfter(t, e, "e2e."+name)
	db, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(context.Background())
	schema, err := os.ReadFile("../cmd/changes/demo.sql")
	if err != nil {
		t.Fatal(err)
	}
	execSQL(t, ctx, db, string(schema))
	execSQL(t, ctx, db, "insert into accounts (id, name, budget) values (1, 'before', 1.00)")

	// The older demo's config: the local one without creatives and placements.
	local, err := os.ReadFile("../configs/local.yaml")
	if err != nil {
		t.Fatal(err)
	}
	older, _, ok := strings.Cut(string(local), "  - type: creative\n")
	if !ok {
		t.Fatal("configs/local.yaml declares no creative type")
	}
	olderFile := filepath.Join(t.TempDir(), "older.yaml")
	if err := os.WriteFile(olderFile, []byte(older), 0o600); err != nil {
		t.Fatal(err)
	}
	run, _, runErr := command(ctx, t, extra, "run", "--config", olderFile)
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- run.Wait() }()
	t.Cleanup(func() { run.Process.Kill() })
	// Streaming, so its snapshot is done: the history holds the copied
	// account and then a streamed one.
	waitSlotActive(t, ctx, db, name)
	execSQL(t, ctx, db, "insert into accounts (id, name, budget) values (2, 'streamed', 2.00)")
	cfg := testConfig(t, e, name, []topology.EntityConfig{{Type: "account", Table: "public.accounts", IDColumn: "id", Partitions: 4}})
	readHistory(t, ctx, cfg, topology.New(cfg).History(), 2)
	if err := run.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("changes run: %v\nstderr:\n%s", err, runErr)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("changes run did not stop within 30 s of SIGTERM\nstderr:\n%s", runErr)
	}
	// Rows of tables the slot's snapshot did not copy: only an incremental
	// snapshot brings them.
	execSQL(t, ctx, db, "insert into placements (campaign_id, site, bid) values (7, 'news.example/sports', 0.5)")
	execSQL(t, ctx, db, "insert into creatives (campaign_id, format, url) values (7, 'banner', 'https://cdn.example/c/1.png')")

	cmd, stdout, stderr := command(ctx, t, extra, "demo", "--config", "../configs/local.yaml", "--transactions", "100", "--rate", "400")
	if err := cmd.Run(); err != nil {
		t.Fatalf("changes demo: %v\nstdout:\n%s\nstderr:\n%s", err, stdout, stderr)
	}
	out := stdout.String()
	for _, want := range []string{"was made by an older demo", "none lost, none duplicated", "stopped cleanly"} {
		if !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
	if strings.Count(out, ": equal, value by value") != 4 {
		t.Errorf("demo output does not show the four views equal to their tables:\n%s", out)
	}
}

// TestRunStopsCleanlyOnSIGTERM starts `changes run`, commits a change, waits
// until the history has it, sends SIGTERM and expects a clean exit that
// leaves the slot's confirmed position at or past the change's commit.
func TestRunStopsCleanlyOnSIGTERM(t *testing.T) {
	e := stack(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	name := uniqueName("sigterm")
	table := name + "_items"
	cfg := testConfig(t, e, name, []topology.EntityConfig{{Type: "item", Table: "public." + table, IDColumn: "id", Partitions: 1}})
	cleanupStack(t, e, cfg, table)
	db, err := pgx.Connect(ctx, e.pgURL)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(context.Background())
	execSQL(t, ctx, db, "create table "+table+" (id bigint primary key, v text)")

	configFile := filepath.Join(t.TempDir(), "changes.yaml")
	yaml := fmt.Sprintf("kafka: {brokers: [%q], replication_factor: %d}\npostgres: {url: %q, slot: %s, publication: %s}\ntopics: {prefix: %q}\nstorage: %q\nmetrics: \"\"\nentities: [{type: item, table: %s, partitions: 1}]\n",
		e.brokers, cfg.Kafka.ReplicationFactor, e.pgURL, name, name, cfg.Topics.Prefix, cfg.Storage, table)
	if err := os.WriteFile(configFile, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	// Only the file: the stack's variables would override it.
	cmd, stdout, stderr := command(ctx, t, map[string]string{"CHANGES_KAFKA_BROKERS": "", "CHANGES_POSTGRES_URL": ""}, "run", "--config", configFile)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() { cmd.Process.Kill() })

	waitSlotActive(t, ctx, db, name)
	execSQL(t, ctx, db, "insert into "+table+" values (1, 'x')")
	recs := readHistory(t, ctx, cfg, topology.New(cfg).History(), 1)
	ev, err := codecs.EventCodec{}.Decode(recs[0].Value)
	if err != nil {
		t.Fatal(err)
	}
	commitLSN := ev.CommitLSN.String()

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("changes run exited with %v after SIGTERM\nstdout:\n%s\nstderr:\n%s", err, stdout, stderr)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("changes run did not exit within 30 s of SIGTERM\nstderr:\n%s", stderr)
	}
	// The walsender applies the last status update a moment after the
	// capture disconnects.
	deadline := time.Now().Add(5 * time.Second)
	for {
		var past bool
		err = db.QueryRow(ctx, "select confirmed_flush_lsn > $2::pg_lsn from pg_replication_slots where slot_name = $1", name, commitLSN).Scan(&past)
		if err != nil {
			t.Fatal(err)
		}
		if past {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after a clean stop the slot is not confirmed past the captured commit at %s", commitLSN)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !strings.Contains(stderr.String(), "stopped") {
		t.Errorf("no shutdown log line:\n%s", stderr)
	}
}

// deleteTopicsAfter deletes the topics a subprocess created under prefix.
func deleteTopicsAfter(t testing.TB, e env, prefix string) {
	t.Cleanup(func() {
		cfg, err := topology.Parse(fmt.Appendf(nil, "kafka: {brokers: [%q]}\npostgres: {url: x}\ntopics: {prefix: %q}\nentities: [{type: account, table: accounts}, {type: campaign, table: campaigns}, {type: creative, table: creatives}, {type: placement, table: placements}]\n", e.brokers, prefix))
		if err != nil {
			t.Errorf("cleanup: %v", err)
			return
		}
		cfg.Topics.Prefix = prefix
		deleteTopics(t, cfg)
	})
}
