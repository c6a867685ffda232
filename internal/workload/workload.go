package workload

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// connectTimeout bounds a worker's attempt to connect (Config.URL), so a
// PostgreSQL that is away delays Stop by at most this long.
const connectTimeout = 3 * time.Second

// Txn executes one transaction's statements in tx, on behalf of worker
// (0..Workers-1) with the worker's own rnd, and returns the changes it made
// (rows inserted, updated or deleted) and a record of them for
// Config.Commit. It must not commit or roll back tx. An error rolls the
// transaction back and goes to Config.OnError.
type Txn[R any] func(ctx context.Context, tx pgx.Tx, worker int, rnd *rand.Rand) (changes int, rec R, err error)

// Commit is a committed transaction, as Config.Commit sees it.
type Commit[R any] struct {
	Worker  int       // the worker that committed it
	Changes int       // the changes its Txn returned
	Record  R         // the record its Txn returned
	At      time.Time // when COMMIT returned (or Config.Resolve answered)
	Txns    int64     // transactions committed so far, this one included
}

// Config is what a workload writes, from how many workers and how fast.
// Exactly one of Pool and URL is set; Txn is required.
type Config[R any] struct {
	// Pool gives every transaction a connection of its own choosing;
	// Workers should not exceed its MaxConns, or workers wait for
	// connections.
	Pool *pgxpool.Pool
	// URL gives every worker a connection of its own, opened before its
	// first transaction and opened anew after a failed one.
	URL string
	// Workers is how many transactions run at once. Default 1.
	Workers int
	// Txn is the mix: the statements of one transaction. Required.
	Txn Txn[R]
	// Seed seeds the workers' random sources: worker i draws from
	// rand.New(rand.NewPCG(Seed, i)). Default 0: a seed from the clock.
	Seed uint64

	// Rate is the transactions per second of all workers together.
	// Default 0: as fast as they can, unless ChangeRate is set.
	Rate float64
	// ChangeRate is the changes per second of all workers together, paced
	// as transactions at ChangeRate over the changes per transaction seen
	// so far (2 until 100 transactions committed). Default 0: unpaced,
	// unless Rate is set. At most one of Rate and ChangeRate is set.
	ChangeRate float64
	// CatchUp issues the transactions the workers fell behind on as soon
	// as one is free, so the rate over the whole run is the one asked
	// (the bench's rate accuracy). Default false: transactions due while
	// every worker was busy are skipped, like a time.Ticker's ticks, so a
	// stall (PostgreSQL away, a slow commit) is not followed by a burst.
	CatchUp bool

	// Transactions stops the workload once it committed this many
	// transactions, exactly: a worker claims its transaction before it
	// begins. Default 0: no limit.
	Transactions int64
	// Changes stops the workload once it committed this many changes. The
	// workers check before each transaction, so the ones in flight may
	// take the count past it. Default 0: no limit.
	Changes int64

	// Commit, if set, is called for every committed transaction, by the
	// worker that committed it and before that worker begins its next
	// one: per-worker state may be updated from it without a lock. It is
	// called after the counters include the transaction. It must not call
	// Stop or Wait, which wait for it.
	Commit func(Commit[R])
	// Resolve, if set, is called when COMMIT returned an error: the
	// transaction may have committed all the same (PostgreSQL wrote the
	// commit record, then the answer was lost). It answers whether it did,
	// from rec; a transaction that did is counted and Commit sees it.
	// Without Resolve, or when it says no, the COMMIT's error is the
	// transaction's; an error of Resolve is the transaction's.
	Resolve func(ctx context.Context, rec R) (committed bool, err error)
	// OnError, if set, is called with the error of every failed
	// transaction or connection attempt (errors.Is(err, ErrConnLost) when
	// the connection is gone). Returning nil lets the worker go on;
	// returning an error stops the workload with it. Default: every error
	// stops the workload. Errors once the context is done are dropped.
	OnError func(err error) error
}

// validate reports the first field that is wrong.
func (c *Config[R]) validate() error {
	switch {
	case (c.Pool == nil) == (c.URL == ""):
		return errors.New("workload: set exactly one of Pool and URL")
	case c.Txn == nil:
		return errors.New("workload: Txn is required")
	case c.Workers < 0:
		return fmt.Errorf("workload: Workers is %d, want at least 1", c.Workers)
	case c.Rate < 0 || c.ChangeRate < 0:
		return errors.New("workload: Rate and ChangeRate cannot be negative")
	case c.Rate > 0 && c.ChangeRate > 0:
		return errors.New("workload: set at most one of Rate and ChangeRate")
	case c.Transactions < 0 || c.Changes < 0:
		return errors.New("workload: Transactions and Changes cannot be negative")
	}
	return nil
}

// Workload is a running workload. Its methods are safe for concurrent use.
type Workload[R any] struct {
	cfg     Config[R]
	connCfg *pgx.ConnConfig // with URL

	txns    atomic.Int64
	changes atomic.Int64
	claimed atomic.Int64 // transactions begun or committed, with Config.Transactions

	gate     gate
	tokens   chan struct{} // nil: unpaced
	quit     chan struct{} // closed by halt
	haltOnce sync.Once
	done     chan struct{} // closed once every goroutine returned

	mu  sync.Mutex
	err error // the first
}

