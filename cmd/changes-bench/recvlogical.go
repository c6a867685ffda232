package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// recvlogical drains the backlog with pg_recvlogical from a pgoutput slot of
// its own on the capture's publication, writing to /dev/null: PostgreSQL
// decoding the WAL and sending it, with nothing done with it. It is the
// ceiling every CDC tool on pgoutput shares.
type recvlogical struct {
	bin         string
	slot        string
	publication string
	dir         string
	cmd         *exec.Cmd
	log         *os.File
	exited      chan error // Wait's result, once
	stopped     bool
}

// findRecvlogical returns the pg_recvlogical of the server's major version
// (the one of the stack, /usr/lib/postgresql/15/bin), or the one on PATH.
func findRecvlogical() (string, error) {
	for _, p := range []string{"/usr/lib/postgresql/15/bin/pg_recvlogical"} {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return exec.LookPath("pg_recvlogical")
}

// createSlot creates the slot with pgoutput, before the backlog.
func (r *recvlogical) createSlot(ctx context.Context, db *pgx.Conn) error {
	_, err := db.Exec(ctx, "select pg_create_logical_replication_slot($1, 'pgoutput')", r.slot)
	if err != nil {
		return fmt.Errorf("create slot %s: %w", r.slot, err)
	}
	return nil
}

// start runs pg_recvlogical until it has received the WAL up to endLSN;
// it exits by itself there (--endpos).
func (r *recvlogical) start(pgURL, endLSN string) error {
	log, err := os.Create(filepath.Join(r.dir, "pg_recvlogical.log"))
	if err != nil {
		return err
	}
	r.log = log
	r.cmd = exec.Command(r.bin, "--start", "--no-loop", "-d", pgURL, "--slot", r.slot,
		"-o", "proto_version=1", "-o", "publication_names="+r.publication,
		"--status-interval", "1", "--fsync-interval", "0", "--endpos", endLSN, "-f", "/dev/null")
	r.cmd.Stdout, r.cmd.Stderr = log, log
	if err := r.cmd.Start(); err != nil {
		log.Close()
		return fmt.Errorf("start pg_recvlogical: %w", err)
	}
	r.exited = make(chan error, 1)
	go func() { r.exited <- r.cmd.Wait() }()
	return nil
}

func (r *recvlogical) component() component {
	return component{name: "pg_recvlogical", pids: func() []int {
		if r.cmd == nil || r.cmd.Process == nil {
			return nil
		}
		return []int{r.cmd.Process.Pid}
	}}
}

// wait waits until the slot's confirmed_flush_lsn has reached endLSN or
// pg_recvlogical has exited at its end position, whichever comes first.
// pg_recvlogical exits once it has received WAL past endLSN (a record or a
// keepalive) and confirms what it wrote: the last backlog commit, which can
// be before endLSN (WAL of nothing to decode can follow it).
func (r *recvlogical) wait(ctx context.Context, db *pgx.Conn, endLSN string, limit time.Duration) error {
	deadline := time.After(limit)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		var reached bool
		err := db.QueryRow(ctx, "select coalesce((select confirmed_flush_lsn >= $2::pg_lsn from pg_replication_slots where slot_name = $1), false)", r.slot, endLSN).Scan(&reached)
		if err != nil {
			return err
		}
		if reached {
			return nil
		}
		select {
		case err := <-r.exited:
			r.exited <- err // for stop
			if err != nil {
				return fmt.Errorf("pg_recvlogical: %w (log: %s)", err, r.log.Name())
			}
			return nil
		case <-deadline:
			return fmt.Errorf("pg_recvlogical not done after %s (log: %s)", limit, r.log.Name())
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// stop waits up to 10 s for pg_recvlogical to exit by itself, then kills it.
// It does nothing after the first call.
func (r *recvlogical) stop() {
	if r.cmd == nil || r.stopped {
		return
	}
	r.stopped = true
	select {
	case <-r.exited:
	case <-time.After(10 * time.Second):
		r.cmd.Process.Kill()
		<-r.exited
	}
	r.log.Close()
}

// used is the CPU time and peak memory of pg_recvlogical once it exited:
// after it exits, /proc no longer has them.
func (r *recvlogical) used() (usage, bool) {
	if r.cmd == nil || r.cmd.ProcessState == nil {
		return usage{}, false
	}
	st := r.cmd.ProcessState
	u := usage{cpu: st.UserTime() + st.SystemTime()}
	if ru, ok := st.SysUsage().(*syscall.Rusage); ok {
		u.peakMiB = float64(ru.Maxrss) / 1024 // kB on Linux
		u.rssMiB = u.peakMiB
	}
	return u, true
}
