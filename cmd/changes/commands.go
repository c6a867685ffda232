package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"runtime/debug"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/changes-dev/changes/capture"
	"github.com/changes-dev/changes/internal/platform"
	"github.com/changes-dev/changes/processors"
)

// command is one `changes` command: its help, its flags and what it runs.
type command struct {
	name    string
	summary string // its line in `changes --help`
	args    string // what follows the name in its usage line
	help    string // what it does, for `changes <name> --help`
	// env are the environment variables that matter most to it, as
	// {name, what}; every command that reads the config takes the common
	// ones too (see printHelp).
	env [][2]string
	// done and failed say what exit codes 0 and 1 mean; empty: "done" and
	// "failed (the error is on stderr)".
	done, failed string
	logLevel     string   // default of --log-level; empty: info
	postgres     bool     // it connects to PostgreSQL: warn about insecure settings
	noConfig     bool     // it reads no config and takes none of the common flags
	required     []string // flags that must be set
	// flags registers the command's own flags on fs and returns its run
	// function, bound to them.
	flags func(fs *flag.FlagSet) runFunc
}

// runFunc runs a command whose flags are parsed.
type runFunc func(ctx context.Context, e *env) error

const (
	untilSignal    = "stopped by SIGINT or SIGTERM (cleanly)"
	metricsEnvHelp = "the /metrics, /healthz and /readyz address (config metrics; empty: none)"
)

