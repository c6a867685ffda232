package main

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/IBM/sarama"
	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/changes-dev/changes/capture"
	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/internal/dbcheck"
	"github.com/changes-dev/changes/internal/kread"
	"github.com/changes-dev/changes/internal/platform"
	"github.com/changes-dev/changes/internal/workload"
	"github.com/changes-dev/changes/processors"
	"github.com/changes-dev/changes/processors/monitor"
	"github.com/changes-dev/changes/topology"
	"github.com/changes-dev/changes/views"
)

//go:embed demo.sql
var demoSchema string

// demoTypes are the entity types the demo writes, one table each: keys of
// every kind (bigint ids, a uuid, a composite of a bigint and a text).
var demoTypes = []string{"account", "campaign", "creative", "placement"}

type demoFlags struct {
	txns    int
	rate    int
	timeout time.Duration
}

func (f *demoFlags) register(fs *flag.FlagSet) {
	fs.IntVar(&f.txns, "transactions", 1000, "transactions the workload commits")
	fs.IntVar(&f.rate, "rate", 200, "transactions per second (0: as fast as it can)")
	fs.DurationVar(&f.timeout, "timeout", 2*time.Minute, "give up when the views do not equal the database by then")
}

// latencies collects samples from several goroutines.
type latencies struct {
	mu sync.Mutex
	d  []time.Duration
}

func (l *latencies) add(d time.Duration) { l.mu.Lock(); l.d = append(l.d, d); l.mu.Unlock() }

func (l *latencies) row(name string) string {
	l.mu.Lock()
	d := slices.Clone(l.d)
	l.mu.Unlock()
	if len(d) == 0 {
		return fmt.Sprintf("  %-18s no samples", name)
	}
	slices.Sort(d)
	q := func(p float64) time.Duration { return d[min(len(d)-1, int(p*float64(len(d))))] }
	within := func(limit time.Duration) float64 {
		n, _ := slices.BinarySearch(d, limit+1)
		return 100 * float64(n) / float64(len(d))
	}
	r := func(x time.Duration) string { return x.Round(100 * time.Microsecond).String() }
	return fmt.Sprintf("  %-18s %9s %9s %9s %9s %8.1f%% %8.1f%%  (%d samples)",
		name, r(q(.5)), r(q(.9)), r(q(.99)), r(d[len(d)-1]), within(5*time.Second), within(time.Minute), len(d))
}

