// Command changes runs the changes platform.
//
//	changes run     --config FILE   capture and processors in one process, with /metrics
//	changes capture --config FILE   only the capture (PostgreSQL -> history topic)
//	changes process --config FILE   only the processors (history -> snapshot tables)
//	changes topics  --config FILE   create or check the topics, then exit
//	changes acls    --config FILE [--principal ROLE=User:NAME] [--apply]
//	                                the Kafka ACLs each role needs; --apply creates them
//	changes serve   --config FILE   views of the snapshot tables and the history over HTTP
//	changes asof    --config FILE --at TIME|OFFSET --type T [--id N]
//	                                state at a past moment, rebuilt from the history
//	changes monitor --config FILE   consistency and latency checks as changes_monitor_* metrics
//	changes slo     --config FILE [--window 1h]   share of changes within 1 s, 5 s, 1 min, 1 h
//	changes audit   --config FILE [--window 1h]   list stale and inconsistent entities, once
//	changes demo    --config FILE   run everything with a demo workload and print a summary
//
// The config file is YAML (see configs/local.yaml); CHANGES_* environment
// variables override it. SIGINT and SIGTERM stop the process cleanly: in-flight
// changes are acknowledged by Kafka before the position is reported to
// PostgreSQL.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/IBM/sarama"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/changes-dev/changes/capture"
	"github.com/changes-dev/changes/internal/platform"
	"github.com/changes-dev/changes/internal/slogadapter"
	"github.com/changes-dev/changes/processors"
	"github.com/changes-dev/changes/topology"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "changes:", err)
		os.Exit(1)
	}
}

const usage = `usage: changes <command> [flags]

commands:
  run      capture and processors in one process, with Prometheus /metrics
  capture  only the capture: PostgreSQL logical replication -> history topic
  process  only the processors: history -> per-type snapshot tables
  topics   create or check every topic, then exit
  acls     print the Kafka ACLs each role needs (capture, processors, serve, monitor, view); --apply creates them
  serve    query server: views of the snapshot tables and the history over HTTP
  asof     print the state of an entity (or a whole type) at a past time, from the history
  monitor  check history and snapshots continuously; changes_monitor_* metrics
  slo      latency report of a past window: share within 1 s, 5 s, 1 min, 1 h; p50, p99, p99.9
  audit    check a past window once; list stale and inconsistent entities (exit 1 if any)
  demo     run everything on the configured stack with a demo workload, print a summary

Run 'changes <command> -h' for the flags of a command.`

