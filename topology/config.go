package topology

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/IBM/sarama"
	"gopkg.in/yaml.v3"
)

// Config is the whole configuration of a changes deployment: where Kafka and
// PostgreSQL are, how topics are named and shaped, and which tables are
// captured as which entity types. It is read from one YAML file (see
// configs/local.yaml for a commented example) and then from environment
// variables, which win over the file. Validate reports the first field that is
// wrong by its YAML path.
type Config struct {
	Kafka    KafkaConfig    `yaml:"kafka"`
	Postgres PostgresConfig `yaml:"postgres"`
	Topics   TopicsConfig   `yaml:"topics"`
	// Storage is where processors and views keep their local goleveldb copies
	// of the tables. Default: ./data. Environment: CHANGES_STORAGE_DIR.
	Storage string `yaml:"storage"`
	// Metrics is the listen address of the Prometheus /metrics endpoint;
	// empty disables it. Default: 127.0.0.1:9464.
	// Environment: CHANGES_METRICS_LISTEN.
	Metrics string `yaml:"metrics"`
	// Serve configures the query server, `changes serve`.
	Serve ServeConfig `yaml:"serve"`
	// Monitor configures the consistency and latency monitor, `changes monitor`.
	Monitor MonitorConfig `yaml:"monitor"`
	// Entities declares the captured tables, one entity type each. At least
	// one is required.
	Entities []EntityConfig `yaml:"entities"`
}

// MonitorConfig configures `changes monitor`, which checks the history and
// the snapshot tables continuously and exports changes_monitor_* metrics.
type MonitorConfig struct {
	// Listen is the address of the monitor's /metrics. Default:
	// 127.0.0.1:9465. Environment: CHANGES_MONITOR_LISTEN.
	Listen string `yaml:"listen"`
	// StaleAfter is how long a snapshot table may take to reach the
	// position of an entity's latest history event before the entity counts
	// as stale. Default: 30s.
	StaleAfter time.Duration `yaml:"stale_after"`
	// Remember is how long the monitor keeps a history event (200 to 370
	// bytes: less when entities change repeatedly) to check the table
	// records that apply it; an event the table has not reached by then
	// counts as never applied. Default: 15m.
	Remember time.Duration `yaml:"remember"`
	// RememberEvents bounds how many history events the monitor keeps,
	// whatever their age: at the catch-up rate, monitor.remember alone
	// would hold tens of millions. Past it the oldest event is forgotten
	// early (changes_monitor_forgotten_events_total): a table record that
	// applies it is no longer checked, and the table not reaching it is no
	// longer reported. Between 1000 and 100000000. Default: 1000000
	// (200 to 370 MB).
	RememberEvents int `yaml:"remember_events"`
	// AuditRate is how many entities per second the monitor compares with
	// PostgreSQL; 0 disables the database audit. Default: 1.
	AuditRate float64 `yaml:"audit_rate"`
}

// ServeConfig configures the query server (`changes serve`): views of the
// snapshot tables and point-in-time reads of the history over HTTP.
type ServeConfig struct {
	// Listen is the server's address. Default: 127.0.0.1:8080, loopback only;
	// set ":8080" (or an interface's address) to serve other hosts.
	// Environment: CHANGES_SERVE_LISTEN.
	Listen string `yaml:"listen"`
	// Token, when set, is a bearer token /v1 requests may carry
	// ("Authorization: Bearer <token>"); /healthz, /readyz and /metrics stay
	// open. With Token, Tokens and TokenFile all empty, /v1 is open too.
	// Kept for older configs: Tokens and TokenFile hold several.
	Token string `yaml:"token"`
	// Tokens are more accepted bearer tokens: a request carrying any of
	// Token, Tokens or TokenFile's tokens passes. To rotate without downtime,
	// add the new token, move the clients, then remove the old one.
	// Environment: CHANGES_SERVE_TOKEN, comma-separated, replaces Token and
	// Tokens (prefer it, or TokenFile, to writing secrets in this file).
	Tokens []string `yaml:"tokens"`
	// TokenFile names a file of accepted bearer tokens, one per line; blank
	// lines and lines starting with # are ignored, and a file that holds no
	// token is an error (it would open /v1). Read when `changes serve`
	// starts, in addition to Token and Tokens. Environment:
	// CHANGES_SERVE_TOKEN_FILE.
	TokenFile string `yaml:"token_file"`
	// TLS, when its files are set, serves HTTPS only, so that tokens do not
	// cross the network in clear.
	TLS ServeTLSConfig `yaml:"tls"`
	// Types are the entity types served. Default: every declared type.
	Types []string `yaml:"types"`
	// ReadTimeout bounds reading a request, headers and body (the headers
	// alone get at most 5s). Default: 10s.
	ReadTimeout time.Duration `yaml:"read_timeout"`
	// WriteTimeout bounds sending one answer, from its first byte: a client
	// that stops reading loses its connection then, and with it the request
	// slot it held. Answers are at most MaxResponseBytes (plus one entity),
	// so the default asks a client for about 140 KB/s. Default: 30s.
	WriteTimeout time.Duration `yaml:"write_timeout"`
	// IdleTimeout is how long a keep-alive connection may wait for its next
	// request before the server closes it. Default: 60s.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// MaxResponseBytes bounds the JSON of a page (the entity listing, an
	// entity's history): a page ends before the entity or change that would
	// cross it, and next_after continues from there. A page holds at least
	// one, however large. Default: 4194304 (4 MiB).
	MaxResponseBytes int `yaml:"max_response_bytes"`
	// MaxInFlight is how many /v1 requests are served at once. Default: 32.
	MaxInFlight int `yaml:"max_in_flight"`
	// MaxWaiting is how many more /v1 requests may wait for one of those;
	// beyond, a request gets 503 with Retry-After at once. Default: 64.
	MaxWaiting int `yaml:"max_waiting"`
	// MaxWait is how long a request waits for a slot (of MaxInFlight, then
	// of HistoryScans) before it gets 503 with Retry-After. Default: 10s.
	MaxWait time.Duration `yaml:"max_wait"`
	// HistoryScans is how many of the requests in flight may read the
	// history topic at once; each reads it from its start. At most
	// MaxInFlight. Default: 2.
	HistoryScans int `yaml:"history_scans"`
	// MaxSubscriptions is how many change streams (/v1/changes) are served
	// at once; they take no /v1 request slot. Beyond, 503 with Retry-After.
	// Default: 64.
	MaxSubscriptions int `yaml:"max_subscriptions"`
	// HistoryIndex is the index of the history that answers
	// /v1/history?at= in milliseconds instead of a scan of the history.
	HistoryIndex ServeHistoryIndexConfig `yaml:"history_index"`
}

