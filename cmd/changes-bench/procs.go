package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/changes-dev/changes/internal/procstat"
)

// component is a process (or, for PostgreSQL, every process of a command
// name) whose CPU and memory the benchmark reports.
type component struct {
	name string
	pids func() []int
}

// usage is CPU time and memory of a component at one moment.
type usage struct {
	cpu     time.Duration
	rssMiB  float64
	peakMiB float64
}

func (c component) usage() usage {
	var u usage
	for _, pid := range c.pids() {
		st, err := procstat.Read(pid)
		if err != nil {
			continue
		}
		// Ended children count too: PostgreSQL's backends, counted by the
		// postmaster once they exit.
		u.cpu += st.CPU + st.ChildrenCPU
		u.rssMiB += procStatusMiB(pid, "VmRSS")
		u.peakMiB += procStatusMiB(pid, "VmHWM")
	}
	return u
}

func procStatusMiB(pid int, field string) float64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
			return kb / 1024
		}
	}
	return 0
}

// pidsNamed lists the processes whose command name is name.
func pidsNamed(name string) []int {
	var out []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		comm, err := os.ReadFile(filepath.Join("/proc", e.Name(), "comm"))
		if err == nil && strings.TrimSpace(string(comm)) == name {
			out = append(out, pid)
		}
	}
	return out
}

// running reports whether any of the component's processes is alive.
func (c component) running() bool {
	for _, pid := range c.pids() {
		if syscall.Kill(pid, 0) == nil {
			return true
		}
	}
	return false
}

// postmaster lists the postmaster whose pid file (postmaster.pid, its first
// line) is path, and its processes (its children): one server's, not every
// postgres process on the machine (other servers on a shared one).
func postmaster(path string) func() []int {
	return func() []int {
		raw, err := os.ReadFile(path)
		if err != nil {
			return nil
		}
		pid, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(raw), "\n", 2)[0]))
		if err != nil {
			return nil
		}
		out := []int{pid}
		for _, child := range pidsNamed("postgres") {
			if parentOf(child) == pid {
				out = append(out, child)
			}
		}
		return out
	}
}

// parentOf is pid's parent pid, or 0.
func parentOf(pid int) int {
	st, err := procstat.Read(pid)
	if err != nil {
		return 0
	}
	return st.PPID
}

// pidFile reads a pid file.
func pidFile(path string) func() []int {
	return func() []int {
		raw, err := os.ReadFile(path)
		if err != nil {
			return nil
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(raw)))
		if err != nil {
			return nil
		}
		return []int{pid}
	}
}

// child is a `changes` subcommand the benchmark runs as its own process.
type child struct {
	name string
	cmd  *exec.Cmd
	log  *os.File
}

// startChild starts bin with args, its output in name.log in dir, its
// environment the bench's plus env.
func startChild(bin, dir, name string, env []string, args ...string) (*child, error) {
	log, err := os.Create(filepath.Join(dir, name+".log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.Env = append(os.Environ(), env...)
	if err := cmd.Start(); err != nil {
		log.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	return &child{name: name, cmd: cmd, log: log}, nil
}

func (c *child) component() component {
	return component{name: c.name, pids: func() []int { return []int{c.cmd.Process.Pid} }}
}

// stop ends the child with SIGTERM and waits for it.
func (c *child) stop() error {
	c.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- c.cmd.Wait() }()
	select {
	case err := <-done:
		c.log.Close()
		if err != nil {
			return fmt.Errorf("%s: %w (log: %s)", c.name, err, c.log.Name())
		}
		return nil
	case <-time.After(30 * time.Second):
		c.cmd.Process.Kill()
		<-done
		c.log.Close()
		return fmt.Errorf("%s did not stop within 30 s", c.name)
	}
}
