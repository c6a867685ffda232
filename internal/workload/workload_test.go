package workload

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
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

// testTable creates a table (id bigint primary key) of the test's own and
// drops it when the test ends.
func testTable(t *testing.T, ctx context.Context, url string) (*pgx.Conn, string) {
	t.Helper()
	db, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	table := fmt.Sprintf("workload_test_%d_%d", os.Getpid(), time.Now().UnixNano()%1e9)
	if _, err := db.Exec(ctx, "create table "+table+" (id bigint primary key, worker integer not null)"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		db.Exec(context.Background(), "drop table if exists "+table)
		db.Close(context.Background())
	})
	return db, table
}

// inserter is a mix that inserts rows rows per transaction with ids unique
// across workers, and records them.
func inserter(table string, rows int) Txn[[]int64] {
	var next atomic.Int64
	return func(ctx context.Context, tx pgx.Tx, worker int, rnd *rand.Rand) (int, []int64, error) {
		ids := make([]int64, rows)
		for i := range ids {
			ids[i] = next.Add(1)
		}
		tag, err := tx.Exec(ctx, "insert into "+table+" select id, $2 from unnest($1::bigint[]) id", ids, worker)
		return int(tag.RowsAffected()), ids, err
	}
}

func count(t *testing.T, ctx context.Context, db *pgx.Conn, table string) int64 {
	t.Helper()
	var n int64
	if err := db.QueryRow(ctx, "select count(*) from "+table).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestConfigValidate(t *testing.T) {
	txn := func(context.Context, pgx.Tx, int, *rand.Rand) (int, struct{}, error) { return 0, struct{}{}, nil }
	for _, tc := range []struct {
		name string
		cfg  Config[struct{}]
		want string // in the error; "" for none
	}{
		{"ok", Config[struct{}]{URL: "postgres://localhost/x", Txn: txn}, ""},
		{"no connection", Config[struct{}]{Txn: txn}, "exactly one of Pool and URL"},
		{"both connections", Config[struct{}]{URL: "postgres://localhost/x", Pool: &pgxpool.Pool{}, Txn: txn}, "exactly one of Pool and URL"},
		{"no txn", Config[struct{}]{URL: "postgres://localhost/x"}, "Txn is required"},
		{"negative workers", Config[struct{}]{URL: "postgres://localhost/x", Txn: txn, Workers: -1}, "Workers is -1"},
		{"negative rate", Config[struct{}]{URL: "postgres://localhost/x", Txn: txn, Rate: -1}, "cannot be negative"},
		{"two rates", Config[struct{}]{URL: "postgres://localhost/x", Txn: txn, Rate: 1, ChangeRate: 1}, "at most one of Rate and ChangeRate"},
		{"negative limit", Config[struct{}]{URL: "postgres://localhost/x", Txn: txn, Changes: -1}, "cannot be negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.validate()
			if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Errorf("validate: %v, want %q", err, tc.want)
			}
		})
	}
	ctx := context.Background()
	if _, err := Start(ctx, Config[struct{}]{URL: "postgres://%zz", Txn: txn}); err == nil || !strings.Contains(err.Error(), "URL") {
		t.Errorf("an unparsable URL: %v, want an error naming URL", err)
	}
}

// TestMarked: the errors that mean the connection is gone are marked
// ErrConnLost, once; the others are left alone.
func TestMarked(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		lost bool
	}{
		{"closed by pgx", fmt.Errorf("begin: %w", pgconn.ErrConnClosed), true},
		{"connection failure", &pgconn.PgError{Code: "08006"}, true},
		{"admin shutdown", &pgconn.PgError{Code: "57P01"}, true},
		{"crash shutdown", fmt.Errorf("commit: %w", &pgconn.PgError{Code: "57P02"}), true},
		{"marked already", fmt.Errorf("%w: %w", ErrConnLost, &pgconn.PgError{Code: "57P01"}), true},
		{"unique violation", &pgconn.PgError{Code: "23505"}, false},
		{"division by zero", &pgconn.PgError{Code: "22012"}, false},
		{"the mix's own", errors.New("no rows to update"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := marked(nil, tc.err)
			if errors.Is(got, ErrConnLost) != tc.lost || !errors.Is(got, tc.err) {
				t.Errorf("marked(%v) = %v: lost %v, want %v, wrapping the error", tc.err, got, errors.Is(got, ErrConnLost), tc.lost)
			}
			if strings.Count(got.Error(), ErrConnLost.Error()) > 1 {
				t.Errorf("marked twice: %v", got)
			}
		})
	}
}

