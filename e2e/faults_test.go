package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/jackc/pgx/v5"

	"github.com/changes-dev/changes/capture"
	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/internal/dbcheck"
	"github.com/changes-dev/changes/internal/kread"
	"github.com/changes-dev/changes/topology"
	"github.com/changes-dev/changes/views/server"
)

// The fault suite (issue 11): the real binary (`changes run`, `changes
// serve`) on a stack of the suite's own, a mixed workload, and faults
// injected repeatedly while it runs; then the history is compared with what
// was committed and every table served with the database. `make test` runs
// the short plan; `make faults` (CHANGES_FAULTS=full) the full plans.

// Fault kinds, as the table names them.
const (
	faultSnapshotKill   = "run SIGKILL in initial snapshot"
	faultSnapshotBroker = "broker SIGKILL+restart in initial snapshot"
	faultRunKill        = "run SIGKILL"
	faultCatchupKill    = "run SIGKILL in catch-up"
	faultServeKill      = "serve SIGKILL"
	faultBrokerKill     = "broker SIGKILL+restart"
	faultBrokerPause    = "broker SIGSTOP+SIGCONT"
	faultPGCrash        = "postgres -m immediate"
	faultLeaderKill     = "history leader SIGKILL"
	faultNetCut         = "network cut run <-> pg, kafka"
	faultIncrKill       = "run SIGKILL in incr. snapshot"
	faultIncrBroker     = "broker kill in incr. snapshot"
)

// faultPlan is one run of the suite.
type faultPlan struct {
	name           string
	nodes          int           // Kafka brokers: 1, or 3 (replication factor 3, min.insync.replicas 2)
	bigRows        int           // rows of big before the platform starts (the initial snapshot)
	snapshotKills  int           // kills of `changes run` while it copies big
	snapshotBroker bool          // a broker kill and restart while it copies big, before those
	faults         []string      // then these, in this order
	pause          time.Duration // how long a broker stays SIGSTOPped
	burst          int           // changes committed while `changes run` is down, before a catch-up kill
	netns          bool          // `changes run` in a network namespace, the stack on its veth (for faultNetCut)
	rate           float64       // transactions per second per worker (two workers)
	incrRows       int           // keys 1..incrRows of big copied again by each incremental snapshot fault
	timeout        time.Duration
}

var shortFaults = faultPlan{
	name: "short", nodes: 1, bigRows: 60_000, snapshotKills: 1,
	faults: []string{faultServeKill, faultBrokerKill, faultPGCrash, faultIncrKill, faultBrokerPause, faultCatchupKill},
	// Above sarama's 30 s network timeouts.
	pause: 35 * time.Second, burst: 5_000, rate: 40, incrRows: 30_000, timeout: 6 * time.Minute,
}

var fullFaults = []faultPlan{{
	// A million rows: the copy takes long enough (about 100,000 rows/s
	// here) for the broker kill and three run kills to land in it.
	name: "one-broker", nodes: 1, bigRows: 1_000_000, snapshotKills: 3, snapshotBroker: true,
	faults: []string{
		faultRunKill, faultServeKill, faultBrokerKill, faultPGCrash, faultRunKill, faultBrokerPause,
		faultCatchupKill, faultIncrKill, faultBrokerKill, faultRunKill, faultServeKill, faultPGCrash, faultRunKill,
		faultBrokerPause, faultIncrBroker, faultCatchupKill, faultBrokerKill, faultRunKill, faultPGCrash, faultRunKill,
	},
	pause: 60 * time.Second, burst: 60_000, rate: 60, incrRows: 200_000, timeout: 25 * time.Minute,
}, {
	name: "three-brokers", nodes: 3, bigRows: 100_000, snapshotKills: 1,
	faults: []string{faultLeaderKill, faultRunKill, faultIncrKill, faultLeaderKill, faultBrokerPause, faultLeaderKill, faultCatchupKill},
	pause:  40 * time.Second, burst: 30_000, rate: 60, incrRows: 50_000, timeout: 15 * time.Minute,
}, {
	name: "network-cut", nodes: 1, bigRows: 20_000, netns: true,
	faults: []string{faultNetCut, faultRunKill, faultNetCut},
	pause:  40 * time.Second, rate: 60, timeout: 10 * time.Minute,
}}

func TestFaults(t *testing.T) {
	stack(t) // the end-to-end gate: skip without a stack, fail under CI
	if testing.Short() {
		t.Skip("starts a stack of its own and injects faults for minutes")
	}
	// CHANGES_FAULTS=full runs every full plan, =<plan name> one of them.
	plans := []faultPlan{shortFaults}
	switch v := os.Getenv("CHANGES_FAULTS"); v {
	case "", "short":
	case "full":
		plans = fullFaults
	default:
		plans = nil
		for _, p := range fullFaults {
			if p.name == v {
				plans = append(plans, p)
			}
		}
		if plans == nil {
			t.Fatalf("CHANGES_FAULTS=%s: want short, full or the name of a full plan", v)
		}
	}
	for _, p := range plans {
		t.Run(p.name, func(t *testing.T) { runFaults(t, p) })
	}
}

