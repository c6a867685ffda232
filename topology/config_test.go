package topology_test

import (
	"errors"
	"io/fs"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/changes-dev/changes/topology"
)

// envVars are every environment variable Parse reads.
var envVars = []string{
	"CHANGES_KAFKA_BROKERS",
	"CHANGES_KAFKA_REPLICATION_FACTOR",
	"CHANGES_POSTGRES_URL",
	"CHANGES_POSTGRES_SLOT",
	"CHANGES_POSTGRES_PUBLICATION",
	"CHANGES_TOPIC_PREFIX",
	"CHANGES_SERVE_LISTEN",
	"CHANGES_SERVE_TOKEN",
	"CHANGES_SERVE_TOKEN_FILE",
	"CHANGES_SERVE_TLS_CERT_FILE",
	"CHANGES_SERVE_TLS_KEY_FILE",
	"CHANGES_SERVE_HISTORY_INDEX_DISABLED",
	"CHANGES_MONITOR_LISTEN",
	"CHANGES_STORAGE_DIR",
	"CHANGES_METRICS_LISTEN",
	"CHANGES_KAFKA_TLS_ENABLED",
	"CHANGES_KAFKA_TLS_CA_FILE",
	"CHANGES_KAFKA_TLS_CERT_FILE",
	"CHANGES_KAFKA_TLS_KEY_FILE",
	"CHANGES_KAFKA_TLS_SERVER_NAME",
	"CHANGES_KAFKA_SASL_MECHANISM",
	"CHANGES_KAFKA_SASL_USERNAME",
	"CHANGES_KAFKA_SASL_PASSWORD",
	"CHANGES_KAFKA_SASL_PASSWORD_FILE",
	"CHANGES_KAFKA_SASL_TOKEN",
	"CHANGES_KAFKA_SASL_TOKEN_FILE",
	"PGSSLMODE",
	"PGHOST",
}

// unsetEnv removes every variable Parse reads for the duration of the test, so
// the developer's or CI's environment cannot change what the test sees.
// Unsetting (not setting to "") matters for CHANGES_METRICS_LISTEN, where an
// empty value disables the endpoint.
func unsetEnv(t *testing.T) {
	t.Helper()
	for _, name := range envVars {
		t.Setenv(name, "") // restores the old value in t.Cleanup
		if err := os.Unsetenv(name); err != nil {
			t.Fatal(err)
		}
	}
}

// fullYAML sets every field, none to its default.
const fullYAML = `
kafka:
  brokers: ["k1:9092", "k2:9093"]
  version: "3.7.0"
  client_id: test-client
  replication_factor: 3
  linger: 5ms
  max_record_bytes: 2000000
postgres:
  url: "postgres://u@db:5432/x"
  slot: my_slot
  publication: my_pub
  standby_timeout: 3s
  snapshot_chunk_rows: 4096
  watermark_interval: 50ms
topics:
  prefix: acme.prod
  history_retention: 48h
  events_retention: 2h
  delete_grace: 30m
storage: /var/lib/x
metrics: 0.0.0.0:9000
serve:
  listen: ":8081"
  token: s3cret
  tokens: [n3xt, 0ther]
  token_file: /etc/changes/tokens
  tls: {cert_file: /etc/changes/cert.pem, key_file: /etc/changes/key.pem}
  types: [campaign]
  read_timeout: 2s
  write_timeout: 3m
  idle_timeout: 5s
  max_response_bytes: 65536
  max_in_flight: 8
  max_waiting: 4
  max_wait: 250ms
  history_scans: 3
  max_subscriptions: 7
  history_index: {disabled: true, checkpoint_every: 5000}
monitor: {listen: ":9999", stale_after: 5s, remember: 10m, remember_events: 5000, audit_rate: 0}
entities:
  - type: account
    table: billing.accounts
    id_column: account_id
    partitions: 12
  - type: campaign
    table: campaigns
    id_column: cid
    partitions: 1
`

// minimalYAML sets only the required fields.
const minimalYAML = `
kafka:
  brokers: ["k1:9092"]
postgres:
  url: "postgres://u@db:5432/x"
entities:
  - type: account
    table: accounts
`

func TestParseFull(t *testing.T) {
	unsetEnv(t)
	cfg, err := topology.Parse([]byte(fullYAML))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	want := &topology.Config{
		Kafka: topology.KafkaConfig{
			Brokers:           []string{"k1:9092", "k2:9093"},
			Version:           "3.7.0",
			ClientID:          "test-client",
			ReplicationFactor: 3,
			Linger:            5 * time.Millisecond,
			MaxRecordBytes:    2000000,
		},
		Postgres: topology.PostgresConfig{
			URL:               "postgres://u@db:5432/x",
			Slot:              "my_slot",
			Publication:       "my_pub",
			StandbyTimeout:    3 * time.Second,
			SnapshotChunkRows: 4096,
			WatermarkInterval: 50 * time.Millisecond,
		},
		Topics: topology.TopicsConfig{
			Prefix:           "acme.prod",
			HistoryRetention: 48 * time.Hour,
			EventsRetention:  2 * time.Hour,
			DeleteGrace:      30 * time.Minute,
		},
		Storage: "/var/lib/x",
		Metrics: "0.0.0.0:9000",
		Serve: topology.ServeConfig{
			Listen:           ":8081",
			Token:            "s3cret",
			Tokens:           []string{"n3xt", "0ther"},
			TokenFile:        "/etc/changes/tokens",
			TLS:              topology.ServeTLSConfig{CertFile: "/etc/changes/cert.pem", KeyFile: "/etc/changes/key.pem"},
			Types:            []string{"campaign"},
			ReadTimeout:      2 * time.Second,
			WriteTimeout:     3 * time.Minute,
			IdleTimeout:      5 * time.Second,
			MaxResponseBytes: 65536,
			MaxInFlight:      8,
			MaxWaiting:       4,
			MaxWait:          250 * time.Millisecond,
			HistoryScans:     3,
			MaxSubscriptions: 7,
			HistoryIndex:     topology.ServeHistoryIndexConfig{Disabled: true, CheckpointEvery: 5000},
		},
		Monitor: topology.MonitorConfig{Listen: ":9999", StaleAfter: 5 * time.Second, Remember: 10 * time.Minute, RememberEvents: 5000, AuditRate: 0},
		Entities: []topology.EntityConfig{
			{Type: "account", Table: "billing.accounts", IDColumn: "account_id", Partitions: 12},
			// A table without a schema is in public.
			{Type: "campaign", Table: "public.campaigns", IDColumn: "cid", Partitions: 1},
		},
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("Parse(fullYAML)\n got %+v\nwant %+v", cfg, want)
	}
}

