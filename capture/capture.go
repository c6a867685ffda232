package capture

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/IBM/sarama"
	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/internal/outage"
	"github.com/changes-dev/changes/topology"
)

// Capture streams the changes of the configured tables into the history
// topic. Create it with New and run it with Run; it is not reusable after
// Run returns.
type Capture struct {
	topo    *topology.Topology
	tables  []table
	log     *slog.Logger
	metrics *metrics
	reg     prometheus.Registerer
	down    string // the dependency whose error ended the last session, until one streams

	recreateSlot bool
	resync       bool
}

// Option configures a Capture.
type Option func(*Capture)

// WithLogger sets the logger. Default: slog.Default().
func WithLogger(l *slog.Logger) Option { return func(c *Capture) { c.log = l } }

// WithRegisterer registers the changes_capture_* metrics with r. Default: not
// registered.
func WithRegisterer(r prometheus.Registerer) Option {
	return func(c *Capture) { c.reg = r }
}

// WithRecreateSlot lets Run create the replication slot although the history
// shows that one existed: the operator's explicit acceptance of the gap
// between the dropped slot and the new one. Default: off, and Run returns
// ErrSlotMissing instead.
func WithRecreateSlot() Option { return func(c *Capture) { c.recreateSlot = true } }

// New returns a Capture for the deployment described by topo. It checks
// nothing remote; Run does.
func New(topo *topology.Topology, opts ...Option) (*Capture, error) {
	if topo == nil {
		return nil, errors.New("capture: nil topology")
	}
	c := &Capture{
		topo:   topo,
		tables: tablesOf(topo.Config()),
		log:    slog.Default(),
	}
	for _, o := range opts {
		o(c)
	}
	var err error
	if c.metrics, err = newMetrics(c.reg); err != nil {
		return nil, fmt.Errorf("capture metrics: %w", err)
	}
	c.log = c.log.With("component", "capture")
	return c, nil
}

// Run prepares the database (see the package doc), then streams changes until
// ctx is cancelled. While another capture streams from the slot, Run waits as
// a standby and takes over when the slot is free. On cancellation it commits
// what Kafka has been given, reports the final position to PostgreSQL and
// returns nil.
//
// Outages of Kafka or PostgreSQL do not end Run: the session ends without
// acknowledging anything Kafka has not committed, and Run starts a new one
// after a backoff (1 s doubling to 5 s), logging once when a dependency is
// lost and once when streaming resumes, with changes_capture_connected
// telling which. Run returns only errors that retrying cannot fix (see
// Retryable): a lost or missing slot, a setup or configuration error, a
// change too large to write.
func (c *Capture) Run(ctx context.Context) error {
	standby := false
	var backoff outage.Backoff
	c.down = ""
	c.setConnected("")
	for {
		started := time.Now()
		err := c.newSession().run(ctx)
		if ctx.Err() != nil {
			c.metrics.standby.Set(0)
			return nil // stopped, maybe during setup or the snapshot: a clean stop too
		}
		var pgErr *pgconn.PgError
		busy := errors.Is(err, errSlotBusy) || (errors.As(err, &pgErr) && pgErr.Code == pgObjectInUse)
		wait := standbyPoll
		switch {
		case busy:
			if !standby {
				c.log.Info("standby: another capture holds the slot; taking over when it is free",
					"slot", c.topo.Config().Postgres.Slot, "detail", err.Error())
				standby = true
				c.metrics.standby.Set(1)
			}
		case err == nil:
			return nil
		case !Retryable(err):
			c.metrics.standby.Set(0)
			return err
		default:
			c.metrics.standby.Set(0)
			standby = false
			if time.Since(started) >= outage.StableAfter {
				backoff.Reset() // it streamed for a while: a new outage
			}
			wait = backoff.Duration()
			dep := dependencyOf(err)
			if dep != c.down {
				c.log.Warn("capture interrupted; retrying until it streams again", "dependency", dep, "err", err.Error(), "retry_in", wait.String())
				c.down = dep
			} else {
				c.log.Debug("capture retry failed", "dependency", dep, "err", err.Error(), "retry_in", wait.String())
			}
			c.setConnected(dep)
			c.metrics.retries.Inc()
		}
		select {
		case <-ctx.Done():
			c.metrics.standby.Set(0)
			return nil
		case <-time.After(wait):
		}
	}
}