// scenario is one plan running.
type scenario struct {
	t        *testing.T
	plan     faultPlan
	st       *faultStack
	ns       *netns // where `changes run` runs, if in a namespace
	cfg      *topology.Config
	run      *proc
	serve    *proc
	w        *workload
	serveURL string
	faults   []faultRecord
	http     *http.Client
	// resumes is how many times the copy of big had resumed before the
	// snapshot kills began (after snapshotBrokerKill).
	resumes int
	// incrementals counts the incremental snapshots requested.
	incrementals int
}

// faultRecord is one injected fault.
type faultRecord struct {
	kind      string
	start     time.Time
	recovery  time.Duration // from the fault's end until a change committed after it was served; 0: not measured
	recovered bool
	note      string
}

func runFaults(t *testing.T, p faultPlan) {
	ctx, cancel := context.WithTimeout(context.Background(), p.timeout)
	defer cancel()
	began := time.Now()
	host := "127.0.0.1"
	var ns *netns
	if p.netns {
		ns = newNetns(t)
		host = ns.hostIP
	}
	st := newFaultStack(t, p.nodes, host)
	t.Logf("%s: stack of %d broker(s) up in %s", p.name, p.nodes, time.Since(began).Round(time.Second))
	db, err := pgx.Connect(ctx, st.pgURL)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(context.Background())
	execSQL(t, ctx, db, faultTables)
	w := newWorkload(st.pgURL, 2, p.rate)
	if err := w.populate(ctx, db, p.bigRows); err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	serveAddr := freeAddr(t)
	cfgPath, cfg := writeFaultConfig(t, dir, st, serveAddr)
	s := &scenario{t: t, plan: p, st: st, ns: ns, cfg: cfg, w: w, serveURL: "http://" + serveAddr, http: &http.Client{Timeout: 3 * time.Second}}
	s.run = newProc(t, dir, "run", []string{"CHANGES_STORAGE_DIR=" + filepath.Join(dir, "run")}, "run", "--config", cfgPath)
	if ns != nil {
		s.run.netns = ns.name
	}
	s.serve = newProc(t, dir, "serve", []string{"CHANGES_STORAGE_DIR=" + filepath.Join(dir, "serve")}, "serve", "--config", cfgPath)
	defer func() {
		if t.Failed() {
			t.Logf("logs of `changes run`: %s\n%s", s.run.logPath, tailFile(s.run.logPath, 15))
			t.Logf("logs of `changes serve`: %s\n%s", s.serve.logPath, tailFile(s.serve.logPath, 8))
			keep := filepath.Join(os.TempDir(), "changes-faults-"+p.name+"-"+time.Now().Format("150405"))
			if os.MkdirAll(keep, 0o755) == nil {
				for _, f := range []string{s.run.logPath, s.serve.logPath} {
					if b, err := os.ReadFile(f); err == nil {
						os.WriteFile(filepath.Join(keep, filepath.Base(f)), b, 0o644)
					}
				}
				t.Logf("process logs kept in %s", keep)
			}
		}
	}()

	// The workload starts once the slot has its consistent point: every
	// change it commits must then be streamed, and big's rows copied.
	s.run.start()
	if !waitFor(ctx, func() bool {
		var ok bool
		db.QueryRow(ctx, "select confirmed_flush_lsn is not null from pg_replication_slots where slot_name = 'faults'").Scan(&ok)
		return ok
	}) {
		t.Fatalf("the capture never created its slot:\n%s", tailFile(s.run.logPath, 20))
	}
	w.start(ctx, p.bigRows)
	defer w.finish()
	s.serve.start()

	if p.snapshotBroker {
		s.snapshotBrokerKill(ctx)
	}
	for i := range p.snapshotKills {
		s.snapshotKill(ctx, i)
	}
	rnd := rand.New(rand.NewPCG(11, 12))
	for _, kind := range p.faults {
		if ctx.Err() != nil {
			break
		}
		// Some load between faults, at a random moment.
		time.Sleep(time.Duration(500+rnd.IntN(1000)) * time.Millisecond)
		s.inject(ctx, kind)
	}
	sabotage := os.Getenv("CHANGES_FAULTS_SABOTAGE") == "1"
	if sabotage {
		s.sabotageHole(ctx)
	}
	time.Sleep(time.Second)
	w.finish()
	txns, changes := w.counts()
	t.Logf("%s: workload stopped after %d transactions, %d changes (%d commits in doubt, resolved)", p.name, txns, changes, w.inDoubt)

	// Converge: every table served equals the database. A new connection:
	// PostgreSQL may have crashed under the first one.
	db.Close(ctx)
	if db, err = pgx.Connect(ctx, st.pgURL); err != nil {
		t.Fatal(err)
	}
	converge := 3 * time.Minute
	if sabotage {
		converge = 30 * time.Second // the lost change never comes
	}
	s.waitIncrementals(ctx, 3*time.Minute)
	tables := s.waitTablesEqual(ctx, db, converge)
	if sabotage {
		s.sabotageDuplicate()
	}
	// The history, from its start, against the ledger and the database.
	hist := s.readHistory(ctx)
	dbRows := map[string]map[int64]codecs.Row{}
	for _, ft := range faultTypes {
		rows, err := dbcheck.Rows(ctx, db, ft.typ, []string{"id"})
		if err != nil {
			t.Fatal(err)
		}
		dbRows[ft.typ] = idsOf(rows)
	}
	w.ledger.cuts = s.snapshotCuts(ctx)
	for _, ft := range faultTypes {
		w.ledger.typeOrder = append(w.ledger.typeOrder, ft.typ)
	}
	verdict := checkFaultHistory(w.ledger, hist, dbRows)
	tableWatermarks, behind := checkTableWatermarks(t, ctx, s.cfg)
	var exits []procExit
	exits = append(exits, s.run.unexpectedExits()...)
	exits = append(exits, s.serve.unexpectedExits()...)
	t.Logf("\n%s", s.table(verdict, hist, tables, exits))

	if len(w.errs) > 0 {
		t.Errorf("the workload failed (a bug of the suite):\n  %s", strings.Join(w.errs, "\n  "))
	}
	if verdict.watermarks == 0 {
		t.Error("the history holds no progress watermark")
	}
	t.Logf("snapshot tables: %d progress watermarks, %d states behind one", tableWatermarks, len(behind))
	if len(behind) > 0 {
		t.Errorf("snapshot-table states behind a watermark that came before them (a view would have said it held them too early):\n  %s", strings.Join(behind[:min(len(behind), maxProblems)], "\n  "))
	}
	if s.incrementals > 0 && verdict.restated == 0 {
		t.Errorf("%d incremental snapshots were requested, and the history holds no row of theirs", s.incrementals)
	}
	if !verdict.ok() {
		t.Errorf("the history is wrong (the first %d of each kind):\n  %s", maxProblems, strings.Join(verdict.problems, "\n  "))
	}
	for typ, diffs := range tables {
		if len(diffs) > 0 {
			t.Errorf("table %s served by `changes serve` differs from the database:\n  %s", typ, strings.Join(diffs, "\n  "))
		}
	}
	for _, f := range s.faults {
		if !f.recovered {
			t.Errorf("%s at %s: no change committed after it was served within the deadline %s", f.kind, f.start.Format("15:04:05"), f.note)
		}
	}
	for _, e := range exits {
		t.Errorf("`changes %s` exited by itself at %s (%s), the suite restarted it:\n%s", e.name, e.at.Format("15:04:05.000"), e.err, e.tail)
	}
}

