package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
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
	}{
		{"no command", nil, "no command"},
		{"unknown command", []string{"frobnicate"}, `unknown command "frobnicate"`},
		{"asof without --at", []string{"asof", "--config", valid, "--type", "a"}, "--at and --type are required"},
		{"asof unknown type", []string{"asof", "--config", valid, "--type", "zz", "--at", "5"}, `entity type "zz" is not declared`},
		{"asof bad id", []string{"asof", "--config", valid, "--type", "a", "--at", "5", "--id", "x"}, `"x" is not a 64-bit integer`},
		{"missing config", []string{"run", "--config", filepath.Join(dir, "absent.yaml")}, "absent.yaml"},
		{"invalid field", []string{"run", "--config", badPartitions}, "entities[0].partitions"},
		{"unknown field", []string{"run", "--config", typo}, "brokerz"},
		{"bad log level", []string{"run", "--log-level", "loud", "--config", badPartitions}, `log level "loud"`},
		{"bad flag", []string{"run", "--nope"}, "flag provided but not defined"},
		{"acls unknown role", []string{"acls", "--config", valid, "--principal", "root=User:x"}, `unknown role "root"`},
		{"acls bad principal", []string{"acls", "--config", valid, "--principal", "view=x"}, `principal "x"`},
		{"acls unknown type", []string{"acls", "--config", valid, "--types", "zz"}, `entity type "zz" is not declared`},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Setenv("CHANGES_KAFKA_BROKERS", "")
			t.Setenv("CHANGES_POSTGRES_URL", "")
			var stdout, stderr bytes.Buffer
			err := run(context.Background(), c.args, &stdout, &stderr)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("run(%q) = %v; want an error containing %q", c.args, err, c.want)
			}
		})
	}
}

func TestHelp(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if err := run(context.Background(), []string{"help"}, &stdout, &stderr); err != nil {
		t.Fatal(err)
	}
	for _, cmd := range []string{"run", "capture", "process", "topics", "acls", "serve", "asof", "monitor", "slo", "audit", "demo"} {
		if !strings.Contains(stderr.String(), "\n  "+cmd+" ") {
			t.Errorf("usage does not list %s:\n%s", cmd, stderr.String())
		}
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
