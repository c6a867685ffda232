package main

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/changes-dev/changes/internal/outage"
	"github.com/changes-dev/changes/internal/promreg"
	"github.com/changes-dev/changes/processors/monitor"
)

// runMonitor runs the monitor with its /metrics until ctx is cancelled.
// A monitor that stops on an outage of Kafka or PostgreSQL is started again
// with backoff (1 s doubling to 5 s), forever while the error is
// retryable; changes_monitor_connected is 1 while it monitors and Kafka
// answers a probe (every 2 s).
func runMonitor(ctx context.Context, e *env) error {
	topo, log, reg := e.topo, e.log, e.reg
	opts := []monitor.Option{monitor.WithLogger(log), monitor.WithRegisterer(reg)}
	if _, err := monitor.New(topo, opts...); err != nil {
		return err
	}
	metrics := promreg.With(reg)
	gauge := metrics.Gauge("changes_monitor_connected",
		"1 while the monitor reads every topic and Kafka answers (probed every 2 s), 0 while it waits to start again after an outage.")
	if err := metrics.Err(); err != nil {
		return err
	}
	stop, err := serveMetrics(topo.Config().Monitor.Listen, reg, log)
	if err != nil {
		return err
	}
	defer stop()
	state := outage.NewState(log.With("component", "monitor"), nil, "kafka or postgres")
	var running atomic.Bool
	go func() {
		probe := outage.NewProbe(topo.Config().Kafka, topo.History())
		defer probe.Close()
		t := time.NewTicker(2 * time.Second)
		defer t.Stop()
		for {
			err := probe.Check()
			if err != nil && running.Load() {
				state.Down(err)
			}
			gauge.Set(b2f(err == nil && running.Load()))
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	var b outage.Backoff
	for {
		started := time.Now()
		m, err := monitor.New(topo, opts...)
		if err != nil {
			return err
		}
		runCtx, cancel := context.WithCancel(ctx)
		go func() {
			select {
			case <-m.Ready():
				running.Store(true)
				state.Up()
			case <-runCtx.Done():
			}
		}()
		err = m.Run(runCtx)
		cancel()
		running.Store(false)
		gauge.Set(0)
		switch {
		case ctx.Err() != nil:
			return nil
		case err == nil:
			err = errors.New("monitor stopped without an error")
		case !outage.Retryable(err):
			return err
		}
		if time.Since(started) >= outage.StableAfter {
			b.Reset()
		}
		state.Down(err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(b.Duration()):
		}
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// runSLO prints the latency report of the last window.
func runSLO(ctx context.Context, e *env, window time.Duration) error {
	rep, err := monitor.SLO(ctx, e.topo, window)
	if err != nil {
		return fmt.Errorf("slo: %w", err)
	}
	rep.Print(e.stdout)
	return nil
}

// runAudit checks the last window once and lists what is wrong; it fails if
// anything is.
func runAudit(ctx context.Context, e *env, window time.Duration) error {
	topo, stdout := e.topo, e.stdout
	staleAfter := topo.Config().Monitor.StaleAfter
	res, err := monitor.Audit(ctx, topo, window, staleAfter)
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	fmt.Fprintf(stdout, "changes audit: last %s: %d history records, %d table records checked\n", window, res.HistoryRecords, res.TableRecords)
	if res.Forgotten > 0 {
		fmt.Fprintf(stdout, "  the oldest %d history events were not remembered (monitor.remember_events %d): table records that apply them were not checked; a shorter --window checks them all\n",
			res.Forgotten, topo.Config().Monitor.RememberEvents)
	}
	for _, a := range res.Anomalies {
		fmt.Fprintln(stdout, "  "+a.String())
	}
	for _, s := range res.Stale {
		fmt.Fprintf(stdout, "  stale: %s %s: the table has not reached position %s (history offset %d, committed %s; table at %s)\n",
			s.EntityType, s.EntityID, s.Position, s.Offset, s.Since.UTC().Format(time.RFC3339Nano), s.TablePosition)
	}
	if n := len(res.Anomalies) + len(res.Stale); n > 0 {
		return fmt.Errorf("audit: %d inconsistencies, %d stale entities", len(res.Anomalies), len(res.Stale))
	}
	fmt.Fprintln(stdout, "  no inconsistency, no stale entity")
	return nil
}
