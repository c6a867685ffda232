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
	for _, cmd := range []string{"run", "capture", "process", "topics", "serve", "asof", "monitor", "slo", "audit", "demo"} {
		if !strings.Contains(stderr.String(), "\n  "+cmd+" ") {
			t.Errorf("usage does not list %s:\n%s", cmd, stderr.String())
		}
	}
}