func TestParseDefaults(t *testing.T) {
	unsetEnv(t)
	cfg, err := topology.Parse([]byte(minimalYAML))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	e := cfg.Entities[0]
	// Each row checks that the default is applied and that the constant still
	// says what the field comments in config.go document.
	tests := []struct {
		name       string
		got, def   any
		documented any
	}{
		{"kafka.version", cfg.Kafka.Version, topology.DefaultKafkaVersion, "4.0.0"},
		{"kafka.client_id", cfg.Kafka.ClientID, topology.DefaultClientID, "changes"},
		{"kafka.replication_factor", cfg.Kafka.ReplicationFactor, -1, -1},
		{"kafka.linger", cfg.Kafka.Linger, time.Duration(0), time.Duration(0)},
		{"kafka.max_record_bytes", cfg.Kafka.MaxRecordBytes, topology.DefaultMaxRecordBytes, 1000000},
		{"postgres.slot", cfg.Postgres.Slot, topology.DefaultSlot, "changes"},
		{"postgres.publication", cfg.Postgres.Publication, topology.DefaultPublication, "changes"},
		{"postgres.standby_timeout", cfg.Postgres.StandbyTimeout, topology.DefaultStandbyTimeout, 10 * time.Second},
		{"postgres.snapshot_chunk_rows", cfg.Postgres.SnapshotChunkRows, topology.DefaultSnapshotChunkRows, 1024},
		{"postgres.watermark_interval", cfg.Postgres.WatermarkInterval, topology.DefaultWatermarkInterval, 100 * time.Millisecond},
		{"topics.prefix", cfg.Topics.Prefix, topology.DefaultPrefix, "changes"},
		{"topics.history_retention", cfg.Topics.HistoryRetention, topology.DefaultHistoryRetention, 720 * time.Hour},
		{"topics.events_retention", cfg.Topics.EventsRetention, topology.DefaultEventsRetention, 168 * time.Hour},
		{"topics.delete_grace", cfg.Topics.DeleteGrace, topology.DefaultDeleteGrace, 24 * time.Hour},
		{"storage", cfg.Storage, topology.DefaultStorage, "data"},
		{"metrics", cfg.Metrics, topology.DefaultMetrics, "127.0.0.1:9464"},
		{"monitor.stale_after", cfg.Monitor.StaleAfter, topology.DefaultStaleAfter, 30 * time.Second},
		{"monitor.remember", cfg.Monitor.Remember, topology.DefaultRemember, 15 * time.Minute},
		{"monitor.remember_events", cfg.Monitor.RememberEvents, topology.DefaultRememberEvents, 1000000},
		{"monitor.audit_rate", cfg.Monitor.AuditRate, topology.DefaultAuditRate, 1.0},
		{"serve.listen", cfg.Serve.Listen, topology.DefaultServeListen, "127.0.0.1:8080"},
		{"serve.read_timeout", cfg.Serve.ReadTimeout, topology.DefaultServeReadTimeout, 10 * time.Second},
		{"serve.write_timeout", cfg.Serve.WriteTimeout, topology.DefaultServeWriteTimeout, 30 * time.Second},
		{"serve.idle_timeout", cfg.Serve.IdleTimeout, topology.DefaultServeIdleTimeout, 60 * time.Second},
		{"serve.max_response_bytes", cfg.Serve.MaxResponseBytes, topology.DefaultServeMaxResponseBytes, 4194304},
		{"serve.max_in_flight", cfg.Serve.MaxInFlight, topology.DefaultServeMaxInFlight, 32},
		{"serve.max_waiting", cfg.Serve.MaxWaiting, topology.DefaultServeMaxWaiting, 64},
		{"serve.max_wait", cfg.Serve.MaxWait, topology.DefaultServeMaxWait, 10 * time.Second},
		{"serve.history_scans", cfg.Serve.HistoryScans, topology.DefaultServeHistoryScans, 2},
		{"serve.max_subscriptions", cfg.Serve.MaxSubscriptions, topology.DefaultServeMaxSubscriptions, 64},
		{"serve.history_index.disabled", cfg.Serve.HistoryIndex.Disabled, false, false},
		{"serve.history_index.checkpoint_every", cfg.Serve.HistoryIndex.CheckpointEvery, int64(topology.DefaultServeHistoryIndexCheckpointEvery), int64(250_000)},
		{"serve.tls", cfg.Serve.TLS.Enabled(), false, false},
		{"entities[0].id_column", e.IDColumn, topology.DefaultIDColumn, "id"},
		{"entities[0].partitions", e.Partitions, topology.DefaultPartitions, 8},
		{"entities[0].table", e.Table, "public.accounts", "public.accounts"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.got != tt.def {
				t.Errorf("got %v, want default %v", tt.got, tt.def)
			}
			if tt.def != tt.documented {
				t.Errorf("default is %v, the field comment documents %v", tt.def, tt.documented)
			}
		})
	}
}

func TestParseEmptyMetricsDisables(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want string
	}{
		{"absent", minimalYAML, topology.DefaultMetrics},
		{"null", minimalYAML + "metrics:\n", topology.DefaultMetrics},
		{"explicit empty", minimalYAML + "metrics: \"\"\n", ""},
		{"set", minimalYAML + "metrics: \":1234\"\n", ":1234"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			unsetEnv(t)
			cfg, err := topology.Parse([]byte(tt.yaml))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if cfg.Metrics != tt.want {
				t.Errorf("Metrics = %q, want %q", cfg.Metrics, tt.want)
			}
		})
	}
}