// TestPacing runs each pacing for about a second and checks the count is
// near the rate asked: loose bounds, this is no timed assertion.
func TestPacing(t *testing.T) {
	url := testPostgresURL(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	for _, tc := range []struct {
		name        string
		pool        bool
		rows        int // changes per transaction
		rate        float64
		changeRate  float64
		catchUp     bool
		wantChanges float64 // in about 1 s
	}{
		{name: "transactions per second", rows: 1, rate: 100, wantChanges: 100},
		{name: "transactions per second, pool, catch up", pool: true, rows: 2, rate: 100, catchUp: true, wantChanges: 200},
		// 200 transactions/s at the first estimate (2 changes each), then
		// 100/s once the estimate is 4.
		{name: "changes per second", pool: true, rows: 4, changeRate: 400, catchUp: true, wantChanges: 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db, table := testTable(t, ctx, url)
			cfg := Config[[]int64]{Workers: 3, Txn: inserter(table, tc.rows), Rate: tc.rate, ChangeRate: tc.changeRate, CatchUp: tc.catchUp}
			if tc.pool {
				cfg.Pool = pool
			} else {
				cfg.URL = url
			}
			w, err := Start(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			time.Sleep(time.Second)
			if err := w.Stop(); err != nil {
				t.Fatal(err)
			}
			elapsed := time.Since(start).Seconds()
			got := float64(w.Changes())
			if lo, hi := tc.wantChanges*0.5, tc.wantChanges*1.6*elapsed; got < lo || got > hi {
				t.Errorf("%.0f changes in %.2fs, want between %.0f and %.0f", got, elapsed, lo, hi)
			}
			if n := count(t, ctx, db, table); n != w.Changes() {
				t.Errorf("the table has %d rows, the workload counted %d changes", n, w.Changes())
			}
			if w.Txns()*int64(tc.rows) != w.Changes() {
				t.Errorf("%d transactions of %d rows, but %d changes", w.Txns(), tc.rows, w.Changes())
			}
		})
	}
}

// TestPause: a paused workload commits nothing, and its pacing clock stops:
// it does not make up for the pause when resumed, even with CatchUp.
func TestPause(t *testing.T) {
	url := testPostgresURL(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	db, table := testTable(t, ctx, url)
	w, err := Start(ctx, Config[[]int64]{URL: url, Workers: 3, Txn: inserter(table, 1), Rate: 100, CatchUp: true})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	time.Sleep(500 * time.Millisecond)
	w.Pause()
	paused := w.Txns()
	if n := count(t, ctx, db, table); n != paused {
		t.Errorf("paused: the table has %d rows, the workload counted %d transactions", n, paused)
	}
	time.Sleep(time.Second)
	if n, got := count(t, ctx, db, table), w.Txns(); n != paused || got != paused {
		t.Errorf("paused for 1 s: %d rows, %d transactions, want both still %d", n, got, paused)
	}
	w.Resume()
	time.Sleep(500 * time.Millisecond)
	if err := w.Stop(); err != nil {
		t.Fatal(err)
	}
	// 1 s unpaused at 100/s: about 100; 200 if it caught up on the pause.
	if got := w.Txns(); got <= paused || got < 50 || got > 160 {
		t.Errorf("%d transactions, %d before the pause: want more, and 50..160 in all", got, paused)
	}
}

// TestCommitHook: the hook sees every committed transaction, with its
// record, and none that rolled back; Transactions is exact.
func TestCommitHook(t *testing.T) {
	url := testPostgresURL(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	db, table := testTable(t, ctx, url)
	insert := inserter(table, 2)
	var failures atomic.Int64
	var mu sync.Mutex
	var seen []int64
	var calls, last int64
	workers := map[int]bool{}
	w, err := Start(ctx, Config[[]int64]{
		URL: url, Workers: 4, Transactions: 300, Seed: 1,
		Txn: func(ctx context.Context, tx pgx.Tx, worker int, rnd *rand.Rand) (int, []int64, error) {
			n, ids, err := insert(ctx, tx, worker, rnd)
			if err == nil && rnd.IntN(10) == 0 {
				err = errors.New("a transaction that rolls back")
			}
			return n, ids, err
		},
		OnError: func(err error) error {
			failures.Add(1)
			return nil
		},
		Commit: func(c Commit[[]int64]) {
			mu.Lock()
			defer mu.Unlock()
			seen = append(seen, c.Record...)
			calls++
			last = max(last, c.Txns)
			workers[c.Worker] = true
			if c.Changes != len(c.Record) || c.At.IsZero() {
				t.Errorf("commit %+v: changes and record disagree, or no time", c)
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Wait(); err != nil {
		t.Fatal(err)
	}
	if failures.Load() == 0 {
		t.Fatal("no transaction rolled back: the test proves nothing")
	}
	rows, err := db.Query(ctx, "select id from "+table+" order by id")
	if err != nil {
		t.Fatal(err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(seen)
	if !slices.Equal(seen, ids) {
		t.Errorf("the hook saw %d ids, the table has %d: they differ", len(seen), len(ids))
	}
	if calls != 300 || last != 300 || w.Txns() != 300 || w.Changes() != 600 {
		t.Errorf("%d hook calls (last Txns %d), %d transactions, %d changes; want 300, 300, 300, 600", calls, last, w.Txns(), w.Changes())
	}
	if len(workers) < 2 {
		t.Errorf("commits came from workers %v only", workers)
	}
	t.Logf("%d transactions rolled back and were not seen", failures.Load())
}

// TestErrorStops: the first error stops every worker and Wait returns it;
// a lost connection is marked, and a worker allowed to go on reconnects;
// cancellation is no error.
func TestErrorStops(t *testing.T) {
	url := testPostgresURL(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	t.Run("sql error", func(t *testing.T) {
		var calls atomic.Int64
		w, err := Start(ctx, Config[struct{}]{URL: url, Workers: 3, Txn: func(ctx context.Context, tx pgx.Tx, worker int, rnd *rand.Rand) (int, struct{}, error) {
			sql := "select 1"
			if calls.Add(1) == 20 {
				sql = "select 1/0"
			}
			_, err := tx.Exec(ctx, sql)
			return 0, struct{}{}, err
		}})
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- w.Wait() }()
		select {
		case err = <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("the workload went on after an error")
		}
		if err == nil || !strings.Contains(err.Error(), "division by zero") || errors.Is(err, ErrConnLost) {
			t.Errorf("Wait: %v, want the division by zero, not a lost connection", err)
		}
		if again := w.Stop(); again != err {
			t.Errorf("Stop after Wait: %v, want %v", again, err)
		}
		// The other workers' transactions in flight commit, and a few more
		// while the failing one rolls back; then nothing.
		n := w.Txns()
		time.Sleep(100 * time.Millisecond)
		if again := w.Txns(); n < 17 || n > 100 || again != n {
			t.Errorf("%d transactions committed around the failing 20th, %d after Wait returned", n, again)
		}
	})

	t.Run("connection lost", func(t *testing.T) {
		var calls atomic.Int64
		var lost []error
		w, err := Start(ctx, Config[struct{}]{URL: url, Transactions: 10,
			Txn: func(ctx context.Context, tx pgx.Tx, worker int, rnd *rand.Rand) (int, struct{}, error) {
				sql := "select 1"
				if calls.Add(1) == 5 {
					sql = "select pg_terminate_backend(pg_backend_pid())"
				}
				_, err := tx.Exec(ctx, sql)
				return 1, struct{}{}, err
			},
			OnError: func(err error) error {
				lost = append(lost, err) // one worker: no lock needed
				if !errors.Is(err, ErrConnLost) {
					return err
				}
				return nil
			}})
		if err != nil {
			t.Fatal(err)
		}
		if err := w.Wait(); err != nil {
			t.Fatalf("Wait: %v, want the worker to ride out its lost connection", err)
		}
		if len(lost) != 1 || w.Txns() != 10 {
			t.Errorf("errors %v and %d transactions; want one lost connection and 10", lost, w.Txns())
		}
	})

	t.Run("connection lost between transactions", func(t *testing.T) {
		// PostgreSQL ends the worker's session between two transactions,
		// as a restart does: the next BEGIN fails, marked lost.
		admin, err := pgx.Connect(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		defer admin.Close(context.Background())
		var lost, other []error
		w, err := Start(ctx, Config[int32]{URL: url, Transactions: 6,
			Txn: func(ctx context.Context, tx pgx.Tx, worker int, rnd *rand.Rand) (int, int32, error) {
				var pid int32
				err := tx.QueryRow(ctx, "select pg_backend_pid()").Scan(&pid)
				return 1, pid, err
			},
			Commit: func(c Commit[int32]) {
				if c.Txns%2 == 0 {
					return
				}
				if _, err := admin.Exec(ctx, "select pg_terminate_backend($1, 5000)", c.Record); err != nil {
					t.Error(err)
				}
			},
			OnError: func(err error) error {
				if errors.Is(err, ErrConnLost) {
					lost = append(lost, err)
				} else {
					other = append(other, err)
				}
				return nil
			}})
		if err != nil {
			t.Fatal(err)
		}
		if err := w.Wait(); err != nil {
			t.Fatal(err)
		}
		if len(lost) != 3 || len(other) != 0 || w.Txns() != 6 {
			t.Errorf("lost %v, other errors %v, %d transactions; want 3 lost connections, none other, 6 transactions", lost, other, w.Txns())
		}
	})

	t.Run("resolve", func(t *testing.T) {
		// A deferred constraint fails at COMMIT: Resolve decides.
		db, table := testTable(t, ctx, url)
		if _, err := db.Exec(ctx, "alter table "+table+" add unique (worker) deferrable initially deferred"); err != nil {
			t.Fatal(err)
		}
		var asked []int64
		var committed int
		var next int64
		w, err := Start(ctx, Config[int64]{URL: url, Transactions: 3,
			Txn: func(ctx context.Context, tx pgx.Tx, worker int, rnd *rand.Rand) (int, int64, error) {
				next++
				id := next
				_, err := tx.Exec(ctx, "insert into "+table+" values ($1, 0)", id)
				return 1, id, err
			},
			Resolve: func(ctx context.Context, id int64) (bool, error) {
				asked = append(asked, id)
				return id == 2, nil // a lie: says the second committed
			},
			Commit: func(Commit[int64]) { committed++ },
		})
		if err != nil {
			t.Fatal(err)
		}
		err = w.Wait()
		if !slices.Equal(asked, []int64{2, 3}) || committed != 2 {
			t.Errorf("Resolve asked about %v, %d committed; want [2 3] and 2 (the first, the second as Resolve said)", asked, committed)
		}
		if err == nil || !strings.Contains(err.Error(), "commit") || !strings.Contains(err.Error(), "23505") {
			t.Errorf("Wait: %v, want the third COMMIT's unique violation", err)
		}
	})

	t.Run("cancel", func(t *testing.T) {
		cctx, ccancel := context.WithCancel(ctx)
		w, err := Start(cctx, Config[struct{}]{URL: url, Workers: 2, Rate: 50, Txn: func(ctx context.Context, tx pgx.Tx, worker int, rnd *rand.Rand) (int, struct{}, error) {
			_, err := tx.Exec(ctx, "select pg_sleep(0.01)")
			return 0, struct{}{}, err
		}})
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(300 * time.Millisecond)
		ccancel()
		if err := w.Wait(); err != nil {
			t.Errorf("Wait after cancel: %v, want nil", err)
		}
		if w.Txns() == 0 {
			t.Error("nothing committed before the cancel")
		}
	})
}
