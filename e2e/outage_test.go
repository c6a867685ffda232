package e2e

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/changes-dev/changes/topology"
)

// TestRideOutBrokerOutage runs `changes run` and `changes serve` on a
// broker of the test's own (the shared stack's broker is other tests'):
//
//  1. both start while the broker is down, do not exit, answer /readyz 503,
//     and come up by themselves once the broker starts; a row committed
//     then reaches the query server;
//  2. the broker is paused (SIGSTOP) for longer than the clients' 30 s
//     timeouts: both keep running, /readyz answers 503 during the pause,
//     the query server goes on answering reads from its local copy with
//     X-Changes-Stale growing, and after SIGCONT both are ready again and a
//     row committed during the pause reaches the query server.
//
// It prints the recovery times. The broker comes from stack/stack.sh with a
// stack directory and ports of its own (PostgreSQL is the shared one).
func TestRideOutBrokerOutage(t *testing.T) {
	e := stack(t)
	if testing.Short() {
		t.Skip("starts a broker of its own and pauses it for 35 s")
	}
	if _, err := exec.LookPath("java"); err != nil {
		msg := "TestRideOutBrokerOutage starts a broker of its own with stack/stack.sh: it needs java (apt-get install openjdk-17-jre-headless)"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	broker := newOutageBroker(t, e)

	name := uniqueName("outage")
	table := name + "_item"
	cfg := testConfig(t, e, name, []topology.EntityConfig{{Type: "item", Table: "public." + table, IDColumn: "id", Partitions: 2}})
	cfg.Kafka.Brokers = []string{broker.addr}
	// Cleanups run in reverse: the slot, table and topics go before the
	// broker stops (newOutageBroker registered its stop first).
	cleanupStack(t, e, cfg, table)
	db, err := pgx.Connect(ctx, e.pgURL)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(context.Background())
	execSQL(t, ctx, db, "create table "+table+" (id bigint primary key, v text not null)")

	metricsAddr, serveAddr := freeAddr(t), freeAddr(t)
	configFile := writeConfig(t, cfg)
	extra := map[string]string{"CHANGES_KAFKA_BROKERS": "", "CHANGES_POSTGRES_URL": "",
		"CHANGES_METRICS_LISTEN": metricsAddr, "CHANGES_SERVE_LISTEN": serveAddr}
	run := startProcess(ctx, t, extra, "run", "--config", configFile)
	serve := startProcess(ctx, t, extra, "serve", "--config", configFile)

	ready := func(addr string) int { code, _, _ := httpGet(addr, "/readyz"); return code }
	waitUntil := func(what string, limit time.Duration, cond func() bool) time.Duration {
		t.Helper()
		start := time.Now()
		for !cond() {
			if time.Since(start) > limit {
				t.Fatalf("%s: not within %s\nrun:\n%s\nserve:\n%s", what, limit, run.tail(), serve.tail())
			}
			run.mustRun(t)
			serve.mustRun(t)
			time.Sleep(200 * time.Millisecond)
		}
		return time.Since(start)
	}
	entity := func(id int) (int, http.Header) {
		code, hdr, _ := httpGet(serveAddr, fmt.Sprintf("/v1/entities/item/%d", id))
		return code, hdr
	}

	t.Run("broker down at the start", func(t *testing.T) {
		time.Sleep(3 * time.Second) // a few tries of every part against the closed port
		run.mustRun(t)
		serve.mustRun(t)
		if c := ready(metricsAddr); c != http.StatusServiceUnavailable {
			t.Errorf("changes run /readyz with the broker down: %d, want 503", c)
		}
		if c := ready(serveAddr); c != http.StatusServiceUnavailable {
			t.Errorf("changes serve /readyz with the broker down: %d, want 503", c)
		}
		broker.up(t)
		up := time.Now()
		waitUntil("changes run ready after the broker started", 60*time.Second, func() bool { return ready(metricsAddr) == 200 })
		tRun := time.Since(up)
		waitUntil("changes serve ready after the broker started", 60*time.Second, func() bool { return ready(serveAddr) == 200 })
		tServe := time.Since(up)
		execSQL(t, ctx, db, "insert into "+table+" values (1, 'one')")
		tRow := waitUntil("row 1 served", 30*time.Second, func() bool { c, _ := entity(1); return c == 200 })
		t.Logf("broker started: changes run ready after %s, changes serve after %s; a row then took %s to be served",
			tRun.Round(100*time.Millisecond), tServe.Round(100*time.Millisecond), tRow.Round(100*time.Millisecond))
	})
	if t.Failed() {
		return
	}

	t.Run("broker paused mid-run", func(t *testing.T) {
		const pause = 35 * time.Second // longer than sarama's 30 s network timeouts
		broker.signal(t, syscall.SIGSTOP)
		paused := time.Now()
		resumed := false
		defer func() {
			if !resumed {
				broker.signal(t, syscall.SIGCONT)
			}
		}()
		// A row committed while Kafka is away: the capture cannot write it yet.
		execSQL(t, ctx, db, "insert into "+table+" values (2, 'two')")
		tDown := waitUntil("changes serve /readyz 503 while the broker is paused", pause-5*time.Second,
			func() bool { return ready(serveAddr) == http.StatusServiceUnavailable })
		tRunDown := waitUntil("changes run /readyz 503 while the broker is paused", pause-5*time.Second,
			func() bool { return ready(metricsAddr) == http.StatusServiceUnavailable })
		t.Logf("broker paused: serve /readyz 503 after %s, run after %s", tDown.Round(100*time.Millisecond), (tDown + tRunDown).Round(100*time.Millisecond))
		for time.Since(paused) < pause {
			run.mustRun(t)
			serve.mustRun(t)
			time.Sleep(time.Second)
		}
		// Reads go on from the local copy, saying how stale they are.
		code, hdr := entity(1)
		stale, _ := strconv.ParseFloat(hdr.Get("X-Changes-Stale"), 64)
		if code != 200 || stale < 10 {
			t.Errorf("GET of entity 1 during the pause: %d, X-Changes-Stale %q; want 200 and 10 s or more", code, hdr.Get("X-Changes-Stale"))
		}
		if c := ready(serveAddr); c != http.StatusServiceUnavailable {
			t.Errorf("changes serve /readyz at the pause's end: %d, want 503", c)
		}
		broker.signal(t, syscall.SIGCONT)
		resumed = true
		cont := time.Now()
		waitUntil("changes serve ready after the broker resumed", 60*time.Second, func() bool { return ready(serveAddr) == 200 })
		tServe := time.Since(cont)
		waitUntil("changes run ready after the broker resumed", 60*time.Second, func() bool { return ready(metricsAddr) == 200 })
		tRun := time.Since(cont)
		tRow := waitUntil("row 2 (committed during the pause) served", 60*time.Second, func() bool { c, _ := entity(2); return c == 200 })
		execSQL(t, ctx, db, "insert into "+table+" values (3, 'three')")
		tNew := waitUntil("row 3 (committed after the pause) served", 30*time.Second, func() bool { c, _ := entity(3); return c == 200 })
		_, hdr = entity(3)
		t.Logf("broker resumed after %s paused: serve ready after %s, run after %s, the row committed during the pause served after %s, a new row in %s; X-Changes-Stale now %s",
			pause, tServe.Round(100*time.Millisecond), tRun.Round(100*time.Millisecond), (tRun + tRow).Round(100*time.Millisecond), tNew.Round(100*time.Millisecond), hdr.Get("X-Changes-Stale"))
	})
}

// outageBroker is a one-node Kafka of a test's own, from stack/stack.sh.
type outageBroker struct {
	dir, addr string
	env       []string
}

// newOutageBroker picks free ports and a stack directory; the broker starts
// with up. It is stopped and its data removed at the test's end.
func newOutageBroker(t *testing.T, e env, extraEnv ...string) *outageBroker {
	t.Helper()
	port := 0
	for range 20 {
		p := freePort(t)
		// The controller listens on the next port.
		if ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p+1)); err == nil {
			ln.Close()
			port = p
			break
		}
	}
	if port == 0 {
		t.Fatal("no two free ports in a row for a broker")
	}
	dir, err := os.MkdirTemp("", "changes-outage-")
	if err != nil {
		t.Fatal(err)
	}
	b := &outageBroker{dir: dir, addr: fmt.Sprintf("127.0.0.1:%d", port)}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CHANGES_") {
			b.env = append(b.env, kv)
		}
	}
	// PostgreSQL is the shared stack's: the script starts only the broker.
	b.env = append(b.env, "CHANGES_STACK_DIR="+dir, "CHANGES_KAFKA_PORT="+strconv.Itoa(port), "CHANGES_POSTGRES_URL="+e.pgURL)
	b.env = append(b.env, extraEnv...)
	t.Cleanup(func() {
		b.signal(t, syscall.SIGCONT)
		if out, err := b.stack("down"); err != nil {
			t.Logf("stopping the test's broker: %v\n%s", err, out)
		}
		os.RemoveAll(dir)
	})
	return b
}

func (b *outageBroker) stack(cmd string) (string, error) {
	c := exec.Command("bash", "../stack/stack.sh", cmd)
	c.Env = b.env
	out, err := c.CombinedOutput()
	return string(out), err
}

func (b *outageBroker) up(t *testing.T) {
	t.Helper()
	start := time.Now()
	if out, err := b.stack("up"); err != nil {
		t.Fatalf("starting the test's broker: %v\n%s", err, out)
	}
	t.Logf("the test's broker is up at %s after %s", b.addr, time.Since(start).Round(100*time.Millisecond))
}

func (b *outageBroker) signal(t *testing.T, sig syscall.Signal) {
	raw, err := os.ReadFile(filepath.Join(b.dir, "kafka", "kafka.pid"))
	if err != nil {
		return // not started
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(raw)))
	if err != nil {
		t.Errorf("broker pid file: %v", err)
		return
	}
	if err := syscall.Kill(pid, sig); err != nil {
		t.Errorf("signal %v to the broker: %v", sig, err)
	}
}
