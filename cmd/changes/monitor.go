package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/changes-dev/changes/processors/monitor"
	"github.com/changes-dev/changes/topology"
)

// runMonitor runs the monitor with its /metrics until ctx is cancelled.
func runMonitor(ctx context.Context, topo *topology.Topology, log *slog.Logger, reg *prometheus.Registry) error {
	m, err := monitor.New(topo, monitor.WithLogger(log), monitor.WithRegisterer(reg))
	if err != nil {
		return err
	}
	stop, err := serveMetrics(topo.Config().Monitor.Listen, reg, log)
	if err != nil {
		return err
	}
	defer stop()
	return m.Run(ctx)
}

// runSLO prints the latency report of the last window.
func runSLO(ctx context.Context, topo *topology.Topology, window time.Duration, stdout io.Writer) error {
	rep, err := monitor.SLO(ctx, topo, window)
	if err != nil {
		return fmt.Errorf("slo: %w", err)
	}
	rep.Print(stdout)
	return nil
}

// runAudit checks the last window once and lists what is wrong; it fails if
// anything is.
func runAudit(ctx context.Context, topo *topology.Topology, window time.Duration, stdout io.Writer) error {
	staleAfter := topo.Config().Monitor.StaleAfter
	res, err := monitor.Audit(ctx, topo, window, staleAfter)
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	fmt.Fprintf(stdout, "changes audit: last %s: %d history records, %d table records checked\n", window, res.HistoryRecords, res.TableRecords)
	for _, a := range res.Anomalies {
		fmt.Fprintln(stdout, "  "+a.String())
	}
	for _, s := range res.Stale {
		fmt.Fprintf(stdout, "  stale: %s %d: the table has not reached position %s (history offset %d, committed %s; table at %s)\n",
			s.EntityType, s.EntityID, s.Position, s.Offset, s.Since.UTC().Format(time.RFC3339Nano), s.TablePosition)
	}
	if n := len(res.Anomalies) + len(res.Stale); n > 0 {
		return fmt.Errorf("audit: %d inconsistencies, %d stale entities", len(res.Anomalies), len(res.Stale))
	}
	fmt.Fprintln(stdout, "  no inconsistency, no stale entity")
	return nil
}
