package e2e

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/internal/platform"
	wl "github.com/changes-dev/changes/internal/workload" // e2e has a type workload, the fault suite's
	"github.com/changes-dev/changes/topology"
	"github.com/changes-dev/changes/views"
)

// TestInitialSnapshot starts the platform on a table that already holds rows
// while a writer keeps changing it. The snapshot and the stream must meet
// exactly: every row is in the view, no entity is both copied and streamed
// as an insert, and no entity's counter ever goes back along the history.
func TestInitialSnapshot(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	f := newCaptureFixture(t, ctx, "snap", "id bigint primary key, v bigint not null, note text")
	const initial = 12000
	execSQL(t, ctx, f.db, fmt.Sprintf("insert into %s select g, 0, md5(g::text) from generate_series(1, %d) g", f.table, initial))

	// The writer runs before, during and after the snapshot.
	stopWriter := startWriter(t, ctx, f, writerMix{seed: 5, rows: initial, updateFrom: 1, updates: 6, inserts: 3, of: 10})

	log := testLogger(t)
	runCtx, stop := context.WithCancel(ctx)
	g, gctx := errgroup.WithContext(runCtx)
	t.Cleanup(func() {
		stop()
		if err := g.Wait(); err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("platform stopped with %v", err)
		}
	})
	g.Go(func() error { return platform.Run(gctx, f.topo, platform.All, log, nil, nil) })
	v, err := views.New(f.topo, "item", views.WithLogger(log))
	if err != nil {
		t.Fatal(err)
	}
	g.Go(func() error { return v.Run(gctx) })
	waitSlotActive(t, ctx, f.db, f.cfg.Postgres.Slot)
	time.Sleep(time.Second) // the writer goes on while streaming
	if err := stopWriter(); err != nil {
		t.Fatal(err)
	}
	waitViewsEqual(t, ctx, f.db, f.topo, map[string]*views.View{"item": v})

	var n int64
	if err := f.db.QueryRow(ctx, "select count(*) from "+f.table).Scan(&n); err != nil {
		t.Fatal(err)
	}
	history := readAll(t, ctx, f.cfg, f.topo.History())
	var snapshotRows, streamed int
	copied := map[codecs.Key]bool{}
	lastV := map[codecs.Key]int64{}
	for _, m := range history {
		ev, err := codecs.EventCodec{}.Decode(m.Value)
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case ev.Op == codecs.OpSnapshot:
			if streamed > 0 {
				t.Fatalf("history offset %d: a snapshot row after %d streamed changes", m.Offset, streamed)
			}
			snapshotRows++
			copied[ev.EntityID] = true
		case ev.Op == codecs.OpInsert && copied[ev.EntityID]:
			t.Errorf("entity %s is in the snapshot and streamed as an insert: the snapshot and the stream overlap", ev.EntityID)
		default:
			streamed++
		}
		if ev.After != nil {
			var row struct{ V int64 }
			if err := ev.After.Decode(&row); err != nil {
				t.Fatal(err)
			}
			if prev, ok := lastV[ev.EntityID]; ok && row.V < prev {
				t.Errorf("entity %s: v went back from %d to %d at history offset %d (%s)", ev.EntityID, prev, row.V, m.Offset, ev.Op)
			}
			lastV[ev.EntityID] = row.V
		}
	}
	t.Logf("%d rows copied by the snapshot, %d changes streamed, %d rows at the end", snapshotRows, streamed, n)
	if snapshotRows < initial/2 || streamed == 0 {
		t.Errorf("the writer did not overlap the snapshot as intended: %d copied, %d streamed", snapshotRows, streamed)
	}
}