func TestParseEnvOverrides(t *testing.T) {
	tests := []struct {
		name  string
		yaml  string
		env   map[string]string
		check func(t *testing.T, c *topology.Config)
	}{
		{
			name: "brokers are split on commas and trimmed",
			yaml: fullYAML,
			env:  map[string]string{"CHANGES_KAFKA_BROKERS": " a:1, b:2 ,,"},
			check: func(t *testing.T, c *topology.Config) {
				if want := []string{"a:1", "b:2"}; !reflect.DeepEqual(c.Kafka.Brokers, want) {
					t.Errorf("Brokers = %q, want %q", c.Kafka.Brokers, want)
				}
			},
		},
		{
			name: "replication factor",
			yaml: fullYAML,
			env:  map[string]string{"CHANGES_KAFKA_REPLICATION_FACTOR": "-1"},
			check: func(t *testing.T, c *topology.Config) {
				if c.Kafka.ReplicationFactor != -1 {
					t.Errorf("ReplicationFactor = %d, want -1", c.Kafka.ReplicationFactor)
				}
			},
		},
		{
			name: "postgres url, slot and publication",
			yaml: fullYAML,
			env: map[string]string{
				"CHANGES_POSTGRES_URL":         "postgres://other/db",
				"CHANGES_POSTGRES_SLOT":        "env_slot",
				"CHANGES_POSTGRES_PUBLICATION": "env_pub",
			},
			check: func(t *testing.T, c *topology.Config) {
				got := [3]string{c.Postgres.URL, c.Postgres.Slot, c.Postgres.Publication}
				if want := [3]string{"postgres://other/db", "env_slot", "env_pub"}; got != want {
					t.Errorf("postgres = %q, want %q", got, want)
				}
			},
		},
		{
			name: "prefix and storage",
			yaml: fullYAML,
			env:  map[string]string{"CHANGES_TOPIC_PREFIX": "env-prefix", "CHANGES_STORAGE_DIR": "/tmp/env"},
			check: func(t *testing.T, c *topology.Config) {
				if c.Topics.Prefix != "env-prefix" || c.Storage != "/tmp/env" {
					t.Errorf("prefix, storage = %q, %q; want env-prefix, /tmp/env", c.Topics.Prefix, c.Storage)
				}
			},
		},
		{
			name: "metrics listen address",
			yaml: fullYAML,
			env:  map[string]string{"CHANGES_METRICS_LISTEN": "127.0.0.1:1"},
			check: func(t *testing.T, c *topology.Config) {
				if c.Metrics != "127.0.0.1:1" {
					t.Errorf("Metrics = %q, want 127.0.0.1:1", c.Metrics)
				}
			},
		},
		{
			name: "empty metrics listen address disables the endpoint",
			yaml: fullYAML,
			env:  map[string]string{"CHANGES_METRICS_LISTEN": ""},
			check: func(t *testing.T, c *topology.Config) {
				if c.Metrics != "" {
					t.Errorf("Metrics = %q, want empty", c.Metrics)
				}
			},
		},
		{
			name: "serve tokens are split on commas and replace token and tokens",
			yaml: fullYAML,
			env:  map[string]string{"CHANGES_SERVE_TOKEN": " new1, new2 ,"},
			check: func(t *testing.T, c *topology.Config) {
				if c.Serve.Token != "" || !reflect.DeepEqual(c.Serve.Tokens, []string{"new1", "new2"}) {
					t.Errorf("Token, Tokens = %q, %q; want \"\", [new1 new2]", c.Serve.Token, c.Serve.Tokens)
				}
			},
		},
		{
			name: "a single serve token, as before",
			yaml: minimalYAML,
			env:  map[string]string{"CHANGES_SERVE_TOKEN": "only"},
			check: func(t *testing.T, c *topology.Config) {
				if got, err := c.Serve.LoadTokens(); err != nil || !reflect.DeepEqual(got, []string{"only"}) {
					t.Errorf("LoadTokens = %q, %v; want [only]", got, err)
				}
			},
		},
		{
			name: "serve token file and TLS files",
			yaml: minimalYAML,
			env: map[string]string{
				"CHANGES_SERVE_TOKEN_FILE":    "/run/secrets/tokens",
				"CHANGES_SERVE_TLS_CERT_FILE": "/run/secrets/cert.pem",
				"CHANGES_SERVE_TLS_KEY_FILE":  "/run/secrets/key.pem",
			},
			check: func(t *testing.T, c *topology.Config) {
				want := topology.ServeTLSConfig{CertFile: "/run/secrets/cert.pem", KeyFile: "/run/secrets/key.pem"}
				if c.Serve.TokenFile != "/run/secrets/tokens" || c.Serve.TLS != want || !c.Serve.TLS.Enabled() {
					t.Errorf("TokenFile, TLS = %q, %+v", c.Serve.TokenFile, c.Serve.TLS)
				}
			},
		},
		{
			name: "the history index turned off, and on again",
			yaml: minimalYAML,
			env:  map[string]string{"CHANGES_SERVE_HISTORY_INDEX_DISABLED": "true"},
			check: func(t *testing.T, c *topology.Config) {
				if !c.Serve.HistoryIndex.Disabled {
					t.Error("CHANGES_SERVE_HISTORY_INDEX_DISABLED=true left the index on")
				}
				t.Setenv("CHANGES_SERVE_HISTORY_INDEX_DISABLED", "false")
				on, err := topology.Parse([]byte(fullYAML)) // disabled: true in the file
				if err != nil || on.Serve.HistoryIndex.Disabled {
					t.Errorf("CHANGES_SERVE_HISTORY_INDEX_DISABLED=false over disabled: true: %v, disabled %v", err, err == nil && on.Serve.HistoryIndex.Disabled)
				}
			},
		},
		{
			name: "empty values of the other variables count as unset",
			yaml: fullYAML,
			env: map[string]string{
				"CHANGES_KAFKA_BROKERS":                "",
				"CHANGES_KAFKA_REPLICATION_FACTOR":     "",
				"CHANGES_POSTGRES_URL":                 "",
				"CHANGES_POSTGRES_SLOT":                "",
				"CHANGES_POSTGRES_PUBLICATION":         "",
				"CHANGES_TOPIC_PREFIX":                 "",
				"CHANGES_STORAGE_DIR":                  "",
				"CHANGES_SERVE_TOKEN":                  "",
				"CHANGES_SERVE_TOKEN_FILE":             "",
				"CHANGES_SERVE_TLS_CERT_FILE":          "",
				"CHANGES_SERVE_TLS_KEY_FILE":           "",
				"CHANGES_SERVE_HISTORY_INDEX_DISABLED": "",
			},
			check: func(t *testing.T, c *topology.Config) {
				unsetEnv(t)
				want, err := topology.Parse([]byte(fullYAML))
				if err != nil {
					t.Fatal(err)
				}
				if !reflect.DeepEqual(c, want) {
					t.Errorf("with empty variables\n got %+v\nwant %+v", c, want)
				}
			},
		},
		{
			name: "empty slot and prefix fall back to the defaults, not to empty",
			yaml: minimalYAML,
			env:  map[string]string{"CHANGES_POSTGRES_SLOT": "", "CHANGES_TOPIC_PREFIX": ""},
			check: func(t *testing.T, c *topology.Config) {
				if c.Postgres.Slot != topology.DefaultSlot || c.Topics.Prefix != topology.DefaultPrefix {
					t.Errorf("slot, prefix = %q, %q; want the defaults", c.Postgres.Slot, c.Topics.Prefix)
				}
			},
		},
		{
			name: "required fields may come from the environment alone",
			yaml: "entities: [{type: account, table: accounts}]",
			env:  map[string]string{"CHANGES_KAFKA_BROKERS": "k:9092", "CHANGES_POSTGRES_URL": "postgres://env"},
			check: func(t *testing.T, c *topology.Config) {
				if !reflect.DeepEqual(c.Kafka.Brokers, []string{"k:9092"}) || c.Postgres.URL != "postgres://env" {
					t.Errorf("brokers, url = %q, %q", c.Kafka.Brokers, c.Postgres.URL)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			unsetEnv(t)
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			cfg, err := topology.Parse([]byte(tt.yaml))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			tt.check(t, cfg)
		})
	}
}

func TestParseEnvErrors(t *testing.T) {
	tests := []struct {
		name, env, value string
		field            string // "" when the error is not a *FieldError
		contains         string
	}{
		{"replication factor not an integer", "CHANGES_KAFKA_REPLICATION_FACTOR", "three", "", "CHANGES_KAFKA_REPLICATION_FACTOR"},
		{"replication factor zero", "CHANGES_KAFKA_REPLICATION_FACTOR", "0", "kafka.replication_factor", "got 0"},
		{"broker without port", "CHANGES_KAFKA_BROKERS", "good:1,bad", "kafka.brokers[1]", `"bad"`},
		{"slot with uppercase", "CHANGES_POSTGRES_SLOT", "Slot", "postgres.slot", `"Slot"`},
		{"publication not an identifier", "CHANGES_POSTGRES_PUBLICATION", "a-b", "postgres.publication", `"a-b"`},
		{"prefix with a space", "CHANGES_TOPIC_PREFIX", "a b", "topics.prefix", `"a b"`},
		{"serve token list without a token", "CHANGES_SERVE_TOKEN", " , ", "", "CHANGES_SERVE_TOKEN"},
		{"serve token with a space inside", "CHANGES_SERVE_TOKEN", "good,b ad", "serve.tokens[1]", "visible ASCII"},
		{"history index disabled neither true nor false", "CHANGES_SERVE_HISTORY_INDEX_DISABLED", "maybe", "", "CHANGES_SERVE_HISTORY_INDEX_DISABLED"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			unsetEnv(t)
			t.Setenv(tt.env, tt.value)
			_, err := topology.Parse([]byte(fullYAML))
			if err == nil {
				t.Fatalf("Parse with %s=%q succeeded, want an error", tt.env, tt.value)
			}
			if !strings.Contains(err.Error(), tt.contains) {
				t.Errorf("error %q does not mention %q", err, tt.contains)
			}
			var fe *topology.FieldError
			switch {
			case tt.field == "" && errors.As(err, &fe):
				t.Errorf("error %q is a *FieldError for %q, want a plain error", err, fe.Field)
			case tt.field != "" && !errors.As(err, &fe):
				t.Errorf("error %q (%T) is not a *FieldError", err, err)
			case tt.field != "" && fe.Field != tt.field:
				t.Errorf("Field = %q, want %q", fe.Field, tt.field)
			}
		})
	}
}

