package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// faultStack is a stack instance of the fault suite's own (stack/stack.sh
// with its own folder and ports), so it can kill, pause and crash the broker
// and PostgreSQL without disturbing the shared stack other tests use.
type faultStack struct {
	t         testing.TB
	dir       string
	host      string // the address PostgreSQL and Kafka listen on
	pgPort    int
	kafkaPort int
	nodes     int
	pgURL     string
	brokers   []string
}

// newFaultStack starts PostgreSQL and nodes Kafka brokers on free ports in
// a new folder; the cleanup stops them and deletes the folder, keeping the
// logs of a failed run.
func newFaultStack(t testing.TB, nodes int, host string) *faultStack {
	t.Helper()
	reapFaultStacks(t)
	// Under /tmp: the postgres user must reach the folder.
	dir, err := os.MkdirTemp("/tmp", "changes-faults-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	s := &faultStack{t: t, dir: dir, nodes: nodes, host: host}
	s.pgPort, s.kafkaPort = freePorts(t, host, 1+2*nodes)
	// Whoever finds this folder with its test process gone stops the stack.
	owner := fmt.Sprintf("%d %d %d %d %s\n", os.Getpid(), s.pgPort, s.kafkaPort, nodes, host)
	if err := os.WriteFile(filepath.Join(dir, "owner"), []byte(owner), 0o644); err != nil {
		t.Fatal(err)
	}
	// TLS verified against the CA stack.sh makes: faults hit the platform
	// as it runs in production.
	s.pgURL = fmt.Sprintf("postgres://postgres@%s:%d/changes?sslmode=verify-full&sslrootcert=%s", host, s.pgPort, filepath.Join(dir, "tls", "ca.pem"))
	for n := range nodes {
		s.brokers = append(s.brokers, fmt.Sprintf("%s:%d", host, s.kafkaPort+2*n))
	}
	t.Cleanup(func() {
		if t.Failed() {
			keep := dir + "-logs"
			if err := os.Rename(filepath.Join(dir, "logs"), keep); err == nil {
				t.Logf("the fault stack's logs are in %s", keep)
			}
		}
		if out, err := s.sh("reset"); err != nil {
			t.Errorf("fault stack reset: %v\n%s", err, out)
		}
		os.RemoveAll(dir)
	})
	if out, err := s.sh("up"); err != nil {
		t.Fatalf("fault stack up: %v\n%s", err, out)
	}
	return s
}

// reapFaultStacks stops and deletes the stacks of fault suite runs that died
// without their cleanup (a panic, a -timeout).
func reapFaultStacks(t testing.TB) {
	dirs, _ := filepath.Glob("/tmp/changes-faults-*")
	for _, dir := range dirs {
		b, err := os.ReadFile(filepath.Join(dir, "owner"))
		if err != nil {
			continue
		}
		var pid int
		s := &faultStack{t: t, dir: dir}
		if _, err := fmt.Sscan(string(b), &pid, &s.pgPort, &s.kafkaPort, &s.nodes, &s.host); err != nil {
			continue
		}
		if syscall.Kill(pid, 0) == nil {
			continue // its run goes on
		}
		t.Logf("stopping the stack a dead fault suite run left in %s", dir)
		s.sh("reset")
		os.RemoveAll(dir)
	}
}

// freePorts finds a PostgreSQL port and, after it, n-1 consecutive free
// ports for the brokers and their controllers.
func freePorts(t testing.TB, host string, n int) (pg, kafka int) {
	t.Helper()
	free := func(p int) bool {
		l, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(p)))
		if err != nil {
			return false
		}
		l.Close()
		return true
	}
	// Below the ephemeral range (32768-60999 on Linux): a port in it can be
	// taken by any client's outgoing connection while the service is down,
	// and PostgreSQL restarted after a crash then fails to bind (seen).
	for base := 21000 + int(time.Now().UnixNano()%500)*10; base < 32760; base += 10 {
		ok := true
		for p := base; p < base+n && ok; p++ {
			ok = free(p)
		}
		if ok {
			return base, base + 1
		}
	}
	t.Fatal("no free ports for the fault stack")
	return 0, 0
}