// commands are the commands of `changes`, in the order `changes --help`
// lists them.
var commands = []*command{
	{
		name:    "run",
		summary: "capture and processors in one process, with Prometheus /metrics",
		help: `Runs the capture (PostgreSQL logical replication -> history topic) and the
processors (history -> per-type snapshot tables) in one process until SIGINT or
SIGTERM. Kafka or PostgreSQL away stops nothing: each part retries with backoff.
/metrics, /healthz and /readyz are served on the config's metrics address.`,
		env:      [][2]string{{"CHANGES_METRICS_LISTEN", metricsEnvHelp}},
		done:     untilSignal,
		postgres: true,
		flags:    platformCommand(platform.All),
	},
	{
		name:    "capture",
		summary: "only the capture: PostgreSQL logical replication -> history topic",
		help: `Runs only the capture until SIGINT or SIGTERM: it streams the committed changes
of the configured tables from the replication slot into the history topic, and
reports a position to PostgreSQL only once Kafka has acknowledged it. A second
capture of the same slot waits as a standby.`,
		env:      [][2]string{{"CHANGES_METRICS_LISTEN", metricsEnvHelp}},
		done:     untilSignal,
		postgres: true,
		flags:    platformCommand(platform.Parts{Capture: true}),
	},
	{
		name:    "process",
		summary: "only the processors: history -> per-type snapshot tables",
		help: `Runs only the processors until SIGINT or SIGTERM: the router (history -> events
topics) and one snapshot processor per entity type (events -> snapshot table).
Instances with the same config share the partitions; on one host, give each its
own storage and metrics address (or metrics: "").`,
		env: [][2]string{
			{"CHANGES_METRICS_LISTEN", metricsEnvHelp},
			{"CHANGES_STORAGE_DIR", "where the local copies of the tables are kept (config storage)"},
		},
		done:  untilSignal,
		flags: platformCommand(platform.Parts{Processors: true}),
	},
	{
		name:    "snapshot",
		summary: "request an incremental snapshot of a type's table (or a key range), or cancel one",
		args:    "--type T [--from KEY] [--to KEY] [--cancel]",
		help: `Asks the running capture to copy the rows of a type's table (or of the keys from
--from to --to, each included) into the history while it streams, by writing a
signal to the WAL (pg_logical_emit_message, prefix changes:<slot>): the capture
copies it in chunks between watermarks, so no copied row is older than a change
before it in the history. It survives capture restarts; --cancel ends the type's
snapshots. Progress: the capture's log and changes_capture_incremental_snapshot_*.`,
		required: []string{"type"},
		postgres: true,
		flags: func(fs *flag.FlagSet) runFunc {
			var f snapshotFlags
			f.register(fs)
			return func(ctx context.Context, e *env) error { return runSnapshot(ctx, e.topo, f, e.stdout) }
		},
	},
	{
		name:    "topics",
		summary: "create or check every topic, then exit",
		help: `Creates the topics the config implies (history, events, snapshot tables,
dead letters) or checks the existing ones, then prints each with its partitions
and configs.`,
		flags: noFlags(runTopics),
	},
	{
		name:    "acls",
		summary: "print the Kafka ACLs each role needs (capture, processors, serve, monitor, view); --apply creates them",
		args:    "[--principal ROLE=User:NAME]... [--types T,...] [--apply]",
		help: `Prints the Kafka ACLs each role needs, as a table; with --apply, also creates
them with the configured Kafka credentials (an administrator's). Without a
--principal, every role is printed as User:<role>.`,
		flags: func(fs *flag.FlagSet) runFunc {
			var f aclFlags
			f.register(fs)
			return func(ctx context.Context, e *env) error { return runACLs(e.topo, f, e.stdout) }
		},
	},
	{
		name:    "serve",
		summary: "query server: views of the snapshot tables and the history over HTTP",
		help: `Serves the snapshot tables (a view per served type) and the history over HTTP
until SIGINT or SIGTERM: /v1/entities/{type}/{id}, /v1/entities/{type},
/v1/history/{type}/{id}, /healthz, /readyz and /metrics (see the README).`,
		env: [][2]string{
			{"CHANGES_SERVE_LISTEN", "the address (config serve.listen)"},
			{"CHANGES_SERVE_TOKEN", "accepted bearer tokens, comma-separated"},
			{"CHANGES_SERVE_TOKEN_FILE", "a file of accepted bearer tokens"},
			{"CHANGES_SERVE_TLS_CERT_FILE", "serve HTTPS with this certificate (PEM)"},
			{"CHANGES_SERVE_TLS_KEY_FILE", "and its key (PEM)"},
			{"GOGC", "the Go garbage collector's target percentage (default for serve: 50, which keeps a bootstrapping view's heap smaller)"},
		},
		done:  untilSignal,
		flags: noFlags(runServe),
	},
	{
		name:    "asof",
		summary: "print the state of an entity (or a whole type) at a past time, from the history",
		args:    "--at TIME|OFFSET --type T [--id N]",
		help: `Prints the state of one entity (--id), or of every entity of a type, at a past
time or after a history offset, rebuilt from the history: one JSON object per
line, the same JSON as /v1/history/{type}/{id}?at= and /v1/entities.`,
		required: []string{"at", "type"},
		flags: func(fs *flag.FlagSet) runFunc {
			var f asofFlags
			f.register(fs)
			return func(ctx context.Context, e *env) error { return runAsOf(ctx, e.topo, f, e.log, e.stdout) }
		},
	},
	{
		name:    "monitor",
		summary: "check history and snapshots continuously; changes_monitor_* metrics",
		help: `Reads the history, the events topics and the snapshot tables continuously and
exports latency, consistency and staleness as changes_monitor_* metrics on the
config's monitor.listen address, until SIGINT or SIGTERM.`,
		env:      [][2]string{{"CHANGES_MONITOR_LISTEN", "the /metrics address (config monitor.listen)"}},
		done:     untilSignal,
		postgres: true,
		flags:    noFlags(runMonitor),
	},
	{
		name:    "slo",
		summary: "latency report of a past window: share within 1 s, 5 s, 1 min, 1 h; p50, p99, p99.9",
		args:    "[--window 1h]",
		help: `Prints the latency report of the changes committed in the last window: the share
of changes that reached the history and the snapshot table within 1 s, 5 s,
1 min and 1 h, and p50, p99, p99.9 and max, beside the reference system's.`,
		flags: windowCommand(runSLO),
	},
	{
		name:    "audit",
		summary: "check a past window once; list stale and inconsistent entities (exit 1 if any)",
		args:    "[--window 1h]",
		help: `Checks the history and the snapshot tables of the last window once and lists
every inconsistency and stale entity on stdout.`,
		failed:   "failed, or found an inconsistency or a stale entity",
		postgres: true,
		flags:    windowCommand(runAudit),
	},
	{
		name:    "demo",
		summary: "run everything on the configured stack with a demo workload, print a summary",
		args:    "[--transactions N] [--rate N] [--timeout D]",
		help: `Runs the capture, the processors and the views in this process against the
configured stack, commits a workload to the demo tables, waits until every view
equals its table and prints a summary: counts, checks and latencies.`,
		logLevel: "warn", // the demo prints its own progress
		postgres: true,
		flags: func(fs *flag.FlagSet) runFunc {
			var f demoFlags
			f.register(fs)
			return func(ctx context.Context, e *env) error {
				capOpts := []capture.Option{capture.WithRegisterer(e.reg)}
				procOpts := []processors.Option{processors.WithRegisterer(e.reg)}
				return runDemo(ctx, e.topo, f, e.log, e.stdout, e.reg, capOpts, procOpts)
			}
		},
	},
	{
		name:     "version",
		summary:  "print the version (also: changes --version)",
		help:     `Prints the module version, the commit it was built from and the Go version.`,
		noConfig: true,
		flags: noFlags(func(ctx context.Context, e *env) error {
			info, ok := debug.ReadBuildInfo()
			_, err := fmt.Fprintln(e.stdout, version(info, ok))
			return err
		}),
	},
}

