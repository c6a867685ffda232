package main

import (
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/changes-dev/changes/topology"
)

// aclFlags are the flags of `changes acls`.
type aclFlags struct {
	principals map[topology.Role]string // role -> principal; empty: every role as User:<role>
	types      []string
	apply      bool
}

func (f *aclFlags) register(fs *flag.FlagSet) {
	f.principals = map[topology.Role]string{}
	fs.Func("principal", "role=principal, such as capture=User:capture (repeatable; roles: capture, processors, serve, monitor, view; default: every role as User:<role>)", func(s string) error {
		role, principal, ok := strings.Cut(s, "=")
		if !ok || principal == "" {
			return fmt.Errorf("%q: want role=Type:name", s)
		}
		if !slices.Contains(topology.Roles, topology.Role(role)) {
			return fmt.Errorf("unknown role %q (roles: %v)", role, topology.Roles)
		}
		f.principals[topology.Role(role)] = principal
		return nil
	})
	fs.Func("types", "entity types the serve and view roles read (comma-separated; default: serve.types, and every type for view)", func(s string) error {
		f.types = strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' })
		return nil
	})
	fs.BoolVar(&f.apply, "apply", false, "create the ACLs with the configured Kafka credentials (an administrator's), not only print them")
}

// runACLs prints (and with --apply creates) the Kafka ACLs each role needs:
// those of the roles of f.principals, or of every role.
func runACLs(topo *topology.Topology, f aclFlags, stdout io.Writer) error {
	principals := f.principals
	if len(principals) == 0 {
		principals = map[topology.Role]string{}
		for _, r := range topology.Roles {
			principals[r] = "User:" + string(r)
		}
	}
	var all []topology.ACL
	for _, r := range topology.Roles {
		p, ok := principals[r]
		if !ok {
			continue
		}
		acls, err := topo.ACLs(r, p, f.types...)
		if err != nil {
			return err
		}
		all = append(all, acls...)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PRINCIPAL\tOPERATION\tRESOURCE\tNAME")
	for _, a := range all {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", a.Principal, a.Operation, a.ResourceType, a.ResourceName)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if !f.apply {
		return nil
	}
	admin, err := topology.NewClusterAdmin(topo.Config().Kafka)
	if err != nil {
		return fmt.Errorf("kafka admin: %w", err)
	}
	defer admin.Close()
	if err := topology.CreateACLs(admin, all); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "created %d ACLs (existing ones are kept)\n", len(all))
	return nil
}
