package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/IBM/sarama"
)

// debezium runs one Kafka Connect standalone worker with the Debezium
// PostgreSQL connector through stack/debezium/debezium.sh.
type debezium struct {
	name, slot, publication, prefix string
	tables                          []string
	dir                             string
	extra                           string // connector properties, key=value lines
}

func newDebezium(name, slot, prefix string, tables []string, dir string) *debezium {
	return &debezium{name: name, slot: slot, publication: slot, prefix: prefix, tables: tables, dir: dir}
}

func (d *debezium) env() []string {
	return append(os.Environ(),
		"DBZ_TABLES="+strings.Join(d.tables, ","),
		"DBZ_SLOT="+d.slot,
		"DBZ_PUBLICATION="+d.publication,
		"DBZ_TOPIC_PREFIX="+d.prefix,
		"CHANGES_STACK_DIR="+d.dir,
		"DBZ_CONNECTOR_EXTRA="+d.extra,
	)
}

func (d *debezium) script(ctx context.Context, args ...string) error {
	cmd := exec.CommandContext(ctx, "bash", append([]string{"stack/debezium/debezium.sh"}, args...)...)
	cmd.Env = d.env()
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("debezium.sh %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

func (d *debezium) start(ctx context.Context) error {
	if err := d.script(ctx, "start", d.name); err != nil {
		return err
	}
	return d.script(ctx, "wait", d.name)
}

func (d *debezium) stop(ctx context.Context) error { return d.script(ctx, "stop", d.name) }

// topics are the connector's data topics: <prefix>.<schema>.<table>.
func (d *debezium) topics() []string {
	var out []string
	for _, t := range d.tables {
		out = append(out, d.prefix+"."+t)
	}
	return out
}

func (d *debezium) component() component {
	return component{name: "debezium (connect worker)", pids: pidFile(filepath.Join(d.dir, "debezium", d.name, "pid"))}
}

func (d *debezium) deleteTopics(client sarama.Client) {
	admin, err := sarama.NewClusterAdminFromClient(client)
	if err != nil {
		return
	}
	for _, t := range d.topics() {
		admin.DeleteTopic(t)
	}
}
