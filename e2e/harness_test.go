package e2e

// The harness every end-to-end test uses: the shared stack and a test's own
// names and config on it, its cleanup, the changes binary and the processes
// started from it, Kafka reads, free ports and HTTP, running a view and the
// platform, and waiting for a slot, a group or the views.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"

	"github.com/changes-dev/changes/capture"
	"github.com/changes-dev/changes/internal/dbcheck"
	"github.com/changes-dev/changes/internal/kread"
	"github.com/changes-dev/changes/internal/platform"
	"github.com/changes-dev/changes/internal/syncbuf"
	"github.com/changes-dev/changes/topology"
	"github.com/changes-dev/changes/views"
)

// ---------------------------------------------------------------- the stack and a test's place on it

// env is the real stack a test runs against, from the environment that
// stack/stack.sh env prints (and .ci/run exports).
type env struct {
	brokers string
	pgURL   string
}

// stack returns the stack's addresses. Without them the test is skipped on a
// developer's machine and fails under CI=true: CI must never pass by skipping.
func stack(t testing.TB) env {
	t.Helper()
	e := env{brokers: os.Getenv("CHANGES_KAFKA_BROKERS"), pgURL: os.Getenv("CHANGES_POSTGRES_URL")}
	if e.brokers == "" || e.pgURL == "" {
		msg := "end-to-end tests need CHANGES_KAFKA_BROKERS and CHANGES_POSTGRES_URL: run `stack/stack.sh up && eval \"$(stack/stack.sh env)\"`, or `make test`"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, e.pgURL)
	if err != nil {
		t.Fatalf("postgres at CHANGES_POSTGRES_URL is not reachable: %v", err)
	}
	defer conn.Close(ctx)
	dropStaleSlots.Do(func() {
		// A run killed by -timeout skips its cleanup; its slot would hold WAL
		// and a slot of the stack's limited number forever.
		_, err = conn.Exec(ctx, `select pg_drop_replication_slot(slot_name) from pg_replication_slots
			where not active and slot_name ~ '^e2e_[a-z_]+_[0-9a-f]{8}$'`)
		if err != nil {
			t.Logf("dropping stale test slots: %v", err)
		}
	})
	return e
}

// uniqueName returns a name no other test run uses, for topics, slots and tables.
func uniqueName(prefix string) string {
	b := make([]byte, 4)
	rand.Read(b)
	return "e2e_" + prefix + "_" + hex.EncodeToString(b)
}

// testConfig builds a validated config for the stack with its own topic
// prefix, slot, publication and storage, and entity types for tables.
func testConfig(t testing.TB, e env, name string, entities []topology.EntityConfig) *topology.Config {
	t.Helper()
	rf := os.Getenv("CHANGES_KAFKA_REPLICATION_FACTOR")
	if rf == "" {
		rf = "1"
	}
	cfg, err := topology.Parse(fmt.Appendf(nil, "kafka: {brokers: [%q], replication_factor: %s}\npostgres: {url: %q}\nentities: [{type: placeholder, table: placeholder}]\n",
		e.brokers, rf, e.pgURL))
	if err != nil {
		t.Fatal(err)
	}
	// Fields set after Parse, so CHANGES_* variables cannot make two runs share them.
	cfg.Postgres.Slot = name
	cfg.Postgres.Publication = name
	cfg.Topics.Prefix = "e2e." + name
	cfg.Storage = t.TempDir()
	cfg.Metrics = ""
	cfg.Entities = entities
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// cleanupStack removes what a test left in PostgreSQL and Kafka. It runs after
// the platform stopped (t.Cleanup runs in reverse order).
func cleanupStack(t testing.TB, e env, cfg *topology.Config, tables ...string) {
	onCleanup(t, e, func(ctx context.Context, conn *pgx.Conn) {
		dropSlot(t, ctx, conn, cfg.Postgres.Slot)
		stmts := []string{"drop publication if exists " + pgx.Identifier{cfg.Postgres.Publication}.Sanitize()}
		for _, tb := range tables {
			stmts = append(stmts, "drop table if exists "+tb)
		}
		for _, s := range stmts {
			if _, err := conn.Exec(ctx, s); err != nil {
				t.Errorf("cleanup: %s: %v", s, err)
			}
		}
		deleteTopics(t, cfg)
	})
}

// onCleanup runs fn at the test's cleanup with a connection of its own.
func onCleanup(t testing.TB, e env, fn func(context.Context, *pgx.Conn)) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, e.pgURL)
		if err != nil {
			t.Errorf("cleanup: %v", err)
			return
		}
		defer conn.Close(ctx)
		fn(ctx, conn)
	})
}

