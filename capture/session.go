package capture

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/IBM/sarama"
	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/internal/kread"
	"github.com/changes-dev/changes/topology"
)

// session is one attempt of the capture at its slot, from taking the slot
// to the end of the stream; Run starts a new one after each that fails. It
// runs the phases in order (see run), holds what they open and closes it
// when run returns. It is used once, by one goroutine.
type session struct {
	// What the session reads of its Capture, which never changes.
	topo         *topology.Topology
	tables       []table
	log          *slog.Logger
	metrics      *metrics
	recreateSlot bool
	resync       bool
	// streaming is called when the stream has started: every dependency
	// is reachable again.
	streaming func()

	// What the phases open, closed by close in the reverse order.
	lock          *pgx.Conn // holds the slot's advisory lock
	client        sarama.Client
	producer      sarama.AsyncProducer // the history's transactional producer
	closeProducer func()
	repl          *pgconn.PgConn // the replication connection
}

// newSession returns the next session of c.
func (c *Capture) newSession() *session {
	return &session{
		topo:         c.topo,
		tables:       c.tables,
		log:          c.log,
		metrics:      c.metrics,
		recreateSlot: c.recreateSlot,
		resync:       c.resync,
		streaming:    c.streaming,
	}
}

// run runs the session's phases: take the slot, prepare, snapshot, resolve
// the start, stream. It fails with errSlotBusy or pgObjectInUse when
// another capture has the slot. It returns nil when ctx is cancelled while
// streaming, after the drain (see stream.run).
func (se *session) run(ctx context.Context) error {
	defer se.close()
	if err := se.takeSlot(ctx); err != nil {
		return err
	}
	found, err := se.prepare(ctx)
	if err != nil {
		return err
	}
	state, err := se.snapshot(ctx, found)
	if err != nil {
		return err
	}
	start, err := se.resolveStart(ctx, state)
	if err != nil {
		return err
	}
	return se.stream(ctx, start)
}

// close closes what the phases opened, the newest first.
func (se *session) close() {
	if se.repl != nil {
		se.repl.Close(context.Background())
	}
	if se.closeProducer != nil {
		se.closeProducer()
	}
	if se.client != nil {
		se.client.Close()
	}
	if se.lock != nil {
		se.lock.Close(context.Background())
	}
}

// takeSlot is the first phase: it takes the slot's advisory lock, then
// fences older captures of the slot in Kafka.
func (se *session) takeSlot(ctx context.Context) error {
	cfg := se.topo.Config()
	// One capture per slot: the lock covers the snapshot, which runs before
	// the slot is streamed from; START_REPLICATION guards the rest.
	lock, err := lockSlot(ctx, cfg.Postgres.URL, cfg.Postgres.Slot)
	if err != nil {
		return err
	}
	se.lock = lock
	client, err := topology.NewClient(cfg.Kafka)
	if err != nil {
		return fmt.Errorf("kafka client: %w", err)
	}
	se.client = client
	// The transactional producer first: its start fences every older
	// capture of this slot (a zombie can no longer commit) and aborts what
	// one left open, so the history's end read next cannot move. Its
	// transactional id is one per history topic and slot, so a capture
	// fences only older captures of its own slot.
	txnID := se.topo.TransactionalID()
	pcfg, err := topology.TransactionalConfig(cfg.Kafka, txnID)
	if err != nil {
		return err
	}
	producer, err := sarama.NewAsyncProducer(cfg.Kafka.Brokers, pcfg)
	if err != nil {
		return fmt.Errorf("kafka transactional producer %s: %w", txnID, topology.ExplainKafkaError(cfg.Kafka, err))
	}
	se.producer = producer
	se.closeProducer = sync.OnceFunc(func() { producer.Close() })
	return nil
}

// found is what the prepare phase finds.
type found struct {
	// written is the position of the history's last event; zero when it
	// holds none.
	written codecs.Position
	// state is the slot's record in the capture-state topic.
	state captureState
	// slotExists says whether the replication slot exists.
	slotExists bool
}

// prepare is the second phase: it reads how far the history goes and the
// slot's capture state, then prepares the database (checkDatabase).
func (se *session) prepare(ctx context.Context) (found, error) {
	var f found
	last, err := lastEvent(ctx, se.client, se.topo.History())
	if err != nil {
		return f, err
	}
	if last != nil {
		f.written = last.Position
	}
	f.state, err = readState(ctx, se.client, se.topo.CaptureState(), se.topo.Config().Postgres.Slot)
	if err != nil {
		return f, err
	}
	f.slotExists, err = se.checkDatabase(ctx, f.written)
	return f, err
}