// lookup returns the command named name, or nil.
func lookup(name string) *command {
	for _, c := range commands {
		if c.name == name {
			return c
		}
	}
	return nil
}

// noFlags is the flags of a command that has none of its own.
func noFlags(fn runFunc) func(*flag.FlagSet) runFunc {
	return func(*flag.FlagSet) runFunc { return fn }
}

// platformCommand runs parts of the platform with /metrics until ctx is
// cancelled; with the capture, it takes --recreate-slot and --resync.
func platformCommand(parts platform.Parts) func(*flag.FlagSet) runFunc {
	return func(fs *flag.FlagSet) runFunc {
		var recreateSlot, resync bool
		if parts.Capture {
			fs.BoolVar(&recreateSlot, "recreate-slot", false,
				"create the replication slot although the history shows it was dropped, accepting the gap (default: refuse)")
			fs.BoolVar(&resync, "resync", false,
				"when the replication slot is missing or lost, create a new one and copy every table again, writing only what differs from the snapshot tables (the processors must run)")
		}
		return func(ctx context.Context, e *env) error {
			capOpts := []capture.Option{capture.WithRegisterer(e.reg)}
			if recreateSlot {
				capOpts = append(capOpts, capture.WithRecreateSlot())
			}
			if resync {
				capOpts = append(capOpts, capture.WithResync())
			}
			procOpts := []processors.Option{processors.WithRegisterer(e.reg)}
			cfg := e.topo.Config()
			stopMetrics, err := serveMetrics(cfg.Metrics, e.reg, e.log)
			if err != nil {
				return err
			}
			defer stopMetrics()
			e.log.Info("starting", "command", e.name, "config", e.configPath, "brokers", strings.Join(cfg.Kafka.Brokers, ","))
			return platform.Run(ctx, e.topo, parts, e.log, capOpts, procOpts)
		}
	}
}

// runTopics creates or checks every topic, then prints them.
func runTopics(ctx context.Context, e *env) error {
	if err := platform.EnsureTopics(e.topo); err != nil {
		return err
	}
	for _, t := range e.topo.Topics() {
		fmt.Fprintf(e.stdout, "%-50s partitions=%-4d %v\n", t.Name, t.Partitions, t.Configs)
	}
	return nil
}

