package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/internal/platform"
	"github.com/changes-dev/changes/topology"
)

// TestCaptureSurvivesKill9 runs `changes capture` under a mixed workload on
// two tables, kills it with SIGKILL at random moments ten times, restarting
// it each time, and then checks that the history equals the sequence of
// committed changes the workload recorded: none lost, none duplicated, none
// out of order.
func TestCaptureSurvivesKill9(t *testing.T) {
	e := stack(t)
	if testing.Short() {
		t.Skip("kills and restarts the capture ten times")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	name := uniqueName("crash")
	ta, tb := name+"_a", name+"_b"
	cfg := testConfig(t, e, name, []topology.EntityConfig{
		{Type: "a", Table: "public." + ta, IDColumn: "id", Partitions: 2},
		{Type: "b", Table: "public." + tb, IDColumn: "id", Partitions: 2},
	})
	cleanupStack(t, e, cfg, ta, tb)
	db, err := pgx.Connect(ctx, e.pgURL)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(context.Background())
	execSQL(t, ctx, db, fmt.Sprintf(`create table %s (id bigint primary key, v integer not null, note text);
		create table %s (id bigint primary key, v integer not null);
		alter table %s replica identity full`, ta, tb, tb))
	topo := topology.New(cfg)
	if err := platform.EnsureTopics(topo); err != nil {
		t.Fatal(err)
	}
	configFile := writeConfig(t, cfg)

	start := func() (stop func()) {
		cmd, _, stderr := command(ctx, t, map[string]string{"CHANGES_KAFKA_BROKERS": "", "CHANGES_POSTGRES_URL": ""}, "capture", "--config", configFile)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		waitSlotActive(t, ctx, db, name)
		return func() {
			cmd.Process.Kill()
			<-done
			if t.Failed() {
				t.Logf("capture stderr:\n%s", stderr)
			}
		}
	}
	stop := start()

	// The workload commits until told to stop and records, in commit order,
	// every change it made; RETURNING gives the order of multi-row statements.
	// It stops between transactions, never by cancelling one whose commit
	// may have reached the server.
	wdb, err := pgx.Connect(ctx, e.pgURL)
	if err != nil {
		t.Fatal(err)
	}
	defer wdb.Close(context.Background())
	w := &crashWorkload{db: wdb, ta: ta, tb: tb, rnd: rand.New(rand.NewPCG(1, 2))}
	var stopWorkload atomic.Bool
	var wg sync.WaitGroup
	var werr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		werr = w.run(ctx, &stopWorkload)
	}()

	rnd := rand.New(rand.NewPCG(3, 4))
	for i := range 10 {
		time.Sleep(time.Duration(150+rnd.IntN(600)) * time.Millisecond)
		stop()
		waitSlotInactive(t, ctx, db, name)
		t.Logf("kill %d: %d changes committed so far", i+1, w.count())
		stop = start()
	}
	time.Sleep(300 * time.Millisecond)
	stopWorkload.Store(true)
	wg.Wait()
	if werr != nil {
		t.Fatal(werr)
	}
	defer stop()

	want := w.changes
	t.Logf("%d transactions, %d changes committed across 10 kills", w.txns, len(want))
	got := readHistory(t, ctx, cfg, topo.History(), len(want))
	var seen []change
	var last codecs.Position
	for _, m := range got {
		ev, err := codecs.EventCodec{}.Decode(m.Value)
		if err != nil {
			t.Fatalf("history offset %d: %v", m.Offset, err)
		}
		if ev.Position.Compare(last) <= 0 {
			t.Errorf("history offset %d: position %s does not follow %s (duplicate or reordered)", m.Offset, ev.Position, last)
		}
		last = ev.Position
		seen = append(seen, change{ev.EntityType, idOf(ev.EntityID), ev.Op})
	}
	if len(seen) != len(want) {
		t.Fatalf("history holds %d changes, the workload committed %d", len(seen), len(want))
	}
	for i := range want {
		if seen[i] != want[i] {
			t.Fatalf("history offset %d is %v, the workload committed %v there", got[i].Offset, seen[i], want[i])
		}
	}
}

// crashWorkload commits random transactions to two tables and records every
// change in commit order.
type crashWorkload struct {
	db      *pgx.Conn
	ta, tb  string
	rnd     *rand.Rand
	mu      sync.Mutex
	changes []change
	txns    int
	nextID  int64
	live    map[string][]int64
}

func (w *crashWorkload) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.changes)
}

func (w *crashWorkload) run(ctx context.Context, stop *atomic.Bool) error {
	w.live = map[string][]int64{"a": nil, "b": nil}
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !stop.Load() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
		if err := w.txn(ctx); err != nil {
			return err
		}
	}
	return nil
}

func (w *crashWorkload) txn(ctx context.Context) error {
	var made []change
	live := map[string][]int64{"a": append([]int64(nil), w.live["a"]...), "b": append([]int64(nil), w.live["b"]...)}
	nextID := w.nextID
	err := pgx.BeginFunc(ctx, w.db, func(tx pgx.Tx) error {
		for range 1 + w.rnd.IntN(4) {
			typ, table := "a", w.ta
			if w.rnd.IntN(2) == 0 {
				typ, table = "b", w.tb
			}
			ids := live[typ]
			var sql string
			var op codecs.Op
			var args []any
			switch k := w.rnd.IntN(10); {
			case k < 4 || len(ids) < 3:
				nextID += 2
				sql, op, args = "insert into "+table+" (id, v) values ($1, 0), ($2, 0) returning id", codecs.OpInsert, []any{nextID - 1, nextID}
			case k < 8:
				sql, op, args = "update "+table+" set v = v + 1 where id = any($1) returning id", codecs.OpUpdate,
					[]any{[]int64{ids[w.rnd.IntN(len(ids))], ids[w.rnd.IntN(len(ids))]}}
			default:
				sql, op, args = "delete from "+table+" where id = $1 returning id", codecs.OpDelete, []any{ids[w.rnd.IntN(len(ids))]}
			}
			rows, err := tx.Query(ctx, sql, args...)
			if err != nil {
				return err
			}
			got, err := pgx.CollectRows(rows, pgx.RowTo[int64])
			if err != nil {
				return err
			}
			for _, id := range got {
				made = append(made, change{typ, id, op})
				switch op {
				case codecs.OpInsert:
					live[typ] = append(live[typ], id)
				case codecs.OpDelete:
					for i, x := range live[typ] {
						if x == id {
							live[typ] = append(live[typ][:i], live[typ][i+1:]...)
							break
						}
					}
				}
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	w.mu.Lock()
	w.changes = append(w.changes, made...)
	w.txns++
	w.mu.Unlock()
	w.live, w.nextID = live, nextID
	return nil
}