// checkDatabase checks the server and the tables, ensures the publication,
// and reports whether the slot exists. A missing slot is an error when the
// history shows it existed, unless the operator asked for a resync (a slot
// whose WAL is lost is then dropped) or accepts the gap.
func (se *session) checkDatabase(ctx context.Context, written codecs.Position) (exists bool, err error) {
	cfg := se.topo.Config()
	conn, err := pgx.Connect(ctx, cfg.Postgres.URL)
	if err != nil {
		return false, fmt.Errorf("connect to postgres: %w", err)
	}
	defer conn.Close(context.Background())
	if err := checkServer(ctx, conn); err != nil {
		return false, err
	}
	for i, t := range se.tables {
		if se.tables[i], err = checkTable(ctx, conn, t); err != nil {
			return false, err
		}
	}
	if err := ensurePublication(ctx, conn, cfg.Postgres.Publication, se.tables); err != nil {
		return false, err
	}
	st, err := inspectSlot(ctx, conn, cfg.Postgres.Slot)
	if errors.Is(err, ErrSlotLost) && se.resync && !written.IsZero() {
		if err := dropLostSlot(ctx, conn, cfg.Postgres.Slot, se.log); err != nil {
			return false, err
		}
		st, err = inspectSlot(ctx, conn, cfg.Postgres.Slot)
	}
	if err != nil {
		return false, err
	}
	if st.exists {
		if st.walStatus == "unreserved" {
			se.log.Warn("the slot's WAL is beyond max_slot_wal_keep_size and will be removed at the next checkpoint unless the capture catches up",
				"slot", cfg.Postgres.Slot, "lsn", st.confirmedFlush.String())
		}
		return true, nil
	}
	if !written.IsZero() && !se.recreateSlot && !se.resync {
		return false, fmt.Errorf("%w: slot %s does not exist, but the history already holds changes up to %s: the slot was dropped, "+
			"so changes committed since are not in the stream. Nothing was created. To recover without a gap in the snapshot tables, start the capture with --resync; "+
			"to start over with a new snapshot and accept the gap, start it once with --recreate-slot",
			ErrSlotMissing, cfg.Postgres.Slot, written)
	}
	if !written.IsZero() && se.resync {
		se.log.Warn("the replication slot is missing: resync", "slot", cfg.Postgres.Slot, "history_position", written.String())
		return false, nil
	}
	if !written.IsZero() {
		se.log.Warn("re-creating a dropped replication slot with a new snapshot: changes committed while it was missing are not in the history",
			"slot", cfg.Postgres.Slot, "history_position", written.String())
	}
	return false, nil
}

// snapshot is the third phase. It opens the replication connection, then
// creates the slot and copies the initial snapshot when the slot is
// missing, resumes a snapshot a crash interrupted, or checks that the
// slot's snapshot holds every declared entity type. It returns the slot's
// capture state as the stream needs it.
func (se *session) snapshot(ctx context.Context, f found) (captureState, error) {
	cfg := se.topo.Config()
	state := f.state
	repl, err := connectReplication(ctx, cfg.Postgres.URL)
	if err != nil {
		return state, err
	}
	se.repl = repl
	switch {
	case !f.slotExists && se.resync && !f.written.IsZero():
		if state, err = se.createForResync(ctx, f.written); err != nil {
			return state, err
		}
	case !f.slotExists:
		if err := se.createAndSnapshot(ctx, f.written); err != nil {
			return state, err
		}
	case state.Resync != nil:
		// A resync whose session failed before it marked the history.
		if err := se.writeResyncMarker(ctx, state); err != nil {
			return state, err
		}
	case state.Snapshot == "":
		se.log.Warn("the slot has no snapshot record (made by hand or by an older version): rows it did not stream may be missing from the history; --recreate-slot after dropping it takes a snapshot",
			"slot", cfg.Postgres.Slot)
	case state.Snapshot == snapshotDone:
		if missing := missingTypes(state.Types, se.entityTypes()); len(missing) > 0 {
			// Declared after the slot's initial snapshot: their tables'
			// existing rows are copied by incremental snapshots while the
			// stream goes on (the publication has the tables already).
			next := state
			next.Types = append(slices.Clip(next.Types), missing...)
			for _, typ := range missing {
				next.Incremental = append(next.Incremental, incrementalSnapshot{
					ID: fmt.Sprintf("added-%s-%d", typ, time.Now().UnixNano()), Type: typ, Requested: time.Now().UTC(),
				})
			}
			if err := writeState(se.client, se.topo.CaptureState(), next); err != nil {
				return state, err
			}
			se.log.Info("entity types declared after the slot's initial snapshot: their tables are copied by incremental snapshots", "entity_types", missing)
			state = next
		}
	case state.Snapshot == snapshotRunning:
		if state, err = se.resumeSnapshot(ctx, state); err != nil {
			return state, err
		}
	}
	return state, nil
}