// writeFaultConfig writes the platform's config file and returns it parsed.
func writeFaultConfig(t *testing.T, dir string, st *faultStack, serveAddr string) (string, *topology.Config) {
	rf, isr := 1, 1
	if st.nodes > 1 {
		rf, isr = 3, 2
	}
	var b strings.Builder
	fmt.Fprintf(&b, "kafka: {brokers: [%s], replication_factor: %d, min_insync_replicas: %d}\n", strings.Join(st.brokers, ", "), rf, isr)
	fmt.Fprintf(&b, "postgres: {url: %q, slot: faults, publication: faults}\ntopics: {prefix: faults}\nstorage: %q\nmetrics: \"\"\nserve: {listen: %q}\nentities:\n", st.pgURL, dir, serveAddr)
	for _, ft := range faultTypes {
		fmt.Fprintf(&b, "  - {type: %s, table: public.%s, id_column: id, partitions: %d}\n", ft.typ, ft.typ, ft.partitions)
	}
	path := filepath.Join(dir, "changes.yaml")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := topology.Parse([]byte(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	// The shared stack's variables may have overridden the file in Parse;
	// the subprocesses read the file alone.
	cfg.Kafka.Brokers, cfg.Postgres.URL = st.brokers, st.pgURL
	cfg.Postgres.Slot, cfg.Postgres.Publication, cfg.Topics.Prefix = "faults", "faults", "faults"
	cfg.Kafka.ReplicationFactor = rf
	return path, cfg
}

// historyEnd is the history's end offset; -1 while Kafka does not answer.
func (s *scenario) historyEnd() int64 {
	client, err := topology.NewClient(s.cfg.Kafka)
	if err != nil {
		return -1
	}
	defer client.Close()
	end, err := client.GetOffset(topology.New(s.cfg).History(), 0, sarama.OffsetNewest)
	if err != nil {
		return -1
	}
	return end
}

// snapshotKill kills `changes run` while it copies big, and restarts it.
// The first kill lands a third of the way through the copy; each later one
// two seconds after the restarted capture began resuming the copy (its log
// says so), before data flows again, so only the last kill's recovery is
// measured.
func (s *scenario) snapshotKill(ctx context.Context, i int) {
	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	var end int64
	if i == 0 {
		waitFor(wctx, func() bool { end = s.historyEnd(); return end >= int64(s.plan.bigRows/3) })
	} else {
		waitFor(wctx, func() bool { return grepFile(s.run.logPath, "snapshot: resuming") >= s.resumes+i })
		time.Sleep(2 * time.Second)
		end = s.historyEnd()
	}
	note := fmt.Sprintf("history end %d of %d rows", end, s.plan.bigRows)
	if grepFile(s.run.logPath, "snapshot: complete") > 0 {
		note += " (the copy had ended)"
	}
	start := time.Now()
	s.run.kill()
	s.run.start()
	if i < s.plan.snapshotKills-1 {
		s.faults = append(s.faults, faultRecord{kind: faultSnapshotKill, start: start, recovered: true, note: note})
		s.t.Logf("%s %s %d: %s; killed again before it recovers", time.Now().Format("15:04:05"), faultSnapshotKill, i+1, note)
		return
	}
	s.recovered(ctx, faultSnapshotKill, start, time.Now(), note)
}

// snapshotBrokerKill kills the broker (node 1) a tenth of the way through
// the copy of big, and starts it again: the copy's writer fails, and the
// capture resumes the copy after the last row the history holds. Its
// recovery is not waited for (streaming, and so recovery, begins only once
// the copy is done, and the snapshot kills after it must find a copy
// running): the fault counts once the copy resumed, and the last snapshot
// kill's recovery covers it.
func (s *scenario) snapshotBrokerKill(ctx context.Context) {
	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	var end int64
	waitFor(wctx, func() bool { end = s.historyEnd(); return end >= int64(s.plan.bigRows/10) })
	note := fmt.Sprintf("history end %d of %d rows", end, s.plan.bigRows)
	if grepFile(s.run.logPath, "snapshot: complete") > 0 {
		note += " (the copy had ended)"
	}
	before := grepFile(s.run.logPath, "snapshot: resuming")
	start := time.Now()
	s.st.must("kafka-kill", "1")
	time.Sleep(3 * time.Second)
	s.st.must("kafka-start")
	resumed := waitFor(wctx, func() bool { return grepFile(s.run.logPath, "snapshot: resuming") > before })
	s.resumes = grepFile(s.run.logPath, "snapshot: resuming")
	if !resumed {
		s.t.Errorf("%s: the copy did not resume within 2 minutes:\n%s", faultSnapshotBroker, tailFile(s.run.logPath, 20))
	}
	note += fmt.Sprintf("; the copy resumed after %.1fs", time.Since(start).Seconds())
	s.faults = append(s.faults, faultRecord{kind: faultSnapshotBroker, start: start, recovered: resumed, note: note})
	s.t.Logf("%s %s: %s", time.Now().Format("15:04:05"), faultSnapshotBroker, note)
}

// inject injects one fault and waits until data flows again.
func (s *scenario) inject(ctx context.Context, kind string) {
	t := s.t
	start := time.Now()
	note := ""
	switch kind {
	case faultRunKill:
		s.run.restart()
	case faultServeKill:
		s.serve.restart()
	case faultBrokerKill:
		s.st.must("kafka-kill", "1")
		time.Sleep(3 * time.Second)
		s.st.must("kafka-start")
	case faultBrokerPause:
		node := s.historyLeader()
		s.st.must("kafka-pause", strconv.Itoa(node))
		flow := s.watchFlow(ctx, s.plan.pause)
		s.st.must("kafka-resume", strconv.Itoa(node))
		note = fmt.Sprintf("node %d, %s; %s", node, s.plan.pause, flow)
	case faultPGCrash:
		s.st.must("pg-crash")
	case faultNetCut:
		s.ns.cut(t)
		flow := s.watchFlow(ctx, s.plan.pause)
		s.ns.heal(t)
		note = fmt.Sprintf("%s; %s", s.plan.pause, flow)
	case faultCatchupKill:
		// A backlog while the capture is down, then a kill while it drains.
		s.run.kill()
		if err := s.w.burst(ctx, s.plan.burst); err != nil {
			t.Errorf("burst: %v", err)
		}
		before := s.historyEnd()
		s.run.start()
		// Killed once it has drained a tenth of the backlog.
		at := before
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline) && at-before < int64(s.plan.burst/10); {
			time.Sleep(20 * time.Millisecond)
			at = s.historyEnd()
		}
		s.run.restart()
		note = fmt.Sprintf("killed %d records into a %d-change backlog", at-before, s.plan.burst)
	case faultIncrKill, faultIncrBroker:
		// big's first incrRows rows copied again while the workload writes
		// to them; the fault lands in the middle of the copy.
		copying := s.requestIncremental(ctx)
		start = time.Now()
		if kind == faultIncrKill {
			s.run.restart()
		} else {
			s.st.must("kafka-kill", "1")
			time.Sleep(3 * time.Second)
			s.st.must("kafka-start")
		}
		note = copying
	case faultLeaderKill:
		// The cluster goes on without the node: recovery counts from the kill.
		node := s.historyLeader()
		s.st.must("kafka-kill", strconv.Itoa(node))
		end := time.Now()
		s.recovered(ctx, kind, start, end, fmt.Sprintf("node %d", node))
		time.Sleep(5 * time.Second)
		s.st.must("kafka-start")
		return
	default:
		t.Fatalf("unknown fault %q", kind)
	}
	s.recovered(ctx, kind, start, time.Now(), note)
}

// requestIncremental asks the capture for an incremental snapshot of big's
// keys 1 to incrRows, as changes snapshot does, and returns once the copy
// has run for a second and a half (what it says of the copy).
func (s *scenario) requestIncremental(ctx context.Context) string {
	db, err := pgx.Connect(ctx, s.st.pgURL)
	if err != nil {
		s.t.Fatal(err)
	}
	defer db.Close(context.Background())
	before := grepFile(s.run.logPath, "incremental snapshot: copying")
	if err := capture.RequestSnapshot(ctx, db, s.cfg.Postgres.Slot, "big", "1", strconv.Itoa(s.plan.incrRows)); err != nil {
		s.t.Fatal(err)
	}
	s.incrementals++
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if !waitFor(wctx, func() bool { return grepFile(s.run.logPath, "incremental snapshot: copying") > before }) {
		s.t.Errorf("the incremental snapshot of big did not start within a minute:\n%s", tailFile(s.run.logPath, 20))
	}
	time.Sleep(1500 * time.Millisecond)
	pending, err := capture.PendingSnapshots(ctx, topology.New(s.cfg))
	if err != nil || len(pending) == 0 {
		return fmt.Sprintf("copy of %d rows (done before the fault: %v)", s.plan.incrRows, err)
	}
	return fmt.Sprintf("copy of %d rows, %d recorded", s.plan.incrRows, pending[0].Rows)
}

// waitIncrementals waits until no incremental snapshot is pending: each
// copy resumed after its fault and finished.
func (s *scenario) waitIncrementals(ctx context.Context, within time.Duration) {
	if s.incrementals == 0 {
		return
	}
	wctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	var pending []capture.SnapshotStatus
	if !waitFor(wctx, func() bool {
		var err error
		pending, err = capture.PendingSnapshots(wctx, topology.New(s.cfg))
		return err == nil && len(pending) == 0
	}) {
		s.t.Errorf("incremental snapshots still pending %s after the workload stopped: %+v", within, pending)
	}
}

// watchFlow waits for d while a fault lasts and says whether, and how soon,
// a heartbeat committed after the fault began was served meanwhile (data
// flowing around the fault, as three brokers should when one is paused).
func (s *scenario) watchFlow(ctx context.Context, d time.Duration) string {
	start := time.Now()
	wctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	v, ok := s.w.beatSince(wctx, start)
	if ok && waitFor(wctx, func() bool { return s.servedBeat() >= v }) {
		flowed := time.Since(start)
		<-wctx.Done()
		return fmt.Sprintf("data flowed again %s into the fault", flowed.Round(100*time.Millisecond))
	}
	<-wctx.Done()
	return "no data flowed during the fault"
}

// historyLeader is the broker node that leads the history's partition.
func (s *scenario) historyLeader() int {
	if s.st.nodes == 1 {
		return 1
	}
	client, err := topology.NewClient(s.cfg.Kafka)
	if err != nil {
		s.t.Fatal(err)
	}
	defer client.Close()
	b, err := client.Leader(topology.New(s.cfg).History(), 0)
	if err != nil {
		s.t.Fatal(err)
	}
	return int(b.ID())
}

// recovered measures how long after end a heartbeat committed after end
// is served by `changes serve`, and records the fault.
func (s *scenario) recovered(ctx context.Context, kind string, start, end time.Time, note string) {
	rctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	f := faultRecord{kind: kind, start: start, note: note}
	if v, ok := s.w.beatSince(rctx, end); ok {
		f.recovered = waitFor(rctx, func() bool { return s.servedBeat() >= v })
	}
	f.recovery = time.Since(end)
	s.faults = append(s.faults, f)
	s.t.Logf("%s %s: recovered %v after %s %s", time.Now().Format("15:04:05"), kind, f.recovered, f.recovery.Round(10*time.Millisecond), note)
}

// servedBeat is the heartbeat's version `changes serve` answers; -1 if none.
func (s *scenario) servedBeat() int64 {
	resp, err := s.http.Get(s.serveURL + "/v1/entities/beat/1")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	var e server.Entity
	if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&e) != nil {
		return -1
	}
	return versionOf(e.Row)
}