// An unknown key and a value of the wrong type are named by their YAML
// path, as Validate names a wrong value, not by a line and a Go type.
func TestParseNamesTheYAMLPath(t *testing.T) {
	tests := []struct {
		name, yaml, want string
	}{
		{"unknown top-level field", minimalYAML + "metrix: x\n", "metrix: unknown field"},
		{"unknown nested field", strings.Replace(minimalYAML, "postgres:\n", "postgres:\n  slott: s\n", 1), "postgres.slott: unknown field"},
		{"unknown field in a flow mapping", "kafka: {brokerz: [\"k:9092\"]}\n", "kafka.brokerz: unknown field"},
		{"unknown field in an entity", minimalYAML + "    partition: 3\n", "entities[0].partition: unknown field"},
		{"unknown field, deep", minimalYAML + "serve:\n  tls: {cert: x}\n", "serve.tls.cert: unknown field"},
		{"bad duration", minimalYAML + "kafka:\n  linger: 5x\n", `kafka.linger: "5x" is not a duration`},
		{"bad duration, topics", minimalYAML + "topics:\n  history_retention: forever\n", `topics.history_retention: "forever" is not a duration`},
		{"duration without a unit", minimalYAML + "monitor:\n  stale_after: 30\n", `monitor.stale_after: "30" is not a duration`},
		{"not an integer", minimalYAML + "    partitions: lots\n", `entities[0].partitions: "lots" is not an integer`},
		{"not a number", minimalYAML + "monitor:\n  audit_rate: fast\n", `monitor.audit_rate: "fast" is not a number`},
		{"not a boolean", minimalYAML + "kafka:\n  tls: {enabled: maybe}\n", `kafka.tls.enabled: "maybe" is not true or false`},
		{"not a list", "kafka:\n  brokers: 9092\n", `kafka.brokers: "9092" is not a list`},
		{"not a string", minimalYAML + "storage: [a, b]\n", "storage: a list is not a string"},
		{"not a mapping", "entities:\n  - account\n", `entities[0]: "account" is not a mapping of fields`},
		{"the file is a list", "- a\n", "the config: a list is not a mapping of fields"},
		{"in a merged anchor", minimalYAML + "x: &tls {enabled: true, verify: no}\n", "x: unknown field"},
		{"merged into a field", minimalYAML + "serve:\n  tls:\n    <<: {cert_fil: a}\n", "serve.tls.cert_fil: unknown field"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			unsetEnv(t)
			_, err := topology.Parse([]byte(tt.yaml))
			if err == nil || !strings.HasPrefix(err.Error(), tt.want) {
				t.Fatalf("Parse = %v, want an error starting %q", err, tt.want)
			}
			var fe *topology.FieldError
			if !errors.As(err, &fe) {
				t.Errorf("%v is not a *FieldError", err)
			}
		})
	}
}

