package topology

import (
	"fmt"
	"slices"
	"strings"

	"github.com/IBM/sarama"
)

// Role is what a Kafka principal does in a deployment; ACLs gives each role
// only what it needs on a broker that denies everything else
// (allow.everyone.if.no.acl.found=false).
type Role string

// The roles of a deployment, one per command that talks to Kafka.
const (
	// RoleCapture (`changes capture`) writes the history in transactions and
	// its own state, and reads both back when it starts.
	RoleCapture Role = "capture"
	// RoleProcessors (`changes process`) reads the history in its consumer
	// groups and writes the events topics, the tables and the dead letters.
	RoleProcessors Role = "processors"
	// RoleServe (`changes serve`) reads the tables it serves and the history.
	RoleServe Role = "serve"
	// RoleMonitor (`changes monitor`, slo, audit) reads every topic and
	// describes the processors' groups for their lag.
	RoleMonitor Role = "monitor"
	// RoleView is a service that embeds views: it reads the tables of its
	// types and nothing else.
	RoleView Role = "view"
)

// Roles lists every role in the order ACLs documents them.
var Roles = []Role{RoleCapture, RoleProcessors, RoleServe, RoleMonitor, RoleView}

// ACL is one Kafka permission: Principal may do Operation on the resource.
// The names are those of Kafka's kafka-acls tool.
type ACL struct {
	Principal    string // "User:capture"
	ResourceType string // Topic, Group or TransactionalId
	ResourceName string
	Operation    string // Read, Write, Describe or DescribeConfigs
}

func (a ACL) String() string {
	return fmt.Sprintf("%s %s %s:%s", a.Principal, a.Operation, a.ResourceType, a.ResourceName)
}

// TransactionalID is the transactional id of the capture's Kafka
// transactions: one per history and slot, so a capture fences only older
// captures of its own slot.
func (t *Topology) TransactionalID() string {
	return "changes-capture." + t.History() + "." + t.cfg.Postgres.Slot
}

// ACLs are the permissions role needs, given to principal ("User:name").
// types narrows RoleServe and RoleView to some entity types (default:
// serve.types for RoleServe, every type for RoleView). Topics are created
// by `changes topics` as an administrator, so no role may create one;
// Describe and DescribeConfigs let each check the topics it uses.
func (t *Topology) ACLs(role Role, principal string, types ...string) ([]ACL, error) {
	if !strings.Contains(principal, ":") {
		return nil, fmt.Errorf("principal %q: want Type:name, such as User:%s", principal, role)
	}
	for _, typ := range types {
		if _, ok := t.cfg.Entity(typ); !ok {
			return nil, fmt.Errorf("entity type %q is not declared", typ)
		}
	}
	var out []ACL
	add := func(resType, name string, ops ...string) {
		for _, op := range ops {
			out = append(out, ACL{Principal: principal, ResourceType: resType, ResourceName: name, Operation: op})
		}
	}
	readTopic := []string{"Read", "Describe", "DescribeConfigs"}
	writeTopic := []string{"Read", "Write", "Describe", "DescribeConfigs"}
	switch role {
	case RoleCapture:
		add("Topic", t.History(), writeTopic...)
		add("Topic", t.CaptureState(), writeTopic...)
		add("TransactionalId", t.TransactionalID(), "Write", "Describe")
		// A resync waits for the processors' groups, then reads the
		// snapshot tables (capture/resync.go).
		add("Group", t.RouterGroup(), "Describe")
		for _, typ := range t.EntityTypes() {
			add("Topic", t.Events(typ), readTopic...)
			add("Topic", t.Snapshot(typ), readTopic...)
			add("Group", t.SnapshotGroup(typ), "Describe")
		}
	case RoleProcessors:
		add("Topic", t.History(), readTopic...)
		add("Group", t.RouterGroup(), "Read")
		add("Topic", t.DeadLetter(), "Write", "Describe", "DescribeConfigs")
		for _, typ := range t.EntityTypes() {
			add("Topic", t.Events(typ), writeTopic...)
			add("Topic", t.Snapshot(typ), writeTopic...)
			add("Group", t.SnapshotGroup(typ), "Read")
		}
	case RoleServe:
		if len(types) == 0 {
			types = t.cfg.ServedTypes()
		}
		add("Topic", t.History(), readTopic...)
		for _, typ := range types {
			add("Topic", t.Snapshot(typ), readTopic...)
		}
	case RoleMonitor:
		add("Topic", t.History(), readTopic...)
		add("Group", t.RouterGroup(), "Describe")
		for _, typ := range t.EntityTypes() {
			add("Topic", t.Events(typ), readTopic...)
			add("Topic", t.Snapshot(typ), readTopic...)
			add("Group", t.SnapshotGroup(typ), "Describe")
		}
	case RoleView:
		if len(types) == 0 {
			types = t.EntityTypes()
		}
		for _, typ := range types {
			add("Topic", t.Snapshot(typ), readTopic...)
		}
	default:
		return nil, fmt.Errorf("role %q: want one of %v", role, Roles)
	}
	return out, nil
}

var (
	aclResourceTypes = map[string]sarama.AclResourceType{
		"Topic": sarama.AclResourceTopic, "Group": sarama.AclResourceGroup,
		"TransactionalId": sarama.AclResourceTransactionalID, "Cluster": sarama.AclResourceCluster,
	}
	aclOperations = map[string]sarama.AclOperation{
		"Read": sarama.AclOperationRead, "Write": sarama.AclOperationWrite, "Describe": sarama.AclOperationDescribe,
		"DescribeConfigs": sarama.AclOperationDescribeConfigs, "Create": sarama.AclOperationCreate,
		"IdempotentWrite": sarama.AclOperationIdempotentWrite,
	}
)

// CreateACLs creates acls (literal resources, allowed from any host) with
// admin, whose principal must be allowed to (a super user, or Alter on the
// cluster). Kafka ignores an ACL that exists already, so it can run again.
func CreateACLs(admin sarama.ClusterAdmin, acls []ACL) error {
	var batch []*sarama.ResourceAcls
	for _, a := range acls {
		rt, ok := aclResourceTypes[a.ResourceType]
		if !ok {
			return fmt.Errorf("acl %s: unknown resource type %q", a, a.ResourceType)
		}
		op, ok := aclOperations[a.Operation]
		if !ok {
			return fmt.Errorf("acl %s: unknown operation %q", a, a.Operation)
		}
		batch = append(batch, &sarama.ResourceAcls{
			Resource: sarama.Resource{ResourceType: rt, ResourceName: a.ResourceName, ResourcePatternType: sarama.AclPatternLiteral},
			Acls:     []*sarama.Acl{{Principal: a.Principal, Host: "*", Operation: op, PermissionType: sarama.AclPermissionAllow}},
		})
	}
	if len(batch) == 0 {
		return nil
	}
	if err := admin.CreateACLs(batch); err != nil {
		return fmt.Errorf("create ACLs: %w", err)
	}
	return nil
}

// SortACLs orders acls by principal, resource and operation, for printing.
func SortACLs(acls []ACL) {
	slices.SortFunc(acls, func(a, b ACL) int { return strings.Compare(a.String(), b.String()) })
}
