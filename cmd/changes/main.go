// Command changes runs the changes platform: one binary whose commands are
// the platform's parts (capture, processors, query server, monitor) and its
// tools (topics, ACLs, point-in-time reads, reports, a demo).
//
//	changes <command> [flags]
//	changes --help               the commands
//	changes <command> --help     a command's flags, environment variables and exit codes
//	changes --version            the version, from the build information
//
// The commands are the table in commands.go. The config file is YAML (see
// configs/local.yaml); CHANGES_* environment variables override it. SIGINT
// and SIGTERM stop the process cleanly: in-flight changes are acknowledged
// by Kafka before the position is reported to PostgreSQL.
//
// Exit codes: 0 done (or stopped by a signal), 1 failed, 2 usage error (an
// unknown command, a bad flag, a missing required flag); `changes audit`
// exits 1 as well when it finds anything wrong.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/IBM/sarama"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/changes-dev/changes/internal/slogadapter"
	"github.com/changes-dev/changes/topology"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "changes:", err)
		os.Exit(exitCode(err))
	}
}

// Exit codes of the process.
const (
	exitFailure = 1 // the command failed
	exitUsage   = 2 // the command line is wrong: the convention of flag and the shells
)

// exitError is an error that says the process's exit code.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// usageErrorf is an error of the command line (exit code 2).
func usageErrorf(format string, args ...any) error {
	return &exitError{code: exitUsage, err: fmt.Errorf(format, args...)}
}

// exitCode is the exit code for err: an *exitError's, else 1.
func exitCode(err error) int {
	if e, ok := errors.AsType[*exitError](err); ok {
		return e.code
	}
	return exitFailure
}

// run is main without the process: it parses args, runs one command and
// returns its error. Help and the version go to stdout and return nil;
// an error of the command line is an *exitError with code 2, printed by
// main only (the flag package prints nothing).
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprintln(stderr, usage())
		return usageErrorf("no command")
	}
	name, args := args[0], args[1:]
	switch name {
	case "-h", "-help", "--help":
		fmt.Fprintln(stdout, usage())
		return nil
	case "help":
		if len(args) == 0 {
			fmt.Fprintln(stdout, usage())
			return nil
		}
		name, args = args[0], []string{"--help"}
	case "-version", "--version":
		name = "version"
	}
	cmd := lookup(name)
	if cmd == nil {
		return usageErrorf("unknown command %q; 'changes --help' lists them", name)
	}
	fs := flag.NewFlagSet("changes "+cmd.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // run's error says what is wrong, once
	fs.Usage = func() {}
	var common commonFlags
	if !cmd.noConfig {
		common.register(fs, cmd)
	}
	runCmd := cmd.flags(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			cmd.printHelp(stdout, fs)
			return nil
		}
		return usageErrorf("%s: %v; 'changes %s --help' lists its flags", cmd.name, err, cmd.name)
	}
	if fs.NArg() > 0 {
		return usageErrorf("%s: unexpected argument %q; 'changes %s --help' lists its flags", cmd.name, fs.Arg(0), cmd.name)
	}
	if err := cmd.checkRequired(fs); err != nil {
		return err
	}
	e := &env{name: cmd.name, stdout: stdout}
	if cmd.noConfig {
		return runCmd(ctx, e)
	}
	stopProfiles, err := common.startProfiles()
	if err != nil {
		return err
	}
	defer stopProfiles()
	if err := e.load(common, stderr, cmd.postgres); err != nil {
		return err
	}
	return runCmd(ctx, e)
}

// usage is the text of `changes --help`.
func usage() string {
	var b strings.Builder
	b.WriteString("usage: changes <command> [flags]\n\ncommands:\n")
	for _, c := range commands {
		fmt.Fprintf(&b, "  %-8s %s\n", c.name, c.summary)
	}
	b.WriteString("\nRun 'changes <command> --help' for a command's flags, environment variables and exit codes.")
	return b.String()
}

// commonFlags are the flags of every command that reads the config.
type commonFlags struct {
	config, logLevel, logFormat string
	cpuProfile, blockProfile    string
}