// Anchors, aliases and merge keys decode as yaml.v3 decodes them.
func TestParseAnchors(t *testing.T) {
	unsetEnv(t)
	cfg, err := topology.Parse([]byte(minimalYAML + `
monitor:
  stale_after: &wait 45s
serve:
  max_wait: *wait
  tls:
    <<: {cert_file: c.pem}
    key_file: k.pem
`))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Serve.MaxWait != 45*time.Second || cfg.Serve.TLS.CertFile != "c.pem" || cfg.Serve.TLS.KeyFile != "k.pem" {
		t.Errorf("max_wait %s, tls %+v; want 45s, c.pem and k.pem", cfg.Serve.MaxWait, cfg.Serve.TLS)
	}
}

func TestParseMalformed(t *testing.T) {
	tests := []struct{ name, yaml string }{
		{"not yaml", "kafka: [unclosed"},
		{"tab indentation", "kafka:\n\tbrokers: [k:1]\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			unsetEnv(t)
			if _, err := topology.Parse([]byte(tt.yaml)); err == nil || !strings.HasPrefix(err.Error(), "parse: yaml: line ") {
				t.Errorf("Parse = %v, want the YAML error and its line", err)
			}
		})
	}
}

// validConfig is a config that passes Validate before defaults are applied;
// the tests change one field, write it as YAML and Parse it.
func validConfig() topology.Config {
	return topology.Config{
		Kafka: topology.KafkaConfig{
			Brokers:           []string{"k1:9092", "k2:9092"},
			ReplicationFactor: -1,
		},
		Postgres: topology.PostgresConfig{URL: "postgres://db"},
		Entities: []topology.EntityConfig{
			{Type: "account", Table: "public.accounts"},
			{Type: "campaign", Table: "public.campaigns"},
		},
	}
}

func parseConfig(t *testing.T, c topology.Config) (*topology.Config, error) {
	t.Helper()
	data, err := yaml.Marshal(c)
	if err != nil {
		t.Fatalf("marshal: %v", err)
	}
	return topology.Parse(data)
}