// runDemo runs the whole platform in this process against the configured
// stack, commits a workload to the demo tables, waits until every view equals
// its table and prints what happened.
func runDemo(ctx context.Context, topo *topology.Topology, f demoFlags, log *slog.Logger, out io.Writer,
	reg prometheus.Registerer, capOpts []capture.Option, procOpts []processors.Option) error {
	if f.txns < 1 || f.rate < 0 {
		// 0 transactions would be no limit to the workload, and run forever.
		return usageErrorf("demo: --transactions %d and --rate %d: want at least 1 transaction and a rate of 0 or more", f.txns, f.rate)
	}
	cfg := topo.Config()
	say := func(format string, args ...any) { fmt.Fprintf(out, "demo: "+format+"\n", args...) }

	db, err := pgx.Connect(ctx, cfg.Postgres.URL)
	if err != nil {
		return fmt.Errorf("connect to postgres: %w", err)
	}
	defer db.Close(context.Background())
	if _, err := db.Exec(ctx, demoSchema); err != nil {
		return fmt.Errorf("create demo tables: %w", err)
	}
	for _, typ := range demoTypes {
		if _, ok := cfg.Entity(typ); !ok {
			return fmt.Errorf("the demo writes the entity type %q, which the config does not declare", typ)
		}
	}

	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	g, gctx := errgroup.WithContext(runCtx)
	started := time.Now()
	say("starting capture, router, snapshot processors and views (brokers %v)", cfg.Kafka.Brokers)
	if err := platform.EnsureTopics(topo); err != nil {
		return err
	}
	// A slot an older demo made, for fewer tables: the capture copies the
	// new tables by incremental snapshots while it streams.
	if missing, err := capture.MissingSnapshotTypes(ctx, topo); err != nil {
		return err
	} else if len(missing) > 0 {
		say("slot %s was made by an older demo, for fewer tables: the capture copies the tables of %v while it streams", cfg.Postgres.Slot, missing)
	}
	g.Go(func() error { return platform.Run(gctx, topo, platform.All, log, capOpts, procOpts) })

	var toView latencies
	// Changes committed from the workload's start on are measured, not the
	// rows a new slot's snapshot copies.
	var measureFrom atomic.Int64
	measureFrom.Store(started.Add(time.Hour).UnixNano())
	vs := map[string]*views.View{}
	for _, typ := range topo.EntityTypes() {
		v, err := views.New(topo, typ, views.WithLogger(log), views.WithUpdateHook(func(u views.Update) {
			if u.State != nil && u.State.CommitTime.UnixNano() >= measureFrom.Load() {
				toView.add(time.Since(u.State.CommitTime))
			}
		}))
		if err != nil {
			return err
		}
		vs[typ] = v
		g.Go(func() error { return v.Run(gctx) })
	}
	fail := func(err error) error {
		stop()
		if gerr := g.Wait(); gerr != nil {
			return errors.Join(err, gerr)
		}
		return err
	}

	if err := platform.WaitSlotActive(gctx, db, cfg.Postgres.Slot); err != nil {
		return fail(err)
	}
	for _, v := range vs {
		if err := v.WaitRecovered(gctx); err != nil {
			return fail(err)
		}
	}
	if err := platform.WaitGroupsStable(gctx, topo); err != nil {
		return fail(err)
	}
	say("ready in %s: slot %s is streaming, processor groups stable, views recovered", time.Since(started).Round(time.Millisecond), cfg.Postgres.Slot)

	var toHistory latencies
	var hist historyCount
	historyStart, err := watchHistory(gctx, g, topo, func(m *sarama.ConsumerMessage) {
		if hist.add(m) {
			toHistory.add(time.Since(m.Timestamp))
		}
	})
	if err != nil {
		return fail(err)
	}

	w, err := newDemoMix(gctx, db)
	if err != nil {
		return fail(err)
	}
	say("workload: %d transactions at %d/s on %s", f.txns, f.rate, demoTables(cfg))
	wstart := time.Now()
	measureFrom.Store(wstart.UnixNano())
	lastReport := wstart
	run, err := workload.Start(gctx, workload.Config[demoTxn]{
		URL: cfg.Postgres.URL, Rate: float64(f.rate), Transactions: int64(f.txns), Txn: w.txn,
		Commit: func(c workload.Commit[demoTxn]) {
			w.commit(c)
			if time.Since(lastReport) >= time.Second || c.Txns == int64(f.txns) {
				say("workload: %d/%d transactions, %d changes", c.Txns, f.txns, w.changes)
				lastReport = time.Now()
			}
		},
	})
	if err != nil {
		return fail(err)
	}
	if err := run.Wait(); err != nil {
		return fail(err)
	}
	if err := gctx.Err(); err != nil {
		return fail(err)
	}
	wtime := time.Since(wstart)

	say("waiting until every view equals its table")
	deadline := time.Now().Add(f.timeout)
	var diffs map[string][]string
	var counts map[string][2]int
	for {
		diffs, counts, err = compareAll(gctx, db, topo, vs)
		if err != nil {
			return fail(err)
		}
		n, _ := hist.get()
		if len(diffs) == 0 && n >= w.changes {
			break
		}
		if time.Now().After(deadline) {
			for typ, d := range diffs {
				say("view %s differs from its table: %v", typ, d)
			}
			return fail(fmt.Errorf("views did not equal the database within %s (history has %d of %d changes)", f.timeout, n, w.changes))
		}
		time.Sleep(200 * time.Millisecond)
	}

	n, distinct := hist.get()
	verdict := "none lost, none duplicated"
	if distinct != w.changes || n != distinct {
		verdict = fmt.Sprintf("MISMATCH: %d distinct positions, %d duplicates", distinct, n-distinct)
	}
	fmt.Fprintf(out, "\nchanges demo: summary\n")
	fmt.Fprintf(out, "  workload           %d transactions, %d changes in %s (%.0f changes/s)\n",
		f.txns, w.changes, wtime.Round(time.Millisecond), float64(w.changes)/wtime.Seconds())
	copied := ""
	if c := hist.copiedRows(); c > 0 {
		copied = fmt.Sprintf(" (and %d rows copied by incremental snapshots)", c)
	}
	fmt.Fprintf(out, "  history topic      %s: %d new records from offset %d for %d committed changes: %s%s\n",
		topo.History(), n, historyStart, w.changes, verdict, copied)
	for _, typ := range topo.EntityTypes() {
		e, _ := cfg.Entity(typ)
		c := counts[typ]
		fmt.Fprintf(out, "  view %-13s %6d entities, %6d rows in %s: equal, value by value\n", typ, c[0], c[1], e.Table)
	}
	fmt.Fprintf(out, "\n  latency            %9s %9s %9s %9s %9s %9s\n", "p50", "p90", "p99", "max", "<= 5 s", "<= 1 min")
	fmt.Fprintln(out, toHistory.row("commit -> history"))
	fmt.Fprintln(out, toView.row("commit -> view"))
	fmt.Fprintf(out, "  %-18s %9s %9s %9s %9s %8.1f%% %8.1f%%\n", "reference system", "", "", "", "", 81.8, 89.0)
	fmt.Fprintf(out, "  %s\n", monitor.ReferenceNote)
	fmt.Fprintln(out)
	if st, err := vs["account"].Get(ctx, w.lastAccount); err == nil && st != nil {
		fmt.Fprintf(out, "  view account Get(%d) = %s at position %s\n", w.lastAccount, mustJSON(st.Row), st.Position)
	}
	if p := w.lastPlacement; p.site != "" {
		k := codecs.CompositeKey(codecs.IntKey(p.campaign), codecs.TextKey(p.site))
		if st, err := vs["placement"].GetKey(ctx, k); err == nil && st != nil {
			fmt.Fprintf(out, "  view placement GetKey(%s) = %s\n", k, mustJSON(st.Row))
		}
	}
	stop()
	if err := g.Wait(); err != nil {
		return err
	}
	say("stopped cleanly after %s", time.Since(started).Round(time.Millisecond))
	return nil
}