// served pages through one type's entities over HTTP.
func (s *scenario) served(typ string) (map[codecs.Key]*codecs.State, error) {
	out := map[codecs.Key]*codecs.State{}
	after := ""
	for {
		u := s.serveURL + "/v1/entities/" + typ + "?limit=1000"
		if after != "" {
			u += "&after=" + after
		}
		resp, err := s.http.Get(u)
		if err != nil {
			return nil, err
		}
		var page server.Page
		err = json.NewDecoder(resp.Body).Decode(&page)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return nil, fmt.Errorf("GET %s: %s", u, resp.Status)
		}
		if err != nil {
			return nil, err
		}
		for _, e := range page.Entities {
			k, err := codecs.ParseKey(codecs.KeyInteger, e.ID)
			if err != nil {
				return nil, fmt.Errorf("GET %s: %w", u, err)
			}
			out[k] = &codecs.State{EntityType: e.Type, EntityID: k, Row: e.Row, Position: e.Position}
		}
		if page.NextAfter == nil {
			return out, nil
		}
		after = *page.NextAfter
	}
}

// waitTablesEqual waits until every type served equals its table, and
// returns the differences left (none when equal).
func (s *scenario) waitTablesEqual(ctx context.Context, db *pgx.Conn, within time.Duration) map[string][]string {
	start := time.Now()
	wctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	diffs := map[string][]string{}
	waitFor(wctx, func() bool {
		equal := true
		for _, ft := range faultTypes {
			rows, err := dbcheck.Rows(ctx, db, ft.typ, []string{"id"})
			if err != nil {
				s.t.Fatal(err)
			}
			states, err := s.served(ft.typ)
			if err != nil {
				diffs[ft.typ] = []string{err.Error()}
				equal = false
				continue
			}
			diffs[ft.typ] = dbcheck.Diff(rows, states, 10)
			if len(diffs[ft.typ]) > 0 {
				equal = false
			}
		}
		if !equal {
			time.Sleep(time.Second)
		}
		return equal
	})
	s.t.Logf("tables compared with the database after %s", time.Since(start).Round(time.Second))
	return diffs
}