func TestParseInvalid(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(c *topology.Config)
		field  string
	}{
		{"no brokers", func(c *topology.Config) { c.Kafka.Brokers = nil }, "kafka.brokers"},
		{"broker without port", func(c *topology.Config) { c.Kafka.Brokers = []string{"kafka"} }, "kafka.brokers[0]"},
		{"broker with empty port", func(c *topology.Config) { c.Kafka.Brokers = []string{"k:1", "kafka:"} }, "kafka.brokers[1]"},
		{"version", func(c *topology.Config) { c.Kafka.Version = "banana" }, "kafka.version"},
		{"replication factor 0", func(c *topology.Config) { c.Kafka.ReplicationFactor = 0 }, "kafka.replication_factor"},
		{"replication factor -2", func(c *topology.Config) { c.Kafka.ReplicationFactor = -2 }, "kafka.replication_factor"},
		{"negative linger", func(c *topology.Config) { c.Kafka.Linger = -time.Millisecond }, "kafka.linger"},
		{"max record bytes", func(c *topology.Config) { c.Kafka.MaxRecordBytes = 1023 }, "kafka.max_record_bytes"},
		{"negative max record bytes", func(c *topology.Config) { c.Kafka.MaxRecordBytes = -1 }, "kafka.max_record_bytes"},
		{"no url", func(c *topology.Config) { c.Postgres.URL = "" }, "postgres.url"},
		{"slot uppercase", func(c *topology.Config) { c.Postgres.Slot = "Changes" }, "postgres.slot"},
		{"slot dash", func(c *topology.Config) { c.Postgres.Slot = "a-b" }, "postgres.slot"},
		{"slot too long", func(c *topology.Config) { c.Postgres.Slot = strings.Repeat("s", 64) }, "postgres.slot"},
		{"publication starts with digit", func(c *topology.Config) { c.Postgres.Publication = "1pub" }, "postgres.publication"},
		{"publication quoted", func(c *topology.Config) { c.Postgres.Publication = `"pub"` }, "postgres.publication"},
		{"standby timeout", func(c *topology.Config) { c.Postgres.StandbyTimeout = 999 * time.Millisecond }, "postgres.standby_timeout"},
		{"negative snapshot chunk", func(c *topology.Config) { c.Postgres.SnapshotChunkRows = -1 }, "postgres.snapshot_chunk_rows"},
		{"huge snapshot chunk", func(c *topology.Config) { c.Postgres.SnapshotChunkRows = 100_001 }, "postgres.snapshot_chunk_rows"},
		{"watermark interval too short", func(c *topology.Config) { c.Postgres.WatermarkInterval = time.Millisecond }, "postgres.watermark_interval"},
		{"watermark interval too long", func(c *topology.Config) { c.Postgres.WatermarkInterval = time.Hour }, "postgres.watermark_interval"},
		{"prefix with space", func(c *topology.Config) { c.Topics.Prefix = "a b" }, "topics.prefix"},
		{"prefix too long", func(c *topology.Config) { c.Topics.Prefix = strings.Repeat("p", 151) }, "topics.prefix"},
		{"history retention", func(c *topology.Config) { c.Topics.HistoryRetention = 59 * time.Minute }, "topics.history_retention"},
		{"events retention", func(c *topology.Config) { c.Topics.EventsRetention = time.Second }, "topics.events_retention"},
		{"negative delete grace", func(c *topology.Config) { c.Topics.DeleteGrace = -time.Second }, "topics.delete_grace"},
		{"no entities", func(c *topology.Config) { c.Entities = nil }, "entities"},
		{"type uppercase", func(c *topology.Config) { c.Entities[1].Type = "Campaign" }, "entities[1].type"},
		{"type starts with digit", func(c *topology.Config) { c.Entities[1].Type = "1campaign" }, "entities[1].type"},
		{"type with dot", func(c *topology.Config) { c.Entities[0].Type = "a.b" }, "entities[0].type"},
		{"type too long", func(c *topology.Config) { c.Entities[1].Type = strings.Repeat("t", 64) }, "entities[1].type"},
		{"type missing", func(c *topology.Config) { c.Entities[1].Type = "" }, "entities[1].type"},
		{"type duplicate", func(c *topology.Config) { c.Entities[1].Type = "account" }, "entities[1].type"},
		{"table missing", func(c *topology.Config) { c.Entities[1].Table = "" }, "entities[1].table"},
		{"table with three parts", func(c *topology.Config) { c.Entities[1].Table = "a.b.c" }, "entities[1].table"},
		{"table not an identifier", func(c *topology.Config) { c.Entities[1].Table = "public.bad-name" }, "entities[1].table"},
		{"table empty schema", func(c *topology.Config) { c.Entities[1].Table = ".campaigns" }, "entities[1].table"},
		{"table duplicate", func(c *topology.Config) { c.Entities[1].Table = "public.accounts" }, "entities[1].table"},
		{"table duplicate without schema", func(c *topology.Config) { c.Entities[1].Table = "accounts" }, "entities[1].table"},
		{"id column", func(c *topology.Config) { c.Entities[1].IDColumn = "bad col" }, "entities[1].id_column"},
		{"id column and key columns", func(c *topology.Config) {
			c.Entities[1].IDColumn, c.Entities[1].KeyColumnNames = "id", []string{"tenant", "id"}
		}, "entities[1].key_columns"},
		{"key column not an identifier", func(c *topology.Config) { c.Entities[0].KeyColumnNames = []string{"tenant", "bad-col"} }, "entities[0].key_columns[1]"},
		{"key column empty", func(c *topology.Config) { c.Entities[0].KeyColumnNames = []string{""} }, "entities[0].key_columns[0]"},
		{"key column duplicate", func(c *topology.Config) { c.Entities[0].KeyColumnNames = []string{"a", "b", "a"} }, "entities[0].key_columns[2]"},
		{"partitions negative", func(c *topology.Config) { c.Entities[1].Partitions = -1 }, "entities[1].partitions"},
		{"partitions too many", func(c *topology.Config) { c.Entities[0].Partitions = 10001 }, "entities[0].partitions"},
		{"serve listen without port", func(c *topology.Config) { c.Serve.Listen = "localhost" }, "serve.listen"},
		{"serve token with a newline", func(c *topology.Config) { c.Serve.Token = "abc\n" }, "serve.token"},
		{"serve token not ASCII", func(c *topology.Config) { c.Serve.Token = "pässword" }, "serve.token"},
		{"serve tokens empty", func(c *topology.Config) { c.Serve.Tokens = []string{"ok", ""} }, "serve.tokens[1]"},
		{"serve tokens with a space", func(c *topology.Config) { c.Serve.Tokens = []string{"o k"} }, "serve.tokens[0]"},
		{"serve tls cert without key", func(c *topology.Config) { c.Serve.TLS.CertFile = "cert.pem" }, "serve.tls.key_file"},
		{"serve tls key without cert", func(c *topology.Config) { c.Serve.TLS.KeyFile = "key.pem" }, "serve.tls.cert_file"},
		{"serve negative read timeout", func(c *topology.Config) { c.Serve.ReadTimeout = -time.Second }, "serve.read_timeout"},
		{"serve write timeout under 1ms", func(c *topology.Config) { c.Serve.WriteTimeout = time.Microsecond }, "serve.write_timeout"},
		{"serve negative idle timeout", func(c *topology.Config) { c.Serve.IdleTimeout = -1 }, "serve.idle_timeout"},
		{"serve negative max wait", func(c *topology.Config) { c.Serve.MaxWait = -time.Second }, "serve.max_wait"},
		{"serve max response bytes", func(c *topology.Config) { c.Serve.MaxResponseBytes = 1023 }, "serve.max_response_bytes"},
		{"serve negative max in flight", func(c *topology.Config) { c.Serve.MaxInFlight = -1 }, "serve.max_in_flight"},
		{"serve max in flight too many", func(c *topology.Config) { c.Serve.MaxInFlight = 100001 }, "serve.max_in_flight"},
		{"serve negative max waiting", func(c *topology.Config) { c.Serve.MaxWaiting = -1 }, "serve.max_waiting"},
		{"serve history scans beyond max in flight", func(c *topology.Config) { c.Serve.MaxInFlight, c.Serve.HistoryScans = 4, 5 }, "serve.history_scans"},
		{"serve history scans beyond the default max in flight", func(c *topology.Config) { c.Serve.HistoryScans = 33 }, "serve.history_scans"},
		{"serve negative history scans", func(c *topology.Config) { c.Serve.HistoryScans = -1 }, "serve.history_scans"},
		{"serve negative subscriptions", func(c *topology.Config) { c.Serve.MaxSubscriptions = -1 }, "serve.max_subscriptions"},
		{"serve history index checkpoints 0 offsets apart", func(c *topology.Config) { c.Serve.HistoryIndex.CheckpointEvery = -1 }, "serve.history_index.checkpoint_every"},
		{"serve history index checkpoints too far apart", func(c *topology.Config) { c.Serve.HistoryIndex.CheckpointEvery = 2_000_000_000 }, "serve.history_index.checkpoint_every"},
		{"monitor stale_after", func(c *topology.Config) { c.Monitor.StaleAfter = time.Millisecond }, "monitor.stale_after"},
		{"monitor remember", func(c *topology.Config) { c.Monitor.StaleAfter = time.Hour; c.Monitor.Remember = time.Minute }, "monitor.remember"},
		{"monitor remember_events too few", func(c *topology.Config) { c.Monitor.RememberEvents = 999 }, "monitor.remember_events"},
		{"monitor remember_events negative", func(c *topology.Config) { c.Monitor.RememberEvents = -1 }, "monitor.remember_events"},
		{"monitor remember_events too many", func(c *topology.Config) { c.Monitor.RememberEvents = 100_000_001 }, "monitor.remember_events"},
		{"monitor audit rate", func(c *topology.Config) { c.Monitor.AuditRate = -1 }, "monitor.audit_rate"},
		{"serve undeclared type", func(c *topology.Config) { c.Serve.Types = []string{"account", "user"} }, "serve.types[1]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			unsetEnv(t)
			c := validConfig()
			tt.mutate(&c)
			cfg, err := parseConfig(t, c)
			if err == nil {
				t.Fatalf("Parse succeeded with %+v, want an error for %s", cfg, tt.field)
			}
			var fe *topology.FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("error %q (%T) is not a *FieldError", err, err)
			}
			if fe.Field != tt.field {
				t.Errorf("Field = %q, want %q (error %q)", fe.Field, tt.field, err)
			}
			if want := fe.Field + ": " + fe.Reason; err.Error() != want {
				t.Errorf("Error() = %q, want %q", err.Error(), want)
			}
		})
	}
}

