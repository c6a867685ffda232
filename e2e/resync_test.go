package e2e

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/changes-dev/changes/capture"
	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/internal/platform"
	"github.com/changes-dev/changes/internal/promreg"
	"github.com/changes-dev/changes/topology"
	"github.com/changes-dev/changes/views"
)

// TestResyncAfterLostSlot plays a failover: while a workload inserts,
// updates and deletes rows of two tables (one keyed by an integer, one by
// text), the capture stops and its slot is dropped, the writes go on, and
// the capture, started again, refuses to go on without --resync. With it,
// it creates a new slot, marks the history and copies both tables while
// the workload still writes. Then every view must equal its table value by
// value, no entity's position may ever go back in a view, the history must
// hold one marker naming the gap, and the resync must have written fewer
// rows than were changed since the capture stopped (only what differs),
// and deletes for rows deleted in the gap.
func TestResyncAfterLostSlot(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	e := stack(t)
	name := uniqueName("resync")
	items, codes := name+"_items", name+"_codes"
	cfg := testConfig(t, e, name, []topology.EntityConfig{
		{Type: "item", Table: "public." + items, IDColumn: "id", Partitions: 3},
		{Type: "code", Table: "public." + codes, IDColumn: "code", Partitions: 2},
	})
	cleanupStack(t, e, cfg, items, codes)
	db, err := pgx.Connect(ctx, e.pgURL)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(context.Background())
	const itemRows, codeRows = 20000, 3000
	// payload is stored out of line (TOAST) and uncompressed: an update
	// that leaves it alone streams it as unchanged, to be filled from the
	// entity's state, which the gap made stale when the payload changed.
	execSQL(t, ctx, db, "create table "+items+" (id bigserial primary key, version int not null default 1, note text, payload text)")
	execSQL(t, ctx, db, "alter table "+items+" alter column payload set storage external")
	execSQL(t, ctx, db, "create table "+codes+" (code text primary key, version int not null default 1)")
	execSQL(t, ctx, db, fmt.Sprintf("insert into %s (note, payload) select md5(g::text), case when g %% 4 = 0 then repeat(md5(g::text), 100) end from generate_series(1, %d) g", items, itemRows))
	execSQL(t, ctx, db, fmt.Sprintf("insert into %s (code) select 'c-' || g from generate_series(1, %d) g", codes, codeRows))
	topo := topology.New(cfg)
	if err := platform.EnsureTopics(topo); err != nil {
		t.Fatal(err)
	}

	// The processors run throughout; so do a view of each type, whose
	// entities' positions must only ever go forward.
	log := testLogger(t)
	procCtx, stopProcs := context.WithCancel(ctx)
	procDone := make(chan error, 1)
	go func() { procDone <- platform.Run(procCtx, topo, platform.Parts{Processors: true}, log, nil, nil) }()
	defer func() {
		stopProcs()
		if err := <-procDone; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("processors stopped with %v", err)
		}
	}()
	var backwards atomic.Int64
	vs := map[string]*views.View{}
	for _, typ := range topo.EntityTypes() {
		var mu sync.Mutex
		last := map[codecs.Key]codecs.Position{}
		vs[typ] = runView(t, ctx, topo, typ, views.WithUpdateHook(func(u views.Update) {
			if u.State == nil {
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if prev, ok := last[u.EntityID]; ok && u.State.Position.Compare(prev) < 0 {
				if backwards.Add(1) <= 5 {
					t.Errorf("view %s: entity %s went back from %s to %s", typ, u.EntityID, prev, u.State.Position)
				}
			}
			last[u.EntityID] = u.State.Position
		}))
	}

	f := &captureFixture{e: e, cfg: cfg, topo: topo, db: db}
	stop := f.start(t, ctx)
	waitSlotActive(t, ctx, db, cfg.Postgres.Slot)
	waitViewsEqual(t, ctx, db, topo, vs)

	pool, err := pgxpool.New(ctx, e.pgURL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	work, stopWork := context.WithCancel(ctx)
	var writers sync.WaitGroup
	var writes atomic.Int64
	for w := range 2 {
		writers.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 11))
			for work.Err() == nil {
				var sql string
				id := 1 + rng.Int64N(itemRows)
				code := fmt.Sprintf("c-%d", 1+rng.Int64N(codeRows))
				switch r := rng.IntN(20); {
				case r == 0:
					sql = fmt.Sprintf("insert into %s (note) values ('new')", items)
				case r == 1:
					sql = fmt.Sprintf("delete from %s where id = %d", items, id)
				case r == 2:
					sql = fmt.Sprintf("delete from %s where code = '%s'", codes, code)
				case r == 3:
					sql = fmt.Sprintf("insert into %s (code) values ('n-%d-%d') on conflict do nothing", codes, w, rng.Int64())
				case r < 8:
					sql = fmt.Sprintf("update %s set version = version + 1 where code = '%s'", codes, code)
				case r < 11:
					sql = fmt.Sprintf("update %s set version = version + 1, payload = repeat(md5(random()::text), 100) where id = %d", items, id)
				default:
					sql = fmt.Sprintf("update %s set version = version + 1, note = md5(random()::text) where id = %d", items, id)
				}
				if _, err := pool.Exec(work, sql); err != nil {
					if work.Err() == nil {
						t.Errorf("workload: %v", err)
					}
					return
				}
				writes.Add(1)
				time.Sleep(3 * time.Millisecond)
			}
		})
	}
	// The hot items 1-50: their payloads change while the slot is
	// missing, then, during the resync, only their versions, with the
	// payload left unchanged (streamed as such): a row the stream changes
	// so in its chunk's window must be copied again, or it keeps the
	// payload from before the gap.
	const hot = 50
	var phase atomic.Int32 // 1 while the slot is missing, 2 in the resync
	writers.Go(func() {
		rng := rand.New(rand.NewPCG(99, 11))
		for work.Err() == nil {
			id := 1 + rng.Int64N(hot)
			var sql string
			switch phase.Load() {
			case 1:
				sql = fmt.Sprintf("update %s set version = version + 1, payload = repeat(md5(random()::text), 100) where id = %d", items, id)
			case 2:
				sql = fmt.Sprintf("update %s set version = version + 1 where id = %d", items, id)
			default:
				time.Sleep(10 * time.Millisecond)
				continue
			}
			if _, err := pool.Exec(work, sql); err != nil {
				if work.Err() == nil {
					t.Errorf("workload: %v", err)
				}
				return
			}
			writes.Add(1)
			time.Sleep(5 * time.Millisecond)
		}
	})
	defer func() { stopWork(); writers.Wait() }()
	time.Sleep(2 * time.Second)

	// The failover: the capture stops, its slot is gone, writes go on.
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	lastBefore := lastHistoryEvent(t, ctx, cfg, topo)
	writesAtStop := writes.Load()
	waitSlotInactive(t, ctx, db, cfg.Postgres.Slot)
	execSQL(t, ctx, db, fmt.Sprintf("select pg_drop_replication_slot('%s')", cfg.Postgres.Slot))
	phase.Store(1)
	time.Sleep(3 * time.Second)

	if err := f.run(t, ctx); !errors.Is(err, capture.ErrSlotMissing) {
		t.Fatalf("a capture without --resync after the slot was dropped returned %v; want ErrSlotMissing", err)
	}
	reg := prometheus.NewRegistry()
	phase.Store(2)
	stop = f.start(t, ctx, capture.WithResync(), capture.WithRegisterer(reg))
	defer stop()
	waitSlotActive(t, ctx, db, cfg.Postgres.Slot)
	waitPending(t, ctx, topo, func(p []capture.SnapshotStatus) bool { return len(p) == 0 })
	time.Sleep(time.Second) // the workload goes on after the resync
	stopWork()
	writers.Wait()
	changedSinceStop := writes.Load() - writesAtStop

	waitViewsEqual(t, ctx, db, topo, vs)
	if n := backwards.Load(); n > 0 {
		t.Fatalf("%d view updates took an entity back in time", n)
	}

	// The history: one marker, after the last change of the lost slot;
	// then fewer snapshot rows than changes since the capture stopped.
	var markers []*codecs.Event
	snapshots := 0
	for _, m := range readAll(t, ctx, cfg, topo.History()) {
		ev, err := (codecs.EventCodec{}).Decode(m.Value)
		if err != nil {
			t.Fatalf("history offset %d: %v", m.Offset, err)
		}
		switch {
		case ev.Op == codecs.OpResync:
			markers = append(markers, ev)
		case ev.Op == codecs.OpSnapshot && len(markers) > 0:
			snapshots++
		}
	}
	if len(markers) != 1 {
		t.Fatalf("the history holds %d resync markers; want 1", len(markers))
	}
	mk := markers[0].Resync
	if mk.After != lastBefore.Position || mk.Until <= lastBefore.Position.CommitLSN || mk.Slot != cfg.Postgres.Slot || len(mk.Types) != 2 {
		t.Fatalf("resync marker %+v; want after %s (the lost slot's last change), until later, slot %s, both types", mk, lastBefore.Position, cfg.Postgres.Slot)
	}
	same := counterOf(t, reg, "changes_capture_resync_same_rows_total", "item") +
		counterOf(t, reg, "changes_capture_resync_same_rows_total", "code")
	deletes := counterOf(t, reg, "changes_capture_resync_deletes_total", "item") +
		counterOf(t, reg, "changes_capture_resync_deletes_total", "code")
	again := counterOf(t, reg, "changes_capture_incremental_snapshot_recopied_rows_total", "item")
	t.Logf("resync: %d snapshot rows written, %.0f rows equal to the tables not written, %.0f deletes, %.0f rows copied again (TOASTed columns left unchanged in a window); %d changes since the capture stopped",
		snapshots, same, deletes, again, changedSinceStop)
	switch {
	case snapshots == 0 || int64(snapshots) > changedSinceStop:
		t.Fatalf("the resync wrote %d snapshot rows; want some, and no more than the %d changes since the capture stopped", snapshots, changedSinceStop)
	case same < itemRows/2:
		t.Fatalf("the resync found %.0f rows equal to the tables; want most of the %d", same, itemRows+codeRows)
	case deletes == 0:
		t.Fatal("the resync wrote no delete, though rows were deleted while the slot was missing")
	}
}