// dropSlot drops a test's replication slot, waiting for the capture to let
// go of it: the slot stays active for a moment after the capture disconnects.
func dropSlot(t testing.TB, ctx context.Context, conn *pgx.Conn, slot string) {
	var err error
	for i := 0; i < 50; i++ {
		_, err = conn.Exec(ctx, "select pg_drop_replication_slot(slot_name) from pg_replication_slots where slot_name = $1", slot)
		if err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Errorf("cleanup: drop slot %s: %v", slot, err)
}

// deleteTopics deletes the topics of cfg; a topic that does not exist is fine.
func deleteTopics(t testing.TB, cfg *topology.Config) {
	admin, err := topology.NewClusterAdmin(cfg.Kafka)
	if err != nil {
		t.Errorf("cleanup: %v", err)
		return
	}
	defer admin.Close()
	for _, spec := range topology.New(cfg).Topics() {
		admin.DeleteTopic(spec.Name)
	}
}

// testLogger writes the platform's logs through t.Log, so they show with the
// failing test only. Lines logged after the test's last cleanup (goka leaves
// a goroutine or two behind) are dropped: t.Log would panic on them.
func testLogger(t testing.TB) *slog.Logger {
	w := &tWriter{t: t}
	// Runs after the cleanups registered later, such as the platform's stop.
	t.Cleanup(func() { w.done.Store(true) })
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

// saramaConfig is topology.SaramaConfig that fails the test on an error.
func saramaConfig(t testing.TB, k topology.KafkaConfig) *sarama.Config {
	t.Helper()
	c, err := topology.SaramaConfig(k)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// writeConfig writes cfg's essentials as a config file for the binary.
func writeConfig(t testing.TB, cfg *topology.Config) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "changes.yaml")
	body := fmt.Sprintf("kafka: {brokers: [%q], replication_factor: %d}\npostgres: {url: %q, slot: %s, publication: %s}\ntopics: {prefix: %q}\nstorage: %q\nmetrics: \"\"\nentities:\n",
		cfg.Kafka.Brokers[0], cfg.Kafka.ReplicationFactor, cfg.Postgres.URL, cfg.Postgres.Slot, cfg.Postgres.Publication, cfg.Topics.Prefix, cfg.Storage)
	for _, e := range cfg.Entities {
		body += fmt.Sprintf("  - {type: %s, table: %s, id_column: %s, partitions: %d}\n", e.Type, e.Table, e.IDColumn, e.Partitions)
	}
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

var dropStaleSlots sync.Once

type tWriter struct {
	t    testing.TB
	done atomic.Bool
}

func (w *tWriter) Write(p []byte) (int, error) {
	if !w.done.Load() {
		w.t.Log(string(p[:len(p)-1]))
	}
	return len(p), nil
}

// itemTable sets up a test of one entity type "item" (2 partitions) on its
// own table, created with columns: the config (tune may change it before
// the topics are created), a connection closed at the test's end, and the
// cleanup of everything it made.
func itemTable(t testing.TB, ctx context.Context, e env, prefix, columns string, partitions int, tune func(*topology.Config)) (*topology.Config, *topology.Topology, *pgx.Conn, string) {
	t.Helper()
	name := uniqueName(prefix)
	table := name + "_item"
	cfg := testConfig(t, e, name, []topology.EntityConfig{{Type: "item", Table: "public." + table, IDColumn: "id", Partitions: partitions}})
	if tune != nil {
		tune(cfg)
	}
	topo := topology.New(cfg)
	cleanupStack(t, e, cfg, table)
	db, err := pgx.Connect(ctx, e.pgURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close(context.Background()) })
	execSQL(t, ctx, db, "create table "+table+" ("+columns+")")
	if err := platform.EnsureTopics(topo); err != nil {
		t.Fatal(err)
	}
	return cfg, topo, db, table
}

// ---------------------------------------------------------------- the changes binary and its processes

// binary builds cmd/changes once per test run.
func binary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "changes-e2e-bin")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "changes")
		out, err := exec.Command("go", "build", "-buildvcs=false", "-o", binPath, "../cmd/changes").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// command runs the binary with the stack's environment plus extra.
