package topology_test

import (
	"slices"
	"testing"

	"github.com/changes-dev/changes/topology"
)

func TestACLs(t *testing.T) {
	unsetEnv(t)
	cfg, err := topology.Parse([]byte("kafka: {brokers: [\"k:1\"]}\npostgres: {url: x, slot: s1}\ntopics: {prefix: p}\nserve: {types: [a]}\nentities: [{type: a, table: a}, {type: b, table: b}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	topo := topology.New(cfg)
	has := func(acls []topology.ACL, resType, name, op string) bool {
		return slices.ContainsFunc(acls, func(a topology.ACL) bool {
			return a.ResourceType == resType && a.ResourceName == name && a.Operation == op
		})
	}
	tests := []struct {
		role     topology.Role
		types    []string
		want     [][3]string // resource type, name, operation
		mustNot  [][3]string
		wantSize int
	}{
		{topology.RoleCapture, nil,
			[][3]string{{"Topic", "p.history", "Write"}, {"Topic", "p.history", "Read"}, {"Topic", "p.capture-state", "Write"}, {"TransactionalId", "changes-capture.p.history.s1", "Write"},
				// a resync: the processors' progress, and the tables
				{"Group", "p.router", "Describe"}, {"Group", "p.snapshot.b", "Describe"}, {"Topic", "p.events.b", "Read"}, {"Topic", "p.snapshot.a-table", "Read"}},
			[][3]string{{"Topic", "p.events.a", "Write"}, {"Topic", "p.snapshot.a-table", "Write"}, {"Group", "p.router", "Read"}}, 25},
		{topology.RoleProcessors, nil,
			[][3]string{{"Topic", "p.history", "Read"}, {"Group", "p.router", "Read"}, {"Topic", "p.events.b", "Write"}, {"Topic", "p.snapshot.b-table", "Write"}, {"Group", "p.snapshot.b", "Read"}, {"Topic", "p.deadletter", "Write"}},
			[][3]string{{"Topic", "p.history", "Write"}, {"Topic", "p.capture-state", "Read"}}, 0},
		{topology.RoleServe, nil,
			[][3]string{{"Topic", "p.history", "Read"}, {"Topic", "p.snapshot.a-table", "Read"}},
			[][3]string{{"Topic", "p.snapshot.b-table", "Read"}, {"Topic", "p.snapshot.a-table", "Write"}}, 0},
		{topology.RoleView, []string{"b"},
			[][3]string{{"Topic", "p.snapshot.b-table", "Read"}},
			[][3]string{{"Topic", "p.snapshot.a-table", "Read"}, {"Topic", "p.history", "Read"}, {"Topic", "p.snapshot.b-table", "Write"}}, 3},
		{topology.RoleMonitor, nil,
			[][3]string{{"Topic", "p.history", "Read"}, {"Topic", "p.events.a", "Read"}, {"Group", "p.snapshot.a", "Describe"}},
			[][3]string{{"Group", "p.router", "Read"}, {"Topic", "p.history", "Write"}}, 0},
	}
	for _, tt := range tests {
		t.Run(string(tt.role), func(t *testing.T) {
			acls, err := topo.ACLs(tt.role, "User:x", tt.types...)
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range tt.want {
				if !has(acls, w[0], w[1], w[2]) {
					t.Errorf("missing %s %s:%s", w[2], w[0], w[1])
				}
			}
			for _, w := range tt.mustNot {
				if has(acls, w[0], w[1], w[2]) {
					t.Errorf("grants %s %s:%s, which the role does not need", w[2], w[0], w[1])
				}
			}
			for _, a := range acls {
				if a.Principal != "User:x" || a.Operation == "Create" || a.Operation == "Alter" || a.Operation == "All" {
					t.Errorf("acl %s", a)
				}
			}
			if tt.wantSize > 0 && len(acls) != tt.wantSize {
				t.Errorf("%d ACLs, want %d: %v", len(acls), tt.wantSize, acls)
			}
		})
	}
	if topo.TransactionalID() != "changes-capture.p.history.s1" {
		t.Errorf("TransactionalID = %q", topo.TransactionalID())
	}
	for _, bad := range []struct {
		role      topology.Role
		principal string
		types     []string
	}{{"admin", "User:x", nil}, {topology.RoleView, "x", nil}, {topology.RoleView, "User:x", []string{"nope"}}} {
		if _, err := topo.ACLs(bad.role, bad.principal, bad.types...); err == nil {
			t.Errorf("ACLs(%q, %q, %v) succeeded, want an error", bad.role, bad.principal, bad.types)
		}
	}
}
