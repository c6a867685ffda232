// Package platform wires the capture and the processors into one process, for
// `changes run`, the demo and the end-to-end tests.
package platform

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"

	"github.com/changes-dev/changes/capture"
	"github.com/changes-dev/changes/internal/outage"
	"github.com/changes-dev/changes/processors"
	"github.com/changes-dev/changes/topology"
)

// Parts selects what Run runs.
type Parts struct {
	Capture    bool
	Processors bool
}

// All runs every part.
var All = Parts{Capture: true, Processors: true}

// EnsureTopics creates or checks every topic of topo (see topology.EnsureTopics).
func EnsureTopics(topo *topology.Topology) error {
	return ensureTopics(topo, topo.Topics())
}

func ensureTopics(topo *topology.Topology, specs []topology.TopicSpec) error {
	cfg := topo.Config()
	admin, err := topology.NewClusterAdmin(cfg.Kafka)
	if err != nil {
		return fmt.Errorf("kafka admin: %w", err)
	}
	defer admin.Close()
	return topology.EnsureTopics(admin, specs, cfg.Kafka.ReplicationFactor)
}

// topicsOf are the topics the parts use: a principal that may use only
// those (see topology.ACLs) neither sees nor needs the others.
func topicsOf(topo *topology.Topology, parts Parts) []topology.TopicSpec {
	use := map[string]bool{}
	if parts.Capture {
		use[topo.History()], use[topo.CaptureState()] = true, true
	}
	if parts.Processors {
		use[topo.History()], use[topo.DeadLetter()] = true, true
		for _, typ := range topo.EntityTypes() {
			use[topo.Events(typ)], use[topo.Snapshot(typ)] = true, true
		}
	}
	var out []topology.TopicSpec
	for _, s := range topo.Topics() {
		if use[s.Name] {
			out = append(out, s)
		}
	}
	return out
}

// Run ensures the topics the parts use, then runs the selected parts until ctx is cancelled
// (nil) or one fails with an error retrying cannot fix (its error, after
// stopping the others).
//
// Outages do not end Run: while Kafka is unreachable at the start it tries
// the topics again with backoff (1 s doubling to 5 s), logging once when
// it starts waiting and once when Kafka is back; the capture and the
// processors retry by themselves, and a capture that still returns a
// retryable error (see capture.Retryable) is started again the same way.
func Run(ctx context.Context, topo *topology.Topology, parts Parts, log *slog.Logger, capOpts []capture.Option, procOpts []processors.Option) error {
	setup := outage.NewState(log.With("component", "topics"), nil, "kafka")
	if err := outage.Retry(ctx, setup, func(context.Context) error { return ensureTopics(topo, topicsOf(topo, parts)) }); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	g, gctx := errgroup.WithContext(ctx)
	if parts.Capture {
		capOpts := append([]capture.Option{capture.WithLogger(log)}, capOpts...)
		if _, err := capture.New(topo, capOpts...); err != nil {
			return err
		}
		g.Go(func() error { return runCapture(gctx, topo, log, capOpts) })
	}
	if parts.Processors {
		g.Go(func() error {
			return processors.Run(gctx, topo, append([]processors.Option{processors.WithLogger(log)}, procOpts...)...)
		})
	}
	return g.Wait()
}

// runCapture runs a capture until ctx is cancelled (nil) or it fails with an
// error retrying cannot fix, starting a new one after a retryable error.
func runCapture(ctx context.Context, topo *topology.Topology, log *slog.Logger, opts []capture.Option) error {
	var b outage.Backoff
	for {
		started := time.Now()
		c, err := capture.New(topo, opts...)
		if err == nil {
			err = c.Run(ctx)
		}
		switch {
		case ctx.Err() != nil:
			return nil
		case err == nil:
			err = errors.New("capture stopped without an error")
		case !capture.Retryable(err):
			return err
		}
		if time.Since(started) >= outage.StableAfter {
			b.Reset()
		}
		wait := b.Duration()
		log.Warn("capture stopped; starting it again", "component", "capture", "err", err.Error(), "retry_in", wait.String())
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}
}

// Groups lists the consumer groups of the processors: the router and one
// snapshot group per entity type.
func Groups(topo *topology.Topology) []string {
	groups := []string{topo.RouterGroup()}
	for _, typ := range topo.EntityTypes() {
		groups = append(groups, topo.SnapshotGroup(typ))
	}
	return groups
}

// WaitGroupsStable blocks until every processor group of topo is Stable with
// at least one member, so that what is committed next is processed without
// waiting for a rebalance (goka waits seconds before it rejoins a group).
func WaitGroupsStable(ctx context.Context, topo *topology.Topology) error {
	cfg := topo.Config()
	admin, err := topology.NewClusterAdmin(cfg.Kafka)
	if err != nil {
		return fmt.Errorf("kafka admin: %w", err)
	}
	defer admin.Close()
	groups := Groups(topo)
	for {
		descs, err := admin.DescribeConsumerGroups(groups)
		if err != nil {
			return fmt.Errorf("describe groups: %w", err)
		}
		stable := 0
		for _, d := range descs {
			if d.State == "Stable" && len(d.Members) > 0 {
				stable++
			}
		}
		if stable == len(groups) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("processor groups not stable: %w", ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// WaitSlotActive blocks until a capture streams from the replication slot.
// The slice has no initial snapshot yet: a change committed before the slot
// exists is not captured, so the demo and the tests wait for it.
func WaitSlotActive(ctx context.Context, db *pgx.Conn, slot string) error {
	for {
		var active bool
		err := db.QueryRow(ctx, "select coalesce((select active from pg_replication_slots where slot_name = $1), false)", slot).Scan(&active)
		if err != nil {
			return fmt.Errorf("look up slot %s: %w", slot, err)
		}
		if active {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("slot %s never became active: %w", slot, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}
