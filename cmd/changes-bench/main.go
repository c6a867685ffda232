// Command changes-bench measures the whole platform on the machine it runs
// on, side by side with Debezium (Kafka Connect + the PostgreSQL connector)
// on the same database, broker and workload:
//
//   - the PostgreSQL side's own ceiling (the workload flat out, no capture);
//   - catch-up: a backlog of --backlog changes committed while nothing
//     captures, then drained: into the history, the snapshot tables and a
//     view for changes; into its topics for Debezium (each from its own slot);
//   - with Debezium, a Kafka Streams application that materializes its
//     topics into KTables (RocksDB) served by interactive queries: catch-up
//     from the full topics, and latency from COMMIT to queryable;
//   - live: both running while the workload runs at each of --rates, latency
//     from the moment COMMIT returned to the moment a consumer read the change
//     (p50, p99, p99.9, max), and the CPU and resident memory of every
//     component.
//
// It prints a table and writes the figures as JSON; with --compare it
// compares them with an earlier run's JSON and exits with status 3 when a
// throughput (or a CPU cost per change) is more than 20 % worse. `make bench-platform`
// runs it on the local stack; BENCHMARKS.md has the latest table.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"
)

type options struct {
	changes  string
	backlog  int64
	rates    []float64 // 0: flat out
	live     time.Duration
	ceiling  time.Duration
	conns    int
	debezium bool
	kstreams bool
	out      string
	workDir  string
	profile  bool
	// metricsPort, when set, is where the capture serves /metrics; the
	// processors serve it on the next port.
	metricsPort int
	// hops adds consumers of the events and table topics to the live phase.
	hops     bool
	dbzExtra string
	linger   time.Duration
	viewN    int
	only     string // "": every phase; "viewboot": the view bootstrap alone
	compare  string
}

func main() {
	var o options
	var rates string
	flag.StringVar(&o.changes, "changes", "bin/changes", "the changes binary")
	flag.Int64Var(&o.backlog, "backlog", 1_000_000, "changes committed while nothing captures, then drained (catch-up)")
	flag.StringVar(&rates, "rates", "1000,5000,10000,max", "live rates in changes per second; max = flat out; empty: no live phase")
	flag.DurationVar(&o.live, "live", 20*time.Second, "how long each live rate runs (a longer soak: e.g. 10m)")
	flag.DurationVar(&o.ceiling, "ceiling", 15*time.Second, "how long the PostgreSQL ceiling runs")
	flag.IntVar(&o.conns, "conns", 16, "workload connections")
	flag.BoolVar(&o.debezium, "debezium", true, "run Debezium side by side (stack/debezium/debezium.sh)")
	flag.BoolVar(&o.kstreams, "kstreams", true, "run a Kafka Streams app on Debezium's topics (stack/kstreams/kstreams.sh): KTables in RocksDB, interactive queries; needs --debezium")
	flag.StringVar(&o.out, "out", "bench-result.json", "where the figures go as JSON")
	flag.StringVar(&o.workDir, "dir", "", "work directory for configs, logs and storage (default: a temporary one)")
	flag.StringVar(&o.dbzExtra, "debezium-extra", "", "extra Debezium connector properties, key=value separated by commas (tuning; printed with the results)")
	flag.DurationVar(&o.linger, "linger", 0, "kafka.linger of the changes config (the capture's batching delay)")
	flag.IntVar(&o.viewN, "view-entities", 1_000_000, "entities of the view bootstrap (changes serve from an empty directory, then restarted); 0 skips it")
	flag.StringVar(&o.only, "only", "", "run one phase alone: viewboot (the view bootstrap, without the workload, the catch-up, the live rates and Debezium)")
	flag.StringVar(&o.compare, "compare", "", "an earlier run's JSON (read before --out is written, so it can be the same file): print each figure's ratio to it, a FLAG line for each that fell by more than 20 %, and exit with status 3 if any did")
	flag.BoolVar(&o.hops, "hops", false, "in the live phase, also time each change's arrival in its events topic and its table topic (two more consumers, which load the broker: off by default)")
	flag.IntVar(&o.metricsPort, "metrics-port", 0, "serve the capture's /metrics on 127.0.0.1:PORT and the processors' on PORT+1, to watch a run (0: none)")
	flag.BoolVar(&o.profile, "profile", false, "write CPU profiles of the capture, the processors and the bench process with its views (capture.pprof, process.pprof, bench.pprof) to the work directory")
	flag.Parse()
	switch o.only {
	case "":
	case "viewboot":
		o.debezium = false
	default:
		fmt.Fprintf(os.Stderr, "changes-bench: --only: %q is not a phase (viewboot)\n", o.only)
		os.Exit(2)
	}
	for _, r := range strings.Split(rates, ",") {
		if rates == "" {
			break // no live phase
		}
		if r == "max" {
			o.rates = append(o.rates, 0)
			continue
		}
		v, err := strconv.ParseFloat(r, 64)
		if err != nil || v <= 0 {
			fmt.Fprintf(os.Stderr, "changes-bench: --rates: %q is not a rate\n", r)
			os.Exit(2)
		}
		o.rates = append(o.rates, v)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o, log); err != nil {
		fmt.Fprintln(os.Stderr, "changes-bench:", err)
		if errors.Is(err, errRegression) {
			os.Exit(3)
		}
		os.Exit(1)
	}
}

func run(ctx context.Context, o options, log *slog.Logger) error {
	pgURL, brokers := os.Getenv("CHANGES_POSTGRES_URL"), os.Getenv("CHANGES_KAFKA_BROKERS")
	if pgURL == "" || brokers == "" {
		return errors.New("CHANGES_POSTGRES_URL and CHANGES_KAFKA_BROKERS must name the stack (eval \"$(stack/stack.sh env)\")")
	}
	// The earlier run is read first: --out may overwrite it.
	var old *result
	if o.compare != "" {
		var err error
		if old, err = readResult(o.compare); err != nil {
			return fmt.Errorf("--compare: %w", err)
		}
	}
	if o.workDir == "" {
		dir, err := os.MkdirTemp("", "changes-bench-")
		if err != nil {
			return err
		}
		o.workDir = dir
	}
	bin, err := filepath.Abs(o.changes)
	if err != nil {
		return err
	}
	o.changes = bin
	b, err := newBench(ctx, o, pgURL, brokers, log)
	if err != nil {
		return err
	}
	defer b.cleanup()
	if o.profile {
		f, err := os.Create(filepath.Join(o.workDir, "bench.pprof"))
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer func() { pprof.StopCPUProfile(); f.Close() }()
	}
	res, err := b.run(ctx)
	if res != nil {
		res.print(os.Stdout)
		if werr := res.write(o.out); werr != nil {
			err = errors.Join(err, werr)
		} else {
			log.Info("figures written", "file", o.out)
		}
		if old != nil && printComparison(os.Stdout, o.compare, compare(old, res)) > 0 && err == nil {
			err = errRegression
		}
	}
	return err
}

// errRegression is run's error when a figure fell by more than
// regressionDrop against --compare's run; the process exits with status 3.
var errRegression = errors.New("a figure fell by more than 20 % against --compare's run (FLAG lines above)")