func mustJSON(r codecs.Row) string {
	b, err := json.Marshal(r)
	if err != nil {
		return err.Error()
	}
	return string(b)
}

// historyCount counts the changes among the history records the demo sees
// and their distinct positions (a duplicate has a position seen before),
// and apart from them the rows incremental snapshots copied (a table an
// older demo's slot did not copy).
type historyCount struct {
	mu        sync.Mutex
	records   int
	copied    int
	positions map[string]struct{}
}

// add counts m and reports whether it is a change.
func (h *historyCount) add(m *sarama.ConsumerMessage) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.positions == nil {
		h.positions = map[string]struct{}{}
	}
	var position string
	for _, hdr := range m.Headers {
		switch string(hdr.Key) {
		case codecs.HeaderOp:
			switch op := codecs.Op(hdr.Value); op {
			case codecs.OpWatermark:
				return false // progress, not a change
			case codecs.OpSnapshot, codecs.OpResync:
				h.copied++
				return false
			}
		case codecs.HeaderPosition:
			position = string(hdr.Value)
		}
	}
	h.records++
	h.positions[position] = struct{}{}
	return true
}

// get returns the changes seen and their distinct positions.
func (h *historyCount) get() (records, distinct int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.records, len(h.positions)
}

// copiedRows returns the rows incremental snapshots copied.
func (h *historyCount) copiedRows() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.copied
}

// watchHistory consumes the history from its current end and calls fn for
// every new record; it returns the first offset it will read.
func watchHistory(ctx context.Context, g *errgroup.Group, topo *topology.Topology, fn func(*sarama.ConsumerMessage)) (int64, error) {
	cfg := topo.Config()
	client, err := topology.NewClient(cfg.Kafka)
	if err != nil {
		return 0, fmt.Errorf("kafka client: %w", err)
	}
	// The last stable offset: records of a Kafka transaction still open
	// are after it, and read once it commits.
	start, err := kread.End(client, topo.History(), 0)
	if err != nil {
		client.Close()
		return 0, fmt.Errorf("history end offset: %w", err)
	}
	g.Go(func() error {
		defer client.Close()
		err := kread.Follow(ctx, client, topo.History(), 0, start, nil, func(r *kread.Record) error {
			fn(r.Message(topo.History(), 0))
			return nil
		})
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("read history: %w", err)
	})
	return start, nil
}

// compareAll compares every view with its table; counts holds, per type, the
// entities in the view and the rows in the table.
func compareAll(ctx context.Context, db *pgx.Conn, topo *topology.Topology, vs map[string]*views.View) (map[string][]string, map[string][2]int, error) {
	diffs := map[string][]string{}
	counts := map[string][2]int{}
	for _, typ := range topo.EntityTypes() {
		e, _ := topo.Config().Entity(typ)
		rows, err := dbcheck.Rows(ctx, db, e.Table, e.KeyColumns())
		if err != nil {
			return nil, nil, err
		}
		states, err := dbcheck.Collect(vs[typ].Each)
		if err != nil {
			return nil, nil, err
		}
		counts[typ] = [2]int{len(states), len(rows)}
		if d := dbcheck.Diff(rows, states, 5); len(d) > 0 {
			diffs[typ] = d
		}
	}
	return diffs, counts, nil
}