// ServeHistoryIndexConfig configures the history index of `changes serve`
// (views/history.Index): a goleveldb database in
// <storage>/serve/<history topic>.index, built by tailing the history, that
// answers /v1/history?at= once it has read up to the asked moment (the
// history is scanned before that).
type ServeHistoryIndexConfig struct {
	// Disabled turns the index off: every /v1/history?at= scans the history
	// from its start, and nothing is stored. Default: false (the index is
	// kept). Environment: CHANGES_SERVE_HISTORY_INDEX_DISABLED (true or
	// false).
	Disabled bool `yaml:"disabled"`
	// CheckpointEvery is how many history offsets apart the index stores
	// the state of every entity type: a whole type at a moment is read from
	// the checkpoint before it plus at most this many history records. Fewer
	// offsets make the index larger. Changing it rebuilds the index. Between
	// 1 and 1000000000. Default: 250000.
	CheckpointEvery int64 `yaml:"checkpoint_every"`
}

// Defaults of the query server's limits (ServeConfig); views/server
// applies them too, to a Config that leaves them zero.
const (
	DefaultServeReadTimeout      = 10 * time.Second
	DefaultServeWriteTimeout     = 30 * time.Second
	DefaultServeIdleTimeout      = 60 * time.Second
	DefaultServeMaxResponseBytes = 4 << 20
	DefaultServeMaxInFlight      = 32
	DefaultServeMaxWaiting       = 64
	DefaultServeMaxWait          = 10 * time.Second
	DefaultServeHistoryScans     = 2
	DefaultServeMaxSubscriptions = 64
	// DefaultServeHistoryIndexCheckpointEvery is
	// serve.history_index.checkpoint_every's default (the same as
	// views/history.DefaultCheckpointEvery).
	DefaultServeHistoryIndexCheckpointEvery = 250_000
)

// ServeTLSConfig is the query server's certificate. Both files are PEM;
// the certificate file may hold the chain after the leaf. They are read
// once, when `changes serve` starts.
type ServeTLSConfig struct {
	// CertFile is the certificate (chain). Environment:
	// CHANGES_SERVE_TLS_CERT_FILE.
	CertFile string `yaml:"cert_file"`
	// KeyFile is its private key. Environment: CHANGES_SERVE_TLS_KEY_FILE.
	KeyFile string `yaml:"key_file"`
}

// Enabled reports whether the server serves HTTPS.
func (t ServeTLSConfig) Enabled() bool { return t.CertFile != "" }

// LoadTokens returns every accepted bearer token: Token, Tokens and the
// tokens of TokenFile, each once. An unreadable token file, one that holds
// no token, or a token with white space or control characters is a
// *FieldError naming serve.token_file.
func (s ServeConfig) LoadTokens() ([]string, error) {
	all := append([]string{s.Token}, s.Tokens...)
	if s.TokenFile != "" {
		f, err := os.Open(s.TokenFile)
		if err != nil {
			return nil, fieldErr("serve.token_file", "%v", err)
		}
		defer f.Close()
		fromFile, err := ParseTokens(f)
		if err != nil {
			return nil, fieldErr("serve.token_file", "%s: %v", s.TokenFile, err)
		}
		if len(fromFile) == 0 {
			return nil, fieldErr("serve.token_file", "%s holds no token (a token per line; # starts a comment line)", s.TokenFile)
		}
		all = append(all, fromFile...)
	}
	var out []string
	for _, t := range all {
		if t != "" && !slices.Contains(out, t) {
			out = append(out, t)
		}
	}
	return out, nil
}

