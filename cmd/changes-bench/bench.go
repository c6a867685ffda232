package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/IBM/sarama"
	"github.com/jackc/pgx/v5"

	"github.com/changes-dev/changes/internal/kread"
	"github.com/changes-dev/changes/topology"
	"github.com/changes-dev/changes/views"
)

// bench is one run: its names, config, workload and the processes it runs.
type bench struct {
	o        options
	log      *slog.Logger
	pgURL    string
	brokers  string
	id       string // run id, in every name
	config   string // the changes config file
	topo     *topology.Topology
	client   sarama.Client
	w        *benchWorkload
	dbz      *debezium
	ks       *kstreams
	recv     *recvlogical // nil when pg_recvlogical is not found
	children []*child
	views    map[string]*views.View
	stopView context.CancelFunc
	res      *result

	viewArrivals *arrivals // set while live rates run
	backlogSeq   int64     // the workload's last seq before the backlog
	viewTable    string
}

func newBench(ctx context.Context, o options, pgURL, brokers string, log *slog.Logger) (*bench, error) {
	id := strconv.FormatInt(time.Now().Unix()%1_000_000, 10)
	b := &bench{o: o, log: log, pgURL: pgURL, brokers: brokers, id: id, res: &result{}}
	prefix := "bench_" + id
	var ents strings.Builder
	for _, typ := range benchTypes {
		key := ""
		if k := benchKeys[typ]; k.keyColumns != "" {
			key = ", key_columns: " + k.keyColumns
		}
		fmt.Fprintf(&ents, "  - {type: %s, table: public.%s_%s, partitions: 4%s}\n", typ, prefix, typ, key)
	}
	// The view bootstrap's type: its table stays empty, its snapshot table
	// is written directly.
	fmt.Fprintf(&ents, "  - {type: %s, table: public.%s_%s, partitions: 8}\n", viewBenchType, prefix, viewBenchType)
	cfgText := fmt.Sprintf(`kafka: {brokers: [%q], replication_factor: 1, linger: `+o.linger.String()+`}
postgres: {url: %q, slot: %s, publication: %s}
topics: {prefix: "bench.%s"}
storage: %q
metrics: ""
entities:
%s`, strings.Split(brokers, ",")[0], pgURL, prefix, prefix, id, filepath.Join(o.workDir, "storage"), ents.String())
	b.config = filepath.Join(o.workDir, "changes.yaml")
	if err := os.WriteFile(b.config, []byte(cfgText), 0o600); err != nil {
		return nil, err
	}
	cfg, err := topology.Parse([]byte(cfgText))
	if err != nil {
		return nil, err
	}
	b.topo = topology.New(cfg)
	if b.client, err = topology.NewClient(cfg.Kafka); err != nil {
		return nil, err
	}
	if b.w, err = newWorkload(ctx, pgURL, prefix, o.conns); err != nil {
		return nil, err
	}
	b.viewTable = prefix + "_" + viewBenchType
	if _, err := b.w.pool.Exec(ctx, tableSQL(b.viewTable, benchKeys["account"])); err != nil {
		return nil, err
	}
	if o.debezium {
		var tables []string
		for _, typ := range benchTypes {
			tables = append(tables, "public."+b.w.tables[typ])
		}
		b.dbz = newDebezium("bench_"+id, "dbz_"+prefix, "dbzbench"+id, tables, o.workDir)
		b.dbz.extra = strings.ReplaceAll(o.dbzExtra, ",", "\n")
		b.res.DebeziumConfig = "Debezium 3.6.1.Final on Kafka Connect 4.1.1 standalone (stack/debezium/debezium.sh): defaults, plus pgoutput, filtered publication, snapshot.mode=no_data, JSON without schemas, offset.flush.interval.ms=1000, plugin.discovery=service_load"
		if o.dbzExtra != "" {
			b.res.DebeziumConfig += "; tuned: " + o.dbzExtra
		}
		if o.kstreams {
			if b.ks, err = newKStreams("ks_bench_"+id, benchTypes, b.dbz.topics(), o.workDir); err != nil {
				return nil, err
			}
			b.res.KStreamsConfig = kstreamsConfig
		}
	}
	if bin, err := findRecvlogical(); err != nil {
		log.Warn("pg_recvlogical not found: the catch-up has no PostgreSQL decoding row", "err", err)
	} else {
		b.recv = &recvlogical{bin: bin, slot: "recv_" + prefix, publication: cfg.Postgres.Publication, dir: o.workDir}
	}
	b.res.Machine = machine()
	b.res.Backlog = o.backlog
	return b, nil
}

