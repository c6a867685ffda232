package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/changes-dev/changes/capture"
	"github.com/changes-dev/changes/topology"
)

// snapshotFlags are the flags of `changes snapshot`.
type snapshotFlags struct {
	entityType, from, to string
	cancel, status       bool
}

func (f *snapshotFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.entityType, "type", "", "the entity type whose table is copied")
	fs.StringVar(&f.from, "from", "", "the first key to copy (default: the table's first)")
	fs.StringVar(&f.to, "to", "", "the last key to copy (default: the table's last)")
	fs.BoolVar(&f.cancel, "cancel", false, "cancel the type's incremental snapshots instead")
	fs.BoolVar(&f.status, "status", false, "print the incremental snapshots requested and not done instead (--type all: of every type)")
}

// runSnapshot writes the request (or the cancellation) to the WAL of the
// captured database.
func runSnapshot(ctx context.Context, topo *topology.Topology, f snapshotFlags, stdout io.Writer) error {
	cfg := topo.Config()
	if f.status {
		return printSnapshots(ctx, topo, f.entityType, stdout)
	}
	if _, ok := cfg.Entity(f.entityType); !ok {
		return usageErrorf("snapshot: --type %q is not an entity type of the config (%v)", f.entityType, topo.EntityTypes())
	}
	if f.cancel && (f.from != "" || f.to != "") {
		return usageErrorf("snapshot: --cancel takes no --from or --to")
	}
	conn, err := pgx.Connect(ctx, cfg.Postgres.URL)
	if err != nil {
		return fmt.Errorf("connect to postgres: %w", err)
	}
	defer conn.Close(context.Background())
	if f.cancel {
		if err := capture.CancelSnapshot(ctx, conn, cfg.Postgres.Slot, f.entityType); err != nil {
			return err
		}
		_, err = fmt.Fprintf(stdout, "cancellation of the incremental snapshots of %s written to the WAL of slot %s\n", f.entityType, cfg.Postgres.Slot)
		return err
	}
	if err := capture.RequestSnapshot(ctx, conn, cfg.Postgres.Slot, f.entityType, f.from, f.to); err != nil {
		return err
	}
	_, err = fmt.Fprintf(stdout, "incremental snapshot of %s requested through the WAL of slot %s: the capture starts it when its stream reaches the request (progress in its log and changes_capture_incremental_snapshot_*)\n",
		f.entityType, cfg.Postgres.Slot)
	return err
}

// printSnapshots prints the pending incremental snapshots of entityType
// ("all": every type) as a table.
func printSnapshots(ctx context.Context, topo *topology.Topology, entityType string, stdout io.Writer) error {
	pending, err := capture.PendingSnapshots(ctx, topo)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TYPE\tID\tSTEP\tFROM\tTO\tAFTER\tCHUNKS\tROWS\tSAME\tDELETED\tREQUESTED")
	n := 0
	for _, s := range pending {
		if entityType != "all" && s.EntityType != entityType {
			continue
		}
		n++
		step := "copy"
		switch {
		case s.Deleting:
			step = "resync: deletes" // AFTER: the last key of the tables looked up
		case s.Resync:
			step = "resync: copy"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%s\n", s.EntityType, s.ID, step, s.From, s.To, s.After,
			s.Chunks, s.Rows, s.Same, s.Deleted, s.Requested.Format(time.RFC3339))
	}
	if n == 0 {
		_, err := fmt.Fprintln(stdout, "no incremental snapshot pending")
		return err
	}
	return tw.Flush()
}