// Start validates cfg and starts the workers; they run until ctx is done,
// Stop is called, a limit is reached or an error stops them. Its error
// names the field of cfg that is wrong; connecting is left to the workers,
// so an unreachable PostgreSQL is their first error (or OnError's).
func Start[R any](ctx context.Context, cfg Config[R]) (*Workload[R], error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if cfg.Workers == 0 {
		cfg.Workers = 1
	}
	if cfg.Seed == 0 {
		cfg.Seed = uint64(time.Now().UnixNano())
	}
	w := &Workload[R]{cfg: cfg, quit: make(chan struct{}), done: make(chan struct{})}
	w.gate.cond.L = &w.gate.mu
	if cfg.URL != "" {
		cc, err := pgx.ParseConfig(cfg.URL)
		if err != nil {
			return nil, fmt.Errorf("workload: URL: %w", err)
		}
		w.connCfg = cc
	}
	stopOnCancel := context.AfterFunc(ctx, w.halt)
	var pacer sync.WaitGroup
	if cfg.Rate > 0 || cfg.ChangeRate > 0 {
		w.tokens = make(chan struct{}, cfg.Workers)
		pacer.Go(func() { w.pace(ctx) })
	}
	var workers sync.WaitGroup
	for i := range cfg.Workers {
		workers.Go(func() { w.work(ctx, i) })
	}
	go func() {
		workers.Wait()
		w.halt()
		pacer.Wait()
		stopOnCancel()
		close(w.done)
	}()
	return w, nil
}

// Stop stops the workers between transactions (the ones in flight commit),
// waits for them and returns Wait's error. It may be called more than once.
func (w *Workload[R]) Stop() error {
	w.halt()
	return w.Wait()
}