// TestSnapshotResumesAfterKill kills `changes capture` in the middle of its
// initial snapshot and restarts it: every row is copied exactly once, in
// position order, and the capture then streams.
func TestSnapshotResumesAfterKill(t *testing.T) {
	if testing.Short() {
		t.Skip("copies 60000 rows")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	f := newCaptureFixture(t, ctx, "resume", "id bigint primary key, payload text")
	const rows = 60000
	execSQL(t, ctx, f.db, fmt.Sprintf("insert into %s select g, repeat(md5(g::text), 4) from generate_series(1, %d) g", f.table, rows))
	configFile := writeConfig(t, f.cfg)
	env := map[string]string{"CHANGES_KAFKA_BROKERS": "", "CHANGES_POSTGRES_URL": ""}

	killDuringSnapshot(t, ctx, f, env, configFile, 5000, rows)

	second, _, stderr2 := command(ctx, t, env, "capture", "--config", configFile)
	if err := second.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { second.Process.Kill(); second.Wait() })
	waitSlotActive(t, ctx, f.db, f.cfg.Postgres.Slot)
	execSQL(t, ctx, f.db, "insert into "+f.table+" values (0, 'streamed')")
	got := readHistory(t, ctx, f.cfg, f.topo.History(), rows+1)
	seen := map[codecs.Key]int{}
	var last codecs.Position
	for i, m := range got {
		ev, err := codecs.EventCodec{}.Decode(m.Value)
		if err != nil {
			t.Fatal(err)
		}
		if ev.Position.Compare(last) <= 0 {
			t.Fatalf("history offset %d: position %s does not follow %s", m.Offset, ev.Position, last)
		}
		last = ev.Position
		if i < rows {
			if ev.Op != codecs.OpSnapshot {
				t.Fatalf("history offset %d: %s before the snapshot was complete", m.Offset, ev.Op)
			}
			seen[ev.EntityID]++
		} else if ev.Op != codecs.OpInsert || ev.EntityID != codecs.IntKey(0) {
			t.Fatalf("after the snapshot: %s %s, want the streamed insert of 0", ev.Op, ev.EntityID)
		}
	}
	second.Process.Signal(syscall.SIGTERM)
	second.Wait()
	if len(got) != rows+1 || len(seen) != rows {
		t.Fatalf("history holds %d records covering %d rows, want %d rows once and 1 insert\n%s", len(got), len(seen), rows, stderr2)
	}
	if !strings.Contains(stderr2.String(), "resuming an interrupted initial snapshot") {
		t.Fatalf("the second capture did not resume the snapshot:\n%s", stderr2)
	}
}

// TestSnapshotResumeNeverRewinds kills `changes capture` in the middle of
// its initial snapshot while a writer keeps changing the table, and restarts
// it. The resumed copy reads a newer database than the first; the history
// must still never take an entity back in time (its copied state, then only
// changes committed after it), and must end at the database's state.
func TestSnapshotResumeNeverRewinds(t *testing.T) {
	if testing.Short() {
		t.Skip("copies 60000 rows")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	f := newCaptureFixture(t, ctx, "rewind", "id bigint primary key, v bigint not null, payload text")
	const rows = 60000
	execSQL(t, ctx, f.db, fmt.Sprintf("insert into %s select g, 0, repeat(md5(g::text), 4) from generate_series(1, %d) g", f.table, rows))
	configFile := writeConfig(t, f.cfg)
	env := map[string]string{"CHANGES_KAFKA_BROKERS": "", "CHANGES_POSTGRES_URL": ""}

	// Mostly updates of rows the first copy has yet to reach.
	stopWriter := startWriter(t, ctx, f, writerMix{seed: 7, rows: rows, updateFrom: rows / 2, updates: 17, inserts: 2, of: 20})

	killDuringSnapshot(t, ctx, f, env, configFile, 10000, rows)
	time.Sleep(time.Second) // the database moves on before the copy resumes

	second, _, stderr2 := command(ctx, t, env, "capture", "--config", configFile)
	if err := second.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { second.Process.Kill(); second.Wait() })
	waitSlotActive(t, ctx, f.db, f.cfg.Postgres.Slot)
	time.Sleep(time.Second) // the writer goes on while streaming
	if err := stopWriter(); err != nil {
		t.Fatal(err)
	}
	execSQL(t, ctx, f.db, "insert into "+f.table+" values (0, 0, 'last')")

	// Read until the last insert is there.
	var history []*sarama.ConsumerMessage
	for done := false; !done; {
		if ctx.Err() != nil {
			t.Fatalf("the last insert never reached the history\n%s", stderr2)
		}
		history = readAll(t, ctx, f.cfg, f.topo.History())
		if len(history) > 0 {
			ev, err := codecs.EventCodec{}.Decode(history[len(history)-1].Value)
			done = err == nil && ev.EntityID == codecs.IntKey(0)
		}
		if !done {
			time.Sleep(200 * time.Millisecond)
		}
	}
	second.Process.Signal(syscall.SIGTERM)
	second.Wait()
	if !strings.Contains(stderr2.String(), "resuming an interrupted initial snapshot") {
		t.Fatalf("the second capture did not resume the snapshot:\n%s", stderr2)
	}

	type last struct {
		v       int64
		deleted bool
	}
	final := map[codecs.Key]last{}
	rewound := 0
	for _, m := range history {
		ev, err := codecs.EventCodec{}.Decode(m.Value)
		if err != nil {
			t.Fatal(err)
		}
		if ev.Op == codecs.OpDelete {
			final[ev.EntityID] = last{deleted: true}
			continue
		}
		var row struct{ V int64 }
		if err := ev.After.Decode(&row); err != nil {
			t.Fatal(err)
		}
		if prev, ok := final[ev.EntityID]; ok && !prev.deleted && row.V < prev.v {
			if rewound++; rewound <= 10 {
				t.Errorf("entity %s: v went back from %d to %d at history offset %d (%s)", ev.EntityID, prev.v, row.V, m.Offset, ev.Op)
			}
		}
		final[ev.EntityID] = last{v: row.V}
	}
	if rewound > 0 {
		t.Errorf("%d changes took an entity back in time", rewound)
	}
	dbRows, err := f.db.Query(ctx, "select id, v from "+f.table)
	if err != nil {
		t.Fatal(err)
	}
	want := map[int64]int64{}
	for dbRows.Next() {
		var id, v int64
		if err := dbRows.Scan(&id, &v); err != nil {
			t.Fatal(err)
		}
		want[id] = v
	}
	if err := dbRows.Err(); err != nil {
		t.Fatal(err)
	}
	wrong := 0
	for id, v := range want {
		if got, ok := final[codecs.IntKey(id)]; !ok || got.deleted || got.v != v {
			if wrong++; wrong <= 10 {
				t.Errorf("entity %d: the history ends at %+v (present %v), the database holds v=%d", id, got, ok, v)
			}
		}
	}
	for id, got := range final {
		if _, ok := want[idOf(id)]; !ok && !got.deleted {
			if wrong++; wrong <= 10 {
				t.Errorf("entity %s: alive in the history, not in the database", id)
			}
		}
	}
	folded := strings.Count(stderr2.String(), "left out of the stream")
	t.Logf("%d history records for %d rows; %d wrong; cut logged %d time(s)", len(history), len(want), wrong, folded)
}