func (b *bench) say(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[bench %s] %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

// run runs every phase; the result holds what was measured even when a
// later phase fails.
func (b *bench) run(ctx context.Context) (*result, error) {
	start := time.Now()
	if out, err := exec.CommandContext(ctx, b.o.changes, "topics", "--config", b.config).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("changes topics: %v\n%s", err, out)
	}
	if b.o.only == "viewboot" {
		if err := b.viewBootstrap(ctx); err != nil {
			return b.res, err
		}
		b.res.Seconds = time.Since(start).Seconds()
		return b.res, nil
	}
	if b.ks != nil {
		// Built now, not in the timed start (kstreams.sh start builds what is missing).
		if err := b.ks.script(ctx, "fetch"); err != nil {
			return nil, err
		}
	}
	b.say("seeding 10000 rows per table")
	if err := b.w.seed(ctx, 10000); err != nil {
		return nil, err
	}
	if err := b.ceiling(ctx); err != nil {
		return b.res, err
	}
	if err := b.slots(ctx); err != nil {
		return b.res, err
	}
	if err := b.catchUp(ctx); err != nil {
		return b.res, err
	}
	if err := b.liveRates(ctx); err != nil {
		return b.res, err
	}
	if err := b.viewBootstrap(ctx); err != nil {
		return b.res, err
	}
	b.res.Seconds = time.Since(start).Seconds()
	return b.res, nil
}

// ceiling runs the workload flat out with nothing capturing.
func (b *bench) ceiling(ctx context.Context) error {
	b.say("PostgreSQL ceiling: the workload flat out for %s, nothing capturing", b.o.ceiling)
	pg := b.kafkaPG()[1]
	c0, t0 := b.w.changes.Load(), b.w.txns.Load()
	u0, start := pg.usage(), time.Now()
	rctx, cancel := context.WithTimeout(ctx, b.o.ceiling)
	err := b.w.run(rctx, 0, 0, b.o.conns)
	cancel()
	if err != nil {
		return err
	}
	secs := time.Since(start).Seconds()
	u1 := pg.usage()
	b.res.Ceiling = rateResult{
		ChangesPerSec: float64(b.w.changes.Load()-c0) / secs,
		TxnsPerSec:    float64(b.w.txns.Load()-t0) / secs,
		PostgresCores: (u1.cpu - u0.cpu).Seconds() / secs,
	}
	b.say("  %.0f changes/s, %.0f transactions/s, PostgreSQL %.2f cores", b.res.Ceiling.ChangesPerSec, b.res.Ceiling.TxnsPerSec, b.res.Ceiling.PostgresCores)
	return nil
}

// slots creates both replication slots, so the backlog waits in the WAL for
// each system.
func (b *bench) slots(ctx context.Context) error {
	b.say("creating the replication slots: changes (initial snapshot of the seed rows), pg_recvlogical, then Debezium")
	capture, err := startChild(b.o.changes, b.o.workDir, "capture-init", nil, "capture", "--config", b.config)
	if err != nil {
		return err
	}
	// Streaming, not only an active slot: a slot is active while it is
	// being created (waiting for a consistent point), and a capture stopped
	// then leaves none, so the catch-up's capture made a new one after the
	// backlog and copied it as a snapshot instead of streaming it.
	err = waitFor(ctx, 3*time.Minute, func() (bool, error) {
		raw, err := os.ReadFile(capture.log.Name())
		return strings.Contains(string(raw), "msg=streaming"), err
	})
	if err != nil {
		capture.stop()
		return fmt.Errorf("the first capture never streamed (log: %s): %w", capture.log.Name(), err)
	}
	if err := capture.stop(); err != nil {
		return err
	}
	if b.recv != nil {
		// On the capture's publication, which the capture made.
		db, err := pgx.Connect(ctx, b.pgURL)
		if err != nil {
			return err
		}
		err = b.recv.createSlot(ctx, db)
		db.Close(context.Background())
		if err != nil {
			return err
		}
	}
	if b.dbz != nil {
		if err := b.dbz.start(ctx); err != nil {
			return err
		}
		if err := b.waitSlot(ctx, b.dbz.slot, true); err != nil {
			return err
		}
		if err := b.dbz.stop(ctx); err != nil {
			return err
		}
	}
	return nil
}