// missingTypes lists the types of want that have is missing.
func missingTypes(have, want []string) []string {
	var out []string
	for _, w := range want {
		if !slices.Contains(have, w) {
			out = append(out, w)
		}
	}
	return out
}

// streamStart is where the stream starts and what it leaves out.
type streamStart struct {
	// lsn is the slot's confirmed position, where the stream starts.
	lsn codecs.LSN
	// resent is what the history holds of the changes PostgreSQL resends.
	resent *resent
	// cuts says which changes a resumed snapshot's copy already holds.
	cuts *cuts
}

// resolveStart is the fourth phase: it reads where the slot stands and
// what the history already holds of the changes it will resend.
func (se *session) resolveStart(ctx context.Context, state captureState) (streamStart, error) {
	var start streamStart
	folded, err := se.resolveCuts(state.Cuts)
	if err != nil {
		return start, err
	}
	// The advisory lock keeps every other capture off the slot, so its
	// position and the history's end are stable from here on; reading them
	// before START_REPLICATION makes an active slot mean a streaming capture.
	lsn, err := se.slotPosition(ctx)
	if err != nil {
		return start, err
	}
	resent, err := readResent(ctx, se.client, se.topo.History(), lsn)
	if err != nil {
		return start, err
	}
	return streamStart{lsn: lsn, resent: resent, cuts: folded}, nil
}

// slotPosition reads the slot's confirmed flush position.
func (se *session) slotPosition(ctx context.Context) (codecs.LSN, error) {
	conn, err := pgx.Connect(ctx, se.topo.Config().Postgres.URL)
	if err != nil {
		return 0, fmt.Errorf("connect to postgres: %w", err)
	}
	defer conn.Close(context.Background())
	st, err := inspectSlot(ctx, conn, se.topo.Config().Postgres.Slot)
	if err != nil {
		return 0, err
	}
	if !st.exists {
		return 0, fmt.Errorf("%w: slot %s disappeared while the capture started", ErrSlotMissing, se.topo.Config().Postgres.Slot)
	}
	return st.confirmedFlush, nil
}

// stream is the last phase: it starts replication from the slot at
// start, which fails with pgObjectInUse while another capture streams
// from it, and streams until ctx is cancelled or the stream fails (see
// stream.run).
func (se *session) stream(ctx context.Context, start streamStart) error {
	cfg := se.topo.Config()
	// The state as the snapshot phase left it in Kafka (a new slot's
	// snapshot wrote it there, not into the phase's copy): incremental
	// snapshots write it whole, so they start from what Kafka has.
	state, err := readState(ctx, se.client, se.topo.CaptureState(), cfg.Postgres.Slot)
	if err != nil {
		return err
	}
	state.Slot = cfg.Postgres.Slot
	historyEnd, err := kread.End(se.client, se.topo.History(), 0)
	if err != nil {
		return fmt.Errorf("history end offset: %w", err)
	}
	err = pglogrepl.StartReplication(ctx, se.repl, cfg.Postgres.Slot, pglogrepl.LSN(start.lsn), pglogrepl.StartReplicationOptions{
		// messages: the signals (signal.go).
		PluginArgs: []string{"proto_version '1'", publicationNames(cfg.Postgres.Publication), "messages 'true'"},
	})
	if err != nil {
		return fmt.Errorf("start replication on slot %s: %w", cfg.Postgres.Slot, err)
	}
	se.streaming()
	se.log.Info("streaming", "slot", cfg.Postgres.Slot, "lsn", start.lsn.String(), "topic", se.topo.History(),
		"history_position", start.resent.last.String(), "resent_in_history", start.resent.n, "watermark_interval", watermarkInterval(cfg).String())

	s := &stream{
		cfg:      cfg,
		log:      se.log,
		metrics:  se.metrics,
		conn:     se.repl,
		producer: se.producer,
		tracker:  newTracker(start.lsn),
		rels:     newRelations(se.tables),
		domains:  newDomains(cfg.Postgres.URL),
		topic:    se.topo.History(),
		resent:   start.resent,
		cuts:     start.cuts,
		tableIdx: map[string]int{},
		failed:   make(chan struct{}),
		inc:      newIncrementals(se, state, historyEnd),
		prefix:   SignalPrefix(cfg.Postgres.Slot),
		wm:       watermarks{interval: watermarkInterval(cfg)},
	}
	for i, t := range se.tables {
		s.tableIdx[t.entityType] = i
	}
	// The copier of incremental snapshots lives as long as the stream.
	copyCtx, stopCopy := context.WithCancel(ctx)
	var copier sync.WaitGroup
	copier.Go(func() { s.inc.copyAll(copyCtx) })
	defer copier.Wait()
	defer stopCopy()
	return s.run(ctx, se.closeProducer)
}
