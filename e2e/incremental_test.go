package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/changes-dev/changes/capture"
	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/internal/kread"
	"github.com/changes-dev/changes/internal/platform"
	"github.com/changes-dev/changes/topology"
)

// TestIncrementalSnapshotOfAddedType declares a type whose table already
// holds 60,000 rows after the slot's initial snapshot, and starts the
// capture again while a workload updates, inserts and deletes rows of that
// table: the capture copies the table by an incremental snapshot while it
// streams, and is stopped and started once in the middle of the copy. Then
// the history, replayed, must equal the table row for row, and no entity's
// version may ever go back in the history (a copied row older than a change
// before it). A second, ranged snapshot is requested through the WAL as
// changes snapshot does, and must copy exactly its range.
func TestIncrementalSnapshotOfAddedType(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	e := stack(t)
	name := uniqueName("incr")
	first, added := name+"_a", name+"_b"
	cfg := testConfig(t, e, name, []topology.EntityConfig{{Type: "a", Table: "public." + first, IDColumn: "id", Partitions: 1}})
	cleanupStack(t, e, cfg, first, added)
	db, err := pgx.Connect(ctx, e.pgURL)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(context.Background())
	execSQL(t, ctx, db, "create table "+first+" (id bigint primary key)")
	execSQL(t, ctx, db, "create table "+added+" (id bigserial primary key, version int not null default 1, note text)")
	const rows = 60000
	execSQL(t, ctx, db, fmt.Sprintf("insert into %s (note) select md5(g::text) from generate_series(1, %d) g", added, rows))

	// The slot's initial snapshot knows type a alone.
	topo := topology.New(cfg)
	if err := platform.EnsureTopics(topo); err != nil {
		t.Fatal(err)
	}
	f := &captureFixture{e: e, cfg: cfg, topo: topo, table: first, db: db}
	stop := f.start(t, ctx)
	waitSlotActive(t, ctx, db, cfg.Postgres.Slot)
	execSQL(t, ctx, db, "insert into "+first+" values (1)")
	readHistory(t, ctx, cfg, topo.History(), 1)
	// A request in the session that created the slot is taken and done,
	// and leaves the slot's initial snapshot recorded as done.
	if err := capture.RequestSnapshot(ctx, db, cfg.Postgres.Slot, "a", "", ""); err != nil {
		t.Fatal(err)
	}
	got := readHistory(t, ctx, cfg, topo.History(), 2)
	if ev, err := (codecs.EventCodec{}).Decode(got[1].Value); err != nil || ev.Op != codecs.OpSnapshot || ev.EntityID != codecs.IntKey(1) {
		t.Fatalf("after the request, the history holds %+v (%v); want a snapshot of a/1", ev, err)
	}
	waitPending(t, ctx, topo, func(p []capture.SnapshotStatus) bool { return len(p) == 0 })
	if err := stop(); err != nil {
		t.Fatal(err)
	}

	// Type b is declared; the workload writes to its table throughout.
	cfg2 := *cfg
	cfg2.Entities = append(append([]topology.EntityConfig(nil), cfg.Entities...), topology.EntityConfig{Type: "b", Table: "public." + added, IDColumn: "id", Partitions: 1})
	if err := cfg2.Validate(); err != nil {
		t.Fatal(err)
	}
	topo2 := topology.New(&cfg2)
	if err := platform.EnsureTopics(topo2); err != nil {
		t.Fatal(err)
	}
	if missing, err := capture.MissingSnapshotTypes(ctx, topo2); err != nil || !slices.Equal(missing, []string{"b"}) {
		t.Fatalf("types missing from the slot's finished initial snapshot: %v, %v; want [b]", missing, err)
	}
	f2 := &captureFixture{e: e, cfg: &cfg2, topo: topo2, table: added, db: db}
	pool, err := pgxpool.New(ctx, e.pgURL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	work, stopWork := context.WithCancel(ctx)
	var writers sync.WaitGroup
	var writes atomic.Int64
	for w := range 4 {
		writers.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for work.Err() == nil {
				id := 1 + rng.Int64N(rows)
				var sql string
				switch r := rng.IntN(20); {
				case r == 0:
					sql = fmt.Sprintf("insert into %s (note) values ('new')", added)
				case r == 1:
					sql = fmt.Sprintf("delete from %s where id = %d", added, id)
				default:
					sql = fmt.Sprintf("update %s set version = version + 1, note = md5(random()::text) where id = %d", added, id)
				}
				if _, err := pool.Exec(work, sql); err != nil {
					if work.Err() == nil {
						t.Errorf("workload: %v", err)
					}
					return
				}
				writes.Add(1)
			}
		})
	}
	defer func() { stopWork(); writers.Wait() }()

	stop = f2.start(t, ctx)
	waitSlotActive(t, ctx, db, cfg.Postgres.Slot)
	// Stop and start the capture once its progress is recorded (at most
	// once a second).
	waitPending(t, ctx, topo2, func(p []capture.SnapshotStatus) bool { return len(p) == 1 && p[0].Chunks >= 1 })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	stop = f2.start(t, ctx)
	waitPending(t, ctx, topo2, func(p []capture.SnapshotStatus) bool { return len(p) == 0 })

	// A ranged snapshot, requested through the WAL.
	client, err := topology.NewClient(cfg2.Kafka)
	if err != nil {
		t.Fatal(err)
	}
	mark, err := kread.End(client, topo2.History(), 0)
	client.Close()
	if err != nil {
		t.Fatal(err)
	}
	if err := capture.RequestSnapshot(ctx, db, cfg2.Postgres.Slot, "b", "100", "2099"); err != nil {
		t.Fatal(err)
	}
	// Taken once its first copied row is in the history, done once no
	// snapshot is pending.
	for copied := false; !copied; time.Sleep(100 * time.Millisecond) {
		if ctx.Err() != nil {
			t.Fatal("the ranged snapshot never wrote a row")
		}
		for _, m := range readAll(t, ctx, &cfg2, topo2.History()) {
			ev, err := codecs.EventCodec{}.Decode(m.Value)
			copied = copied || (err == nil && m.Offset >= mark && ev.Op == codecs.OpSnapshot)
		}
	}
	waitPending(t, ctx, topo2, func(p []capture.SnapshotStatus) bool { return len(p) == 0 })
	stopWork()
	writers.Wait()
	t.Logf("workload: %d writes", writes.Load())

	// The history catches up with the table, which no longer changes.
	deadline := time.Now().Add(time.Minute)
	for {
		replayed, ranged, problems := replayAdded(t, ctx, &cfg2, topo2, mark)
		want := tableVersions(t, ctx, db, added)
		diff := compareVersions(replayed, want)
		if diff == "" {
			if len(problems) > 0 {
				t.Fatalf("the history went back in time for %d entities, e.g. %v", len(problems), problems[:min(5, len(problems))])
			}
			for id := range ranged {
				if id < 100 || id > 2099 {
					t.Fatalf("the ranged snapshot copied id %d, outside 100..2099", id)
				}
			}
			if len(ranged) < 1000 {
				t.Fatalf("the ranged snapshot copied %d rows of 100..2099, want most of its 2000", len(ranged))
			}
			t.Logf("history equals the table (%d rows); ranged snapshot: %d rows", len(want), len(ranged))
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the history replayed differs from the table: %s", diff)
		}
		time.Sleep(time.Second)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

// waitPending waits until the pending incremental snapshots satisfy ok.
func waitPending(t *testing.T, ctx context.Context, topo *topology.Topology, ok func([]capture.SnapshotStatus) bool) {
	t.Helper()
	var last []capture.SnapshotStatus
	for ctx.Err() == nil {
		p, err := capture.PendingSnapshots(ctx, topo)
		if err != nil {
			t.Fatal(err)
		}
		if ok(p) {
			return
		}
		last = p
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("pending incremental snapshots never became what the test waits for; last %+v", last)
}

// replayAdded replays the history's events of type b: the version of every
// entity, the entities whose version went back (a version below one
// before it, or an event after a delete), and the ids of the snapshot
// events after offset mark.
func replayAdded(t *testing.T, ctx context.Context, cfg *topology.Config, topo *topology.Topology, mark int64) (map[int64]int, map[int64]bool, []string) {
	t.Helper()
	state := map[int64]int{}
	deleted := map[int64]bool{}
	ranged := map[int64]bool{}
	var problems []string
	for _, m := range readAll(t, ctx, cfg, topo.History()) {
		ev, err := codecs.EventCodec{}.Decode(m.Value)
		if err != nil {
			t.Fatalf("history offset %d: %v", m.Offset, err)
		}
		if ev.EntityType != "b" {
			continue
		}
		id, _ := ev.EntityID.Int()
		if ev.Op == codecs.OpDelete {
			delete(state, id)
			deleted[id] = true
			continue
		}
		if m.Offset >= mark && ev.Op == codecs.OpSnapshot {
			ranged[id] = true
		}
		var v int
		if err := json.Unmarshal(ev.After["version"], &v); err != nil {
			t.Fatalf("history offset %d: version %s: %v", m.Offset, ev.After["version"], err)
		}
		if old, ok := state[id]; (ok && v < old) || deleted[id] {
			problems = append(problems, fmt.Sprintf("id %d: %s of version %d at offset %d after version %d (deleted: %v)", id, ev.Op, v, m.Offset, old, deleted[id]))
		}
		state[id] = v
	}
	return state, ranged, problems
}

// tableVersions reads every row's version.
func tableVersions(t *testing.T, ctx context.Context, db *pgx.Conn, table string) map[int64]int {
	t.Helper()
	rows, err := db.Query(ctx, "select id, version from "+table)
	if err != nil {
		t.Fatal(err)
	}
	want := map[int64]int{}
	for rows.Next() {
		var id int64
		var v int
		if err := rows.Scan(&id, &v); err != nil {
			t.Fatal(err)
		}
		want[id] = v
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return want
}

// compareVersions describes the first differences of got from want, or "".
func compareVersions(got, want map[int64]int) string {
	var diffs []string
	for id, v := range want {
		if g, ok := got[id]; !ok {
			diffs = append(diffs, fmt.Sprintf("id %d missing (version %d)", id, v))
		} else if g != v {
			diffs = append(diffs, fmt.Sprintf("id %d at version %d, table %d", id, g, v))
		}
	}
	for id, g := range got {
		if _, ok := want[id]; !ok {
			diffs = append(diffs, fmt.Sprintf("id %d (version %d) not in the table", id, g))
		}
	}
	if len(diffs) == 0 {
		return ""
	}
	return fmt.Sprintf("%d differences, e.g. %v", len(diffs), diffs[:min(5, len(diffs))])
}