// checkTableWatermarks reads every partition of every snapshot table from
// its start and checks its progress watermarks against the states around
// them: a state after a watermark must be of a change committed at or
// after it, unless it repeats the key's state before (a processor that
// restarted writes the stored state again). A state of an earlier change
// after the watermark means a view said it held every change before the
// watermark while it lacked that one. It returns how many watermarks it
// read and the states that broke the rule.
func checkTableWatermarks(t testing.TB, ctx context.Context, cfg *topology.Config) (int, []string) {
	t.Helper()
	client, err := topology.NewClient(cfg.Kafka)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	topo := topology.New(cfg)
	n := 0
	var behind []string
	for _, typ := range topo.EntityTypes() {
		topic := topo.Snapshot(typ)
		parts, err := client.Partitions(topic)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range parts {
			from, err := kread.Start(client, topic, p)
			if err != nil {
				t.Fatal(err)
			}
			to, err := kread.End(client, topic, p)
			if err != nil {
				t.Fatal(err)
			}
			var mark codecs.LSN
			last := map[string]codecs.Position{}
			err = kread.Range(ctx, client, topic, p, from, to, func(r *kread.Record) (bool, error) {
				key := string(r.Key)
				if r.Value == nil {
					delete(last, key)
					return true, nil
				}
				st, err := (codecs.StateCodec{}).Decode(r.Value)
				if err != nil {
					return true, nil // the monitor counts those
				}
				if st.Watermark {
					n++
					mark = max(mark, st.Position.CommitLSN)
					return true, nil
				}
				if prev, seen := last[key]; st.Position.CommitLSN < mark && (!seen || prev != st.Position) {
					behind = append(behind, fmt.Sprintf("%s partition %d offset %d: key %s at %s after the watermark %s", topic, p, r.Offset, key, st.Position, mark))
				}
				last[key] = st.Position
				return true, nil
			})
			if err != nil {
				t.Fatalf("reading %s partition %d: %v", topic, p, err)
			}
		}
	}
	return n, behind
}