// TestParseBoundaries checks that the limits TestParseInvalid steps over are
// themselves accepted.
func TestParseBoundaries(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(c *topology.Config)
	}{
		{"replication factor 1", func(c *topology.Config) { c.Kafka.ReplicationFactor = 1 }},
		{"max record bytes 1024", func(c *topology.Config) { c.Kafka.MaxRecordBytes = 1024 }},
		{"slot 63 chars", func(c *topology.Config) { c.Postgres.Slot = strings.Repeat("s", 63) }},
		{"publication with $", func(c *topology.Config) { c.Postgres.Publication = "Pub_$1" }},
		{"standby timeout 1s", func(c *topology.Config) { c.Postgres.StandbyTimeout = time.Second }},
		{"prefix 150 chars", func(c *topology.Config) { c.Topics.Prefix = strings.Repeat("p", 150) }},
		{"prefix punctuation", func(c *topology.Config) { c.Topics.Prefix = "a.B_c-1" }},
		{"retentions 1h", func(c *topology.Config) { c.Topics.HistoryRetention, c.Topics.EventsRetention = time.Hour, time.Hour }},
		{"type 63 chars", func(c *topology.Config) { c.Entities[1].Type = "t" + strings.Repeat("_", 62) }},
		{"partitions 1 and 10000", func(c *topology.Config) { c.Entities[0].Partitions, c.Entities[1].Partitions = 1, 10000 }},
		{"same table name in two schemas", func(c *topology.Config) { c.Entities[1].Table = "other.accounts" }},
		{"key columns", func(c *topology.Config) { c.Entities[1].KeyColumnNames = []string{"tenant_id", "id"} }},
		{"remember_events 1000", func(c *topology.Config) { c.Monitor.RememberEvents = 1000 }},
		{"remember_events 100000000", func(c *topology.Config) { c.Monitor.RememberEvents = 100_000_000 }},
		{"serve max response bytes 1024", func(c *topology.Config) { c.Serve.MaxResponseBytes = 1024 }},
		{"serve history scans = max in flight", func(c *topology.Config) { c.Serve.MaxInFlight, c.Serve.HistoryScans = 1, 1 }},
		{"serve timeouts 1ms", func(c *topology.Config) {
			c.Serve.ReadTimeout, c.Serve.WriteTimeout, c.Serve.IdleTimeout, c.Serve.MaxWait = time.Millisecond, time.Millisecond, time.Millisecond, time.Millisecond
		}},
		{"serve max in flight and waiting at their maximum", func(c *topology.Config) { c.Serve.MaxInFlight, c.Serve.MaxWaiting = 100000, 1000000 }},
		{"serve token of every visible ASCII character", func(c *topology.Config) {
			var b []byte
			for ch := byte('!'); ch <= '~'; ch++ {
				b = append(b, ch)
			}
			c.Serve.Token = string(b)
		}},
		{"serve tls with both files", func(c *topology.Config) { c.Serve.TLS = topology.ServeTLSConfig{CertFile: "c.pem", KeyFile: "k.pem"} }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			unsetEnv(t)
			c := validConfig()
			tt.mutate(&c)
			if _, err := parseConfig(t, c); err != nil {
				t.Errorf("Parse: %v", err)
			}
		})
	}
}