// lastHistoryEvent is the history's last event.
func lastHistoryEvent(t testing.TB, ctx context.Context, cfg *topology.Config, topo *topology.Topology) *codecs.Event {
	t.Helper()
	client, err := topology.NewClient(cfg.Kafka)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	m := lastRecord(t, ctx, client, topo.History())
	ev, err := (codecs.EventCodec{}).Decode(m.Value)
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

// counterOf is the sum of the counter name's series with label
// entity_type = entityType that reg holds.
func counterOf(t testing.TB, reg *prometheus.Registry, name, entityType string) float64 {
	t.Helper()
	v, err := promreg.Sum(reg, name, map[string]string{"entity_type": entityType})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestResyncAfterLostWAL loses the slot the other way: PostgreSQL removes
// WAL the stopped capture's slot still needs (max_slot_wal_keep_size,
// lowered for the test), so wal_status is 'lost'. The capture refuses with
// ErrSlotLost; with --resync it drops the slot and resyncs, and the view
// then equals the table, the rows changed and deleted meanwhile included.
func TestResyncAfterLostWAL(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	f := newCaptureFixture(t, ctx, "lostwal", "id bigint primary key, version int not null default 1")
	db, cfg, topo := f.db, f.cfg, f.topo
	execSQL(t, ctx, db, "insert into "+f.table+" select g from generate_series(1, 2000) g")
	log := testLogger(t)
	procCtx, stopProcs := context.WithCancel(ctx)
	procDone := make(chan error, 1)
	go func() { procDone <- platform.Run(procCtx, topo, platform.Parts{Processors: true}, log, nil, nil) }()
	defer func() { stopProcs(); <-procDone }()
	vs := map[string]*views.View{"item": runView(t, ctx, topo, "item")}
	stop := f.start(t, ctx)
	waitSlotActive(t, ctx, db, cfg.Postgres.Slot)
	waitViewsEqual(t, ctx, db, topo, vs)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	waitSlotInactive(t, ctx, db, cfg.Postgres.Slot)

	// The slot's WAL goes: a 1 MB allowance, segments switched, a
	// checkpoint. The allowance is restored before anything else runs.
	execSQL(t, ctx, db, "alter system set max_slot_wal_keep_size = '1MB'")
	execSQL(t, ctx, db, "select pg_reload_conf()")
	t.Cleanup(func() {
		db, err := pgx.Connect(context.Background(), f.e.pgURL)
		if err != nil {
			t.Error(err)
			return
		}
		defer db.Close(context.Background())
		for _, sql := range []string{"alter system reset max_slot_wal_keep_size", "select pg_reload_conf()"} {
			if _, err := db.Exec(context.Background(), sql); err != nil {
				t.Errorf("%s: %v", sql, err)
			}
		}
	})
	execSQL(t, ctx, db, "update "+f.table+" set version = version + 1 where id % 10 = 1")
	execSQL(t, ctx, db, "delete from "+f.table+" where id % 100 = 2")
	execSQL(t, ctx, db, "insert into "+f.table+" select g from generate_series(5001, 5100) g")
	for status := ""; status != "lost"; {
		for range 3 {
			execSQL(t, ctx, db, "insert into "+f.table+" values (9999) on conflict (id) do update set version = "+f.table+".version + 1")
			execSQL(t, ctx, db, "select pg_switch_wal()")
		}
		execSQL(t, ctx, db, "checkpoint")
		if err := db.QueryRow(ctx, "select coalesce(wal_status, '') from pg_replication_slots where slot_name = $1", cfg.Postgres.Slot).Scan(&status); err != nil {
			t.Fatal(err)
		}
		if ctx.Err() != nil {
			t.Fatalf("the slot's WAL status stayed %q", status)
		}
	}
	execSQL(t, ctx, db, "alter system reset max_slot_wal_keep_size")
	execSQL(t, ctx, db, "select pg_reload_conf()")

	if err := f.run(t, ctx); !errors.Is(err, capture.ErrSlotLost) || !strings.Contains(err.Error(), "--resync") {
		t.Fatalf("a capture without --resync after the slot's WAL was removed returned %v; want ErrSlotLost naming --resync", err)
	}
	stop = f.start(t, ctx, capture.WithResync())
	defer stop()
	waitSlotActive(t, ctx, db, cfg.Postgres.Slot)
	waitPending(t, ctx, topo, func(p []capture.SnapshotStatus) bool { return len(p) == 0 })
	waitViewsEqual(t, ctx, db, topo, vs)
}