// killDuringSnapshot starts `changes capture` and kills it with SIGKILL once
// the history holds at least atLeast of the rows its initial snapshot copies.
func killDuringSnapshot(t testing.TB, ctx context.Context, f *captureFixture, env map[string]string, configFile string, atLeast, rows int64) {
	t.Helper()
	client, err := topology.NewClient(f.cfg.Kafka)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	first, _, stderr := command(ctx, t, env, "capture", "--config", configFile)
	if err := first.Start(); err != nil {
		t.Fatal(err)
	}
	defer first.Wait()
	defer first.Process.Kill()
	for {
		end, err := client.GetOffset(f.topo.History(), 0, sarama.OffsetNewest)
		if err != nil {
			t.Fatal(err)
		}
		if end >= atLeast {
			if end >= rows {
				t.Fatalf("the snapshot finished (%d rows) before the kill: make the table larger", end)
			}
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("the snapshot did not start:\n%s", stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// writerMix is what startWriter writes: of every `of` statements, `updates`
// increment v of a random row with an id from updateFrom on, `inserts` add a
// row after the last, and the rest delete a random row; the table starts
// with rows rows.
type writerMix struct {
	seed                 uint64
	rows, updateFrom     int64
	updates, inserts, of int
}

// startWriter changes f's table (id, v, payload) on a connection of its own,
// a statement per transaction, as fast as it can until the returned stop is
// called, which returns the writer's first error.
func startWriter(t testing.TB, ctx context.Context, f *captureFixture, m writerMix) (stop func() error) {
	t.Helper()
	next := m.rows
	w, err := wl.Start(ctx, wl.Config[struct{}]{
		URL: f.e.pgURL, Seed: m.seed,
		Txn: func(ctx context.Context, tx pgx.Tx, _ int, rnd *rand.Rand) (int, struct{}, error) {
			var sql string
			switch k := rnd.IntN(m.of); {
			case k < m.updates:
				sql = fmt.Sprintf("update %s set v = v + 1 where id = %d", f.table, m.updateFrom+rnd.Int64N(next-m.updateFrom+1))
			case k < m.updates+m.inserts:
				next++
				sql = fmt.Sprintf("insert into %s values (%d, 0, 'new')", f.table, next)
			default:
				sql = fmt.Sprintf("delete from %s where id = %d", f.table, 1+rnd.Int64N(next))
			}
			tag, err := tx.Exec(ctx, sql)
			return int(tag.RowsAffected()), struct{}{}, err
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	return w.Stop
}