// snapshotCuts reads where copies resumed after kills during the initial
// snapshot started, from the capture's state record (capture/state.go); the
// checker lets the stream leave out what those copies hold, nothing else.
func (s *scenario) snapshotCuts(ctx context.Context) []foldCut {
	client, err := topology.NewClient(s.cfg.Kafka)
	if err != nil {
		s.t.Fatal(err)
	}
	defer client.Close()
	topic := topology.New(s.cfg).CaptureState()
	from, err := kread.Start(client, topic, 0)
	if err != nil {
		s.t.Fatal(err)
	}
	to, err := kread.End(client, topic, 0)
	if err != nil {
		s.t.Fatal(err)
	}
	var state struct {
		Cuts []struct {
			Type      string     `json:"type"`
			After     int64      `json:"after,string"`
			FromStart bool       `json:"from_start"`
			LSN       codecs.LSN `json:"lsn"`
		} `json:"cuts"`
	}
	err = kread.Range(ctx, client, topic, 0, from, to, func(r *kread.Record) (bool, error) {
		if string(r.Key) == s.cfg.Postgres.Slot {
			return true, json.Unmarshal(r.Value, &state)
		}
		return true, nil
	})
	if err != nil {
		s.t.Fatalf("reading the capture state: %v", err)
	}
	var cuts []foldCut
	for _, c := range state.Cuts {
		cuts = append(cuts, foldCut{typ: c.Type, after: c.After, fromStart: c.FromStart, lsn: c.LSN})
		s.t.Logf("a copy resumed after a kill: %s after id %d (from start %v) as of %s", c.Type, c.After, c.FromStart, c.LSN)
	}
	return cuts
}