func (f *commonFlags) register(fs *flag.FlagSet, cmd *command) {
	level := cmd.logLevel
	if level == "" {
		level = "info"
	}
	fs.StringVar(&f.config, "config", envOr("CHANGES_CONFIG", "configs/local.yaml"), "config file (env CHANGES_CONFIG)")
	fs.StringVar(&f.logLevel, "log-level", envOr("CHANGES_LOG_LEVEL", level), "debug, info, warn or error (env CHANGES_LOG_LEVEL)")
	fs.StringVar(&f.logFormat, "log-format", envOr("CHANGES_LOG_FORMAT", "text"), "text or json (env CHANGES_LOG_FORMAT)")
	fs.StringVar(&f.cpuProfile, "cpuprofile", "", "write a CPU profile (go tool pprof) to this file until the command ends")
	fs.StringVar(&f.blockProfile, "blockprofile", "", "write a profile of where goroutines waited (go tool pprof) to this file when the command ends")
}

// startProfiles starts the profiles the flags ask for; stop writes them.
func (f *commonFlags) startProfiles() (stop func(), err error) {
	var stops []func()
	stop = func() {
		for _, s := range stops {
			s()
		}
	}
	if f.cpuProfile != "" {
		file, err := os.Create(f.cpuProfile)
		if err != nil {
			return nil, fmt.Errorf("cpuprofile: %w", err)
		}
		if err := pprof.StartCPUProfile(file); err != nil {
			file.Close()
			return nil, fmt.Errorf("cpuprofile: %w", err)
		}
		stops = append(stops, func() {
			pprof.StopCPUProfile()
			file.Close()
		})
	}
	if f.blockProfile != "" {
		runtime.SetBlockProfileRate(int(10 * time.Microsecond))
		stops = append(stops, func() {
			file, err := os.Create(f.blockProfile)
			if err == nil {
				pprof.Lookup("block").WriteTo(file, 0)
				file.Close()
			}
		})
	}
	return stop, nil
}

// env is what a command runs with: the config as a topology, a logger, the
// process's metric registry and stdout. A command with noConfig gets only
// its name and stdout.
type env struct {
	name       string
	configPath string
	topo       *topology.Topology
	log        *slog.Logger
	reg        *prometheus.Registry
	stdout     io.Writer
}

// load fills e from the common flags: the logger (on stderr), the config,
// and a registry with the Go and process collectors. It logs the insecure
// connection settings of what the command connects to.
func (e *env) load(f commonFlags, stderr io.Writer, postgres bool) error {
	log, err := newLogger(stderr, f.logLevel, f.logFormat)
	if err != nil {
		return usageErrorf("%s: %v", e.name, err)
	}
	cfg, err := topology.Load(f.config)
	if err != nil {
		return err
	}
	warnings := cfg.Kafka.SecurityWarnings()
	if w := cfg.Postgres.SecurityWarning(); postgres && w != "" {
		warnings = append(warnings, w)
	}
	for _, w := range warnings {
		log.Warn("insecure connection setting", "warning", w)
	}
	e.configPath, e.topo, e.log = f.config, topology.New(cfg), log
	e.reg = prometheus.NewRegistry()
	e.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return nil
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

// commit is the commit `make build` stamps (-ldflags -X main.commit=...):
// it builds with -buildvcs=false, so Go records none itself.
var commit string

// version is the line `changes --version` prints: the module version and,
// when the build recorded them, the commit, its time and whether the work
// tree had changes, then the Go version.
func version(info *debug.BuildInfo, ok bool) string {
	if !ok {
		return "changes (no build information) " + runtime.Version()
	}
	v := info.Main.Version
	if v == "" {
		v = "(devel)"
	}
	var rev, at string
	modified := false
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.time":
			at = s.Value
		case "vcs.modified":
			modified = s.Value == "true"
		}
	}
	if rev == "" {
		rev = commit
	}
	out := "changes " + v
	if rev != "" {
		out += " commit " + rev
		if at != "" {
			out += " " + at
		}
		if modified {
			out += " (modified)"
		}
	}
	return out + " " + info.GoVersion
}
