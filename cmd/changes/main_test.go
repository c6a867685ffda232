package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
)

func TestRunErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	badPartitions := write("bad.yaml", "kafka: {brokers: [\"k:9092\"]}\npostgres: {url: x}\nentities: [{type: a, table: t, partitions: -1}]\n")
	valid := write("valid.yaml", "kafka: {brokers: [\"127.0.0.1:1\"]}\npostgres: {url: x}\nentities: [{type: a, table: t}]\n")
	typo := write("typo.yaml", "kafka: {brokerz: [\"k:9092\"]}\n")
	for _, c := range []struct {
		name string
		args []string
		want string
		code int // the exit code main uses
	}{
		{"no command", nil, "no command", 2},
		{"unknown command", []string{"frobnicate"}, `unknown command "frobnicate"`, 2},
		{"asof without --at", []string{"asof", "--config", valid, "--type", "a"}, "--at and --type are required", 2},
		{"asof unknown type", []string{"asof", "--config", valid, "--type", "zz", "--at", "5"}, `entity type "zz" is not declared`, 1},
		{"asof bad id", []string{"asof", "--config", valid, "--type", "a", "--at", "5", "--id", "\xff"}, `text key "\xff" is not UTF-8`, 2},
		{"missing config", []string{"run", "--config", filepath.Join(dir, "absent.yaml")}, "absent.yaml", 1},
		{"invalid field", []string{"run", "--config", badPartitions}, "entities[0].partitions", 1},
		{"unknown field", []string{"run", "--config", typo}, "kafka.brokerz: unknown field", 1},
		{"bad log level", []string{"run", "--log-level", "loud", "--config", badPartitions}, `log level "loud"`, 2},
		{"bad flag", []string{"run", "--nope"}, "flag provided but not defined", 2},
		{"flag of another command", []string{"process", "--recreate-slot"}, "flag provided but not defined", 2},
		{"bad flag value", []string{"slo", "--window", "soon"}, `invalid value "soon"`, 2},
		{"argument", []string{"topics", "--config", valid, "now"}, `unexpected argument "now"`, 2},
		{"help of an unknown command", []string{"help", "frobnicate"}, `unknown command "frobnicate"`, 2},
		{"acls unknown role", []string{"acls", "--config", valid, "--principal", "root=User:x"}, `unknown role "root"`, 2},
		{"acls bad principal", []string{"acls", "--config", valid, "--principal", "view=x"}, `principal "x"`, 1},
		{"acls unknown type", []string{"acls", "--config", valid, "--types", "zz"}, `entity type "zz" is not declared`, 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Setenv("CHANGES_KAFKA_BROKERS", "")
			t.Setenv("CHANGES_POSTGRES_URL", "")
			var stdout, stderr bytes.Buffer
			err := run(context.Background(), c.args, &stdout, &stderr)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("run(%q) = %v; want an error containing %q", c.args, err, c.want)
			}
			if got := exitCode(err); got != c.code {
				t.Errorf("exit code %d, want %d", got, c.code)
			}
			// main prints the error; the flag package must not print it too.
			if c.args != nil && stderr.Len() > 0 {
				t.Errorf("stderr:\n%s\nwant nothing: main prints the error", stderr.String())
			}
		})
	}
}

func TestExitCode(t *testing.T) {
	for _, c := range []struct {
		err  error
		want int
	}{
		{errors.New("x"), 1},
		{usageErrorf("x"), 2},
		{fmt.Errorf("wrapped: %w", usageErrorf("x")), 2},
	} {
		if got := exitCode(c.err); got != c.want {
			t.Errorf("exitCode(%v) = %d, want %d", c.err, got, c.want)
		}
	}
}

func TestHelp(t *testing.T) {
	for _, args := range [][]string{{"help"}, {"--help"}, {"-h"}} {
		var stdout, stderr bytes.Buffer
		if err := run(context.Background(), args, &stdout, &stderr); err != nil {
			t.Fatalf("%q: %v", args, err)
		}
		if stderr.Len() > 0 {
			t.Errorf("%q: stderr %q, want the help on stdout only", args, stderr.String())
		}
		for _, cmd := range []string{"run", "capture", "process", "topics", "acls", "serve", "asof", "monitor", "slo", "audit", "demo", "version"} {
			if !strings.Contains(stdout.String(), "\n  "+cmd+" ") {
				t.Errorf("%q: usage does not list %s:\n%s", args, cmd, stdout.String())
			}
		}
	}
}

