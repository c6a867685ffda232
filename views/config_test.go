package views_test

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lovoo/goka"
	"github.com/lovoo/goka/tester"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/topology"
	"github.com/changes-dev/changes/views"
)

func validConfig() views.Config {
	return views.Config{
		Kafka:      topology.KafkaConfig{Brokers: []string{"127.0.0.1:1"}},
		EntityType: "account",
		Topic:      "changes.snapshot.account-table",
		Partitions: 1,
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name   string
		change func(*views.Config)
		want   string // "" for valid
	}{
		{"brokers, type, topic and partitions", func(*views.Config) {}, ""},
		{"no brokers", func(c *views.Config) { c.Kafka.Brokers = nil }, "kafka.brokers"},
		{"a bad version", func(c *views.Config) { c.Kafka.Version = "four" }, "kafka.version"},
		{"SASL without its password", func(c *views.Config) {
			c.Kafka.SASL = topology.KafkaSASLConfig{Mechanism: "PLAIN", Username: "reader"}
		}, "kafka.sasl.password_file"},
		{"no entity type", func(c *views.Config) { c.EntityType = "" }, "EntityType"},
		{"no topic", func(c *views.Config) { c.Topic = "" }, "Topic"},
		{"no partitions", func(c *views.Config) { c.Partitions = 0 }, "Partitions"},
		{"too many partitions", func(c *views.Config) { c.Partitions = 10001 }, "Partitions"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := validConfig()
			tt.change(&c)
			err := c.Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("Validate: %v, want nil", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("Validate: %v, want an error naming %s", err, tt.want)
			}
			if tt.want != "" {
				if _, oerr := views.Open(c); oerr == nil {
					t.Errorf("Open accepted a config Validate refuses: %v", err)
				}
			}
		})
	}
}

// A deployment's config needs postgres.url; the config ConfigFor takes
// from it carries only what the view reads.
func TestConfigFor(t *testing.T) {
	topo := testTopology(t)
	cfg, err := views.ConfigFor(topo, "account")
	if err != nil {
		t.Fatal(err)
	}
	want := views.Config{
		Kafka:      topo.Config().Kafka,
		EntityType: "account",
		Topic:      topo.Snapshot("account"),
		Partitions: 1,
		StorageDir: topo.Config().Storage + "/views",
	}
	if cfg.EntityType != want.EntityType || cfg.Topic != want.Topic || cfg.Partitions != want.Partitions ||
		cfg.StorageDir != want.StorageDir || strings.Join(cfg.Kafka.Brokers, ",") != strings.Join(want.Kafka.Brokers, ",") {
		t.Errorf("ConfigFor = %+v\nwant %+v", cfg, want)
	}
	if err := cfg.Validate(); err != nil {
		t.Errorf("ConfigFor's config does not validate: %v", err)
	}
	if _, err := views.ConfigFor(topo, "user"); err == nil || !strings.Contains(err.Error(), `"user"`) {
		t.Errorf("ConfigFor(undeclared) = %v, want an error naming the type", err)
	}
}

// A view opened from its own small config reads its table as one built
// from a deployment's topology does.
func TestOpen(t *testing.T) {
	tt := tester.New(t)
	cfg := validConfig()
	v, err := views.OpenTyped[struct {
		Name string `json:"name"`
	}](cfg, views.WithInMemory(), views.WithGokaOptions(goka.WithViewTester(tt)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- v.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("view stopped with %v", err)
		}
	}()
	if err := v.WaitRecovered(ctx); err != nil {
		t.Fatal(err)
	}
	tt.Consume(cfg.Topic, "7", enc(t, state(7, 10, "seven")))
	e, ok, err := v.Get(ctx, 7)
	if err != nil || !ok || e.Value.Name != "seven" {
		t.Errorf("Get(7) = %+v, %v, %v; want seven", e, ok, err)
	}
}

// Typed's Each and Subscribe decode, as Get and Range do.
func TestTypedEachAndSubscribe(t *testing.T) {
	topo := testTopology(t)
	tt := tester.New(t)
	v := runView(t, topo, tt, views.WithInMemory())
	type named struct {
		Name string `json:"name"`
	}
	typed := &views.Typed[named]{View: v}
	sub := typed.Subscribe(16)
	defer sub.Close()
	table := topo.Snapshot("account")
	tt.Consume(table, "2", enc(t, state(2, 10, "two")))
	tt.Consume(table, "1", enc(t, state(1, 11, "one")))
	bad := state(3, 12, "")
	bad.Row["name"] = json.RawMessage(`42`) // not a string: does not decode into named
	tt.Consume(table, "3", enc(t, bad))
	tt.Consume(table, "2", enc(t, &codecs.State{EntityType: "account", EntityID: codecs.IntKey(2), Deleted: true, Position: codecs.Position{CommitLSN: 13}}))

	var names []string
	stop := errors.New("stop")
	err := typed.Each(func(e views.Entity[named]) error {
		names = append(names, e.Value.Name)
		return nil
	})
	if err == nil || !strings.Contains(err.Error(), "entity 3 does not decode") || strings.Join(names, ",") != "one" {
		t.Errorf("Each = %v after %v; want one, then entity 3's decode error", err, names)
	}
	if err := typed.Each(func(views.Entity[named]) error { return stop }); err != stop {
		t.Errorf("Each returned %v, want fn's error", err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	type seen struct {
		id   codecs.Key
		name string
		gone bool
		err  bool
	}
	var got []seen
	for c, err := range sub.Changes(ctx) {
		s := seen{id: c.EntityID, gone: c.State == nil, err: err != nil}
		if c.Entity != nil {
			s.name = c.Entity.Value.Name
		}
		got = append(got, s)
		if len(got) == 4 {
			break
		}
	}
	want := []seen{{id: codecs.IntKey(2), name: "two"}, {id: codecs.IntKey(1), name: "one"}, {id: codecs.IntKey(3), err: true}, {id: codecs.IntKey(2), gone: true}}
	if !slices.Equal(got, want) {
		t.Errorf("Changes = %+v\nwant %+v", got, want)
	}
}
