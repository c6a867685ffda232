package topology_test

import (
	"reflect"
	"testing"

	"github.com/changes-dev/changes/topology"
)

// twoEntities has entity types with different partition counts, so a test
// can tell which entity a topic's shape came from.
const twoEntities = `
kafka: {brokers: ["k:9092"], max_record_bytes: 500000}
postgres: {url: "postgres://db"}
topics: {prefix: acme, events_retention: 36h}
entities:
  - {type: account, table: accounts, partitions: 3}
  - {type: campaign, table: campaigns, partitions: 17}
`

func newTopology(t *testing.T, y string) *topology.Topology {
	t.Helper()
	unsetEnv(t)
	cfg, err := topology.Parse([]byte(y))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return topology.New(cfg)
}

func TestNames(t *testing.T) {
	topo := newTopology(t, twoEntities)
	tests := []struct {
		name string
		got  string
		want string
	}{
		{"History", topo.History(), "acme.history"},
		{"DeadLetter", topo.DeadLetter(), "acme.deadletter"},
		{"RouterGroup", topo.RouterGroup(), "acme.router"},
		{"Events", topo.Events("account"), "acme.events.account"},
		{"SnapshotGroup", topo.SnapshotGroup("account"), "acme.snapshot.account"},
		{"Snapshot", topo.Snapshot("account"), "acme.snapshot.account-table"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.got != tt.want {
				t.Errorf("got %q, want %q", tt.got, tt.want)
			}
		})
	}
}

func TestNamesDefaultPrefix(t *testing.T) {
	topo := newTopology(t, minimalYAML)
	if got := topo.History(); got != "changes.history" {
		t.Errorf("History() = %q, want changes.history", got)
	}
	if got := topo.Snapshot("account"); got != "changes.snapshot.account-table" {
		t.Errorf("Snapshot(account) = %q, want changes.snapshot.account-table", got)
	}
}

func TestConfigAndEntityTypes(t *testing.T) {
	unsetEnv(t)
	cfg, err := topology.Parse([]byte(twoEntities))
	if err != nil {
		t.Fatal(err)
	}
	topo := topology.New(cfg)
	if topo.Config() != cfg {
		t.Error("Config() is not the config the topology was built from")
	}
	if got, want := topo.EntityTypes(), []string{"account", "campaign"}; !reflect.DeepEqual(got, want) {
		t.Errorf("EntityTypes() = %q, want %q", got, want)
	}
}

func TestTopics(t *testing.T) {
	topo := newTopology(t, twoEntities)
	got := topo.Topics()
	want := []topology.TopicSpec{
		{Name: "acme.history", Partitions: 1, Configs: map[string]string{
			"cleanup.policy":         "delete",
			"retention.ms":           "2592000000", // 30 days
			"retention.bytes":        "-1",
			"message.timestamp.type": "CreateTime",
			"max.message.bytes":      "501024",
		}},
		{Name: "acme.capture-state", Partitions: 1, Configs: map[string]string{
			"cleanup.policy": "compact",
		}},
		{Name: "acme.deadletter", Partitions: 1, Configs: map[string]string{
			"cleanup.policy":    "delete",
			"retention.ms":      "2592000000",
			"max.message.bytes": "501024",
		}},
		{Name: "acme.events.account", Partitions: 3, Configs: map[string]string{
			"cleanup.policy":    "delete",
			"retention.ms":      "129600000", // 36h
			"max.message.bytes": "501024",
		}},
		{Name: "acme.snapshot.account-table", Partitions: 3, Configs: map[string]string{
			"cleanup.policy":    "compact",
			"max.message.bytes": "501024",
		}},
		{Name: "acme.events.campaign", Partitions: 17, Configs: map[string]string{
			"cleanup.policy":    "delete",
			"retention.ms":      "129600000",
			"max.message.bytes": "501024",
		}},
		{Name: "acme.snapshot.campaign-table", Partitions: 17, Configs: map[string]string{
			"cleanup.policy":    "compact",
			"max.message.bytes": "501024",
		}},
	}
	if len(got) != len(want) {
		t.Fatalf("Topics() has %d topics, want %d: %+v", len(got), len(want), got)
	}
	for i := range want {
		t.Run(want[i].Name, func(t *testing.T) {
			if !reflect.DeepEqual(got[i], want[i]) {
				t.Errorf("topic %d\n got %+v\nwant %+v", i, got[i], want[i])
			}
		})
	}
}

// TestTopicsMatchNames guards against Topics and the name methods drifting
// apart: every name a processor uses must be a topic that is created.
func TestTopicsMatchNames(t *testing.T) {
	topo := newTopology(t, twoEntities)
	created := map[string]topology.TopicSpec{}
	for _, s := range topo.Topics() {
		if _, dup := created[s.Name]; dup {
			t.Errorf("topic %s listed twice", s.Name)
		}
		created[s.Name] = s
	}
	names := []string{topo.History(), topo.DeadLetter()}
	for _, typ := range topo.EntityTypes() {
		names = append(names, topo.Events(typ), topo.Snapshot(typ))
	}
	for _, n := range names {
		if _, ok := created[n]; !ok {
			t.Errorf("topic %s is named but not in Topics()", n)
		}
	}
	for _, typ := range topo.EntityTypes() {
		e, _ := topo.Config().Entity(typ)
		// goka requires a table to be co-partitioned with the stream that
		// feeds its group.
		if ev, sn := created[topo.Events(typ)], created[topo.Snapshot(typ)]; ev.Partitions != sn.Partitions || int(sn.Partitions) != e.Partitions {
			t.Errorf("%s: events has %d partitions, snapshot %d, config %d", typ, ev.Partitions, sn.Partitions, e.Partitions)
		}
	}
}

func TestTopicsHistoryRetention(t *testing.T) {
	tests := []struct {
		retention string
		wantMS    string
	}{
		{"1h", "3600000"},
		{"48h", "172800000"},
		{"8760h", "31536000000"},
	}
	for _, tt := range tests {
		t.Run(tt.retention, func(t *testing.T) {
			topo := newTopology(t, minimalYAML+"topics: {history_retention: "+tt.retention+"}\n")
			h := topo.Topics()[0]
			if h.Name != topo.History() {
				t.Fatalf("first topic is %s, want the history", h.Name)
			}
			if h.Partitions != 1 || h.Configs["retention.ms"] != tt.wantMS || h.Configs["cleanup.policy"] != "delete" {
				t.Errorf("history = %+v, want 1 partition, retention.ms=%s, cleanup.policy=delete", h, tt.wantMS)
			}
		})
	}
}