// ParseTokens reads bearer tokens, one per line. Blank lines and lines
// whose first non-blank character is # are ignored; white space around a
// token is removed. A token with white space or control characters inside
// is an error naming its line.
func ParseTokens(r io.Reader) ([]string, error) {
	var out []string
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if reason := badToken(line); reason != "" {
			return nil, fmt.Errorf("line %d: %s", n, reason)
		}
		out = append(out, line)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return out, nil
}

// badToken says what is wrong with a bearer token, or "" if nothing is: a
// token travels in an HTTP header, so it is visible ASCII without spaces.
func badToken(t string) string {
	if t == "" {
		return "is empty"
	}
	if strings.TrimSpace(t) != t {
		return "has leading or trailing white space"
	}
	for _, c := range []byte(t) {
		if c <= ' ' || c > '~' {
			return fmt.Sprintf("has a character that is not visible ASCII (%q)", c)
		}
	}
	return ""
}

// KafkaConfig says how to reach Kafka and how to write to it.
type KafkaConfig struct {
	// Brokers are the bootstrap brokers, host:port. Required.
	// Environment: CHANGES_KAFKA_BROKERS (comma-separated).
	Brokers []string `yaml:"brokers"`
	// Version is the highest Kafka protocol version the clients use; sarama
	// negotiates lower request versions per broker. Default: 4.0.0.
	Version string `yaml:"version"`
	// ClientID is sent with every request, for broker logs and quotas.
	// Default: changes.
	ClientID string `yaml:"client_id"`
	// ReplicationFactor of the topics this platform creates. Default: -1, the
	// broker's default.replication.factor. The local stack uses 1.
	// Environment: CHANGES_KAFKA_REPLICATION_FACTOR.
	ReplicationFactor int `yaml:"replication_factor"`
	// MinInsyncReplicas is the topics' min.insync.replicas: with acks=all, a
	// write succeeds only when this many replicas have it. Default: 0, the
	// broker's setting.
	MinInsyncReplicas int `yaml:"min_insync_replicas"`
	// Linger is how long a producer waits to fill a batch before sending it
	// (Java: linger.ms). Default: 0, send as soon as the previous request is
	// answered; batches still form while a request is in flight.
	Linger time.Duration `yaml:"linger"`
	// MaxRecordBytes is the largest record a producer sends (Java:
	// max.request.size). Default: 1000000, the broker's default limit.
	MaxRecordBytes int `yaml:"max_record_bytes"`
	// TLS encrypts every connection to the brokers and verifies them.
	TLS KafkaTLSConfig `yaml:"tls"`
	// SASL authenticates every client of the platform to the brokers.
	SASL KafkaSASLConfig `yaml:"sasl"`
}

// PostgresConfig says which database is captured and through which
// replication slot and publication.
type PostgresConfig struct {
	// URL is a libpq connection string or URL of the captured database. The
	// user needs the REPLICATION attribute. Required.
	// Environment: CHANGES_POSTGRES_URL.
	URL string `yaml:"url"`
	// Slot is the logical replication slot (pgoutput). Default: changes.
	// Environment: CHANGES_POSTGRES_SLOT.
	Slot string `yaml:"slot"`
	// Publication lists the captured tables. Default: changes.
	// Environment: CHANGES_POSTGRES_PUBLICATION.
	Publication string `yaml:"publication"`
	// StandbyTimeout is the longest time between two status updates to
	// PostgreSQL; it must stay below the server's wal_sender_timeout.
	// Default: 10s.
	StandbyTimeout time.Duration `yaml:"standby_timeout"`
	// SnapshotChunkRows is how many rows a chunk of an incremental snapshot
	// (changes snapshot, a type added later, a resync) copies: one index
	// range scan and one Kafka transaction per chunk. Larger chunks copy
	// faster, but the copied rows share the history's one partition and
	// the processors with the live changes: copied faster than the
	// processors apply them, they delay every live change (see the README).
	// Between 1 and 100000. Default: 1024.
	SnapshotChunkRows int `yaml:"snapshot_chunk_rows"`
	// WatermarkInterval is how often, at most, the capture appends a
	// progress watermark to the history (codecs.OpWatermark: every
	// transaction that committed before its LSN is before it): after the
	// transactions it has written, or at a keepalive while the captured
	// tables are quiet. Each watermark becomes one record per partition of
	// every type's events topic and snapshot table, so a view knows what it
	// has applied (views.View.AppliedThrough) and a read-your-writes read
	// (views.AtLeast) waits about half of it longer. The capture takes at
	// least 1ms per partition of all types (so watermarks add at most
	// 1,000 records/s): 100ms up to 100 partitions, 1s for 1,000. Between
	// 10ms and 1m. Default: 100ms.
	WatermarkInterval time.Duration `yaml:"watermark_interval"`
}

