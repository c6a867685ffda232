package history_test

import (
	"strings"
	"testing"

	"github.com/changes-dev/changes/topology"
	"github.com/changes-dev/changes/views/history"
)

func TestConfigValidate(t *testing.T) {
	valid := history.Config{Kafka: topology.KafkaConfig{Brokers: []string{"kafka:9092"}}, Topic: "changes.history"}
	tests := []struct {
		name   string
		change func(*history.Config)
		want   string // "" for valid
	}{
		{"brokers and topic", func(*history.Config) {}, ""},
		{"no brokers", func(c *history.Config) { c.Kafka.Brokers = nil }, "kafka.brokers"},
		{"no topic", func(c *history.Config) { c.Topic = "" }, "Topic"},
		{"a negative retention", func(c *history.Config) { c.Retention = -1 }, "Retention"},
		{"SASL without a username", func(c *history.Config) { c.Kafka.SASL.Mechanism = "SCRAM-SHA-256" }, "kafka.sasl.username"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := valid
			tt.change(&c)
			err := c.Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("Validate: %v, want nil", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("Validate: %v, want an error naming %s", err, tt.want)
			}
			if tt.want != "" {
				if _, err := history.New(c, nil); err == nil || !strings.Contains(err.Error(), tt.want) {
					t.Errorf("New: %v, want the validation error", err)
				}
			}
		})
	}
}

func TestConfigFor(t *testing.T) {
	cfg, err := topology.Parse([]byte(`
kafka: {brokers: ["kafka:9092"]}
postgres: {url: "postgres://unused"}
topics: {prefix: acme, history_retention: 48h}
entities: [{type: account, table: accounts}]
`))
	if err != nil {
		t.Fatal(err)
	}
	topo := topology.New(cfg)
	c := history.ConfigFor(topo)
	if c.Topic != topo.History() || c.Retention != cfg.Topics.HistoryRetention || strings.Join(c.Kafka.Brokers, ",") != strings.Join(cfg.Kafka.Brokers, ",") {
		t.Errorf("ConfigFor = %+v; want the topology's history topic, retention and brokers", c)
	}
	if err := c.Validate(); err != nil {
		t.Errorf("ConfigFor's config does not validate: %v", err)
	}
}