// waitSlot waits until the slot exists and its activity is active.
func (b *bench) waitSlot(ctx context.Context, slot string, active bool) error {
	db, err := pgx.Connect(ctx, b.pgURL)
	if err != nil {
		return err
	}
	defer db.Close(context.Background())
	deadline := time.Now().Add(3 * time.Minute)
	for {
		var got bool
		err := db.QueryRow(ctx, "select coalesce((select active from pg_replication_slots where slot_name = $1), false)", slot).Scan(&got)
		if err != nil {
			return err
		}
		if got == active {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("slot %s never became active", slot)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// catchUp commits the backlog with nothing capturing, then drains it with
// changes (capture, processors, a view), then with Debezium.
func (b *bench) catchUp(ctx context.Context) error {
	b.say("catch-up: committing %d changes with nothing capturing", b.o.backlog)
	c0, d0 := b.w.changes.Load(), b.w.deletes.Load()
	b.backlogSeq = b.w.seq.Load()
	start := time.Now()
	progress := b.progress(ctx, "backlog", func() int64 { return b.w.changes.Load() - c0 }, b.o.backlog)
	err := b.w.run(ctx, 0, b.o.backlog, b.o.conns)
	progress()
	if err != nil {
		return err
	}
	n, deletes := b.w.changes.Load()-c0, b.w.deletes.Load()-d0
	b.say("  %d changes (%d deletes) in %.1fs", n, deletes, time.Since(start).Seconds())
	b.res.CatchUp.Changes = n
	if err := b.catchUpRecvlogical(ctx, n); err != nil {
		return err
	}

	// changes, one stage at a time, as Debezium has the machine to itself
	// too: the capture drains the backlog into the history (the figure to
	// compare with Debezium's), then the processors and a view drain the
	// history into the tables and the view.
	hist := b.topo.History()
	h0, err := endOffsets(b.client, hist)
	if err != nil {
		return err
	}
	before := sample(append(b.components(), b.kafkaPG()...)) // no children yet: this process, broker, PostgreSQL
	start = time.Now()
	capture, err := startChild(b.o.changes, b.o.workDir, "capture", b.env(0), b.args("capture")...)
	if err != nil {
		return err
	}
	b.children = append(b.children, capture)
	comps := append(b.components(), b.kafkaPG()...)
	stopProgress := b.progress(ctx, "changes: history", func() int64 { e, _ := endOffsets(b.client, hist); return e - h0 }, n)
	err = waitFor(ctx, 10*time.Minute, func() (bool, error) {
		e, err := endOffsets(b.client, hist)
		return e-h0 >= n, err
	})
	stopProgress()
	if err != nil {
		return fmt.Errorf("history: %w", err)
	}
	tHist := time.Since(start)
	b.res.CatchUp.Usage = append(b.res.CatchUp.Usage, usageBetween("changes: capture", before, sample(comps), tHist, n)...)

	before = sample(append(b.components(), b.kafkaPG()...))
	start = time.Now()
	process, err := startChild(b.o.changes, b.o.workDir, "process", b.env(1), b.args("process")...)
	if err != nil {
		return err
	}
	b.children = append(b.children, process)
	if err := b.startViews(ctx); err != nil {
		return err
	}
	comps = append(b.components(), b.kafkaPG()...)
	var tables []string
	for _, typ := range b.topo.EntityTypes() {
		tables = append(tables, b.topo.Snapshot(typ))
	}
	base, _ := endOffsets(b.client, tables...) // the seed rows' snapshot
	stopProgress = b.progress(ctx, "changes: records written to the snapshot tables", func() int64 {
		sum, _ := endOffsets(b.client, tables...)
		return sum - base
	}, n)
	err = waitFor(ctx, 10*time.Minute, func() (bool, error) {
		done, err := b.groupsCaughtUp()
		if errors.Is(err, sarama.ErrOffsetsLoadInProgress) || errors.Is(err, sarama.ErrConsumerCoordinatorNotAvailable) {
			return false, nil // a broker that just started: ask again
		}
		return done, err
	})
	stopProgress()
	if err != nil {
		return fmt.Errorf("tables: %w", err)
	}
	tTables := time.Since(start)
	if err := waitFor(ctx, 10*time.Minute, func() (bool, error) { return b.viewsCaughtUp(ctx) }); err != nil {
		return fmt.Errorf("view: %w", err)
	}
	tView := time.Since(start)
	b.res.CatchUp.Stages = append(b.res.CatchUp.Stages, []catchUpResult{
		{System: "changes", Stage: "history", Seconds: tHist.Seconds(), ChangesPerSec: float64(n) / tHist.Seconds()},
		{System: "changes", Stage: "snapshot tables", Seconds: tTables.Seconds(), ChangesPerSec: float64(n) / tTables.Seconds()},
		{System: "changes", Stage: "view", Seconds: tView.Seconds(), ChangesPerSec: float64(n) / tView.Seconds()},
	}...)
	b.res.CatchUp.Usage = append(b.res.CatchUp.Usage, usageBetween("changes: processors and view", before, sample(comps), tView, n)...)
	b.say("  changes: history %.1fs (%.0f/s); then tables %.1fs, view %.1fs", tHist.Seconds(), float64(n)/tHist.Seconds(), tTables.Seconds(), tView.Seconds())

	if b.dbz == nil {
		return nil
	}
	// Debezium drains the same backlog from its own slot; a delete gives a
	// tombstone too (its default).
	topics := b.dbz.topics()
	d0Off, _ := endOffsets(b.client, topics...)
	want := n + deletes
	dcomps := []component{b.dbz.component()}
	before = sample(append(dcomps, b.kafkaPG()...))

	start = time.Now()
	if err := b.dbz.start(ctx); err != nil {
		return err
	}
	stopProgress = b.progress(ctx, "debezium", func() int64 { e, _ := endOffsets(b.client, topics...); return e - d0Off }, want)
	err = waitFor(ctx, 15*time.Minute, func() (bool, error) {
		e, err := endOffsets(b.client, topics...)
		if err != nil {
			return false, nil // the topics appear with the first events
		}
		return e-d0Off >= want, nil
	})
	stopProgress()
	if err != nil {
		return fmt.Errorf("debezium: %w", err)
	}
	tDbz := time.Since(start)
	b.res.CatchUp.Stages = append(b.res.CatchUp.Stages, catchUpResult{System: "debezium", Stage: "topics", Seconds: tDbz.Seconds(), ChangesPerSec: float64(n) / tDbz.Seconds()})
	b.res.CatchUp.Usage = append(b.res.CatchUp.Usage, usageBetween("debezium", before, sample(append(dcomps, b.kafkaPG()...)), tDbz, n)...)
	b.say("  debezium: topics %.1fs (%.0f/s)", tDbz.Seconds(), float64(n)/tDbz.Seconds())
	if b.ks == nil {
		return nil
	}
	return b.catchUpKStreams(ctx, n, tDbz)
}

// catchUpKStreams starts the Kafka Streams app on Debezium's full topics
// (empty stores) and times it until its stores hold every record: from the
// start of its JVM until the app reports that it has applied the last
// record of every topic (then a row is queryable), and checks a sample of
// rows against PostgreSQL.
func (b *bench) catchUpKStreams(ctx context.Context, n int64, tDbz time.Duration) error {
	topics := b.dbz.topics()
	ends, err := topicEnds(b.client, topics)
	if err != nil {
		return err
	}
	var want int64
	for _, e := range ends {
		want += e
	}
	kcomps := []component{b.ks.component(), b.dbz.component()}
	before := sample(append(kcomps, b.kafkaPG()...))
	start := time.Now()
	if err := b.ks.start(ctx); err != nil {
		return err
	}
	var last ksStatus
	var tRunning time.Duration // until Streams said RUNNING: the JVM, the group's rebalance, the stores opened
	stopProgress := b.progress(ctx, "kafka streams", func() int64 { return last.applied() }, want)
	err = waitFor(ctx, 15*time.Minute, func() (bool, error) {
		if !b.ks.component().running() {
			return false, fmt.Errorf("kafka streams: the app exited, see %s", filepath.Join(b.o.workDir, "kstreams", b.ks.name, "streams.log"))
		}
		st, err := b.ks.status(ctx)
		if err != nil {
			return false, nil // the JVM is starting
		}
		last = st
		if tRunning == 0 && st.State == "RUNNING" {
			tRunning = time.Since(start)
		}
		return st.caughtUp(ends), nil
	})
	stopProgress()
	if err != nil {
		return fmt.Errorf("kafka streams: %w", err)
	}
	tKS := time.Since(start)
	b.res.CatchUp.Usage = append(b.res.CatchUp.Usage, usageBetween("kafka streams", before, sample(append(kcomps, b.kafkaPG()...)), tKS, n)...)
	b.res.CatchUp.Stages = append(b.res.CatchUp.Stages,
		catchUpResult{System: "kstreams", Stage: "ktable stores", Seconds: tKS.Seconds(), ChangesPerSec: float64(n) / tKS.Seconds(), StartSeconds: tRunning.Seconds()},
		catchUpResult{System: "dbz+ks", Stage: "end to end", Seconds: (tDbz + tKS).Seconds(), ChangesPerSec: float64(n) / (tDbz + tKS).Seconds()})
	b.say("  kafka streams: stores %.1fs (%.0f/s; %d records applied; RUNNING after %.1fs)", tKS.Seconds(), float64(n)/tKS.Seconds(), last.applied(), tRunning.Seconds())
	return b.checkKStreamsRows(ctx)
}

// checkKStreamsRows compares the seq of sampled rows of every table that
// the backlog wrote (the rows Debezium's topics hold: it captures from the
// backlog on) with the app's interactive queries: a store that lost or
// mangled changes fails the run rather than giving a figure.
func (b *bench) checkKStreamsRows(ctx context.Context) error {
	keyText := map[string]string{
		"account":  "id::text",
		"campaign": "id::text",
		"creative": `'["' || tenant || '","' || name || '"]'`, // changes' composite key form; names hold no '"'
	}
	checked := 0
	for _, typ := range benchTypes {
		rows, err := b.w.pool.Query(ctx, "select "+keyText[typ]+", seq from "+b.w.tables[typ]+" where seq > $1 order by random() limit 200", b.backlogSeq)
		if err != nil {
			return err
		}
		type kv struct {
			key string
			seq int64
		}
		var want []kv
		for rows.Next() {
			var r kv
			if err := rows.Scan(&r.key, &r.seq); err != nil {
				rows.Close()
				return err
			}
			want = append(want, r)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		for _, w := range want {
			row, err := b.ks.get(ctx, typ, w.key)
			if err != nil {
				return err
			}
			got := int64(-1)
			if row != nil {
				got, _ = strconv.ParseInt(string(row["seq"]), 10, 64)
			}
			if got != w.seq {
				return fmt.Errorf("kafka streams: %s %s has seq %d in its store, %d in PostgreSQL", typ, w.key, got, w.seq)
			}
			checked++
		}
	}
	b.say("  kafka streams: %d sampled rows match PostgreSQL", checked)
	return nil
}

// catchUpRecvlogical drains the backlog of n changes with pg_recvlogical
// from its own slot, to the WAL's end as it is now: PostgreSQL's decoding
// alone, the ceiling of every capture on pgoutput.
func (b *bench) catchUpRecvlogical(ctx context.Context, n int64) error {
	if b.recv == nil {
		return nil
	}
	db, err := pgx.Connect(ctx, b.pgURL)
	if err != nil {
		return err
	}
	defer db.Close(context.Background())
	var endLSN string
	if err := db.QueryRow(ctx, "select pg_current_wal_lsn()::text").Scan(&endLSN); err != nil {
		return err
	}
	b.say("  pg_recvlogical: decoding the backlog to %s from its slot %s", endLSN, b.recv.slot)
	comps := append([]component{b.recv.component()}, b.kafkaPG()...)
	before := sample(comps)
	start := time.Now()
	if err := b.recv.start(b.pgURL, endLSN); err != nil {
		return err
	}
	err = b.recv.wait(ctx, db, endLSN, 10*time.Minute)
	took := time.Since(start)
	b.recv.stop()
	if err != nil {
		return err
	}
	// PostgreSQL's CPU counts an ended backend once the postmaster has
	// reaped it: sample once its walsender is gone, or its decoding is
	// left out (it was, in one run of two).
	if err := b.waitSlot(ctx, b.recv.slot, false); err != nil {
		return err
	}
	if err := waitFor(ctx, time.Minute, func() (bool, error) {
		var n int
		err := db.QueryRow(ctx, "select count(*) from pg_stat_replication where application_name = 'pg_recvlogical'").Scan(&n)
		return n == 0, err
	}); err != nil {
		return err
	}
	time.Sleep(200 * time.Millisecond)
	after := sample(comps)
	if u, ok := b.recv.used(); ok { // all of its run, read once it exited
		after[b.recv.component().name] = u
	}
	b.res.CatchUp.Stages = append(b.res.CatchUp.Stages, catchUpResult{System: "postgresql", Stage: stageRecvlogical, Seconds: took.Seconds(), ChangesPerSec: float64(n) / took.Seconds()})
	b.res.CatchUp.Usage = append(b.res.CatchUp.Usage, usageBetween("pg_recvlogical", before, after, took, n)...)
	b.say("  pg_recvlogical: %.1fs (%.0f/s)", took.Seconds(), float64(n)/took.Seconds())
	return nil
}

// liveRates runs the workload at each rate with both systems running.
func (b *bench) liveRates(ctx context.Context) error {
	histArr, viewArr, dbzArr, ksArr := newArrivals(), newArrivals(), newArrivals(), newArrivals()
	evArr, tblArr := newArrivals(), newArrivals()
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	kcfg := b.topo.Config().Kafka
	scfg, err := topology.SaramaConfig(kcfg)
	if err != nil {
		return err
	}
	if err := consume(cctx, kcfg.Brokers, scfg, "bench-"+b.id+"-history", []string{b.topo.History()}, seqOfEvent, histArr); err != nil {
		return err
	}
	if b.o.hops {
		var events, tables []string
		for _, typ := range b.topo.EntityTypes() {
			events = append(events, b.topo.Events(typ))
			tables = append(tables, b.topo.Snapshot(typ))
		}
		if err := consume(cctx, kcfg.Brokers, scfg, "bench-"+b.id+"-events", events, seqOfEvent, evArr); err != nil {
			return err
		}
		if err := consume(cctx, kcfg.Brokers, scfg, "bench-"+b.id+"-tables", tables, seqOfState, tblArr); err != nil {
			return err
		}
	}
	b.viewArrivals = viewArr
	if b.dbz != nil {
		if err := consume(cctx, kcfg.Brokers, scfg, "bench-"+b.id+"-debezium", b.dbz.topics(), seqOfDebezium, dbzArr); err != nil {
			return err
		}
	}
	if b.ks != nil {
		go b.ks.tailStamps(cctx, ksArr)
		if err := b.ks.stamping(ctx, true); err != nil {
			return err
		}
		defer b.ks.stamping(context.Background(), false)
	}
	comps := append(b.components(), b.kafkaPG()...)
	if b.dbz != nil {
		comps = append(comps, b.dbz.component())
	}
	if b.ks != nil {
		comps = append(comps, b.ks.component())
	}
	for _, rate := range b.o.rates {
		name := "max"
		if rate > 0 {
			name = strconv.FormatFloat(rate, 'f', 0, 64) + "/s"
		}
		b.say("live at %s for %s", name, b.o.live)
		histArr.reset()
		evArr.reset()
		tblArr.reset()
		viewArr.reset()
		dbzArr.reset()
		ksArr.reset()
		b.w.takeCommits()
		b.w.record.Store(true)
		c0 := b.w.changes.Load()
		before := sample(comps)
		start := time.Now()
		rctx, rcancel := context.WithTimeout(ctx, b.o.live)
		err := b.w.run(rctx, rate, 0, b.o.conns)
		rcancel()
		elapsed := time.Since(start)
		b.w.record.Store(false)
		if err != nil {
			return err
		}
		after := sample(comps)
		committed := b.w.changes.Load() - c0
		commits := b.w.takeCommits()
		// Stragglers: wait until everything arrived, up to 30 s.
		waitFor(ctx, 30*time.Second, func() (bool, error) {
			_, m1 := histArr.latencies(commits)
			_, m2 := viewArr.latencies(commits)
			if b.o.hops {
				_, m5 := evArr.latencies(commits)
				_, m6 := tblArr.latencies(commits)
				m2 += m5 + m6
			}
			m3, m4 := 0, 0
			if b.dbz != nil {
				_, m3 = dbzArr.latencies(commits)
			}
			if b.ks != nil {
				_, m4 = ksArr.latencies(commits)
			}
			return m1+m2+m3+m4 == 0, nil
		})
		lr := liveResult{Rate: name, ChangesPerSec: float64(committed) / elapsed.Seconds()}
		lat, miss := histArr.latencies(commits)
		lr.ChangesHistory = statsOf(lat, miss)
		lat, miss = viewArr.latencies(commits)
		lr.ChangesView = statsOf(lat, miss)
		if b.o.hops {
			lat, miss = evArr.latencies(commits)
			lr.ChangesEvents = statsOf(lat, miss)
			lat, miss = tblArr.latencies(commits)
			lr.ChangesTable = statsOf(lat, miss)
		}
		if b.dbz != nil {
			lat, miss = dbzArr.latencies(commits)
			lr.Debezium = statsOf(lat, miss)
		}
		if b.ks != nil {
			lat, miss = ksArr.latencies(commits)
			lr.KStreams = statsOf(lat, miss)
			lr.KStreamsAfterTopic = statsOf(ksArr.after(dbzArr, commits), 0)
		}
		lr.Usage = usageBetween("both", before, after, elapsed, 0)
		b.res.Live = append(b.res.Live, lr)
		b.say("  %.0f changes/s: changes history p50 %.1f ms p99 %.1f ms; view p99 %.1f ms; debezium p50 %.1f ms p99 %.1f ms; kafka streams p50 %.1f ms p99 %.1f ms",
			lr.ChangesPerSec, lr.ChangesHistory.P50ms, lr.ChangesHistory.P99ms, lr.ChangesView.P99ms, lr.Debezium.P50ms, lr.Debezium.P99ms, lr.KStreams.P50ms, lr.KStreams.P99ms)
	}
	return nil
}

// args are the arguments of a `changes` child.
func (b *bench) args(cmd string) []string {
	args := []string{cmd, "--config", b.config}
	if b.o.profile {
		args = append(args, "--cpuprofile", filepath.Join(b.o.workDir, cmd+".pprof"), "--blockprofile", filepath.Join(b.o.workDir, cmd+".block.pprof"))
	}
	return args
}

// env is what a `changes` child gets besides the bench's environment: with
// --metrics-port, its /metrics address (the capture at the port, the
// processors at the next one).
func (b *bench) env(portOffset int) []string {
	if b.o.metricsPort == 0 {
		return nil
	}
	return []string{"CHANGES_METRICS_LISTEN=127.0.0.1:" + strconv.Itoa(b.o.metricsPort+portOffset)}
}

// progress logs done() of total every 5 s until the returned stop is called.
func (b *bench) progress(ctx context.Context, what string, done func() int64, total int64) (stop func()) {
	pctx, cancel := context.WithCancel(ctx)
	go func() {
		t := time.NewTicker(5 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-pctx.Done():
				return
			case <-t.C:
				b.say("  %s: %d of %d", what, done(), total)
			}
		}
	}()
	return cancel
}

// waitPoll is how often waitFor asks: each ask of whether the groups and
// views caught up costs the broker about twenty requests, which a 50 ms
// poll made part of what the catch-up measured.
const waitPoll = 200 * time.Millisecond

func waitFor(ctx context.Context, limit time.Duration, cond func() (bool, error)) error {
	deadline := time.Now().Add(limit)
	for {
		ok, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not done after %s", limit)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(waitPoll):
		}
	}
}

// groupsCaughtUp reports whether the router and every snapshot group have
// committed the end of their inputs.
func (b *bench) groupsCaughtUp() (bool, error) {
	admin, err := sarama.NewClusterAdminFromClient(b.client)
	if err != nil {
		return false, err
	}
	inputs := map[string]string{b.topo.RouterGroup(): b.topo.History()}
	for _, typ := range b.topo.EntityTypes() {
		inputs[b.topo.SnapshotGroup(typ)] = b.topo.Events(typ)
	}
	for group, topic := range inputs {
		parts, err := b.client.Partitions(topic)
		if err != nil {
			return false, err
		}
		offs, err := admin.ListConsumerGroupOffsets(group, map[string][]int32{topic: parts})
		if err != nil {
			return false, err
		}
		for _, p := range parts {
			next := int64(0) // no commit yet: from the start
			if blk := offs.GetBlock(topic, p); blk != nil && blk.Offset > 0 {
				next = blk.Offset
			}
			lag, err := kread.Lag(context.Background(), b.client, topic, p, next)
			if err != nil {
				return false, err
			}
			if lag > 0 {
				return false, nil
			}
		}
	}
	return true, nil
}

func (b *bench) cleanup() {
	if b.stopView != nil {
		b.stopView()
	}
	for _, c := range b.children {
		if err := c.stop(); err != nil {
			b.log.Warn("stop", "err", err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if b.ks != nil {
		if err := b.ks.stop(ctx); err != nil {
			b.log.Warn("kafka streams", "err", err)
		}
		b.ks.deleteState(b.client)
	}
	if b.dbz != nil {
		b.dbz.stop(ctx)
		b.dbz.deleteTopics(b.client)
	}
	if db, err := pgx.Connect(ctx, b.pgURL); err == nil {
		slots := []string{b.topo.Config().Postgres.Slot}
		if b.dbz != nil {
			slots = append(slots, b.dbz.slot)
		}
		if b.recv != nil {
			b.recv.stop()
			slots = append(slots, b.recv.slot)
		}
		for _, s := range slots {
			db.Exec(ctx, "select pg_drop_replication_slot(slot_name) from pg_replication_slots where slot_name = $1 and not active", s)
		}
		db.Exec(ctx, "drop publication if exists "+pgx.Identifier{b.topo.Config().Postgres.Publication}.Sanitize())
		if b.dbz != nil {
			db.Exec(ctx, "drop publication if exists "+b.dbz.publication)
		}
		for _, t := range b.w.tables {
			db.Exec(ctx, "drop table if exists "+t)
		}
		db.Exec(ctx, "drop table if exists "+b.viewTable)
		db.Close(ctx)
	}
	if admin, err := sarama.NewClusterAdminFromClient(b.client); err == nil {
		for _, t := range b.topo.Topics() {
			admin.DeleteTopic(t.Name)
		}
	}
	b.w.Close()
	b.client.Close()
	if err := os.RemoveAll(filepath.Join(b.o.workDir, "storage")); err != nil {
		b.log.Warn("cleanup", "err", err)
	}
	b.say("cleaned up; logs in %s", b.o.workDir)
}

// startViews runs a view of every type in this process; its update hook
// stamps the arrival of each change for the live phase.
func (b *bench) startViews(ctx context.Context) error {
	vctx, cancel := context.WithCancel(ctx)
	b.stopView = cancel
	b.views = map[string]*views.View{}
	for _, typ := range b.topo.EntityTypes() {
		v, err := views.New(b.topo, typ, views.WithLogger(b.log), views.WithStorageDir(filepath.Join(b.o.workDir, "storage", "views")),
			views.WithUpdateHook(func(u views.Update) {
				if a := b.viewArrivals; a != nil && u.State != nil {
					seq, _ := strconv.ParseInt(string(u.State.Row["seq"]), 10, 64)
					a.add(seq, time.Now().UnixNano())
				}
			}))
		if err != nil {
			return err
		}
		b.views[typ] = v
		go func() {
			if err := v.Run(vctx); err != nil {
				b.log.Error("view", "type", typ, "err", err)
			}
		}()
	}
	return nil
}

func (b *bench) viewsCaughtUp(ctx context.Context) (bool, error) {
	for _, v := range b.views {
		if !v.Recovered() {
			return false, nil
		}
		lag, err := v.Lag(ctx)
		if err != nil || lag > 0 {
			return false, nil
		}
	}
	return true, nil
}

// components are the processes of changes: the capture, the processors and
// this process (which holds the views).
func (b *bench) components() []component {
	var out []component
	for _, c := range b.children {
		out = append(out, c.component())
	}
	self := os.Getpid()
	return append(out, component{name: "view (3 types, in the bench process)", pids: func() []int { return []int{self} }})
}

// kafkaPG are the broker and PostgreSQL, shared by both systems.
func (b *bench) kafkaPG() []component {
	stackDir := os.Getenv("CHANGES_STACK_DIR")
	if stackDir == "" {
		stackDir = ".stack"
	}
	return []component{
		{name: "kafka broker", pids: pidFile(filepath.Join(stackDir, "kafka", "kafka.pid"))},
		{name: "postgresql", pids: postgresPids(stackDir)},
	}
}

// postgresPids lists the stack's PostgreSQL processes, or every postgres
// process of the machine when the stack's pid file is not there (a server
// of CHANGES_POSTGRES_URL that the stack did not start).
func postgresPids(stackDir string) func() []int {
	path := filepath.Join(stackDir, "postgres", "data", "postmaster.pid")
	if _, err := os.Stat(path); err != nil {
		return func() []int { return pidsNamed("postgres") }
	}
	return postmaster(path)
}