func TestParseTokens(t *testing.T) {
	tests := []struct {
		name, file string
		want       []string
		err        string // part of the error; "" when none
	}{
		{"one per line", "a1\nb2\n", []string{"a1", "b2"}, ""},
		{"comments, blank lines and white space around", "# rotated 2026-01\n\n  old-token  \n\t# next one:\r\nnew-token\r\n   \n", []string{"old-token", "new-token"}, ""},
		{"no final newline", "x", []string{"x"}, ""},
		{"a # inside a token is part of it", "ab#c\n", []string{"ab#c"}, ""},
		{"only comments", "# none yet\n\n", nil, ""},
		{"space inside a token", "ok\nnot ok\n", nil, "line 2"},
		{"control character", "ok\n\n\x01bad\n", nil, "line 3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := topology.ParseTokens(strings.NewReader(tt.file))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("ParseTokens = %q, %v; want an error containing %q", got, err, tt.err)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tt.want) {
				t.Errorf("ParseTokens = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

func TestLoadTokens(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := dir + "/" + name
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tokens := write("tokens", "# current\nfile1\nshared\n")
	empty := write("empty", "# rotated out; add the next token here\n")
	bad := write("bad", "fine\nnot fine\n")
	tests := []struct {
		name  string
		serve topology.ServeConfig
		want  []string
		err   string // part of the error, which names serve.token_file
	}{
		{"none", topology.ServeConfig{}, nil, ""},
		{"token alone", topology.ServeConfig{Token: "t"}, []string{"t"}, ""},
		{"token, tokens and file, each once", topology.ServeConfig{Token: "shared", Tokens: []string{"a", "shared"}, TokenFile: tokens}, []string{"shared", "a", "file1"}, ""},
		{"missing file", topology.ServeConfig{Token: "t", TokenFile: dir + "/absent"}, nil, "absent"},
		{"file without a token", topology.ServeConfig{Token: "t", TokenFile: empty}, nil, "holds no token"},
		{"bad line", topology.ServeConfig{TokenFile: bad}, nil, "line 2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.serve.LoadTokens()
			if tt.err != "" {
				var fe *topology.FieldError
				if !errors.As(err, &fe) || fe.Field != "serve.token_file" || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("LoadTokens = %q, %v; want a serve.token_file error containing %q", got, err, tt.err)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tt.want) {
				t.Errorf("LoadTokens = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

func TestLoad(t *testing.T) {
	tests := []struct {
		path    string
		brokers []string
		storage string
	}{
		{"../configs/local.yaml", []string{"127.0.0.1:59092"}, ".stack/changes-data"},
		{"../deploy/compose/changes.yaml", []string{"kafka:9092"}, "/var/lib/changes"},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			unsetEnv(t)
			cfg, err := topology.Load(tt.path)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if !reflect.DeepEqual(cfg.Kafka.Brokers, tt.brokers) {
				t.Errorf("brokers = %q, want %q", cfg.Kafka.Brokers, tt.brokers)
			}
			if cfg.Storage != tt.storage {
				t.Errorf("storage = %q, want %q", cfg.Storage, tt.storage)
			}
			if got := topology.New(cfg).EntityTypes(); !reflect.DeepEqual(got, []string{"account", "campaign", "creative", "placement"}) {
				t.Errorf("entity types = %q, want [account campaign creative placement]", got)
			}
			if p, _ := cfg.Entity("placement"); !reflect.DeepEqual(p.KeyColumns(), []string{"campaign_id", "site"}) {
				t.Errorf("placement key columns = %q, want [campaign_id site]", p.KeyColumns())
			}
		})
	}
}

func TestLoadErrors(t *testing.T) {
	unsetEnv(t)
	t.Run("missing file", func(t *testing.T) {
		_, err := topology.Load("testdata/does-not-exist.yaml")
		if !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("error %v, want one wrapping fs.ErrNotExist", err)
		}
	})
	t.Run("invalid file names the path and the field", func(t *testing.T) {
		path := t.TempDir() + "/bad.yaml"
		if err := os.WriteFile(path, []byte(strings.Replace(minimalYAML, "accounts", "bad-table", 1)), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := topology.Load(path)
		var fe *topology.FieldError
		if !errors.As(err, &fe) || fe.Field != "entities[0].table" {
			t.Fatalf("error %v, want a *FieldError for entities[0].table", err)
		}
		if !strings.Contains(err.Error(), path) {
			t.Errorf("error %q does not name the file %s", err, path)
		}
	})
}

func TestConfigEntity(t *testing.T) {
	unsetEnv(t)
	cfg, err := topology.Parse([]byte(fullYAML))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		typ    string
		ok     bool
		wantTb string
	}{
		{"account", true, "billing.accounts"},
		{"campaign", true, "public.campaigns"},
		{"nothing", false, ""},
		{"", false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.typ, func(t *testing.T) {
			e, ok := cfg.Entity(tt.typ)
			if ok != tt.ok || e.Table != tt.wantTb {
				t.Errorf("Entity(%q) = %+v, %v; want table %q, %v", tt.typ, e, ok, tt.wantTb, tt.ok)
			}
		})
	}
}

func TestEntityKeyColumns(t *testing.T) {
	unsetEnv(t)
	cfg, err := topology.Parse([]byte(`
kafka: {brokers: ["k:9092"]}
postgres: {url: "postgres://db"}
entities:
  - {type: a, table: a}
  - {type: b, table: b, id_column: code}
  - {type: c, table: c, key_columns: [tenant_id, id]}
  - {type: d, table: d, key_columns: [uid]}
`))
	if err != nil {
		t.Fatal(err)
	}
	want := [][]string{{"id"}, {"code"}, {"tenant_id", "id"}, {"uid"}}
	for i, e := range cfg.Entities {
		if got := e.KeyColumns(); !slices.Equal(got, want[i]) {
			t.Errorf("entities[%d].KeyColumns() = %q, want %q", i, got, want[i])
		}
	}
	if got := cfg.Entities[2].IDColumn; got != "" {
		t.Errorf("entities[2].id_column = %q: no default beside key_columns", got)
	}
}