// Wait waits until the workload stopped and returns its first error: nil
// when it stopped because its context was done, Stop was called or it
// reached its limit.
func (w *Workload[R]) Wait() error {
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// Pause waits for the transactions in flight and holds the next ones until
// Resume, so the caller sees the database between transactions. The pacing
// clock stops meanwhile. A second Pause waits for the first's Resume.
func (w *Workload[R]) Pause() { w.gate.pause() }

// Resume lets the workers go on after Pause. Calling it without a Pause is
// a bug, as with sync.Mutex.Unlock.
func (w *Workload[R]) Resume() { w.gate.resume() }

// Txns returns the transactions committed so far.
func (w *Workload[R]) Txns() int64 { return w.txns.Load() }

// Changes returns the changes of the transactions committed so far.
func (w *Workload[R]) Changes() int64 { return w.changes.Load() }

// halt tells every goroutine to stop; transactions in flight finish.
func (w *Workload[R]) halt() {
	w.haltOnce.Do(func() {
		close(w.quit)
		w.gate.close()
	})
}

func (w *Workload[R]) halted() bool {
	select {
	case <-w.quit:
		return true
	default:
		return false
	}
}

// work is worker i's loop.
func (w *Workload[R]) work(ctx context.Context, i int) {
	rnd := rand.New(rand.NewPCG(w.cfg.Seed, uint64(i)))
	var conn *pgx.Conn // with URL
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	for !w.halted() {
		if w.cfg.Changes > 0 && w.changes.Load() >= w.cfg.Changes {
			return
		}
		if w.tokens != nil {
			select {
			case <-w.quit:
				return
			case _, ok := <-w.tokens:
				if !ok {
					return
				}
			}
		}
		if w.cfg.Transactions > 0 && w.claimed.Add(1) > w.cfg.Transactions {
			w.claimed.Add(-1) // a worker that failed its claim may still use it
			return
		}
		if w.connCfg != nil && conn != nil && conn.IsClosed() {
			conn = nil // lost under a transaction that committed all the same (Resolve)
		}
		if w.connCfg != nil && conn == nil {
			cctx, cancel := context.WithTimeout(ctx, connectTimeout)
			c, err := pgx.ConnectConfig(cctx, w.connCfg)
			cancel()
			if err != nil {
				w.unclaim()
				if !w.failed(ctx, fmt.Errorf("worker %d: connect: %w: %w", i, ErrConnLost, err)) {
					return
				}
				continue
			}
			conn = c
		}
		if !w.gate.enter() {
			w.unclaim()
			return
		}
		err := w.txn(ctx, i, conn, rnd)
		w.gate.leave()
		if err != nil {
			w.unclaim()
			goOn := w.failed(ctx, fmt.Errorf("worker %d: %w", i, err)) // halts the others first
			if conn != nil {
				conn.Close(context.Background())
				conn = nil
			}
			if !goOn {
				return
			}
		}
	}
}

// unclaim gives back a claimed transaction that did not commit.
func (w *Workload[R]) unclaim() {
	if w.cfg.Transactions > 0 {
		w.claimed.Add(-1)
	}
}

// failed handles an error; it reports whether the worker goes on.
func (w *Workload[R]) failed(ctx context.Context, err error) bool {
	if ctx.Err() != nil {
		return false
	}
	if w.cfg.OnError != nil {
		if err = w.cfg.OnError(err); err == nil {
			return true
		}
	}
	w.mu.Lock()
	if w.err == nil {
		w.err = err
	}
	w.mu.Unlock()
	w.halt()
	return false
}

// txn runs one transaction; conn is nil with Pool.
func (w *Workload[R]) txn(ctx context.Context, worker int, conn *pgx.Conn, rnd *rand.Rand) error {
	var tx pgx.Tx
	var err error
	if conn != nil {
		tx, err = conn.Begin(ctx)
	} else {
		tx, err = w.cfg.Pool.Begin(ctx)
	}
	if err != nil {
		return fmt.Errorf("begin: %w", marked(conn, err))
	}
	defer tx.Rollback(context.Background()) // after Commit: does nothing
	n, rec, err := w.cfg.Txn(ctx, tx, worker, rnd)
	if err != nil {
		return marked(tx.Conn(), err)
	}
	if err := tx.Commit(ctx); err != nil {
		err = fmt.Errorf("commit: %w", marked(tx.Conn(), err))
		if w.cfg.Resolve == nil {
			return err
		}
		committed, rerr := w.cfg.Resolve(ctx, rec)
		if rerr != nil {
			return rerr
		}
		if !committed {
			return err
		}
	}
	at := time.Now()
	w.changes.Add(int64(n))
	txns := w.txns.Add(1)
	if w.cfg.Commit != nil {
		w.cfg.Commit(Commit[R]{Worker: worker, Changes: n, Record: rec, At: at, Txns: txns})
	}
	return nil
}

// marked wraps err with ErrConnLost when it means the connection is gone.
func marked(conn *pgx.Conn, err error) error {
	var pgErr *pgconn.PgError
	var connErr *pgconn.ConnectError
	lost := conn != nil && conn.IsClosed() ||
		errors.Is(err, pgconn.ErrConnClosed) || // pgx closed it under an earlier step
		errors.As(err, &connErr) ||
		errors.As(err, &pgErr) && (strings.HasPrefix(pgErr.Code, "08") || strings.HasPrefix(pgErr.Code, "57"))
	if lost && !errors.Is(err, ErrConnLost) {
		return fmt.Errorf("%w: %w", ErrConnLost, err)
	}
	return err
}

// pace sends the workers a token per transaction due, until the workload
// halts; it closes tokens when it returns.
func (w *Workload[R]) pace(ctx context.Context) {
	defer close(w.tokens)
	start := time.Now()
	t0 := w.txns.Load()
	c0 := w.changes.Load()
	sent := int64(0)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-w.quit:
			return
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		perSecond := w.cfg.Rate
		if w.cfg.ChangeRate > 0 {
			perTxn := 2.0
			if dt := w.txns.Load() - t0; dt > 100 {
				perTxn = max(float64(w.changes.Load()-c0)/float64(dt), 0.01)
			}
			perSecond = w.cfg.ChangeRate / perTxn
		}
		active := time.Since(start) - w.gate.pausedFor(time.Now())
		due := int64(active.Seconds() * perSecond)
		for ; sent < due; sent++ {
			if !w.cfg.CatchUp {
				select {
				case w.tokens <- struct{}{}:
				default: // every worker is busy and has a token: skip it
				}
				continue
			}
			select {
			case w.tokens <- struct{}{}:
			case <-w.quit:
				return
			}
		}
	}
}

// gate lets transactions in unless paused; pause waits for the ones in
// flight. It is sync.RWMutex-like, but a stopping workload opens it.
type gate struct {
	pausers sync.Mutex // held from pause to resume

	mu          sync.Mutex
	cond        sync.Cond // L is &mu
	paused      bool
	closed      bool
	inFlight    int
	pausedAt    time.Time
	pausedTotal time.Duration
}

// enter waits while paused; false once closed.
func (g *gate) enter() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	for g.paused && !g.closed {
		g.cond.Wait()
	}
	if g.closed {
		return false
	}
	g.inFlight++
	return true
}

func (g *gate) leave() {
	g.mu.Lock()
	g.inFlight--
	g.mu.Unlock()
	g.cond.Broadcast()
}

func (g *gate) pause() {
	g.pausers.Lock()
	g.mu.Lock()
	defer g.mu.Unlock()
	g.paused, g.pausedAt = true, time.Now()
	for g.inFlight > 0 {
		g.cond.Wait()
	}
}

func (g *gate) resume() {
	g.mu.Lock()
	g.paused = false
	g.pausedTotal += time.Since(g.pausedAt)
	g.mu.Unlock()
	g.cond.Broadcast()
	g.pausers.Unlock()
}

func (g *gate) close() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
	g.cond.Broadcast()
}

// pausedFor returns how long the gate was paused until now.
func (g *gate) pausedFor(now time.Time) time.Duration {
	g.mu.Lock()
	defer g.mu.Unlock()
	d := g.pausedTotal
	if g.paused {
		d += now.Sub(g.pausedAt)
	}
	return d
}