// sh runs stack/stack.sh with this instance's settings and none of the
// shared stack's (CHANGES_POSTGRES_URL or CHANGES_KAFKA_BROKERS would make
// it use the shared services).
func (s *faultStack) sh(args ...string) (string, error) {
	cmd := exec.Command("bash", append([]string{"../stack/stack.sh"}, args...)...)
	cmd.Env = cleanEnv(
		"CHANGES_STACK_DIR="+s.dir,
		"CHANGES_PG_PORT="+strconv.Itoa(s.pgPort),
		"CHANGES_KAFKA_PORT="+strconv.Itoa(s.kafkaPort),
		"CHANGES_KAFKA_NODES="+strconv.Itoa(s.nodes),
		"CHANGES_STACK_HOST="+s.host,
	)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// must runs sh and fails the test on an error.
func (s *faultStack) must(args ...string) {
	s.t.Helper()
	if out, err := s.sh(args...); err != nil {
		s.t.Fatalf("stack.sh %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// cleanEnv is the environment without any CHANGES_ variable, plus extra.
func cleanEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CHANGES_") {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

// proc is one process of the platform under test (`changes run`, `changes
// serve`), supervised as systemd's Restart=always would: a process that
// exits by itself is restarted after restartDelay and the exit is recorded,
// because the platform must never need that.
type proc struct {
	t       testing.TB
	name    string
	args    []string
	env     []string
	logPath string
	netns   string // run inside this network namespace, if set

	mu      sync.Mutex
	cmd     *exec.Cmd
	done    chan struct{}
	stopped bool
	exits   []procExit
	started int
}

// procExit is an exit the suite did not cause.
type procExit struct {
	at   time.Time
	name string
	err  string
	tail string // the log's last lines
}

const restartDelay = 2 * time.Second

func newProc(t testing.TB, dir, name string, env []string, args ...string) *proc {
	p := &proc{t: t, name: name, args: args, env: cleanEnv(env...), logPath: filepath.Join(dir, name+".log")}
	t.Cleanup(p.stop)
	return p
}

// start starts the process; it must not be running.
func (p *proc) start() {
	p.t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.startLocked(); err != nil {
		p.t.Fatal(err)
	}
}

func (p *proc) startLocked() error {
	f, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	p.started++
	fmt.Fprintf(f, "==== %s start %d at %s\n", p.name, p.started, time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(binary(p.t), p.args...)
	if p.netns != "" {
		cmd = exec.Command("ip", append([]string{"netns", "exec", p.netns, binary(p.t)}, p.args...)...)
	}
	cmd.Env = p.env
	// A test binary that dies (panic, -timeout) takes the platform with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	done := make(chan struct{})
	p.cmd, p.done = cmd, done
	go func() {
		err := cmd.Wait()
		f.Close()
		p.mu.Lock()
		defer p.mu.Unlock()
		close(done)
		if p.cmd != cmd || p.stopped {
			return // killed or stopped by the suite
		}
		p.exits = append(p.exits, procExit{at: time.Now(), name: p.name, err: fmt.Sprint(err), tail: tailFile(p.logPath, 6)})
		p.cmd = nil
		go func() {
			time.Sleep(restartDelay)
			p.mu.Lock()
			defer p.mu.Unlock()
			if p.cmd == nil && !p.stopped {
				if err := p.startLocked(); err != nil {
					p.exits = append(p.exits, procExit{at: time.Now(), name: p.name, err: err.Error()})
				}
			}
		}()
	}()
	return nil
}

// kill sends SIGKILL and waits until the process is gone. A process the
// supervisor is about to restart is left alone.
func (p *proc) kill() {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.cmd = nil
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Signal(syscall.SIGKILL)
	<-done
}

// restart kills the process (if it runs) and starts it again.
func (p *proc) restart() {
	p.t.Helper()
	p.kill()
	p.start()
}

// stop ends the process with SIGTERM (SIGKILL after 20 s) for good.
func (p *proc) stop() {
	p.mu.Lock()
	p.stopped = true
	cmd, done := p.cmd, p.done
	p.cmd = nil
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		cmd.Process.Signal(syscall.SIGKILL)
		<-done
	}
}

func (p *proc) unexpectedExits() []procExit {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]procExit(nil), p.exits...)
}

// netns is a network namespace joined to the host by a veth pair, for a
// process whose network the suite cuts: the stack listens on the host end's
// address, the process runs inside.
type netns struct {
	name, hostDev, nsDev string
	hostIP, nsIP         string
}

func newNetns(t testing.TB) *netns {
	t.Helper()
	b := make([]byte, 2)
	rand.Read(b)
	id := hex.EncodeToString(b)
	n := &netns{name: "chgf" + id, hostDev: "chgf" + id + "h", nsDev: "chgf" + id + "n",
		hostIP: fmt.Sprintf("10.213.%d.1", b[0]), nsIP: fmt.Sprintf("10.213.%d.2", b[0])}
	t.Cleanup(func() {
		exec.Command("ip", "link", "del", n.hostDev).Run()
		exec.Command("ip", "netns", "del", n.name).Run()
	})
	for _, args := range [][]string{
		{"netns", "add", n.name},
		{"link", "add", n.hostDev, "type", "veth", "peer", "name", n.nsDev},
		{"link", "set", n.nsDev, "netns", n.name},
		{"addr", "add", n.hostIP + "/30", "dev", n.hostDev},
		{"link", "set", n.hostDev, "up"},
		{"netns", "exec", n.name, "ip", "addr", "add", n.nsIP + "/30", "dev", n.nsDev},
		{"netns", "exec", n.name, "ip", "link", "set", n.nsDev, "up"},
		{"netns", "exec", n.name, "ip", "link", "set", "lo", "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s (the network cut needs root and ip netns)", strings.Join(args, " "), err, out)
		}
	}
	return n
}

// cut drops every packet both ways on the veth pair, silently (a queue of
// length 0), as a partition does: no reset, no unreachable, just silence.
func (n *netns) cut(t testing.TB) {
	t.Helper()
	for _, args := range [][]string{
		{"tc", "qdisc", "add", "dev", n.hostDev, "root", "pfifo", "limit", "0"},
		{"ip", "netns", "exec", n.name, "tc", "qdisc", "add", "dev", n.nsDev, "root", "pfifo", "limit", "0"},
	} {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// heal ends the cut.
func (n *netns) heal(t testing.TB) {
	t.Helper()
	for _, args := range [][]string{
		{"tc", "qdisc", "del", "dev", n.hostDev, "root"},
		{"ip", "netns", "exec", n.name, "tc", "qdisc", "del", "dev", n.nsDev, "root"},
	} {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Errorf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// tailFile returns the last n lines of a file.
func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// grepFile counts the lines of a file that contain s.
func grepFile(path, s string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	return bytes.Count(b, []byte(s))
}

// waitFor polls cond every 100 ms until it is true or ctx ends.
func waitFor(ctx context.Context, cond func() bool) bool {
	for !cond() {
		select {
		case <-ctx.Done():
			return false
		case <-time.After(100 * time.Millisecond):
		}
	}
	return true
}