// Every command answers --help and -h on stdout with exit code 0: what it
// does, each of its flags, the environment and the exit codes.
func TestCommandHelp(t *testing.T) {
	for _, cmd := range commands {
		for _, args := range [][]string{{cmd.name, "--help"}, {cmd.name, "-h"}, {"help", cmd.name}} {
			t.Run(strings.Join(args, " "), func(t *testing.T) {
				var stdout, stderr bytes.Buffer
				if err := run(context.Background(), args, &stdout, &stderr); err != nil {
					t.Fatal(err)
				}
				if stderr.Len() > 0 {
					t.Errorf("stderr %q, want the help on stdout only", stderr.String())
				}
				out := stdout.String()
				want := []string{"usage: changes " + cmd.name, cmd.help, "exit codes:\n  0  ", "\n  2  usage error"}
				if !cmd.noConfig {
					want = append(want, "environment:\n", "CHANGES_CONFIG", "-config string", "-log-level string")
				}
				fs := flag.NewFlagSet("", flag.ContinueOnError)
				cmd.flags(fs)
				for _, w := range want {
					if !strings.Contains(out, w) {
						t.Errorf("help lacks %q:\n%s", w, out)
					}
				}
				fs.VisitAll(func(f *flag.Flag) {
					if !strings.Contains(out, "\n  -"+f.Name+" ") && !strings.Contains(out, "\n  -"+f.Name+"\n") {
						t.Errorf("help lacks the flag -%s:\n%s", f.Name, out)
					}
				})
			})
		}
	}
}

func TestVersion(t *testing.T) {
	var stdout, stderr bytes.Buffer
	for _, args := range [][]string{{"version"}, {"--version"}} {
		stdout.Reset()
		if err := run(context.Background(), args, &stdout, &stderr); err != nil {
			t.Fatal(err)
		}
		if out := stdout.String(); !strings.HasPrefix(out, "changes ") || !strings.Contains(out, runtime.Version()) {
			t.Errorf("%q printed %q, want changes, its version and %s", args, out, runtime.Version())
		}
	}
	settings := func(kv ...string) []debug.BuildSetting {
		var s []debug.BuildSetting
		for i := 0; i < len(kv); i += 2 {
			s = append(s, debug.BuildSetting{Key: kv[i], Value: kv[i+1]})
		}
		return s
	}
	for _, c := range []struct {
		name string
		info *debug.BuildInfo
		want string
	}{
		{"no build info", nil, "changes (no build information) " + runtime.Version()},
		{"devel without vcs", &debug.BuildInfo{GoVersion: "go1.26.0", Main: debug.Module{Version: "(devel)"}}, "changes (devel) go1.26.0"},
		{"release", &debug.BuildInfo{GoVersion: "go1.26.0", Main: debug.Module{Version: "v1.2.3"},
			Settings: settings("vcs.revision", "abc123", "vcs.time", "2026-11-30T10:00:00Z", "vcs.modified", "false")},
			"changes v1.2.3 commit abc123 2026-11-30T10:00:00Z go1.26.0"},
		{"modified tree", &debug.BuildInfo{GoVersion: "go1.26.0", Main: debug.Module{Version: "(devel)"},
			Settings: settings("vcs.revision", "abc123", "vcs.time", "2026-11-30T10:00:00Z", "vcs.modified", "true")},
			"changes (devel) commit abc123 2026-11-30T10:00:00Z (modified) go1.26.0"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := version(c.info, c.info != nil); got != c.want {
				t.Errorf("version = %q, want %q", got, c.want)
			}
		})
	}
}

// `changes acls` prints each role's ACLs without a broker; only --apply
// needs one.
func TestACLsCommand(t *testing.T) {
	t.Setenv("CHANGES_KAFKA_BROKERS", "")
	t.Setenv("CHANGES_POSTGRES_URL", "")
	cfg := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(cfg, []byte("kafka: {brokers: [\"127.0.0.1:1\"]}\npostgres: {url: x}\ntopics: {prefix: p}\nentities: [{type: a, table: t}]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	if err := run(context.Background(), []string{"acls", "--config", cfg, "--principal", "view=User:orders"}, &stdout, &stderr); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	if len(lines) != 4 || !strings.HasPrefix(lines[0], "PRINCIPAL") {
		t.Fatalf("output:\n%s\nwant a header and the view's 3 ACLs", stdout.String())
	}
	for _, l := range lines[1:] {
		if f := strings.Fields(l); len(f) != 4 || f[0] != "User:orders" || f[2] != "Topic" || f[3] != "p.snapshot.a-table" {
			t.Errorf("line %q: want User:orders on Topic p.snapshot.a-table", l)
		}
	}
}