func command(ctx context.Context, t testing.TB, extra map[string]string, args ...string) (*exec.Cmd, *bytes.Buffer, *bytes.Buffer) {
	cmd := exec.CommandContext(ctx, binary(t), args...)
	cmd.Env = os.Environ()
	for k, v := range extra {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	return cmd, &stdout, &stderr
}

func execSQL(t testing.TB, ctx context.Context, db *pgx.Conn, sql string) {
	t.Helper()
	if _, err := db.Exec(ctx, sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// ---------------------------------------------------------------- Kafka

// isWatermark reports whether m is a progress watermark of the history, or
// a copy of one in an events topic or a snapshot table: the tests that
// count or compare changes pass them over.
func isWatermark(m *sarama.ConsumerMessage) bool {
	return string(m.Key) == capture.WatermarkKey || topology.IsWatermarkKey(string(m.Key))
}

// readAll reads the committed records of the history from its start to its
// current end (the last stable offset: markers take offsets too), less the
// progress watermarks.
func readAll(t testing.TB, ctx context.Context, cfg *topology.Config, topic string) []*sarama.ConsumerMessage {
	t.Helper()
	client, err := topology.NewClient(cfg.Kafka)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	end, err := kread.End(client, topic, 0)
	if err != nil {
		t.Fatal(err)
	}
	var got []*sarama.ConsumerMessage
	err = kread.Range(ctx, client, topic, 0, 0, end, func(r *kread.Record) (bool, error) {
		if m := r.Message(topic, 0); !isWatermark(m) {
			got = append(got, m)
		}
		return true, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// lastRecord returns the last committed record of a single-partition topic
// written in transactions (the offset before the end may be a marker),
// progress watermarks passed over.
func lastRecord(t testing.TB, ctx context.Context, client sarama.Client, topic string) *sarama.ConsumerMessage {
	t.Helper()
	end, err := kread.End(client, topic, 0)
	if err != nil {
		t.Fatal(err)
	}
	var last *sarama.ConsumerMessage
	for from := end - 16; last == nil && from+16 > 0; from -= 16 {
		err := kread.Range(ctx, client, topic, 0, max(from, 0), from+16, func(r *kread.Record) (bool, error) {
			if m := r.Message(topic, 0); !isWatermark(m) {
				last = m
			}
			return true, nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if last == nil {
		t.Fatalf("%s holds no record", topic)
	}
	return last
}

// ---------------------------------------------------------------- processes, ports and HTTP

// process is a `changes` command the test started; it is stopped at
// the test's end.
type process struct {
	name   string
	cmd    *exec.Cmd
	stderr *syncbuf.Buffer
	done   chan struct{}
}

func startProcess(ctx context.Context, t *testing.T, extra map[string]string, args ...string) *process {
	t.Helper()
	cmd, _, _ := command(ctx, t, extra, args...)
	p := &process{name: args[0], cmd: cmd, stderr: &syncbuf.Buffer{}, done: make(chan struct{})}
	cmd.Stderr = p.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		select {
		case <-p.done:
		case <-time.After(15 * time.Second):
			cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("changes %s stderr:\n%s", p.name, p.stderr)
		}
	})
	return p
}

// mustRun fails the test if the process exited.
func (p *process) mustRun(t *testing.T) {
	t.Helper()
	select {
	case <-p.done:
		t.Fatalf("changes %s exited (%v):\n%s", p.name, p.cmd.ProcessState, p.tail())
	default:
	}
}

func (p *process) tail() string {
	lines := strings.Split(p.stderr.String(), "\n")
	return strings.Join(lines[max(len(lines)-40, 0):], "\n")
}

// freePort is a free port on 127.0.0.1 below the ephemeral range
// (32768-60999 on Linux), so no outgoing connection takes it while the
// service that is to listen on it is down (a broker the test starts late).
func freePort(t *testing.T) int {
	t.Helper()
	for range 200 {
		p := 20000 + mrand.IntN(12000)
		if ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p)); err == nil {
			ln.Close()
			return p
		}
	}
	t.Fatal("no free port below 32000")
	return 0
}

func freeAddr(t *testing.T) string { return fmt.Sprintf("127.0.0.1:%d", freePort(t)) }

// httpGet GETs path from addr with a short timeout; code 0 means no answer.
func httpGet(addr, path string) (int, http.Header, string) {
	c := http.Client{Timeout: 3 * time.Second}
	resp, err := c.Get("http://" + addr + path)
	if err != nil {
		return 0, nil, err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(body)
}

// runView runs a view of typ until the test ends (then it waits for it to
// stop) and returns it; WaitRecovered is the caller's.
func runView(t testing.TB, ctx context.Context, topo *topology.Topology, typ string, opts ...views.Option) *views.View {
	t.Helper()
	v, err := views.New(topo, typ, append([]views.Option{views.WithLogger(testLogger(t)), views.WithStorageDir(t.TempDir())}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	vctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- v.Run(vctx) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("view %s stopped with %v", typ, err)
		}
	})
	return v
}

// ---------------------------------------------------------------- waiting for the platform

func waitSlotActive(t testing.TB, ctx context.Context, db *pgx.Conn, slot string) {
	t.Helper()
	if err := platform.WaitSlotActive(ctx, db, slot); err != nil {
		t.Fatal(err)
	}
}

// waitViewsEqual waits until every view equals its table, value by value.
func waitViewsEqual(t testing.TB, ctx context.Context, db *pgx.Conn, topo *topology.Topology, vs map[string]*views.View) {
	t.Helper()
	// A view answers only once it runs; it may still be starting.
	for _, v := range vs {
		if err := v.WaitRecovered(ctx); err != nil {
			t.Fatal(err)
		}
	}
	var last []string
	for {
		last = last[:0]
		for _, typ := range topo.EntityTypes() {
			ent, _ := topo.Config().Entity(typ)
			rows, err := dbcheck.Rows(ctx, db, ent.Table, ent.KeyColumns())
			if err != nil {
				t.Fatal(err)
			}
			states, err := dbcheck.Collect(vs[typ].Each)
			if err != nil {
				t.Fatal(err)
			}
			for _, d := range dbcheck.Diff(rows, states, 5) {
				last = append(last, typ+": "+d)
			}
		}
		if len(last) == 0 {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("views never equalled the database:\n  %s", strings.Join(last, "\n  "))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// readHistory reads the history from its start until it has n records, then
// checks for a moment that no further (duplicate) record follows. Progress
// watermarks are passed over.
func readHistory(t testing.TB, ctx context.Context, cfg *topology.Config, topic string, n int) []*sarama.ConsumerMessage {
	t.Helper()
	consumer, err := sarama.NewConsumer(cfg.Kafka.Brokers, saramaConfig(t, cfg.Kafka))
	if err != nil {
		t.Fatal(err)
	}
	defer consumer.Close()
	pc, err := consumer.ConsumePartition(topic, 0, sarama.OffsetOldest)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	var got []*sarama.ConsumerMessage
	for len(got) < n {
		select {
		case m := <-pc.Messages():
			if !isWatermark(m) {
				got = append(got, m)
			}
		case err := <-pc.Errors():
			t.Fatal(err)
		case <-ctx.Done():
			t.Fatalf("history has %d records, want %d", len(got), n)
		}
	}
	quiet := time.After(time.Second)
	for {
		select {
		case m := <-pc.Messages():
			if !isWatermark(m) {
				return append(got, m)
			}
		case <-quiet:
			return got
		}
	}
}

func startPlatform(t testing.TB, ctx context.Context, topo *topology.Topology) *platformRun {
	t.Helper()
	log := testLogger(t)
	runCtx, cancel := context.WithCancel(ctx)
	g, gctx := errgroup.WithContext(runCtx)
	g.Go(func() error {
		err := platform.Run(gctx, topo, platform.All, log, nil, nil)
		if err != nil && runCtx.Err() == nil {
			t.Errorf("platform failed while the test runs: %v", err) // now, not at the end of a long wait
		}
		return err
	})
	vs := map[string]*views.View{}
	for _, typ := range topo.EntityTypes() {
		v, err := views.New(topo, typ, views.WithLogger(log), views.WithStorageDir(t.TempDir()))
		if err != nil {
			t.Fatal(err)
		}
		vs[typ] = v
		g.Go(func() error { return v.Run(gctx) })
	}
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := g.Wait(); err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("platform stopped with %v", err)
		}
	}
	t.Cleanup(stop)
	return &platformRun{stop: stop, views: vs}
}

// waitGroupAtEnd waits until group has committed the end offset every
// partition of topic had when it was called.
func waitGroupAtEnd(t testing.TB, ctx context.Context, cfg *topology.Config, group, topic string) {
	t.Helper()
	client, err := topology.NewClient(cfg.Kafka)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	admin, err := sarama.NewClusterAdminFromClient(client)
	if err != nil {
		t.Fatal(err)
	}
	parts, err := client.Partitions(topic)
	if err != nil {
		t.Fatal(err)
	}
	// The ends now: the topics keep growing by the capture's progress
	// watermarks while the group catches up.
	ends := map[int32]int64{}
	for _, p := range parts {
		if ends[p], err = client.GetOffset(topic, p, sarama.OffsetNewest); err != nil {
			t.Fatal(err)
		}
	}
	for {
		res, err := admin.ListConsumerGroupOffsets(group, map[string][]int32{topic: parts})
		if err != nil {
			t.Fatal(err)
		}
		done := true
		for _, p := range parts {
			if b := res.GetBlock(topic, p); b == nil || b.Offset < ends[p] {
				done = false
			}
		}
		if done {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("group %s did not reach the end of %s", group, topic)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// waitSlotInactive waits until PostgreSQL has noticed that the killed
// capture is gone and the slot can be taken again.
func waitSlotInactive(t testing.TB, ctx context.Context, db *pgx.Conn, slot string) {
	t.Helper()
	for {
		var active bool
		if err := db.QueryRow(ctx, "select active from pg_replication_slots where slot_name = $1", slot).Scan(&active); err != nil {
			t.Fatal(err)
		}
		if !active {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("slot %s stayed active after the capture was killed", slot)
		case <-time.After(20 * time.Millisecond):
		}
	}
}