// TopicsConfig names and shapes the topics.
type TopicsConfig struct {
	// Prefix starts every topic and group name, so several deployments can
	// share one cluster. Default: changes. Environment: CHANGES_TOPIC_PREFIX.
	Prefix string `yaml:"prefix"`
	// HistoryRetention is how long the history topic keeps changes.
	// Default: 720h (30 days).
	HistoryRetention time.Duration `yaml:"history_retention"`
	// EventsRetention is how long the per-type event topics keep changes;
	// they are rebuilt from the history. Default: 168h (7 days).
	EventsRetention time.Duration `yaml:"events_retention"`
	// DeleteGrace is how long a deleted entity keeps its position in the
	// snapshot table before a Kafka tombstone replaces it; a change older
	// than the delete that is delivered again within it is ignored.
	// Default: 24h.
	DeleteGrace time.Duration `yaml:"delete_grace"`
}

// EntityConfig declares one captured table as one entity type.
type EntityConfig struct {
	// Type names the entity type in events, topics and groups: lowercase
	// letters, digits and underscores, starting with a letter. Required.
	Type string `yaml:"type"`
	// Table is the captured table, schema-qualified or in public. Required.
	Table string `yaml:"table"`
	// IDColumn is the one column holding the entity's key: smallint,
	// integer or bigint (an integer key, in decimal), uuid, or text, varchar
	// or char (a text key). It must be NOT NULL and be the table's primary
	// key or have a unique, non-partial index of its own. Not together
	// with key_columns. Default: id (when key_columns is not given).
	IDColumn string `yaml:"id_column"`
	// KeyColumnNames (key_columns) are the columns of the entity's key when it is not the one
	// id_column: several columns (a composite key, e.g. [tenant_id, id]),
	// or one column of any key type. Together they must be exactly the
	// columns of the primary key or of a unique, non-partial index, each
	// NOT NULL and of a type id_column accepts. Their order here is the
	// order of the parts of a composite key. Not together with id_column.
	KeyColumnNames []string `yaml:"key_columns,omitempty"`
	// Partitions of the type's event topic and snapshot table. Default: 8.
	Partitions int `yaml:"partitions"`
}

// KeyColumns returns the columns of the entity's key, in the order of a
// composite key's parts: key_columns when given, else id_column alone.
func (e EntityConfig) KeyColumns() []string {
	if len(e.KeyColumnNames) > 0 {
		return e.KeyColumnNames
	}
	return []string{e.IDColumn}
}

// Defaults of the fields that have one.
const (
	DefaultKafkaVersion      = "4.0.0"
	DefaultClientID          = "changes"
	DefaultMaxRecordBytes    = 1000000
	DefaultSlot              = "changes"
	DefaultPublication       = "changes"
	DefaultStandbyTimeout    = 10 * time.Second
	DefaultSnapshotChunkRows = 1024
	DefaultWatermarkInterval = 100 * time.Millisecond
	DefaultPrefix            = "changes"
	DefaultHistoryRetention  = 30 * 24 * time.Hour
	DefaultEventsRetention   = 7 * 24 * time.Hour
	DefaultDeleteGrace       = 24 * time.Hour
	DefaultStorage           = "data"
	DefaultMetrics           = "127.0.0.1:9464"
	DefaultServeListen       = "127.0.0.1:8080"
	DefaultMonitorListen     = "127.0.0.1:9465"
	DefaultStaleAfter        = 30 * time.Second
	DefaultRemember          = 15 * time.Minute
	DefaultRememberEvents    = 1_000_000
	DefaultAuditRate         = 1.0
	DefaultIDColumn          = "id"
	DefaultPartitions        = 8
	defaultReplicationFactor = -1
)

// Load reads the YAML file at path, applies the environment overrides and the
// defaults, and validates the result. Unknown fields are errors, so a typo does
// not silently fall back to a default.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	cfg, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return cfg, nil
}

// Parse is Load for a config already in memory.
func Parse(data []byte) (*Config, error) {
	// Defaults whose zero value is meaningful are set before decoding, so only
	// an absent key keeps them: an explicit "metrics: \"\"" disables the endpoint.
	cfg := &Config{Kafka: KafkaConfig{ReplicationFactor: defaultReplicationFactor}, Metrics: DefaultMetrics, Monitor: MonitorConfig{AuditRate: DefaultAuditRate}}
	// An empty file is fine: every required field may come from the environment.
	var doc yaml.Node
	if err := yaml.NewDecoder(bytes.NewReader(data)).Decode(&doc); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("parse: %w", err)
	}
	// yaml names a wrong field by its line and Go type; checkYAML by its
	// YAML path, before decoding.
	if err := checkYAML(&doc, reflect.TypeFor[Config](), ""); err != nil {
		return nil, err
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(cfg); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("parse: %w", err)
	}
	if err := cfg.Kafka.refuseFileSecrets(); err != nil {
		return nil, err
	}
	if err := cfg.applyEnv(os.LookupEnv); err != nil {
		return nil, err
	}
	cfg.applyDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return cfg, nil
}