// demoTables lists the tables of the demo's types, as the config names them.
func demoTables(cfg *topology.Config) string {
	var names []string
	for _, typ := range demoTypes {
		e, _ := cfg.Entity(typ)
		names = append(names, e.Table)
	}
	return strings.Join(names, ", ")
}

// demoSites are the sites placements are bought on; a site holds a slash,
// so a placement's key, ["812","news.example/sports"], does too.
var demoSites = func() []string {
	var out []string
	for _, host := range []string{"news.example", "video.example", "shop.example", "blog.example"} {
		for _, section := range []string{"sports", "sports/football", "tech", "home", "deals/summer", "weather"} {
			out = append(out, host+"/"+section)
		}
	}
	return out
}()

// placementKey is a placement's primary key.
type placementKey struct {
	campaign int64
	site     string
}

// demoMix is the demo's mix: random transactions of inserts, updates and
// deletes to the demo tables, several statements per transaction; now and
// then a placement moves to another site, a change of its key. It runs on
// one worker, which owns its state.
type demoMix struct {
	accounts      []int64
	campaigns     []int64
	creatives     []string
	placements    []placementKey
	nextID        int64
	changes       int
	lastAccount   int64
	lastPlacement placementKey
}

// demoTxn is what a transaction changed in the mix's state, applied once
// it committed.
type demoTxn struct {
	accounts, campaigns []int64
	creatives           []string
	placements          []placementKey
	lastAccount         int64
	lastPlacement       placementKey
}

func newDemoMix(ctx context.Context, db *pgx.Conn) (*demoMix, error) {
	m := &demoMix{}
	var err error
	if m.accounts, err = loadRows(ctx, db, "select id from accounts", pgx.RowTo[int64]); err != nil {
		return nil, fmt.Errorf("read accounts: %w", err)
	}
	if m.campaigns, err = loadRows(ctx, db, "select id from campaigns", pgx.RowTo[int64]); err != nil {
		return nil, fmt.Errorf("read campaigns: %w", err)
	}
	if m.creatives, err = loadRows(ctx, db, "select id::text from creatives", pgx.RowTo[string]); err != nil {
		return nil, fmt.Errorf("read creatives: %w", err)
	}
	if m.placements, err = loadRows(ctx, db, "select campaign_id, site from placements", func(r pgx.CollectableRow) (placementKey, error) {
		var p placementKey
		return p, r.Scan(&p.campaign, &p.site)
	}); err != nil {
		return nil, fmt.Errorf("read placements: %w", err)
	}
	if err := db.QueryRow(ctx, "select greatest((select coalesce(max(id), 0) from accounts), (select coalesce(max(id), 0) from campaigns))").Scan(&m.nextID); err != nil {
		return nil, fmt.Errorf("read max id: %w", err)
	}
	return m, nil
}

func loadRows[T any](ctx context.Context, db *pgx.Conn, sql string, fn pgx.RowToFunc[T]) ([]T, error) {
	rows, err := db.Query(ctx, sql)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, fn)
}