// windowCommand is a report of the last --window.
func windowCommand(fn func(ctx context.Context, e *env, window time.Duration) error) func(*flag.FlagSet) runFunc {
	return func(fs *flag.FlagSet) runFunc {
		window := fs.Duration("window", time.Hour, "how far back to look")
		return func(ctx context.Context, e *env) error { return fn(ctx, e, *window) }
	}
}

// checkRequired returns a usage error if a required flag is not set (or
// set to "").
func (c *command) checkRequired(fs *flag.FlagSet) error {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = f.Value.String() != "" })
	for _, name := range c.required {
		if !set[name] {
			return usageErrorf("%s: %s required; 'changes %s --help' lists its flags", c.name, c.requiredList(), c.name)
		}
	}
	return nil
}

// requiredList is "--a is" or "--a and --b are".
func (c *command) requiredList() string {
	names := make([]string, len(c.required))
	for i, n := range c.required {
		names[i] = "--" + n
	}
	if len(names) == 1 {
		return names[0] + " is"
	}
	return strings.Join(names[:len(names)-1], ", ") + " and " + names[len(names)-1] + " are"
}

// printHelp writes the help of `changes <name> --help`: usage, what the
// command does, its flags, the environment variables it reads and its exit
// codes.
func (c *command) printHelp(w io.Writer, fs *flag.FlagSet) {
	line := "usage: changes " + c.name
	if !c.noConfig {
		line += " [--config FILE]"
	}
	if c.args != "" {
		line += " " + c.args
	}
	fmt.Fprintf(w, "%s\n\n%s\n", line, c.help)
	own, common := splitFlags(fs)
	for _, set := range []struct {
		title string
		fs    *flag.FlagSet
	}{{"flags", own}, {"common flags", common}} {
		if hasFlags(set.fs) {
			fmt.Fprintf(w, "\n%s:\n", set.title)
			set.fs.SetOutput(w)
			set.fs.PrintDefaults()
		}
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	if !c.noConfig {
		fmt.Fprintln(w, "\nenvironment:")
		for _, v := range append(c.env,
			[2]string{"CHANGES_CONFIG", "the default of --config"},
			[2]string{"CHANGES_LOG_LEVEL", "the default of --log-level"},
			[2]string{"CHANGES_LOG_FORMAT", "the default of --log-format"},
			[2]string{"CHANGES_*", "override the config file, such as CHANGES_KAFKA_BROKERS (README, Configuration)"},
		) {
			fmt.Fprintf(tw, "  %s\t%s\n", v[0], v[1])
		}
		tw.Flush()
	}
	done, failed := c.done, c.failed
	if done == "" {
		done = "done"
	}
	if failed == "" {
		failed = "failed (the error is on stderr)"
	}
	fmt.Fprintln(w, "\nexit codes:")
	fmt.Fprintf(tw, "  0\t%s\n  1\t%s\n  2\tusage error: unknown command, bad flag or missing required flag\n", done, failed)
	tw.Flush()
}

// hasFlags reports whether fs defines any flag.
func hasFlags(fs *flag.FlagSet) bool {
	n := 0
	fs.VisitAll(func(*flag.Flag) { n++ })
	return n > 0
}

// splitFlags splits the flags of fs into the command's own and the
// common ones (commonFlags), for its help: the flags themselves, with the
// defaults they had when defined.
func splitFlags(fs *flag.FlagSet) (own, common *flag.FlagSet) {
	own, common = flag.NewFlagSet("", flag.ContinueOnError), flag.NewFlagSet("", flag.ContinueOnError)
	names := flag.NewFlagSet("", flag.ContinueOnError)
	new(commonFlags).register(names, &command{})
	fs.VisitAll(func(f *flag.Flag) {
		dst := own
		if names.Lookup(f.Name) != nil {
			dst = common
		}
		dst.Var(f.Value, f.Name, f.Usage)
		dst.Lookup(f.Name).DefValue = f.DefValue
	})
	return own, common
}
