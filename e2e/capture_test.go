package e2e

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/jackc/pgx/v5"

	"github.com/changes-dev/changes/capture"
	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/internal/platform"
	"github.com/changes-dev/changes/topology"
)

// captureFixture is one table captured by an in-process capture.
type captureFixture struct {
	e     env
	cfg   *topology.Config
	topo  *topology.Topology
	table string
	db    *pgx.Conn
}

func newCaptureFixture(t testing.TB, ctx context.Context, prefix, columns string) *captureFixture {
	t.Helper()
	e := stack(t)
	name := uniqueName(prefix)
	table := name + "_t"
	cfg := testConfig(t, e, name, []topology.EntityConfig{{Type: "item", Table: "public." + table, IDColumn: "id", Partitions: 1}})
	cleanupStack(t, e, cfg, table)
	db, err := pgx.Connect(ctx, e.pgURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close(context.Background()) })
	execSQL(t, ctx, db, fmt.Sprintf("create table %s (%s)", table, columns))
	topo := topology.New(cfg)
	if err := platform.EnsureTopics(topo); err != nil {
		t.Fatal(err)
	}
	return &captureFixture{e: e, cfg: cfg, topo: topo, table: table, db: db}
}

// start runs a capture until the returned stop is called; stop returns Run's error.
func (f *captureFixture) start(t testing.TB, ctx context.Context, opts ...capture.Option) (stop func() error) {
	t.Helper()
	c, err := capture.New(f.topo, append([]capture.Option{capture.WithLogger(testLogger(t))}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- c.Run(runCtx) }()
	var stopped bool
	var result error
	stop = func() error {
		if !stopped {
			cancel()
			result, stopped = <-done, true
		}
		return result
	}
	t.Cleanup(func() { stop() })
	return stop
}

// run runs a capture that is expected to stop by itself, and returns its error.
func (f *captureFixture) run(t testing.TB, ctx context.Context, opts ...capture.Option) error {
	t.Helper()
	c, err := capture.New(f.topo, append([]capture.Option{capture.WithLogger(testLogger(t))}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return c.Run(ctx)
}

// TestBusyNeighbourAdvancesSlot leaves the captured table idle while another
// database on the server writes: the slot's confirmed position must follow
// the server's WAL, or the idle slot would hold back WAL without bound.
func TestBusyNeighbourAdvancesSlot(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	f := newCaptureFixture(t, ctx, "idle", "id bigint primary key")
	f.start(t, ctx)
	waitSlotActive(t, ctx, f.db, f.cfg.Postgres.Slot)

	neighbour := database(t, f.e, "")
	ndb, err := pgx.Connect(ctx, neighbour)
	if err != nil {
		t.Fatal(err)
	}
	defer ndb.Close(context.Background())
	execSQL(t, ctx, ndb, "create table busy (id serial primary key, v text)")
	var target string
	if err := ndb.QueryRow(ctx, "select pg_current_wal_lsn()::text").Scan(&target); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		execSQL(t, ctx, ndb, "insert into busy (v) select md5(g::text) from generate_series(1, 500) g")
		var past bool
		err := f.db.QueryRow(ctx, "select confirmed_flush_lsn > $2::pg_lsn from pg_replication_slots where slot_name = $1",
			f.cfg.Postgres.Slot, target).Scan(&past)
		if err != nil {
			t.Fatal(err)
		}
		if past {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the idle slot did not move past %s within 30 s of a busy neighbour", target)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestRefusesDroppedSlot drops the slot of a capture that has written to the
// history: the next start must refuse rather than create a new slot over the
// gap, until the operator says so.
func TestRefusesDroppedSlot(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	f := newCaptureFixture(t, ctx, "dropped", "id bigint primary key")
	stop := f.start(t, ctx)
	waitSlotActive(t, ctx, f.db, f.cfg.Postgres.Slot)
	execSQL(t, ctx, f.db, "insert into "+f.table+" values (1)")
	readHistory(t, ctx, f.cfg, f.topo.History(), 1)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	dropSlot(t, ctx, f.db, f.cfg.Postgres.Slot)

	err := f.run(t, ctx)
	if !errors.Is(err, capture.ErrSlotMissing) || !strings.Contains(err.Error(), "--recreate-slot") {
		t.Fatalf("start without the slot: %v; want ErrSlotMissing naming --recreate-slot", err)
	}
	var exists bool
	if err := f.db.QueryRow(ctx, "select exists (select 1 from pg_replication_slots where slot_name = $1)", f.cfg.Postgres.Slot).Scan(&exists); err != nil {
		t.Fatal(err)
	}
	if exists {
		t.Fatal("the refused start created a slot anyway")
	}

	stop = f.start(t, ctx, capture.WithRecreateSlot())
	waitSlotActive(t, ctx, f.db, f.cfg.Postgres.Slot)
	execSQL(t, ctx, f.db, "insert into "+f.table+" values (2)")
	// The new slot comes with a new snapshot of the table (row 1), then streams.
	got := readHistory(t, ctx, f.cfg, f.topo.History(), 3)
	var seen []string
	for _, m := range got {
		ev, err := codecs.EventCodec{}.Decode(m.Value)
		if err != nil {
			t.Fatal(err)
		}
		seen = append(seen, fmt.Sprintf("%s %s", ev.Op, ev.EntityID))
	}
	if fmt.Sprint(seen) != "[insert 1 snapshot 1 insert 2]" {
		t.Fatalf("after --recreate-slot the history is %v, want [insert 1 snapshot 1 insert 2]", seen)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

// TestRefusesTablesWithoutIdentity: a table whose deletes would carry no id
// is refused at start, by name.
func TestRefusesTablesWithoutIdentity(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, c := range []struct {
		name, columns, alter, want string
	}{
		{"no primary key", "id bigint not null, v text", "", "unique index"},
		{"id not unique under FULL", "id bigint not null, v text", "replica identity full", "unique index"},
		{"id in a composite key", "id bigint, k int, v text, primary key (id, k)", "", "unique index"},
		{"replica identity nothing", "id bigint primary key", "replica identity nothing", "REPLICA IDENTITY NOTHING"},
		{"id of a type no key may have", "id numeric primary key", "", "is numeric: a key column must be"},
		{"key column nullable under a unique index", "id text, v text", "add unique (id)", "NOT NULL"},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := newCaptureFixture(t, ctx, "identity", c.columns)
			if c.alter != "" {
				execSQL(t, ctx, f.db, "alter table "+f.table+" "+c.alter)
			}
			err := f.run(t, ctx)
			if !errors.Is(err, capture.ErrSetup) || !strings.Contains(err.Error(), f.table) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v; want ErrSetup naming %s and saying %q", err, f.table, c.want)
			}
		})
	}
}

// TestInterleavedTransactionsAcrossRestart: A starts, B commits, the capture
// stops, A commits, the capture restarts: A arrives whole, after B.
func TestInterleavedTransactionsAcrossRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	f := newCaptureFixture(t, ctx, "interleaved", "id bigint primary key, v text")
	stop := f.start(t, ctx)
	waitSlotActive(t, ctx, f.db, f.cfg.Postgres.Slot)

	connA, err := pgx.Connect(ctx, f.e.pgURL)
	if err != nil {
		t.Fatal(err)
	}
	defer connA.Close(context.Background())
	txA, err := connA.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []int{1, 2, 3} {
		if _, err := txA.Exec(ctx, fmt.Sprintf("insert into %s values (%d, 'A')", f.table, id)); err != nil {
			t.Fatal(err)
		}
	}
	execSQL(t, ctx, f.db, "insert into "+f.table+" values (10, 'B')")
	readHistory(t, ctx, f.cfg, f.topo.History(), 1)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if err := txA.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	stop = f.start(t, ctx)
	got := readHistory(t, ctx, f.cfg, f.topo.History(), 4)
	ids := entityIDs(t, got)
	if fmt.Sprint(ids) != "[10 1 2 3]" {
		t.Fatalf("history ids %v, want [10 1 2 3]: B, then A whole", ids)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

// TestRecordTooLarge: a change above kafka.max_record_bytes stops the capture
// with an error naming the table and the id; it is not skipped, so the
// history keeps nothing after it and PostgreSQL keeps it for a retry.
func TestRecordTooLarge(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	f := newCaptureFixture(t, ctx, "large", "id bigint primary key, v text")
	f.cfg.Kafka.MaxRecordBytes = 4096
	f.topo = topology.New(f.cfg)
	// The capture must stop by itself; waiting for that (rather than for the
	// slot to look inactive, which it can for a moment while it starts)
	// keeps the test from stopping a healthy capture.
	c, err := capture.New(f.topo, capture.WithLogger(testLogger(t)))
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stopRun := context.WithCancel(ctx)
	defer stopRun()
	done := make(chan error, 1)
	go func() { done <- c.Run(runCtx) }()
	waitSlotActive(t, ctx, f.db, f.cfg.Postgres.Slot)
	execSQL(t, ctx, f.db, fmt.Sprintf("insert into %s values (1, 'small')", f.table))
	readHistory(t, ctx, f.cfg, f.topo.History(), 1)
	// One transaction: a change before the large one, the large one, one
	// after. Nothing of it may reach the history.
	execSQL(t, ctx, f.db, fmt.Sprintf("begin; insert into %s values (3, 'before'); insert into %s values (7, repeat('x', 10000)); insert into %s values (2, 'after'); commit",
		f.table, f.table, f.table))
	select {
	case err = <-done:
	case <-time.After(30 * time.Second):
		stopRun()
		t.Fatalf("the capture did not stop within 30 s (it stopped with %v when cancelled)", <-done)
	}
	if !errors.Is(err, capture.ErrRecordTooLarge) || !strings.Contains(err.Error(), f.table) || !strings.Contains(err.Error(), "id 7") {
		t.Fatalf("got %v; want ErrRecordTooLarge naming %s and id 7", err, f.table)
	}
	got := readHistory(t, ctx, f.cfg, f.topo.History(), 1)
	if len(got) != 1 {
		t.Fatalf("history holds %d records, want only the transaction before the refused one", len(got))
	}
}

// TestInvalidKeyStopsCapture: a text key longer than codecs.MaxKeyBytes
// stops the capture with an error naming the table and the key column, and
// nothing of its transaction reaches the history, not even the changes
// before it; the slot does not move past it, so a restart stops again.
func TestInvalidKeyStopsCapture(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	f := newCaptureFixture(t, ctx, "badkey", "code text primary key, v text")
	f.cfg.Entities[0].IDColumn = "code"
	f.topo = topology.New(f.cfg)
	c, err := capture.New(f.topo, capture.WithLogger(testLogger(t)))
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stopRun := context.WithCancel(ctx)
	defer stopRun()
	done := make(chan error, 1)
	go func() { done <- c.Run(runCtx) }()
	waitSlotActive(t, ctx, f.db, f.cfg.Postgres.Slot)
	execSQL(t, ctx, f.db, fmt.Sprintf("insert into %s values ('first', 'ok')", f.table))
	readHistory(t, ctx, f.cfg, f.topo.History(), 1)
	execSQL(t, ctx, f.db, fmt.Sprintf("begin; insert into %s values ('before', 'x'); insert into %s values (repeat('k', %d), 'long'); insert into %s values ('after', 'x'); commit",
		f.table, f.table, codecs.MaxKeyBytes+1, f.table))
	select {
	case err = <-done:
	case <-time.After(30 * time.Second):
		stopRun()
		t.Fatalf("the capture did not stop within 30 s (it stopped with %v when cancelled)", <-done)
	}
	if !errors.Is(err, capture.ErrInvalidKey) || !strings.Contains(err.Error(), f.table) || !strings.Contains(err.Error(), "code") {
		t.Fatalf("got %v; want ErrInvalidKey naming %s and its key column code", err, f.table)
	}
	if got := readHistory(t, ctx, f.cfg, f.topo.History(), 1); len(got) != 1 {
		t.Fatalf("history holds %d records, want only the transaction before the refused one", len(got))
	}
	// The slot was not acknowledged past it: a capture started again meets
	// the same change and stops the same way.
	again, err := capture.New(f.topo, capture.WithLogger(testLogger(t)))
	if err != nil {
		t.Fatal(err)
	}
	if err := again.Run(ctx); !errors.Is(err, capture.ErrInvalidKey) {
		t.Fatalf("a restarted capture got %v; want ErrInvalidKey again", err)
	}
}

// TestStandbyTakesOver starts two captures on one slot: the second waits
// while the first streams and takes over when it stops, and the history
// holds every change once, in order.
func TestStandbyTakesOver(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	f := newCaptureFixture(t, ctx, "standby", "id bigint primary key")
	stopFirst := f.start(t, ctx)
	waitSlotActive(t, ctx, f.db, f.cfg.Postgres.Slot)
	var firstPID int
	if err := f.db.QueryRow(ctx, "select active_pid from pg_replication_slots where slot_name = $1", f.cfg.Postgres.Slot).Scan(&firstPID); err != nil {
		t.Fatal(err)
	}
	stopSecond := f.start(t, ctx)
	execSQL(t, ctx, f.db, "insert into "+f.table+" values (1)")
	readHistory(t, ctx, f.cfg, f.topo.History(), 1)

	if err := stopFirst(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		var pid *int
		if err := f.db.QueryRow(ctx, "select active_pid from pg_replication_slots where slot_name = $1", f.cfg.Postgres.Slot).Scan(&pid); err != nil {
			t.Fatal(err)
		}
		if pid != nil && *pid != firstPID {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the standby did not take the slot within 30 s")
		}
		time.Sleep(100 * time.Millisecond)
	}
	execSQL(t, ctx, f.db, "insert into "+f.table+" values (2)")
	got := readHistory(t, ctx, f.cfg, f.topo.History(), 2)
	ids := entityIDs(t, got)
	if fmt.Sprint(ids) != "[1 2]" {
		t.Fatalf("history ids %v, want [1 2]", ids)
	}
	if err := stopSecond(); err != nil {
		t.Fatal(err)
	}
}

// entityIDs decodes history records and returns their entity ids in order.
func entityIDs(t testing.TB, msgs []*sarama.ConsumerMessage) []int64 {
	t.Helper()
	ids := make([]int64, len(msgs))
	for i, m := range msgs {
		ev, err := codecs.EventCodec{}.Decode(m.Value)
		if err != nil {
			t.Fatalf("history offset %d: %v", m.Offset, err)
		}
		ids[i] = idOf(ev.EntityID)
	}
	return ids
}