// sabotageHole (CHANGES_FAULTS_SABOTAGE=1) commits an update the capture
// cannot see: acct leaves the publication for one transaction. The history
// then lacks a committed change, as it would after a capture bug, and the
// suite must report it lost, the history's final state wrong and the served
// table unequal.
func (s *scenario) sabotageHole(ctx context.Context) {
	s.w.pause()
	defer s.w.resume()
	conn, err := pgx.Connect(ctx, s.st.pgURL)
	if err != nil {
		s.t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var id, version int64
	var lo string
	execSQL(s.t, ctx, conn, "alter publication faults drop table acct")
	err = conn.QueryRow(ctx, "update acct set version = version + 1 where id = (select min(id) from acct) returning id, version, pg_current_wal_insert_lsn()::text").Scan(&id, &version, &lo)
	execSQL(s.t, ctx, conn, "alter publication faults add table acct")
	if err != nil {
		s.t.Fatal(err)
	}
	s.w.record([]stepRec{{"acct", id, codecs.OpUpdate, version}}, lo)
	s.t.Logf("sabotage: acct %d version %d committed outside the publication (a hole)", id, version)
}

// sabotageDuplicate (CHANGES_FAULTS_SABOTAGE=1) appends a copy of an update
// the history holds, as a capture that wrote a change twice would.
func (s *scenario) sabotageDuplicate() {
	hist := s.readHistory(context.Background())
	for _, h := range hist {
		if h.ev.Op != codecs.OpUpdate || h.ev.EntityType != "doc" {
			continue
		}
		p, err := sarama.NewSyncProducer(s.cfg.Kafka.Brokers, saramaConfig(s.t, s.cfg.Kafka))
		if err != nil {
			s.t.Fatal(err)
		}
		defer p.Close()
		value, _ := codecs.EventCodec{}.Encode(h.ev)
		_, off, err := p.SendMessage(&sarama.ProducerMessage{Topic: topology.New(s.cfg).History(), Partition: 0,
			Key: sarama.StringEncoder(fmt.Sprintf("%s/%s", h.ev.EntityType, h.ev.EntityID)), Value: sarama.ByteEncoder(value)})
		if err != nil {
			s.t.Fatal(err)
		}
		s.t.Logf("sabotage: history offset %d copied to offset %d (a duplicate)", h.offset, off)
		return
	}
}

// readHistory reads the history from its start to its last stable offset
// with internal/kread (read_committed, past transaction markers and aborted
// records), and again with sarama's own read_committed consumer: the two
// readers must agree record by record, so a bug in one does not hide a
// problem of the history.
func (s *scenario) readHistory(ctx context.Context) []histEvent {
	cfg := saramaConfig(s.t, s.cfg.Kafka)
	cfg.Consumer.IsolationLevel = sarama.ReadCommitted
	client, err := sarama.NewClient(s.cfg.Kafka.Brokers, cfg)
	if err != nil {
		s.t.Fatal(err)
	}
	defer client.Close()
	topic := topology.New(s.cfg).History()
	from, err := kread.Start(client, topic, 0)
	if err != nil {
		s.t.Fatal(err)
	}
	to, err := kread.End(client, topic, 0)
	if err != nil {
		s.t.Fatal(err)
	}
	var out []histEvent
	err = kread.Range(ctx, client, topic, 0, from, to, func(r *kread.Record) (bool, error) {
		ev, err := codecs.EventCodec{}.Decode(r.Value)
		if err != nil {
			s.t.Errorf("history offset %d does not decode: %v", r.Offset, err)
			return true, nil
		}
		out = append(out, histEvent{offset: r.Offset, ev: ev})
		return true, nil
	})
	if err != nil {
		s.t.Fatalf("reading the history with kread: %v", err)
	}
	// The same range with sarama's consumer, which hides markers and
	// aborted records itself; the record before the end may be a marker,
	// so it stops at the end or after a quiet while.
	consumer, err := sarama.NewConsumerFromClient(client)
	if err != nil {
		s.t.Fatal(err)
	}
	defer consumer.Close()
	pc, err := consumer.ConsumePartition(topic, 0, from)
	if err != nil {
		s.t.Fatal(err)
	}
	defer pc.Close()
	var offsets []int64
read:
	for {
		select {
		case m := <-pc.Messages():
			if m.Offset >= to {
				break read
			}
			offsets = append(offsets, m.Offset)
			if m.Offset == to-1 {
				break read
			}
		case err := <-pc.Errors():
			s.t.Fatalf("reading the history with sarama: %v", err)
		case <-time.After(5 * time.Second):
			break read
		}
	}
	if len(offsets) != len(out) {
		s.t.Errorf("the history readers disagree: kread read %d records in [%d, %d), sarama's read_committed consumer %d", len(out), from, to, len(offsets))
	} else {
		for i := range offsets {
			if offsets[i] != out[i].offset {
				s.t.Errorf("the history readers disagree at record %d: kread offset %d, sarama offset %d", i, out[i].offset, offsets[i])
				break
			}
		}
	}
	return out
}

// table prints the faults with what the checks found in the history during
// each kind's phases (from a fault's injection to the next fault).
func (s *scenario) table(v historyVerdict, hist []histEvent, tables map[string][]string, exits []procExit) string {
	type row struct {
		injected                                                  int
		events, lost, dup, reord, rewound, phantom, wrong, exited int
		recoveries                                                []time.Duration
		failed                                                    int
	}
	rows := map[string]*row{}
	order := []string{"(before any fault)"}
	rows[order[0]] = &row{}
	faults := slices.Clone(s.faults)
	sort.Slice(faults, func(i, j int) bool { return faults[i].start.Before(faults[j].start) })
	for _, f := range faults {
		r := rows[f.kind]
		if r == nil {
			r = &row{}
			rows[f.kind] = r
			order = append(order, f.kind)
		}
		r.injected++
		switch {
		case f.recovered && f.recovery > 0:
			r.recoveries = append(r.recoveries, f.recovery)
		case f.recovered:
		default:
			r.failed++
		}
	}
	phase := func(at time.Time) *row {
		kind := order[0]
		for _, f := range faults {
			if !f.start.After(at) {
				kind = f.kind
			}
		}
		return rows[kind]
	}
	for _, h := range hist {
		if h.ev.Op != codecs.OpWatermark {
			phase(h.ev.CommitTime).events++
		}
	}
	for _, a := range v.at {
		r := phase(a.at)
		switch a.kind {
		case "lost":
			r.lost++
		case "duplicated":
			r.dup++
		case "reordered":
			r.reord++
		case "rewound":
			r.rewound++
		case "phantom":
			r.phantom++
		case "wrong":
			r.wrong++
		}
	}
	for _, e := range exits {
		phase(e.at).exited++
	}
	var b strings.Builder
	fmt.Fprintf(&b, "changes fault suite, plan %s (%d broker(s), %d rows copied by the initial snapshot)\n\n", s.plan.name, s.plan.nodes, s.plan.bigRows)
	fmt.Fprintf(&b, "  %-32s %8s %8s %6s %6s %6s %7s %7s %6s %6s  %s\n", "fault", "injected", "events", "lost", "dup", "reord", "rewound", "phantom", "wrong", "exits", "recovery p50 / max")
	total := row{}
	for _, k := range order {
		r := rows[k]
		rec := "-"
		if len(r.recoveries) > 0 {
			d := slices.Clone(r.recoveries)
			slices.Sort(d)
			rec = fmt.Sprintf("%s / %s", d[(len(d)-1)/2].Round(100*time.Millisecond), d[len(d)-1].Round(100*time.Millisecond))
		}
		if r.failed > 0 {
			rec += fmt.Sprintf(" (%d never)", r.failed)
		}
		injected := strconv.Itoa(r.injected)
		if k == order[0] {
			injected = "-"
		}
		fmt.Fprintf(&b, "  %-32s %8s %8d %6d %6d %6d %7d %7d %6d %6d  %s\n", k, injected, r.events, r.lost, r.dup, r.reord, r.rewound, r.phantom, r.wrong, r.exited, rec)
		total.injected += r.injected
		total.events += r.events
		total.lost += r.lost
		total.dup += r.dup
		total.reord += r.reord
		total.rewound += r.rewound
		total.phantom += r.phantom
		total.wrong += r.wrong
		total.exited += r.exited
	}
	fmt.Fprintf(&b, "  %-32s %8d %8d %6d %6d %6d %7d %7d %6d %6d\n\n", "total", total.injected, total.events, total.lost, total.dup, total.reord, total.rewound, total.phantom, total.wrong, total.exited)
	txns, changes := s.w.counts()
	fmt.Fprintf(&b, "  workload: %d transactions, %d changes committed (%d commits in doubt, resolved by txlog)\n", txns, changes, s.w.inDoubt)
	fmt.Fprintf(&b, "  folded: %d committed changes left out of the history because a copy resumed after a kill holds them (%d cuts)\n", v.folded, len(s.w.ledger.cuts))
	fmt.Fprintf(&b, "  restated: %d rows of %d incremental snapshots, each the state the history held at its place\n", v.restated, s.incrementals)
	fmt.Fprintf(&b, "  watermarks: %d progress watermarks, no change after one committed before it (a change that did counts as reordered)\n", v.watermarks)
	for _, ft := range faultTypes {
		verdict := "equal, value by value"
		if d := tables[ft.typ]; len(d) > 0 {
			verdict = fmt.Sprintf("NOT EQUAL (%s)", d[0])
		}
		fmt.Fprintf(&b, "  table %-5s served by `changes serve` vs PostgreSQL: %s\n", ft.typ, verdict)
	}
	b.WriteString("\n  lost/dup/reord/rewound/phantom: history records checked per entity against the committed versions\n" +
		"  (folded: committed before the cut of a copy resumed after a kill, to a row it covers; not a failure);\n" +
		"  wrong: entities whose state at the history's end differs from the database; exits: processes that\n" +
		"  exited by themselves; recovery: from the fault's end until a change committed after it is served.\n")
	return b.String()
}