// setConnected sets changes_capture_connected: 0 for the dependency that
// failed (if any), 1 for the other.
func (c *Capture) setConnected(failed string) {
	for _, dep := range []string{"kafka", "postgres"} {
		c.metrics.connected.WithLabelValues(dep).Set(b2f(dep != failed))
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// streaming is called when a session starts streaming: every dependency is
// reachable again.
func (c *Capture) streaming() {
	c.setConnected("")
	if c.down != "" {
		c.log.Info("capture resumed: streaming again", "was_down", c.down)
		c.down = ""
	}
}

// pgObjectInUse is the SQLSTATE of START_REPLICATION on a slot another
// session streams from.
const pgObjectInUse = "55006"

// standbyPoll is how often a standby capture tries to take the slot.
const standbyPoll = time.Second

// run streams until ctx is cancelled or the stream fails, then drains:
// it commits what Kafka was given unless a Kafka write failed or a refused
// change's transaction is part of it, closes the
// producer with closeProducer, and reports the acknowledged position to
// PostgreSQL. A Kafka error is returned even when ctx was cancelled too;
// a cancellation alone returns nil.
func (s *stream) run(ctx context.Context, closeProducer func()) error {
	var errs sync.WaitGroup
	errs.Add(1)
	go func() { defer errs.Done(); s.collectErrors() }()
	watchCtx, stopWatch := context.WithCancel(ctx)
	var watch sync.WaitGroup
	watch.Add(1)
	go func() { defer watch.Done(); s.watchSlot(watchCtx) }()

	runErr := s.loop(ctx)
	stopWatch()
	watch.Wait()
	s.domains.close()
	if s.cuts != nil {
		s.cuts.collate.close()
	}

	// Drain: unless a Kafka write failed, what was written is committed,
	// whatever stopped the loop (a cancellation, PostgreSQL gone): every
	// record handed to the producer is in stream order and the commit fails
	// if any of them did. After a Kafka failure the open transaction is
	// aborted, so none of it is visible; so it is after a change the
	// capture refuses (a key it cannot use, a record too large) when the
	// Kafka transaction holds part of that change's PostgreSQL transaction:
	// nothing of a refused transaction is ever written.
	if s.failure() == nil && !(refused(runErr) && s.holdsCurrent()) {
		if err := s.commit(); err != nil && (runErr == nil || errors.Is(runErr, context.Canceled)) {
			runErr = err
		}
	}
	s.abort()
	closeProducer() // nothing is in flight after a commit or an abort
	errs.Wait()
	// A Kafka error wins over a cancellation: it must not vanish at shutdown.
	if ferr := s.failure(); ferr != nil && (runErr == nil || errors.Is(runErr, context.Canceled)) {
		runErr = ferr
	}
	final := s.tracker.acknowledged()
	if err := s.sendStatus(context.Background(), final, false); err != nil && runErr == nil {
		runErr = err
	}
	s.log.Info("stopped", "lsn", final.String())
	if runErr != nil && errors.Is(runErr, context.Canceled) && ctx.Err() != nil {
		return nil
	}
	return runErr
}

// stream is the streaming phase of a session: it decodes the replication
// stream and writes it to the history in Kafka transactions.
type stream struct {
	cfg      *topology.Config
	log      *slog.Logger
	metrics  *metrics
	conn     *pgconn.PgConn
	producer sarama.AsyncProducer
	tracker  *tracker
	rels     *relations
	domains  *domains
	topic    string
	// resent is what the history holds of the changes PostgreSQL resends.
	resent *resent
	// cuts says which changes a resumed snapshot's copy already holds.
	cuts     *cuts
	tableIdx map[string]int
	// changes decodes Insert, Update and Delete messages.
	changes changeDecoder

	// Incremental snapshots: the requests and the copier's chunks, the
	// slot's signal prefix, the window between a chunk's watermarks, and
	// the chunks written whose transactions Kafka has yet to acknowledge.
	inc      *incrementals
	prefix   string
	win      *window
	awaiting []writtenChunk
	recent   recentChanges // while a snapshot is pending

	// Progress watermarks (watermark.go).
	wm watermarks

	// The transaction being decoded.
	cur        *txn
	begin      *pglogrepl.BeginMessage
	index      uint32
	lastStatus time.Time
	lastSent   codecs.LSN

	// The open Kafka transaction of the history, and how long the last
	// commit took.
	ktx            kafkaTxn
	lastCommitTook time.Duration
	// behind says the last transaction begun committed more than
	// behindAge ago: a catch-up.
	behind bool

	failOnce sync.Once
	failErr  error
	failed   chan struct{}
}

// kafkaTxn is the open Kafka transaction: what it holds of which PostgreSQL
// transactions, acknowledged to the tracker only once it commits.
type kafkaTxn struct {
	open    bool
	started time.Time
	records int
	held    []heldRecords
}

// heldRecords are n records of one PostgreSQL transaction in the open Kafka
// transaction.
type heldRecords struct {
	txn        *txn
	n          int
	commitTime time.Time
}

// Kafka transactions of the history commit at PostgreSQL transaction
// boundaries, so a reader never sees part of a PostgreSQL transaction
// unless it is larger than maxTxnRecords or takes longer than maxTxnAge to
// stream (then it is split, and a reader may see its first part first).
// One commits as soon as the stream pauses (nothing arrives within
// idleCommitWait), unless the capture is behind (below): low latency when
// the stream is light. While changes keep
// coming it stays open for commitInterval, or four times as long as the
// last commit took, so the stream spends most of its time producing, not
// committing. While the capture is behind (the transaction being decoded
// committed more than behindAge ago, by the database's clock against the
// capture's), it stays open for behindCommitInterval or ten times the last
// commit: a commit stops the stream until Kafka has every record and the
// transaction's end, and a change that waited that long gains nothing from
// a commit every few milliseconds. A catch-up then spends a few percent of
// its time committing instead of about a fifth. (pgoutput's XLogData
// carries no server WAL end to tell a catch-up by: a logical walsender
// writes the change's own LSN there.)
const (
	idleCommitWait       = time.Millisecond
	commitInterval       = 5 * time.Millisecond
	behindCommitInterval = 100 * time.Millisecond
	behindAge            = time.Second
	maxTxnRecords        = 100_000
	maxTxnAge            = 10 * time.Second
)

func (s *stream) fail(err error) {
	s.failOnce.Do(func() { s.failErr = err; close(s.failed) })
}

func (s *stream) failure() error {
	select {
	case <-s.failed:
		return s.failErr
	default:
		return nil
	}
}

// collectErrors turns the producer's first error into the stream's failure,
// until the producer is closed. A failed record fails its Kafka transaction:
// sarama refuses every later record of it, and it can only be aborted.
func (s *stream) collectErrors() {
	for e := range s.producer.Errors() {
		s.fail(fmt.Errorf("kafka did not take the change at %s (its transaction is aborted; the capture resumes from the slot): %w",
			e.Msg.Metadata.(*recordMeta).position, e.Err))
	}
}

// beginTxn opens a Kafka transaction if none is open.
func (s *stream) beginTxn() error {
	if s.ktx.open {
		return nil
	}
	if err := s.producer.BeginTxn(); err != nil {
		return fmt.Errorf("kafka: begin a history transaction: %w", err)
	}
	s.ktx = kafkaTxn{open: true, started: time.Now()}
	return nil
}

// hold counts a record of the current PostgreSQL transaction in the open
// Kafka transaction.
func (s *stream) hold(commitTime time.Time) {
	s.tracker.produced(s.cur)
	if n := len(s.ktx.held); n > 0 && s.ktx.held[n-1].txn == s.cur {
		s.ktx.held[n-1].n++
	} else {
		s.ktx.held = append(s.ktx.held, heldRecords{txn: s.cur, n: 1, commitTime: commitTime})
	}
	s.ktx.records++
}

// refused reports whether err is a change the capture refuses to write.
func refused(err error) bool {
	return errors.Is(err, ErrInvalidKey) || errors.Is(err, ErrRecordTooLarge)
}

// holdsCurrent reports whether the open Kafka transaction holds records of
// the PostgreSQL transaction being decoded.
func (s *stream) holdsCurrent() bool {
	n := len(s.ktx.held)
	return s.cur != nil && n > 0 && s.ktx.held[n-1].txn == s.cur
}

// commit commits the open Kafka transaction, if any, and only then
// acknowledges its records to the tracker: before that, none is durable.
func (s *stream) commit() error {
	if !s.ktx.open {
		return nil
	}
	if err := s.failure(); err != nil {
		return err
	}
	began := time.Now()
	if err := s.producer.CommitTxn(); err != nil {
		s.fail(fmt.Errorf("kafka did not commit a history transaction of %d changes (none of it is visible; the capture resumes from the slot): %w", s.ktx.records, err))
		return s.failErr
	}
	now := time.Now()
	s.lastCommitTook = now.Sub(began)
	s.metrics.kafkaCommit.Observe(s.lastCommitTook.Seconds())
	for _, h := range s.ktx.held {
		latency := now.Sub(h.commitTime).Seconds()
		for range h.n {
			s.metrics.commitToHistory.Observe(latency)
		}
		s.tracker.ackN(h.txn, h.n)
	}
	s.metrics.kafkaTxns.Inc()
	s.metrics.kafkaTxnRecords.Observe(float64(s.ktx.records))
	s.ktx = kafkaTxn{}
	return nil
}

// abort aborts the open Kafka transaction, if any: after a failure, or
// when the session ends without committing. A transaction left open is
// aborted by the next capture's start anyway.
func (s *stream) abort() {
	if !s.ktx.open {
		return
	}
	if err := s.producer.AbortTxn(); err != nil {
		s.log.Warn("could not abort the history transaction; the next start aborts it", "err", err)
	}
	s.ktx = kafkaTxn{}
}

// commitDue reports whether the open Kafka transaction should commit now.
func (s *stream) commitDue() bool {
	if !s.ktx.open {
		return false
	}
	age := time.Since(s.ktx.started)
	interval := max(commitInterval, 4*s.lastCommitTook)
	if s.behind {
		interval = max(behindCommitInterval, 10*s.lastCommitTook)
	}
	if s.cur == nil && age >= interval {
		return true
	}
	return s.ktx.records >= maxTxnRecords || age >= maxTxnAge
}

type recordMeta struct {
	position codecs.Position
}

func (s *stream) loop(ctx context.Context) error {
	standby := s.cfg.Postgres.StandbyTimeout
	// Each receive waits until a read deadline on the connection, not a
	// context with a timeout: a context per message (a timer, and pgconn
	// watching it) cost a tenth of the capture's CPU in a catch-up. A
	// cancellation of ctx ends the wait at once by moving the deadline to
	// now (or, racing with the next receive, within its wait).
	netConn := s.conn.Conn()
	stopWatch := context.AfterFunc(ctx, func() { netConn.SetReadDeadline(time.Now()) })
	defer func() {
		stopWatch()
		netConn.SetReadDeadline(time.Time{})
	}()
	for {
		if err := s.failure(); err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := s.writeWatermark(ctx); err != nil {
			return err
		}
		if s.commitDue() {
			if err := s.commit(); err != nil {
				return err
			}
		}
		acked := s.tracker.acknowledged()
		s.chunksAcknowledged(acked)
		s.metrics.ackedLSN.Set(float64(acked))
		since := time.Since(s.lastStatus)
		switch {
		case s.cur == nil && s.tracker.idle() && since >= heartbeatInterval:
			// Heartbeat: ask for a keepalive, whose WAL end moves the slot
			// over WAL that holds nothing captured (see handleCopyData).
			if err := s.sendStatus(ctx, acked, true); err != nil {
				return err
			}
		case since >= standby || (acked != s.lastSent && since >= 500*time.Millisecond):
			if err := s.sendStatus(ctx, acked, false); err != nil {
				return err
			}
		}

		wait := 500 * time.Millisecond
		if s.ktx.open {
			wait = idleCommitWait
		}
		if due := s.wm.wait(time.Now()); due >= 0 && s.cur == nil {
			// A watermark is due: the stream pausing must not hold it.
			wait = max(min(wait, due), idleCommitWait)
		}
		if err := netConn.SetReadDeadline(time.Now().Add(wait)); err != nil {
			return fmt.Errorf("receive from postgres: %w", err)
		}
		raw, err := s.conn.ReceiveMessage(context.Background())
		if err != nil {
			if pgconn.Timeout(err) && ctx.Err() == nil {
				// The stream pauses: commit now, unless behind, where a
				// pause is PostgreSQL decoding (commitDue commits within
				// behindCommitInterval if the stream has ended).
				if s.ktx.open && s.cur == nil && !s.behind {
					if err := s.commit(); err != nil {
						return err
					}
				}
				continue
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("receive from postgres: %w", err)
		}
		switch msg := raw.(type) {
		case *pgproto3.ErrorResponse:
			return fmt.Errorf("replication stream: %w", pgconn.ErrorResponseToPgError(msg))
		case *pgproto3.CopyData:
			if err := s.handleCopyData(ctx, msg.Data); err != nil {
				return err
			}
		default:
			return fmt.Errorf("replication stream: unexpected message %T", raw)
		}
	}
}

// heartbeatInterval is how often an idle capture asks PostgreSQL for a
// keepalive, so the slot advances while the captured tables are quiet and
// other tables or databases fill the WAL.
const heartbeatInterval = time.Second

func (s *stream) sendStatus(ctx context.Context, lsn codecs.LSN, replyRequested bool) error {
	// All three positions are set: pglogrepl copies the write position into
	// a zero flush position, which would acknowledge what Kafka lacks.
	err := pglogrepl.SendStandbyStatusUpdate(ctx, s.conn, pglogrepl.StandbyStatusUpdate{
		WALWritePosition: pglogrepl.LSN(lsn),
		WALFlushPosition: pglogrepl.LSN(lsn),
		WALApplyPosition: pglogrepl.LSN(lsn),
		ClientTime:       time.Now(),
		ReplyRequested:   replyRequested,
	})
	if err != nil {
		return fmt.Errorf("send standby status: %w", err)
	}
	s.lastStatus = time.Now()
	s.lastSent = lsn
	return nil
}

func (s *stream) handleCopyData(ctx context.Context, data []byte) error {
	if len(data) == 0 {
		return errors.New("replication stream: empty CopyData")
	}
	switch data[0] {
	case pglogrepl.PrimaryKeepaliveMessageByteID:
		ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(data[1:])
		if err != nil {
			return fmt.Errorf("parse keepalive: %w", err)
		}
		// Idle: no decoded transaction waits for Kafka, so WAL up to the
		// server's end holds nothing for us that is not already in Kafka.
		// Every transaction that committed before that end is decoded,
		// or held nothing captured: a watermark may say so.
		if s.cur == nil {
			s.tracker.skipTo(codecs.LSN(ka.ServerWALEnd))
			s.wm.advance(codecs.LSN(ka.ServerWALEnd), ka.ServerTime)
		}
		if ka.ReplyRequested {
			return s.sendStatus(ctx, s.tracker.acknowledged(), false)
		}
		return nil
	case pglogrepl.XLogDataByteID:
		xld, err := pglogrepl.ParseXLogData(data[1:])
		if err != nil {
			return fmt.Errorf("parse xlogdata: %w", err)
		}
		return s.handleWAL(ctx, xld.WALData)
	}
	return fmt.Errorf("replication stream: unknown CopyData type %q", data[0])
}

func (s *stream) handleWAL(ctx context.Context, wal []byte) error {
	if len(wal) > 0 {
		switch wal[0] {
		case 'I', 'U', 'D': // most of the stream: decoded without allocating
			m, err := s.changes.decode(wal)
			if err != nil {
				return fmt.Errorf("parse pgoutput message: %w", err)
			}
			switch wal[0] {
			case 'I':
				return s.change(ctx, m.relID, codecs.OpInsert, 0, nil, m.new)
			case 'U':
				return s.change(ctx, m.relID, codecs.OpUpdate, m.oldType, m.old, m.new)
			default:
				return s.change(ctx, m.relID, codecs.OpDelete, m.oldType, m.old, nil)
			}
		}
	}
	msg, err := pglogrepl.Parse(wal)
	if err != nil {
		return fmt.Errorf("parse pgoutput message: %w", err)
	}
	switch m := msg.(type) {
	case *pglogrepl.RelationMessage:
		if err := s.domains.resolve(ctx, m); err != nil {
			return err
		}
		return s.rels.add(m)
	case *pglogrepl.BeginMessage:
		if s.cur != nil {
			return errors.New("replication stream: begin inside a transaction")
		}
		s.begin, s.index = m, 0
		s.cur = s.tracker.open()
		s.behind = time.Since(m.CommitTime) > behindAge
	case *pglogrepl.CommitMessage:
		if s.cur == nil {
			return errors.New("replication stream: commit without begin")
		}
		if n := len(s.awaiting); n > 0 && s.awaiting[n-1].txn == s.cur {
			s.awaiting[n-1].end = codecs.LSN(m.TransactionEndLSN)
		}
		s.tracker.seal(s.cur, codecs.LSN(m.TransactionEndLSN))
		s.wm.advance(codecs.LSN(m.TransactionEndLSN), m.CommitTime)
		s.metrics.transactions.Inc()
		s.cur, s.begin = nil, nil
	case *pglogrepl.TruncateMessage:
		for _, id := range m.RelationIDs {
			if err := s.change(ctx, id, codecs.OpTruncate, 0, nil, nil); err != nil {
				return err
			}
		}
	case *pglogrepl.LogicalDecodingMessage:
		if m.Prefix == s.prefix {
			return s.signal(ctx, m)
		}
	}
	// Type and Origin messages carry nothing an event needs.
	return nil
}

// change turns one decoded change into events and produces them. An update
// that changes the entity key becomes a delete of the old key and an insert
// of the new one, so no consumer keeps an entity the table no longer has.
func (s *stream) change(ctx context.Context, relID uint32, op codecs.Op, oldType uint8, oldTuple, newTuple *pglogrepl.TupleData) error {
	if s.cur == nil {
		return fmt.Errorf("replication stream: %s outside a transaction", op)
	}
	rel, err := s.rels.get(relID)
	if err != nil {
		return err
	}
	if op == codecs.OpTruncate {
		return s.produce(ctx, rel, s.event(rel, op))
	}
	before, _, err := rel.oldRow(oldTuple, oldType)
	if err != nil {
		return err
	}
	var oldKey, newKey codecs.Key
	if oldTuple != nil {
		if oldKey, err = rel.key(oldTuple); err != nil {
			return err
		}
	}
	if newTuple != nil {
		if newKey, err = rel.key(newTuple); err != nil {
			return err
		}
	}
	if op == codecs.OpDelete {
		ev := s.event(rel, op)
		ev.EntityID, ev.Before = oldKey, before
		return s.produce(ctx, rel, ev)
	}
	after, unchanged, err := rel.row(newTuple)
	if err != nil {
		return err
	}
	if op == codecs.OpUpdate && oldTuple != nil && oldKey != newKey {
		del := s.event(rel, codecs.OpDelete)
		del.EntityID, del.Before = oldKey, before
		if err := s.produce(ctx, rel, del); err != nil {
			return err
		}
		// The new id has no stored state to keep unchanged values from: take
		// them from the old row where PostgreSQL sent it (REPLICA IDENTITY FULL).
		var missing []string
		for _, col := range unchanged {
			if v, ok := before[col]; ok {
				after[col] = v
			} else {
				missing = append(missing, col)
			}
		}
		op, unchanged, before = codecs.OpInsert, missing, nil
	}
	ev := s.event(rel, op)
	ev.EntityID, ev.After, ev.Unchanged, ev.Before = newKey, after, unchanged, before
	return s.produce(ctx, rel, ev)
}

// event starts the next event of the current transaction.
func (s *stream) event(rel *relation, op codecs.Op) *codecs.Event {
	commitLSN := codecs.LSN(s.begin.FinalLSN)
	ev := &codecs.Event{
		EntityType:  rel.table.entityType,
		Op:          op,
		TxID:        s.begin.Xid,
		CommitLSN:   commitLSN,
		Position:    codecs.Position{CommitLSN: commitLSN, Index: s.index},
		CommitTime:  s.begin.CommitTime.UTC(),
		CaptureTime: time.Now().UTC(),
	}
	s.index++
	return ev
}

// produce sends ev to the history topic as part of the current transaction.
func (s *stream) produce(ctx context.Context, rel *relation, ev *codecs.Event) error {
	if err := s.failure(); err != nil {
		return err // nothing more after a failed write: it would land after the hole
	}
	if s.win != nil && ev.EntityType == s.win.entityType {
		s.win.saw(ev)
	}
	if s.inc.pending.Load() {
		s.recent.add(s.begin.Xid, ev)
	} else if s.recent.list != nil {
		s.recent.list = nil
	}
	if ev.Op != codecs.OpTruncate {
		covered, err := s.cuts.covers(ctx, s.tableIdx[ev.EntityType], ev.EntityID, ev.CommitLSN)
		if err != nil {
			return err
		}
		if covered {
			s.metrics.folded.Inc() // its row's copy already holds it: never in the history
			return nil
		}
	}
	msg, err := historyRecord(s.topic, rel.table, ev, s.cfg.Kafka.MaxRecordBytes)
	if err != nil {
		return err
	}
	return s.send(ctx, rel, ev, msg)
}

// send sends msg, the history record of ev, as part of the current
// transaction, unless the history holds ev already.
func (s *stream) send(ctx context.Context, rel *relation, ev *codecs.Event, msg *sarama.ProducerMessage) error {
	done, hole := s.resent.written(ev.Position)
	if done {
		s.metrics.skipped.Inc()
		return nil
	}
	if hole {
		// Only a history written before transactions can have one.
		s.metrics.repaired.Inc()
		s.log.Warn("repairing a hole in the history: the change is missing although later ones are there; writing it now, after them",
			"position", ev.Position.String(), "history_position", s.resent.last.String(), "table", rel.table.qualified(), "entity_id", ev.EntityID)
	}
	if err := s.beginTxn(); err != nil {
		return err
	}
	msg.Metadata = &recordMeta{position: ev.Position}
	select {
	case s.producer.Input() <- msg:
	case <-s.failed:
		return s.failErr
	case <-ctx.Done():
		return ctx.Err()
	}
	s.hold(ev.CommitTime)
	s.metrics.changes.WithLabelValues(ev.EntityType, string(ev.Op)).Inc()
	s.metrics.bytes.Add(float64(msg.Value.Length()))
	return nil
}

// historyRecord encodes ev as a history record (see newHistoryRecord).
func historyRecord(topic string, t table, ev *codecs.Event, maxBytes int) (*sarama.ProducerMessage, error) {
	value, err := codecs.EventCodec{}.Encode(ev)
	if err != nil {
		return nil, fmt.Errorf("encode change of %s id %s: %w", t.qualified(), ev.EntityID, err)
	}
	return newHistoryRecord(topic, t, ev, value, maxBytes)
}

// Header names as sarama takes them: shared by every record, never written.
var (
	headerEntityType  = []byte(codecs.HeaderEntityType)
	headerOp          = []byte(codecs.HeaderOp)
	headerPosition    = []byte(codecs.HeaderPosition)
	headerCommitTime  = []byte(codecs.HeaderCommitTime)
	headerCaptureTime = []byte(codecs.HeaderCaptureTime)
)

// historyMessage is a record with room for its headers: one allocation.
type historyMessage struct {
	msg     sarama.ProducerMessage
	headers [5]sarama.RecordHeader
}

// newHistoryRecord makes the history record of ev, whose encoding is
// value: key "type/id", the commit time as the record timestamp, and the
// headers consumers route and measure by. A record above maxBytes is
// ErrRecordTooLarge, naming the table and id.
func newHistoryRecord(topic string, t table, ev *codecs.Event, value []byte, maxBytes int) (*sarama.ProducerMessage, error) {
	id := ev.EntityID.String()
	// The key and the headers' values share one buffer, sized to hold
	// them all (the times at most 35 bytes each in RFC 3339), so the
	// slices taken of it stay in place.
	buf := make([]byte, 0, 2*len(ev.EntityType)+1+len(id)+len(ev.Op)+len("0000000000000000:00000000")+2*len(time.RFC3339Nano)+8)
	take := func(from int) []byte { return buf[from:len(buf):len(buf)] }
	buf = append(buf, ev.EntityType...)
	buf = append(buf, '/')
	buf = append(buf, id...)
	key := take(0)
	at := len(buf)
	buf = append(buf, ev.EntityType...)
	entityType := take(at)
	at = len(buf)
	buf = append(buf, ev.Op...)
	op := take(at)
	at = len(buf)
	buf, _ = ev.Position.AppendText(buf)
	position := take(at)
	at = len(buf)
	buf = ev.CommitTime.AppendFormat(buf, time.RFC3339Nano)
	commitTime := take(at)
	at = len(buf)
	buf = ev.CaptureTime.AppendFormat(buf, time.RFC3339Nano)
	captureTime := take(at)

	hm := &historyMessage{}
	hm.headers = [5]sarama.RecordHeader{
		{Key: headerEntityType, Value: entityType},
		{Key: headerOp, Value: op},
		{Key: headerPosition, Value: position},
		{Key: headerCommitTime, Value: commitTime},
		{Key: headerCaptureTime, Value: captureTime},
	}
	hm.msg = sarama.ProducerMessage{
		Topic:     topic,
		Key:       sarama.ByteEncoder(key),
		Value:     sarama.ByteEncoder(value),
		Timestamp: ev.CommitTime,
		Headers:   hm.headers[:],
	}
	msg := &hm.msg
	// Measured the way sarama will (record batch format), so nothing it
	// would reject gets past this check.
	if size := msg.ByteSize(2); size > maxBytes {
		return nil, fmt.Errorf("%w: table %s id %s at %s encodes to %d bytes, kafka.max_record_bytes is %d (raise it together with the topic's max.message.bytes)",
			ErrRecordTooLarge, t.qualified(), ev.EntityID.String(), ev.Position, size, maxBytes)
	}
	return msg, nil
}
