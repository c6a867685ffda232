package topology_test

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/changes-dev/changes/topology"
)

func TestSaramaConfig(t *testing.T) {
	tests := []struct {
		name string
		yaml string
	}{
		{"defaults", minimalYAML},
		{"full", fullYAML},
		{"old broker", "kafka: {brokers: [\"k:1\"], version: \"2.8.0\", linger: 20ms, max_record_bytes: 4096}\npostgres: {url: x}\nentities: [{type: a, table: a}]\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			unsetEnv(t)
			cfg, err := topology.Parse([]byte(tt.yaml))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			k := cfg.Kafka
			c, err := topology.SaramaConfig(k)
			if err != nil {
				t.Fatal(err)
			}
			want, err := sarama.ParseKafkaVersion(k.Version)
			if err != nil {
				t.Fatal(err)
			}
			checks := []struct {
				what      string
				got, want any
			}{
				{"Version", c.Version, want},
				{"Version (SaramaVersion)", c.Version, k.SaramaVersion()},
				{"ClientID", c.ClientID, k.ClientID},
				{"Producer.RequiredAcks", c.Producer.RequiredAcks, sarama.WaitForAll},
				{"Producer.Idempotent", c.Producer.Idempotent, true},
				{"Net.MaxOpenRequests", c.Net.MaxOpenRequests, 1},
				{"Producer.Return.Successes", c.Producer.Return.Successes, true},
				{"Producer.Return.Errors", c.Producer.Return.Errors, true},
				{"Producer.MaxMessageBytes", c.Producer.MaxMessageBytes, k.MaxRecordBytes},
				{"Producer.Flush.Frequency", c.Producer.Flush.Frequency, k.Linger},
				{"Producer.Compression", c.Producer.Compression, sarama.CompressionNone},
				{"Consumer.Offsets.Initial", c.Consumer.Offsets.Initial, sarama.OffsetOldest},
				{"Consumer.Group.ResetInvalidOffsets", c.Consumer.Group.ResetInvalidOffsets, false},
				{"Consumer.Return.Errors", c.Consumer.Return.Errors, true},
			}
			for _, ch := range checks {
				if ch.got != ch.want {
					t.Errorf("%s = %v, want %v", ch.what, ch.got, ch.want)
				}
			}
			if c.Producer.Retry.Max < 1 {
				t.Errorf("Producer.Retry.Max = %d, want retries", c.Producer.Retry.Max)
			}
			if err := c.Validate(); err != nil {
				t.Errorf("sarama rejects the config: %v", err)
			}
		})
	}
}

func TestSaramaConfigIsNewEachCall(t *testing.T) {
	k := topology.KafkaConfig{Version: "4.0.0", ClientID: "c", MaxRecordBytes: 1 << 20, Linger: time.Millisecond}
	a, err := topology.SaramaConfig(k)
	if err != nil {
		t.Fatal(err)
	}
	b, err := topology.SaramaConfig(k)
	if err != nil {
		t.Fatal(err)
	}
	if a == b {
		t.Fatal("SaramaConfig returned the same pointer twice")
	}
	a.ClientID = "changed"
	if b.ClientID != "c" {
		t.Errorf("changing one config changed the other: ClientID = %q", b.ClientID)
	}
}

func TestSaramaVersionFallback(t *testing.T) {
	// Validate rejects such a version; SaramaVersion must still not panic.
	if got := (topology.KafkaConfig{Version: "nope"}).SaramaVersion(); got != sarama.V4_0_0_0 {
		t.Errorf("SaramaVersion of an invalid version = %v, want %v", got, sarama.V4_0_0_0)
	}
}

// fakeAdmin is the part of sarama.ClusterAdmin that EnsureTopics uses; any
// other method panics through the nil embedded interface.
type fakeAdmin struct {
	sarama.ClusterAdmin
	topics    map[string]sarama.TopicDetail
	policies  map[string]string
	listErr   error
	createErr error
	created   map[string]*sarama.TopicDetail
}

func (f *fakeAdmin) ListTopics() (map[string]sarama.TopicDetail, error) {
	return f.topics, f.listErr
}

func (f *fakeAdmin) CreateTopic(name string, d *sarama.TopicDetail, validateOnly bool) error {
	if validateOnly {
		return errors.New("validateOnly must be false")
	}
	if f.created == nil {
		f.created = map[string]*sarama.TopicDetail{}
	}
	f.created[name] = d
	return f.createErr
}

func (f *fakeAdmin) DescribeConfig(r sarama.ConfigResource) ([]sarama.ConfigEntry, error) {
	if r.Type != sarama.TopicResource {
		return nil, fmt.Errorf("resource type %v", r.Type)
	}
	p, ok := f.policies[r.Name]
	if !ok {
		return nil, fmt.Errorf("unknown topic %s", r.Name)
	}
	return []sarama.ConfigEntry{{Name: "cleanup.policy", Value: p}}, nil
}

func specs() []topology.TopicSpec {
	return []topology.TopicSpec{
		{Name: "h", Partitions: 1, Configs: map[string]string{"cleanup.policy": "delete", "retention.ms": "1000"}},
		{Name: "t", Partitions: 4, Configs: map[string]string{"cleanup.policy": "compact"}},
		{Name: "n", Partitions: 2},
	}
}