func (c *Config) applyEnv(lookup func(string) (string, bool)) error {
	str := func(name string, dst *string) {
		if v, ok := lookup(name); ok && v != "" {
			*dst = v
		}
	}
	if v, ok := lookup("CHANGES_KAFKA_BROKERS"); ok && v != "" {
		c.Kafka.Brokers = splitList(v)
	}
	if v, ok := lookup("CHANGES_KAFKA_REPLICATION_FACTOR"); ok && v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			return fmt.Errorf("CHANGES_KAFKA_REPLICATION_FACTOR: %q is not an integer", v)
		}
		c.Kafka.ReplicationFactor = n
	}
	if err := c.Kafka.applySecurityEnv(lookup); err != nil {
		return err
	}
	str("CHANGES_POSTGRES_URL", &c.Postgres.URL)
	str("CHANGES_POSTGRES_SLOT", &c.Postgres.Slot)
	str("CHANGES_POSTGRES_PUBLICATION", &c.Postgres.Publication)
	str("CHANGES_TOPIC_PREFIX", &c.Topics.Prefix)
	str("CHANGES_STORAGE_DIR", &c.Storage)
	str("CHANGES_SERVE_LISTEN", &c.Serve.Listen)
	if v, ok := lookup("CHANGES_SERVE_TOKEN"); ok && v != "" {
		c.Serve.Token, c.Serve.Tokens = "", splitList(v)
		if len(c.Serve.Tokens) == 0 {
			return fmt.Errorf("CHANGES_SERVE_TOKEN: %q holds no token", v)
		}
	}
	str("CHANGES_SERVE_TOKEN_FILE", &c.Serve.TokenFile)
	str("CHANGES_SERVE_TLS_CERT_FILE", &c.Serve.TLS.CertFile)
	str("CHANGES_SERVE_TLS_KEY_FILE", &c.Serve.TLS.KeyFile)
	if v, ok := lookup("CHANGES_SERVE_HISTORY_INDEX_DISABLED"); ok && v != "" {
		off, err := strconv.ParseBool(v)
		if err != nil {
			return fmt.Errorf("CHANGES_SERVE_HISTORY_INDEX_DISABLED: %q is not true or false", v)
		}
		c.Serve.HistoryIndex.Disabled = off
	}
	str("CHANGES_MONITOR_LISTEN", &c.Monitor.Listen)
	if v, ok := lookup("CHANGES_METRICS_LISTEN"); ok {
		c.Metrics = v // empty disables
	}
	return nil
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func (c *Config) applyDefaults() {
	setDefault(&c.Kafka.Version, DefaultKafkaVersion)
	setDefault(&c.Kafka.ClientID, DefaultClientID)
	setDefault(&c.Kafka.MaxRecordBytes, DefaultMaxRecordBytes)
	setDefault(&c.Postgres.Slot, DefaultSlot)
	setDefault(&c.Postgres.Publication, DefaultPublication)
	setDefault(&c.Postgres.StandbyTimeout, DefaultStandbyTimeout)
	setDefault(&c.Postgres.SnapshotChunkRows, DefaultSnapshotChunkRows)
	setDefault(&c.Postgres.WatermarkInterval, DefaultWatermarkInterval)
	setDefault(&c.Topics.Prefix, DefaultPrefix)
	setDefault(&c.Topics.HistoryRetention, DefaultHistoryRetention)
	setDefault(&c.Topics.EventsRetention, DefaultEventsRetention)
	setDefault(&c.Topics.DeleteGrace, DefaultDeleteGrace)
	setDefault(&c.Storage, DefaultStorage)
	c.Serve.applyDefaults()
	setDefault(&c.Monitor.Listen, DefaultMonitorListen)
	setDefault(&c.Monitor.StaleAfter, DefaultStaleAfter)
	setDefault(&c.Monitor.Remember, DefaultRemember)
	setDefault(&c.Monitor.RememberEvents, DefaultRememberEvents)
	for i := range c.Entities {
		e := &c.Entities[i]
		if len(e.KeyColumnNames) == 0 {
			setDefault(&e.IDColumn, DefaultIDColumn)
		}
		if e.Partitions == 0 {
			e.Partitions = DefaultPartitions
		}
		if e.Table != "" && !strings.Contains(e.Table, ".") {
			e.Table = "public." + e.Table
		}
	}
}

func (s *ServeConfig) applyDefaults() {
	setDefault(&s.Listen, DefaultServeListen)
	setDefault(&s.ReadTimeout, DefaultServeReadTimeout)
	setDefault(&s.WriteTimeout, DefaultServeWriteTimeout)
	setDefault(&s.IdleTimeout, DefaultServeIdleTimeout)
	setDefault(&s.MaxWait, DefaultServeMaxWait)
	setDefault(&s.MaxResponseBytes, DefaultServeMaxResponseBytes)
	setDefault(&s.MaxInFlight, DefaultServeMaxInFlight)
	setDefault(&s.MaxWaiting, DefaultServeMaxWaiting)
	setDefault(&s.HistoryScans, DefaultServeHistoryScans)
	setDefault(&s.MaxSubscriptions, DefaultServeMaxSubscriptions)
	setDefault(&s.HistoryIndex.CheckpointEvery, DefaultServeHistoryIndexCheckpointEvery)
}