// txn is a workload.Txn: one to four statements.
func (m *demoMix) txn(ctx context.Context, tx pgx.Tx, _ int, rnd *rand.Rand) (int, demoTxn, error) {
	d := demoTxn{accounts: slices.Clone(m.accounts), campaigns: slices.Clone(m.campaigns),
		creatives: slices.Clone(m.creatives), placements: slices.Clone(m.placements)}
	changes := 0
	exec := func(sql string, args ...any) (int64, error) {
		tag, err := tx.Exec(ctx, sql, args...)
		if err != nil {
			return 0, fmt.Errorf("workload: %w", err)
		}
		changes += int(tag.RowsAffected())
		return tag.RowsAffected(), nil
	}
	bid := func() string { return fmt.Sprintf("%d.%04d", rnd.IntN(10), rnd.IntN(10000)) }
	for range 1 + rnd.IntN(4) {
		var err error
		switch k := rnd.IntN(30); {
		case k < 6 || len(d.accounts) == 0:
			m.nextID++
			d.lastAccount = m.nextID
			d.accounts = append(d.accounts, m.nextID)
			_, err = exec("insert into accounts (id, name, budget) values ($1, $2, $3)",
				m.nextID, fmt.Sprintf("account %d", m.nextID), fmt.Sprintf("%d.%02d", rnd.IntN(100000), rnd.IntN(100)))
		case k < 12 || len(d.campaigns) == 0:
			m.nextID++
			d.campaigns = append(d.campaigns, m.nextID)
			_, err = exec("insert into campaigns (id, account_id, name, bid, status, targeting) values ($1, $2, $3, $4, 'active', $5)",
				m.nextID, d.accounts[rnd.IntN(len(d.accounts))], fmt.Sprintf("campaign %d", m.nextID), bid(),
				fmt.Sprintf(`{"geo": ["US", "DE"], "max_cpm": %d}`, rnd.IntN(50)))
		case k < 15:
			id := d.accounts[rnd.IntN(len(d.accounts))]
			d.lastAccount = id
			_, err = exec("update accounts set budget = budget + 10.50, active = not active, updated_at = now() where id = $1", id)
		case k < 18:
			_, err = exec("update campaigns set bid = bid * 1.1, status = $2, updated_at = now() where id = $1",
				d.campaigns[rnd.IntN(len(d.campaigns))], []string{"active", "paused"}[rnd.IntN(2)])
		case k < 19:
			i := rnd.IntN(len(d.campaigns))
			_, err = exec("delete from campaigns where id = $1", d.campaigns[i])
			d.campaigns = slices.Delete(d.campaigns, i, i+1)
		case k < 21 || len(d.creatives) == 0:
			// The database makes the uuid.
			var id string
			err = tx.QueryRow(ctx, "insert into creatives (campaign_id, format, url) values ($1, $2, $3) returning id::text",
				d.campaigns[rnd.IntN(len(d.campaigns))], []string{"banner", "video", "native"}[rnd.IntN(3)],
				fmt.Sprintf("https://cdn.example/c/%d.png", rnd.IntN(1e6))).Scan(&id)
			if err == nil {
				changes++
				d.creatives = append(d.creatives, id)
			}
		case k < 22:
			_, err = exec("update creatives set url = $2, updated_at = now() where id = $1",
				d.creatives[rnd.IntN(len(d.creatives))], fmt.Sprintf("https://cdn.example/c/%d.png", rnd.IntN(1e6)))
		case k < 23:
			i := rnd.IntN(len(d.creatives))
			_, err = exec("delete from creatives where id = $1", d.creatives[i])
			d.creatives = slices.Delete(d.creatives, i, i+1)
		case k < 26 || len(d.placements) == 0:
			p := placementKey{d.campaigns[rnd.IntN(len(d.campaigns))], demoSites[rnd.IntN(len(demoSites))]}
			var n int64
			n, err = exec("insert into placements (campaign_id, site, bid) values ($1, $2, $3) on conflict do nothing", p.campaign, p.site, bid())
			if n == 1 {
				d.placements = append(d.placements, p)
				d.lastPlacement = p
			}
		case k < 27:
			p := d.placements[rnd.IntN(len(d.placements))]
			d.lastPlacement = p
			_, err = exec("update placements set bid = $3, updated_at = now() where campaign_id = $1 and site = $2", p.campaign, p.site, bid())
		case k < 29:
			// Another site: the key changes, which the history holds as
			// the old key's delete and the new key's insert.
			i := rnd.IntN(len(d.placements))
			p := d.placements[i]
			to := placementKey{p.campaign, demoSites[rnd.IntN(len(demoSites))]}
			var n int64
			n, err = exec("update placements set site = $3, updated_at = now() where campaign_id = $1 and site = $2 "+
				"and not exists (select from placements where campaign_id = $1 and site = $3)", p.campaign, p.site, to.site)
			if n == 1 {
				changes++ // two events: the delete and the insert
				d.placements[i] = to
				d.lastPlacement = to
			}
		default:
			i := rnd.IntN(len(d.placements))
			_, err = exec("delete from placements where campaign_id = $1 and site = $2", d.placements[i].campaign, d.placements[i].site)
			d.placements = slices.Delete(d.placements, i, i+1)
		}
		if err != nil {
			return 0, d, err
		}
	}
	return changes, d, nil
}

// commit applies a committed transaction to the mix's state.
func (m *demoMix) commit(c workload.Commit[demoTxn]) {
	m.accounts, m.campaigns = c.Record.accounts, c.Record.campaigns
	m.creatives, m.placements = c.Record.creatives, c.Record.placements
	m.changes += c.Changes
	if c.Record.lastAccount != 0 {
		m.lastAccount = c.Record.lastAccount
	}
	if c.Record.lastPlacement.site != "" {
		m.lastPlacement = c.Record.lastPlacement
	}
}