func TestEnsureTopicsCreatesMissing(t *testing.T) {
	admin := &fakeAdmin{topics: map[string]sarama.TopicDetail{}}
	if err := topology.EnsureTopics(admin, specs(), 3); err != nil {
		t.Fatalf("EnsureTopics: %v", err)
	}
	for _, s := range specs() {
		d, ok := admin.created[s.Name]
		if !ok {
			t.Errorf("topic %s was not created", s.Name)
			continue
		}
		if d.NumPartitions != s.Partitions || d.ReplicationFactor != 3 {
			t.Errorf("%s created with %d partitions, replication %d; want %d, 3", s.Name, d.NumPartitions, d.ReplicationFactor, s.Partitions)
		}
		got := map[string]string{}
		for k, v := range d.ConfigEntries {
			got[k] = *v
		}
		if len(got) != len(s.Configs) || (len(got) > 0 && !reflect.DeepEqual(got, s.Configs)) {
			t.Errorf("%s created with configs %v, want %v", s.Name, got, s.Configs)
		}
	}
}

func TestEnsureTopicsChecksExisting(t *testing.T) {
	tests := []struct {
		name      string
		topics    map[string]sarama.TopicDetail
		policies  map[string]string
		createErr error
		mismatch  bool
		created   []string
	}{
		{
			name:     "matching topics are left alone",
			topics:   map[string]sarama.TopicDetail{"h": {NumPartitions: 1}, "t": {NumPartitions: 4}, "n": {NumPartitions: 2}},
			policies: map[string]string{"h": "delete", "t": "compact"},
		},
		{
			name:     "history with several partitions",
			topics:   map[string]sarama.TopicDetail{"h": {NumPartitions: 3}},
			mismatch: true,
		},
		{
			name:     "table that is not compacted",
			topics:   map[string]sarama.TopicDetail{"h": {NumPartitions: 1}, "t": {NumPartitions: 4}},
			policies: map[string]string{"h": "delete", "t": "delete"},
			mismatch: true,
		},
		{
			name:     "a topic without a policy in its spec is not described",
			topics:   map[string]sarama.TopicDetail{"n": {NumPartitions: 2}},
			policies: map[string]string{},
			created:  []string{"h", "t"},
		},
		{
			name:      "a topic created concurrently is fine",
			topics:    map[string]sarama.TopicDetail{},
			createErr: &sarama.TopicError{Err: sarama.ErrTopicAlreadyExists},
			created:   []string{"h", "t", "n"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			admin := &fakeAdmin{topics: tt.topics, policies: tt.policies, createErr: tt.createErr}
			err := topology.EnsureTopics(admin, specs(), -1)
			if got := errors.Is(err, topology.ErrTopicMismatch); got != tt.mismatch {
				t.Fatalf("EnsureTopics error %v, want ErrTopicMismatch: %v", err, tt.mismatch)
			}
			if !tt.mismatch && err != nil {
				t.Fatalf("EnsureTopics: %v", err)
			}
			var created []string
			for n := range admin.created {
				created = append(created, n)
			}
			slices.Sort(created)
			want := slices.Clone(tt.created)
			slices.Sort(want)
			if !tt.mismatch && !slices.Equal(created, want) {
				t.Errorf("created %q, want %q", created, want)
			}
		})
	}
}

func TestEnsureTopicsErrors(t *testing.T) {
	boom := errors.New("boom")
	tests := []struct {
		name  string
		admin *fakeAdmin
	}{
		{"list fails", &fakeAdmin{listErr: boom}},
		{"create fails", &fakeAdmin{topics: map[string]sarama.TopicDetail{}, createErr: boom}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := topology.EnsureTopics(tt.admin, specs(), 1)
			if !errors.Is(err, boom) {
				t.Errorf("EnsureTopics error %v, want one wrapping %v", err, boom)
			}
			if errors.Is(err, topology.ErrTopicMismatch) {
				t.Errorf("error %v is a mismatch, want a plain failure", err)
			}
		})
	}
}

func TestMinInsyncReplicas(t *testing.T) {
	unsetEnv(t)
	cfg, err := topology.Parse([]byte("kafka: {brokers: [\"k:9092\"], replication_factor: 3, min_insync_replicas: 2}\npostgres: {url: x}\nentities: [{type: a, table: t}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	for _, spec := range topology.New(cfg).Topics() {
		if spec.Configs["min.insync.replicas"] != "2" {
			t.Errorf("%s: min.insync.replicas = %q, want 2", spec.Name, spec.Configs["min.insync.replicas"])
		}
	}
	if _, err := topology.Parse([]byte("kafka: {brokers: [\"k:9092\"], replication_factor: 1, min_insync_replicas: 2}\npostgres: {url: x}\nentities: [{type: a, table: t}]\n")); err == nil || !strings.Contains(err.Error(), "kafka.min_insync_replicas") {
		t.Errorf("min_insync_replicas above the replication factor: %v", err)
	}
}