// setDefault is applied before validation; Metrics is not in it because an
// explicit empty value disables the endpoint (Parse presets DefaultMetrics).
func setDefault[T comparable](dst *T, def T) {
	var zero T
	if *dst == zero {
		*dst = def
	}
}

var (
	typeName  = regexp.MustCompile(`^[a-z][a-z0-9_]{0,62}$`)
	slotName  = regexp.MustCompile(`^[a-z0-9_]{1,63}$`)
	topicName = regexp.MustCompile(`^[a-zA-Z0-9._-]{1,200}$`)
	sqlIdent  = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_$]{0,62}$`)
)

// Validate checks every field and names the first wrong one by its YAML path,
// e.g. "entities[1].partitions: must be at least 1, got 0".
func (c *Config) Validate() error {
	if err := c.Kafka.validateAddress(); err != nil {
		return err
	}
	if c.Kafka.ReplicationFactor == 0 || c.Kafka.ReplicationFactor < -1 {
		return fieldErr("kafka.replication_factor", "must be -1 (broker default) or at least 1, got %d", c.Kafka.ReplicationFactor)
	}
	if c.Kafka.MinInsyncReplicas < 0 || (c.Kafka.ReplicationFactor > 0 && c.Kafka.MinInsyncReplicas > c.Kafka.ReplicationFactor) {
		return fieldErr("kafka.min_insync_replicas", "must be between 0 (broker default) and the replication factor %d, got %d", c.Kafka.ReplicationFactor, c.Kafka.MinInsyncReplicas)
	}
	if c.Kafka.Linger < 0 {
		return fieldErr("kafka.linger", "must not be negative, got %s", c.Kafka.Linger)
	}
	if c.Kafka.MaxRecordBytes < 1024 {
		return fieldErr("kafka.max_record_bytes", "must be at least 1024, got %d", c.Kafka.MaxRecordBytes)
	}
	if err := c.Kafka.validateSecurity(); err != nil {
		return err
	}
	if c.Postgres.URL == "" {
		return fieldErr("postgres.url", "is required (or set CHANGES_POSTGRES_URL)")
	}
	if !slotName.MatchString(c.Postgres.Slot) {
		return fieldErr("postgres.slot", "must be 1-63 lowercase letters, digits or underscores, got %q", c.Postgres.Slot)
	}
	if !sqlIdent.MatchString(c.Postgres.Publication) {
		return fieldErr("postgres.publication", "must be a plain SQL identifier, got %q", c.Postgres.Publication)
	}
	if c.Postgres.StandbyTimeout < time.Second {
		return fieldErr("postgres.standby_timeout", "must be at least 1s, got %s", c.Postgres.StandbyTimeout)
	}
	if c.Postgres.SnapshotChunkRows < 1 || c.Postgres.SnapshotChunkRows > 100_000 {
		return fieldErr("postgres.snapshot_chunk_rows", "must be between 1 and 100000, got %d", c.Postgres.SnapshotChunkRows)
	}
	if c.Postgres.WatermarkInterval < 10*time.Millisecond || c.Postgres.WatermarkInterval > time.Minute {
		return fieldErr("postgres.watermark_interval", "must be between 10ms and 1m, got %s", c.Postgres.WatermarkInterval)
	}
	if !topicName.MatchString(c.Topics.Prefix) || len(c.Topics.Prefix) > 150 {
		return fieldErr("topics.prefix", "must be up to 150 letters, digits, '.', '_' or '-', got %q", c.Topics.Prefix)
	}
	if c.Topics.HistoryRetention < time.Hour {
		return fieldErr("topics.history_retention", "must be at least 1h, got %s", c.Topics.HistoryRetention)
	}
	if c.Topics.EventsRetention < time.Hour {
		return fieldErr("topics.events_retention", "must be at least 1h, got %s", c.Topics.EventsRetention)
	}
	if c.Topics.DeleteGrace < 0 {
		return fieldErr("topics.delete_grace", "must not be negative, got %s", c.Topics.DeleteGrace)
	}
	if len(c.Entities) == 0 {
		return fieldErr("entities", "declare at least one entity type")
	}
	types := map[string]int{}
	tables := map[string]int{}
	for i, e := range c.Entities {
		at := func(f string) string { return fmt.Sprintf("entities[%d].%s", i, f) }
		if !typeName.MatchString(e.Type) {
			return fieldErr(at("type"), "must be lowercase letters, digits or underscores starting with a letter, got %q", e.Type)
		}
		if j, dup := types[e.Type]; dup {
			return fieldErr(at("type"), "%q is already declared by entities[%d]", e.Type, j)
		}
		types[e.Type] = i
		schema, table, _ := strings.Cut(e.Table, ".")
		if !sqlIdent.MatchString(schema) || !sqlIdent.MatchString(table) {
			return fieldErr(at("table"), "must be [schema.]table of plain SQL identifiers, got %q", e.Table)
		}
		if j, dup := tables[e.Table]; dup {
			return fieldErr(at("table"), "%q is already captured by entities[%d]", e.Table, j)
		}
		tables[e.Table] = i
		if len(e.KeyColumnNames) > 0 && e.IDColumn != "" {
			return fieldErr(at("key_columns"), "give either id_column (%q) or key_columns, not both", e.IDColumn)
		}
		if len(e.KeyColumnNames) == 0 && !sqlIdent.MatchString(e.IDColumn) {
			return fieldErr(at("id_column"), "must be a plain SQL identifier, got %q", e.IDColumn)
		}
		seen := map[string]int{}
		for k, col := range e.KeyColumnNames {
			if !sqlIdent.MatchString(col) {
				return fieldErr(at(fmt.Sprintf("key_columns[%d]", k)), "must be a plain SQL identifier, got %q", col)
			}
			if j, dup := seen[col]; dup {
				return fieldErr(at(fmt.Sprintf("key_columns[%d]", k)), "%q is already key_columns[%d]", col, j)
			}
			seen[col] = k
		}
		if e.Partitions < 1 || e.Partitions > 10000 {
			return fieldErr(at("partitions"), "must be between 1 and 10000, got %d", e.Partitions)
		}
	}
	if _, port, ok := strings.Cut(c.Serve.Listen, ":"); !ok || port == "" {
		return fieldErr("serve.listen", "must be host:port or :port, got %q", c.Serve.Listen)
	}
	if err := c.Serve.validate(); err != nil {
		return err
	}
	if _, port, ok := strings.Cut(c.Monitor.Listen, ":"); !ok || port == "" {
		return fieldErr("monitor.listen", "must be host:port or :port, got %q", c.Monitor.Listen)
	}
	if c.Monitor.StaleAfter < time.Second {
		return fieldErr("monitor.stale_after", "must be at least 1s, got %s", c.Monitor.StaleAfter)
	}
	if c.Monitor.Remember < c.Monitor.StaleAfter {
		return fieldErr("monitor.remember", "must be at least monitor.stale_after (%s), got %s", c.Monitor.StaleAfter, c.Monitor.Remember)
	}
	if c.Monitor.RememberEvents < 1000 || c.Monitor.RememberEvents > 100_000_000 {
		return fieldErr("monitor.remember_events", "must be between 1000 and 100000000, got %d", c.Monitor.RememberEvents)
	}
	if c.Monitor.AuditRate < 0 || c.Monitor.AuditRate > 1000 {
		return fieldErr("monitor.audit_rate", "must be between 0 (off) and 1000 per second, got %g", c.Monitor.AuditRate)
	}
	for i, typ := range c.Serve.Types {
		if _, ok := types[typ]; !ok {
			return fieldErr(fmt.Sprintf("serve.types[%d]", i), "%q is not a declared entity type", typ)
		}
	}
	return nil
}

func (s *ServeConfig) validate() error {
	if s.Token != "" {
		if reason := badToken(s.Token); reason != "" {
			return fieldErr("serve.token", "%s", reason)
		}
	}
	for i, t := range s.Tokens {
		if reason := badToken(t); reason != "" {
			return fieldErr(fmt.Sprintf("serve.tokens[%d]", i), "%s", reason)
		}
	}
	if s.TLS.CertFile != "" && s.TLS.KeyFile == "" {
		return fieldErr("serve.tls.key_file", "is required with serve.tls.cert_file")
	}
	if s.TLS.KeyFile != "" && s.TLS.CertFile == "" {
		return fieldErr("serve.tls.cert_file", "is required with serve.tls.key_file")
	}
	for _, d := range []struct {
		field string
		v     time.Duration
	}{{"serve.read_timeout", s.ReadTimeout}, {"serve.write_timeout", s.WriteTimeout}, {"serve.idle_timeout", s.IdleTimeout}, {"serve.max_wait", s.MaxWait}} {
		if d.v < time.Millisecond {
			return fieldErr(d.field, "must be at least 1ms, got %s", d.v)
		}
	}
	if s.MaxResponseBytes < 1024 {
		return fieldErr("serve.max_response_bytes", "must be at least 1024, got %d", s.MaxResponseBytes)
	}
	if s.MaxInFlight < 1 || s.MaxInFlight > 100000 {
		return fieldErr("serve.max_in_flight", "must be between 1 and 100000, got %d", s.MaxInFlight)
	}
	if s.MaxWaiting < 1 || s.MaxWaiting > 1000000 {
		return fieldErr("serve.max_waiting", "must be between 1 and 1000000, got %d", s.MaxWaiting)
	}
	if s.MaxSubscriptions < 1 || s.MaxSubscriptions > 100_000 {
		return fieldErr("serve.max_subscriptions", "must be between 1 and 100000, got %d", s.MaxSubscriptions)
	}
	if s.HistoryScans < 1 || s.HistoryScans > s.MaxInFlight {
		return fieldErr("serve.history_scans", "must be between 1 and serve.max_in_flight (%d), got %d", s.MaxInFlight, s.HistoryScans)
	}
	if s.HistoryIndex.CheckpointEvery < 1 || s.HistoryIndex.CheckpointEvery > 1_000_000_000 {
		return fieldErr("serve.history_index.checkpoint_every", "must be between 1 and 1000000000 history offsets, got %d", s.HistoryIndex.CheckpointEvery)
	}
	return nil
}

// ServedTypes are the entity types the query server serves: Serve.Types,
// or every declared type.
func (c *Config) ServedTypes() []string {
	if len(c.Serve.Types) > 0 {
		return c.Serve.Types
	}
	var out []string
	for _, e := range c.Entities {
		out = append(out, e.Type)
	}
	return out
}

// FieldError is returned by Validate, Parse and Load; Field is the YAML path
// of the wrong field (such as entities[1].partitions), Reason what is wrong
// with it (such as unknown field, or "5x" is not a duration).
type FieldError struct {
	Field  string
	Reason string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Reason }

func fieldErr(field, format string, args ...any) error {
	return &FieldError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

// checkYAML returns a *FieldError, named by its YAML path, for the first
// key of n that t has no field for and the first value that does not
// decode into its field's type; path is n's own.
func checkYAML(n *yaml.Node, t reflect.Type, path string) error {
	if n.Kind == yaml.DocumentNode {
		if len(n.Content) == 0 {
			return nil
		}
		n = n.Content[0]
	}
	for n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return nil // the field keeps its value
	}
	switch {
	case t.Kind() == reflect.Struct && t != reflect.TypeFor[time.Time]():
		if n.Kind != yaml.MappingNode {
			return fieldErr(orTop(path), "%s is not a mapping of fields", shortYAML(n))
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			key, value := n.Content[i].Value, n.Content[i+1]
			if n.Content[i].Tag == "!!merge" { // <<: *anchor holds more of the same fields
				if err := checkYAML(value, t, path); err != nil {
					return err
				}
				continue
			}
			f, ok := yamlField(t, key)
			if !ok {
				return fieldErr(joinPath(path, key), "unknown field")
			}
			if err := checkYAML(value, f.Type, joinPath(path, key)); err != nil {
				return err
			}
		}
		return nil
	case t.Kind() == reflect.Slice && t.Elem().Kind() != reflect.Uint8:
		if n.Kind != yaml.SequenceNode {
			return fieldErr(orTop(path), "%s is not a list", shortYAML(n))
		}
		for i, item := range n.Content {
			if err := checkYAML(item, t.Elem(), fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
		return nil
	}
	if err := n.Decode(reflect.New(t).Interface()); err != nil {
		return fieldErr(orTop(path), "%s is not %s", shortYAML(n), kindName(t))
	}
	return nil
}

// yamlField returns the field of struct type t that the YAML key name
// decodes into.
func yamlField(t reflect.Type, name string) (reflect.StructField, bool) {
	for i := range t.NumField() {
		f := t.Field(i)
		tag, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if tag == "" {
			tag = strings.ToLower(f.Name) // yaml.v3's default
		}
		if f.IsExported() && tag == name {
			return f, true
		}
	}
	return reflect.StructField{}, false
}

func joinPath(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func orTop(path string) string {
	if path == "" {
		return "the config"
	}
	return path
}

// shortYAML is how an error quotes a value: a scalar as a Go string, a
// list or a mapping by its kind.
func shortYAML(n *yaml.Node) string {
	switch n.Kind {
	case yaml.ScalarNode:
		return strconv.Quote(n.Value)
	case yaml.SequenceNode:
		return "a list"
	case yaml.MappingNode:
		return "a mapping"
	}
	return "the value"
}

// kindName is what a value of type t is, for an error.
func kindName(t reflect.Type) string {
	switch {
	case t == reflect.TypeFor[time.Duration]():
		return "a duration (such as 500ms, 30s, 5m or 720h)"
	case t.Kind() == reflect.Bool:
		return "true or false"
	case t.Kind() >= reflect.Int && t.Kind() <= reflect.Int64:
		return "an integer"
	case t.Kind() >= reflect.Uint && t.Kind() <= reflect.Uintptr:
		return "a non-negative integer"
	case t.Kind() == reflect.Float32 || t.Kind() == reflect.Float64:
		return "a number"
	case t.Kind() == reflect.String:
		return "a string"
	}
	return "a " + t.String()
}

// SaramaVersion is the parsed Kafka.Version; Validate has checked it.
func (k KafkaConfig) SaramaVersion() sarama.KafkaVersion {
	v, err := sarama.ParseKafkaVersion(k.Version)
	if err != nil {
		return sarama.V4_0_0_0
	}
	return v
}

// Entity returns the declared entity type named typ.
func (c *Config) Entity(typ string) (EntityConfig, bool) {
	for _, e := range c.Entities {
		if e.Type == typ {
			return e, true
		}
	}
	return EntityConfig{}, false
}