// run is main without the process: it parses args, runs one command and
// returns its error.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprintln(stderr, usage)
		if len(args) == 0 {
			return errors.New("no command")
		}
		return nil
	}
	cmd, args := args[0], args[1:]
	fs := flag.NewFlagSet("changes "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", envOr("CHANGES_CONFIG", "configs/local.yaml"), "config file (env CHANGES_CONFIG)")
	defaultLevel := "info"
	if cmd == "demo" {
		defaultLevel = "warn" // the demo prints its own progress
	}
	logLevel := fs.String("log-level", envOr("CHANGES_LOG_LEVEL", defaultLevel), "debug, info, warn or error (env CHANGES_LOG_LEVEL)")
	logFormat := fs.String("log-format", envOr("CHANGES_LOG_FORMAT", "text"), "text or json (env CHANGES_LOG_FORMAT)")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile (go tool pprof) to this file until the command ends")
	blockProfile := fs.String("blockprofile", "", "write a profile of where goroutines waited (go tool pprof) to this file when the command ends")
	var demo demoFlags
	if cmd == "demo" {
		demo.register(fs)
	}
	var recreateSlot bool
	if cmd == "run" || cmd == "capture" {
		fs.BoolVar(&recreateSlot, "recreate-slot", false,
			"create the replication slot although the history shows it was dropped, accepting the gap (default: refuse)")
	}
	var asof asofFlags
	if cmd == "asof" {
		fs.StringVar(&asof.at, "at", "", "the moment: an RFC 3339 time (2026-11-25T10:05:00Z) or a history offset (required)")
		fs.StringVar(&asof.typ, "type", "", "entity type (required)")
		fs.Func("id", "entity id; without it, every entity of the type", func(s string) error {
			id, err := strconv.ParseInt(s, 10, 64)
			asof.id, asof.hasID = id, err == nil
			if err != nil {
				return fmt.Errorf("%q is not a 64-bit integer", s)
			}
			return nil
		})
	}
	var acls aclFlags
	if cmd == "acls" {
		acls.register(fs)
	}
	var window time.Duration
	if cmd == "slo" || cmd == "audit" {
		fs.DurationVar(&window, "window", time.Hour, "how far back to look")
	}
	switch cmd {
	case "run", "capture", "process", "topics", "acls", "demo", "serve", "asof", "monitor", "slo", "audit":
	default:
		fmt.Fprintln(stderr, usage)
		return fmt.Errorf("unknown command %q", cmd)
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	log, err := newLogger(stderr, *logLevel, *logFormat)
	if err != nil {
		return err
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return fmt.Errorf("cpuprofile: %w", err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("cpuprofile: %w", err)
		}
		defer func() {
			pprof.StopCPUProfile()
			f.Close()
		}()
	}
	if *blockProfile != "" {
		runtime.SetBlockProfileRate(int(10 * time.Microsecond))
		defer func() {
			f, err := os.Create(*blockProfile)
			if err == nil {
				pprof.Lookup("block").WriteTo(f, 0)
				f.Close()
			}
		}()
	}
	cfg, err := topology.Load(*configPath)
	if err != nil {
		return err
	}
	topo := topology.New(cfg)
	warnings := cfg.Kafka.SecurityWarnings()
	switch cmd {
	case "run", "capture", "demo", "monitor", "audit": // they connect to PostgreSQL
		if w := cfg.Postgres.SecurityWarning(); w != "" {
			warnings = append(warnings, w)
		}
	}
	for _, w := range warnings {
		log.Warn("insecure connection setting", "warning", w)
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	capOpts := []capture.Option{capture.WithRegisterer(reg)}
	if recreateSlot {
		capOpts = append(capOpts, capture.WithRecreateSlot())
	}
	procOpts := []processors.Option{processors.WithRegisterer(reg)}

	switch cmd {
	case "topics":
		if err := platform.EnsureTopics(topo); err != nil {
			return err
		}
		for _, t := range topo.Topics() {
			fmt.Fprintf(stdout, "%-50s partitions=%-4d %v\n", t.Name, t.Partitions, t.Configs)
		}
		return nil
	case "acls":
		return runACLs(topo, acls, stdout)
	case "demo":
		return runDemo(ctx, topo, demo, log, stdout, reg, capOpts, procOpts)
	case "serve":
		return runServe(ctx, topo, log, reg)
	case "asof":
		return runAsOf(ctx, topo, asof, log, stdout)
	case "monitor":
		return runMonitor(ctx, topo, log, reg)
	case "slo":
		return runSLO(ctx, topo, window, stdout)
	case "audit":
		return runAudit(ctx, topo, window, stdout)
	}
	parts := map[string]platform.Parts{
		"run":     platform.All,
		"capture": {Capture: true},
		"process": {Processors: true},
	}[cmd]
	stopMetrics, err := serveMetrics(cfg.Metrics, reg, log)
	if err != nil {
		return err
	}
	defer stopMetrics()
	log.Info("starting", "command", cmd, "config", *configPath, "brokers", strings.Join(cfg.Kafka.Brokers, ","))
	return platform.Run(ctx, topo, parts, log, capOpts, procOpts)
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	var h slog.Handler
	switch format {
	case "text":
		h = slog.NewTextHandler(w, opts)
	case "json":
		h = slog.NewJSONHandler(w, opts)
	default:
		return nil, fmt.Errorf("log format %q: want text or json", format)
	}
	log := slog.New(h)
	sarama.Logger = slogadapter.New(log.With("component", "sarama"), slog.LevelDebug)
	return log, nil
}

// readiness reads the changes_*_connected gauges of reg, which every
// long-running part sets (the capture by dependency, the processors by
// group, the monitor): ready once there is at least one and all are 1. It
// returns each series' value by name and labels.
func readiness(reg prometheus.Gatherer) (bool, map[string]float64) {
	mfs, err := reg.Gather()
	connected := map[string]float64{}
	if err != nil {
		return false, connected
	}
	ready := true
	for _, mf := range mfs {
		name := mf.GetName()
		if !strings.HasPrefix(name, "changes_") || !strings.HasSuffix(name, "_connected") {
			continue
		}
		for _, m := range mf.GetMetric() {
			key := name
			for _, l := range m.GetLabel() {
				key += "," + l.GetName() + "=" + l.GetValue()
			}
			v := m.GetGauge().GetValue()
			connected[key] = v
			ready = ready && v == 1
		}
	}
	return ready && len(connected) > 0, connected
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

// serveMetrics serves /metrics, /healthz and /readyz (see readiness) on addr until the returned stop is called;
// an empty addr serves nothing.
func serveMetrics(addr string, reg *prometheus.Registry, log *slog.Logger) (stop func(), err error) {
	if addr == "" {
		return func() {}, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: listen on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ready, connected := readiness(reg)
		code := http.StatusOK
		if !ready {
			code = http.StatusServiceUnavailable
		}
		writeJSON(w, code, map[string]any{"ready": ready, "connected": connected})
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server stopped", "err", err)
		}
	}()
	log.Info("serving metrics", "addr", "http://"+ln.Addr().String()+"/metrics")
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	}, nil
}
