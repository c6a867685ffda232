package server

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"log/slog"
	"math"
	"net/http"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/topology"
	"github.com/changes-dev/changes/views"
	"github.com/changes-dev/changes/views/history"
)

// DefaultLimit and MaxLimit bound a page of the entity listing; a page of
// changes holds up to MaxLimit. Config.MaxResponseBytes may end a page
// sooner.
const (
	DefaultLimit = 100
	MaxLimit     = 1000
)

// Config is what the handler serves, and its limits. The zero value of a
// limit is its default, the one `changes serve` has (topology.ServeConfig).
type Config struct {
	// Views are the views served, by entity type. They must be running.
	Views map[string]*views.View
	// History answers /v1/history; nil disables it (404) unless
	// HistoryLater is set.
	History *history.Reader
	// HistoryLater, when History is nil, is asked for the history reader on
	// each /v1/history request: for a server started while Kafka is away,
	// which opens the reader once Kafka is back. While it returns nil the
	// requests get 503.
	HistoryLater func() *history.Reader
	// HistoryIndex, when not nil, is asked for the history index on each
	// /v1/history?at= request: once the index has read the history up to
	// the asked moment, the index answers (in milliseconds, without a
	// HistoryScans turn); before that, and while it returns nil, the
	// history is scanned. HeaderHistorySource says which answered.
	HistoryIndex func() *history.Index
	// Token, when not empty, is a bearer token accepted on /v1 requests
	// ("Authorization: Bearer <token>"); /healthz, /readyz and /metrics stay
	// open. With Token and Tokens empty, /v1 is open too.
	Token string
	// Tokens are more accepted tokens: a request carrying any of Token and
	// Tokens passes (compared in constant time). Serving the old and the new
	// token at once rotates them without downtime.
	Tokens []string
	// Log receives one line per failed request. Default: slog.Default().
	Log *slog.Logger
	// Metrics, when not nil, is served at /metrics.
	Metrics http.Handler
	// Registerer, when not nil, receives the changes_serve_* metrics.
	Registerer prometheus.Registerer
	// MaxInFlight bounds the /v1 requests served at once; a request holds
	// its turn until its answer is written. Default:
	// topology.DefaultServeMaxInFlight (32).
	MaxInFlight int
	// MaxWaiting bounds the /v1 requests waiting for a turn; more get 503
	// with Retry-After at once. Default: topology.DefaultServeMaxWaiting (64).
	MaxWaiting int
	// MaxWait is how long a request waits for a turn (of MaxInFlight, then
	// of HistoryScans) before it gets 503 with Retry-After, and how long a
	// read with min_lsn= waits for the view to apply that LSN. Default:
	// topology.DefaultServeMaxWait (10s).
	MaxWait time.Duration
	// HistoryScans bounds the /v1/history requests reading the history at
	// once: each reads the history topic from its start. A request gives its
	// turn back once it has read, before it writes. Default: 2.
	HistoryScans int
	// MaxResponseBytes bounds the JSON of a page (see the package
	// documentation). Default: topology.DefaultServeMaxResponseBytes (4 MiB).
	MaxResponseBytes int
	// Shutdown, when closed, ends every change stream (/v1/changes): a
	// stream never goes idle by itself, so http.Server.Shutdown would wait
	// for it. `changes serve` closes it from RegisterOnShutdown.
	Shutdown <-chan struct{}
	// MaxSubscriptions bounds the change streams (/v1/changes) served at
	// once; more get 503 with Retry-After. Default:
	// topology.DefaultServeMaxSubscriptions (64).
	MaxSubscriptions int
	// WriteTimeout, when positive, is how long writing an answer may take
	// from its first byte: a /v1 request has no write deadline while its
	// answer is computed (a history read may take longer than writing), then
	// this one, set through http.ResponseController. Zero leaves the
	// http.Server's WriteTimeout alone, which counts from the request.
	WriteTimeout time.Duration
}

// RetryAfter is the Retry-After, in seconds, of a 503 for want of a turn.
const RetryAfter = 1

// Handler returns the HTTP handler of cfg. It is safe for concurrent use.
func Handler(cfg Config) http.Handler {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	setDefault(&cfg.MaxInFlight, topology.DefaultServeMaxInFlight)
	setDefault(&cfg.MaxWaiting, topology.DefaultServeMaxWaiting)
	setDefault(&cfg.HistoryScans, topology.DefaultServeHistoryScans)
	setDefault(&cfg.MaxResponseBytes, topology.DefaultServeMaxResponseBytes)
	setDefault(&cfg.MaxSubscriptions, topology.DefaultServeMaxSubscriptions)
	if cfg.MaxWait <= 0 {
		cfg.MaxWait = topology.DefaultServeMaxWait
	}
	log := cfg.Log.With("component", "server")
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		log.Warn("the changes_serve_* metrics are not exported", "err", err)
	}
	s := &server{
		cfg:  cfg,
		log:  log,
		reqs: newLimiter("requests", "requests", cfg.MaxInFlight, cfg.MaxWaiting, cfg.MaxWait, m),
		// A request waiting for a history turn holds a request turn: those
		// bound the waiters already.
		scans: newLimiter("history", "history reads", cfg.HistoryScans, cfg.MaxInFlight, cfg.MaxWait, m),
		subs:  make(chan struct{}, cfg.MaxSubscriptions),
	}
	for _, t := range append([]string{cfg.Token}, cfg.Tokens...) {
		if t != "" {
			s.tokens = append(s.tokens, sha256.Sum256([]byte(t)))
		}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		s.writeJSON(w, r, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", s.ready)
	if cfg.Metrics != nil {
		mux.Handle("GET /metrics", cfg.Metrics)
	}
	mux.Handle("GET /v1/entities/{type}/{id}", s.v1(s.entity))
	mux.Handle("GET /v1/entities/{type}", s.v1(s.list))
	mux.Handle("GET /v1/history/{type}/{id}", s.v1(s.history))
	mux.Handle("GET /v1/history/{type}", s.v1(s.typeAt))
	mux.HandleFunc("GET /v1/changes/{type}", s.subscribe)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		// Every endpoint is GET (and so HEAD): a path one of them serves,
		// asked with another method, is 405, not an unknown path.
		get := r.Clone(r.Context())
		get.Method = http.MethodGet
		if _, pattern := mux.Handler(get); pattern != "/" {
			w.Header().Set("Allow", "GET, HEAD")
			s.fail(w, r, http.StatusMethodNotAllowed, fmt.Errorf("method %s is not allowed on %s: use GET", r.Method, r.URL.Path))
			return
		}
		s.fail(w, r, http.StatusNotFound, fmt.Errorf("no such endpoint: %s %s", r.Method, r.URL.Path))
	})
	return s.outer(mux)
}

func setDefault(dst *int, def int) {
	if *dst <= 0 {
		*dst = def
	}
}

type server struct {
	cfg    Config
	log    *slog.Logger
	tokens [][sha256.Size]byte // of the accepted tokens; none: /v1 is open
	reqs   *limiter            // every /v1 request
	scans  *limiter            // /v1/history requests while they read the history
	subs   chan struct{}       // a slot per change stream served
}

// outer is around every request: nosniff on every answer (a JSON error
// body that echoes a path must never be taken for HTML), and a panic
// answered as an internal error rather than a dropped connection.
func (s *server) outer(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Content-Type-Options", "nosniff")
		defer func() {
			if p := recover(); p != nil {
				if p == http.ErrAbortHandler {
					panic(p)
				}
				s.fail(w, r, http.StatusInternalServerError, fmt.Errorf("panic: %v\n%s", p, debug.Stack()))
			}
		}()
		h.ServeHTTP(w, r)
	})
}

// v1 is around every /v1 request: the token first (a request without one
// takes no turn), then a turn of MaxInFlight.
func (s *server) v1(h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !s.authorized(w, r) {
			return
		}
		release, err := s.reqs.acquire(r.Context())
		if err != nil {
			s.busy(w, r, err)
			return
		}
		defer release()
		if s.cfg.WriteTimeout > 0 {
			// No write deadline while the answer is computed: write sets
			// one when the first byte goes out.
			_ = http.NewResponseController(w).SetWriteDeadline(time.Time{})
		}
		h(w, r)
	})
}

// authorized reports whether r may pass, and answers 401 if not.
func (s *server) authorized(w http.ResponseWriter, r *http.Request) bool {
	if len(s.tokens) == 0 {
		return true
	}
	header := r.Header.Get("Authorization")
	scheme, token, _ := strings.Cut(header, " ")
	if strings.EqualFold(scheme, "Bearer") && s.accepts(token) {
		return true
	}
	w.Header().Set("WWW-Authenticate", `Bearer realm="changes"`)
	msg := "missing bearer token"
	if header != "" {
		msg = "wrong bearer token"
	}
	s.fail(w, r, http.StatusUnauthorized, errors.New(msg))
	return false
}

// accepts compares token with every accepted one, each time all of them,
// through their SHA-256: the time taken says neither which token came
// close nor how long the tokens are.
func (s *server) accepts(token string) bool {
	sum := sha256.Sum256([]byte(token))
	ok := 0
	for _, want := range s.tokens {
		ok |= subtle.ConstantTimeCompare(sum[:], want[:])
	}
	return ok == 1
}

// busy answers a request that got no turn: 503, with Retry-After unless
// the client left while it waited (then nobody reads the answer).
func (s *server) busy(w http.ResponseWriter, r *http.Request, err error) {
	var b *busyError
	if errors.As(err, &b) {
		w.Header().Set("Retry-After", strconv.Itoa(RetryAfter))
	}
	s.fail(w, r, http.StatusServiceUnavailable, err)
}

// Entity is the JSON of one entity's state, history.Entity: the query
// server and `changes asof` print the same.
type Entity = history.Entity

// Page is the JSON of a page of the listing. NextAfter, when present, is the
// after= of the next page; absent, the page ended the listing.
type Page struct {
	Entities  []Entity `json:"entities"`
	NextAfter *string  `json:"next_after,omitempty"`
}

// StateAt is the JSON of a point-in-time read, history.StateAt.
type StateAt = history.StateAt

// Changes is the JSON of a page of an entity's changes, in history order.
type Changes struct {
	Type    string           `json:"type"`
	ID      string           `json:"id"` // the key's text
	Changes []history.Change `json:"changes"`
	// NextAfter, when present, is the after= of the next page (the offset
	// of the page's last change); absent, the page reached the history's
	// end as of the request.
	NextAfter string `json:"next_after,omitempty"`
}

type errorBody struct {
	Error string `json:"error"`
	// ID, on a 500, is the request_id of the log line with the detail.
	ID string `json:"id,omitempty"`
}

func (s *server) view(w http.ResponseWriter, r *http.Request) (*views.View, bool) {
	typ := r.PathValue("type")
	v, ok := s.cfg.Views[typ]
	if !ok {
		s.fail(w, r, http.StatusNotFound, fmt.Errorf("unknown entity type %q", typ))
		return nil, false
	}
	if at := v.SyncedAt(); !at.IsZero() {
		w.Header().Set(HeaderSyncedAt, at.UTC().Format(time.RFC3339Nano))
		w.Header().Set(HeaderStale, strconv.FormatFloat(staleSeconds(at), 'f', 3, 64))
	}
	setApplied(w, v.AppliedThrough())
	return v, ok
}

// Headers of every /v1 answer that names a view: how current the view's
// local copy is. A view checks every second that it holds its whole table;
// while Kafka is away it answers from its local copy and the age grows.
// HeaderAppliedLSN says which committed changes it holds.
const (
	// HeaderAppliedLSN is the view's progress watermark when it read the
	// answer (views.View.AppliedThrough; for one entity, its partition's,
	// after a min_lsn= wait): the view held every change committed before
	// that LSN, in PostgreSQL's text form (16/B374D848). Absent before the
	// view has one.
	HeaderAppliedLSN = "X-Changes-Applied-LSN"
	// HeaderAppliedCommitTime is the commit time (RFC 3339) of the last
	// transaction that watermark covers, by the database's clock.
	HeaderAppliedCommitTime = "X-Changes-Applied-Commit-Time"
	// HeaderSyncedAt is when the view last held every record of its table
	// (RFC 3339); absent before the first time.
	HeaderSyncedAt = "X-Changes-Synced-At"
	// HeaderStale is how many seconds ago that was: about 1 or less while
	// Kafka answers and the view keeps up.
	HeaderStale = "X-Changes-Stale"
)

func staleSeconds(at time.Time) float64 { return max(time.Since(at).Seconds(), 0) }

// viewAndID is the view and the entity key a /v1/.../{type}/{id} path
// names (the segment URL-unescaped, then read as a key of the view's kind);
// false when it answered an error.
func (s *server) viewAndID(w http.ResponseWriter, r *http.Request) (*views.View, codecs.Key, bool) {
	v, ok := s.view(w, r)
	if !ok {
		return nil, codecs.Key{}, false
	}
	id, err := v.ParseKey(r.PathValue("id"))
	if err != nil {
		s.fail(w, r, http.StatusBadRequest, err)
		return nil, codecs.Key{}, false
	}
	return v, id, true
}

// minLSN parses the min_lsn parameter: 0 when absent, false when it
// answered 400.
func (s *server) minLSN(w http.ResponseWriter, r *http.Request) (codecs.LSN, bool) {
	q := r.URL.Query()
	if !q.Has("min_lsn") {
		return 0, true
	}
	lsn, err := codecs.ParseLSN(q.Get("min_lsn"))
	if err != nil || lsn == 0 {
		s.fail(w, r, http.StatusBadRequest, fmt.Errorf("min_lsn %q is not an LSN such as 16/B374D848 (pg_current_wal_insert_lsn() after your COMMIT)", q.Get("min_lsn")))
		return 0, false
	}
	return lsn, true
}

// awaitLSN waits, for at most MaxWait, until wait returns (the view has
// applied lsn); false when it answered 503 (or the client left).
func (s *server) awaitLSN(w http.ResponseWriter, r *http.Request, v *views.View, lsn codecs.LSN, wait func(ctx context.Context) error) bool {
	if lsn == 0 {
		return true
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.MaxWait)
	defer cancel()
	if err := wait(ctx); err != nil {
		if r.Context().Err() == nil {
			w.Header().Set("Retry-After", strconv.Itoa(RetryAfter))
			err = fmt.Errorf("%s has not applied the changes committed up to %s within %s (applied through %s): %w",
				v.EntityType(), lsn, s.cfg.MaxWait, v.AppliedThrough().LSN, errNotApplied)
		}
		s.fail(w, r, http.StatusServiceUnavailable, err)
		return false
	}
	return true
}

// errNotApplied: a min_lsn= the view did not reach in time.
var errNotApplied = errors.New("try again later")

// setApplied sets the answer's HeaderAppliedLSN and
// HeaderAppliedCommitTime from wm, read before the answer is.
func setApplied(w http.ResponseWriter, wm views.Watermark) {
	if wm.IsZero() {
		return
	}
	w.Header().Set(HeaderAppliedLSN, wm.LSN.String())
	w.Header().Set(HeaderAppliedCommitTime, wm.CommitTime.UTC().Format(time.RFC3339Nano))
}

func (s *server) entity(w http.ResponseWriter, r *http.Request) {
	v, id, ok := s.viewAndID(w, r)
	if !ok {
		return
	}
	lsn, ok := s.minLSN(w, r)
	if !ok || !s.awaitLSN(w, r, v, lsn, func(ctx context.Context) error { return v.WaitAppliedKey(ctx, id, lsn) }) {
		return
	}
	setApplied(w, v.AppliedThroughKey(id))
	st, err := v.GetKey(r.Context(), id)
	switch {
	case err != nil:
		s.fail(w, r, statusOf(err), err)
	case st == nil && !v.Recovered():
		// Not found yet is not "not found": the view may not have read it.
		s.fail(w, r, statusOf(errCatchingUp), fmt.Errorf("%s %q: %w", v.EntityType(), id, errCatchingUp))
	case st == nil:
		s.fail(w, r, http.StatusNotFound, fmt.Errorf("%s %q not found", v.EntityType(), id))
	default:
		s.writeJSON(w, r, http.StatusOK, history.EntityOf(st))
	}
}

func (s *server) list(w http.ResponseWriter, r *http.Request) {
	v, ok := s.view(w, r)
	if !ok {
		return
	}
	if !v.Recovered() {
		s.fail(w, r, statusOf(errCatchingUp), fmt.Errorf("%s: %w", v.EntityType(), errCatchingUp))
		return
	}
	lsn, ok := s.minLSN(w, r)
	if !ok || !s.awaitLSN(w, r, v, lsn, func(ctx context.Context) error { return v.WaitApplied(ctx, lsn) }) {
		return
	}
	setApplied(w, v.AppliedThrough())
	q := r.URL.Query()
	entities := v.All(r.Context())
	if q.Has("after") {
		after, err := v.ParseKey(q.Get("after"))
		switch {
		case err == nil:
			entities = v.After(r.Context(), after)
		case q.Get("after") == "":
			// No key of the view is empty: an empty after= is the
			// start, as it always was. (Only a text key may be "".)
		default:
			s.fail(w, r, http.StatusBadRequest, fmt.Errorf("after: %w", err))
			return
		}
	}
	limit, ok := s.limit(w, r, DefaultLimit)
	if !ok {
		return
	}
	page := s.newPage(limit)
	var lastID codecs.Key
	for st, err := range entities {
		if err != nil {
			s.fail(w, r, statusOf(err), err)
			return
		}
		fits, err := page.add(history.EntityOf(st))
		if err != nil {
			s.fail(w, r, http.StatusInternalServerError, fmt.Errorf("encode %s %q: %w", st.EntityType, st.EntityID, err))
			return
		}
		if !fits {
			page.nextAfter, page.more = lastID.String(), true
			break
		}
		lastID = st.EntityID
	}
	s.write(w, r, http.StatusOK, page.body(`{"entities":`))
}

// limit parses the limit parameter: 1 to MaxLimit, def when absent.
func (s *server) limit(w http.ResponseWriter, r *http.Request, def int) (int, bool) {
	l := r.URL.Query().Get("limit")
	if l == "" {
		return def, true
	}
	n, err := strconv.Atoi(l)
	if err != nil || n < 1 || n > MaxLimit {
		s.fail(w, r, http.StatusBadRequest, fmt.Errorf("limit %q must be an integer from 1 to %d", l, MaxLimit))
		return 0, false
	}
	return n, true
}

// historyReader returns the history reader, or answers 404 or 503.
func (s *server) historyReader(w http.ResponseWriter, r *http.Request) (*history.Reader, bool) {
	h := s.cfg.History
	switch {
	case h == nil && s.cfg.HistoryLater == nil:
		s.fail(w, r, http.StatusNotFound, errors.New("this server does not read the history"))
		return nil, false
	case h == nil:
		if h = s.cfg.HistoryLater(); h == nil {
			s.fail(w, r, http.StatusServiceUnavailable, errors.New("the history is not reachable yet (kafka); try again later"))
			return nil, false
		}
	}
	return h, true
}

func (s *server) history(w http.ResponseWriter, r *http.Request) {
	v, id, ok := s.viewAndID(w, r)
	if !ok {
		return
	}
	q := r.URL.Query()
	at := q.Get("at")
	if at != "" && (q.Has("after") || q.Has("limit")) {
		s.fail(w, r, http.StatusBadRequest, errors.New("at= answers one state; after= and limit= page the list of changes"))
		return
	}
	from := int64(0)
	if a := q.Get("after"); a != "" {
		after, err := strconv.ParseInt(a, 10, 64)
		if err != nil || after < 0 || after == math.MaxInt64 {
			s.fail(w, r, http.StatusBadRequest, fmt.Errorf("after %q is not a history offset", a))
			return
		}
		from = after + 1
	}
	limit, ok := s.limit(w, r, MaxLimit)
	if !ok {
		return
	}
	h, ok := s.historyReader(w, r)
	if !ok {
		return
	}
	if at != "" {
		st, source, err := s.stateAt(r.Context(), h, v, id, at)
		if source != "" {
			w.Header().Set(HeaderHistorySource, source)
		}
		var busy *busyError
		switch {
		case errors.As(err, &busy):
			s.busy(w, r, err)
		case err != nil:
			s.fail(w, r, statusOf(err), err)
		default:
			s.writeJSON(w, r, http.StatusOK, st)
		}
		return
	}
	// The history turn covers the reading only: the answer is in memory
	// (a page within its budget) before it is written, so a client that
	// reads slowly holds no turn of the history.
	release, err := s.scans.acquire(r.Context())
	if err != nil {
		s.busy(w, r, err)
		return
	}
	defer release() // on a panic; released below otherwise
	body, err := s.changes(r.Context(), h, v.EntityType(), id, from, limit)
	release()
	if err != nil {
		s.fail(w, r, statusOf(err), err)
		return
	}
	s.write(w, r, http.StatusOK, body)
}

// HeaderHistoryOffset is, on a /v1/history/{type}?at= answer, the end
// (exclusive) of the history the answer holds: the offset of the first
// change it does not include.
const HeaderHistoryOffset = "X-Changes-History-Offset"

// typeAt answers GET /v1/history/{type}?at=: every entity of the type as it
// was at that moment (an RFC 3339 time or a history offset), one JSON
// Entity a line (application/x-ndjson), in id order, as `changes asof`
// prints it. The history index answers once it has read up to the moment,
// if it keeps checkpoints of the types (it read the history from offset
// 0), decoding only the entities changed since its last checkpoint before
// it; else the history is scanned from its start. Either takes a history
// turn for as long as it writes, the client's reading included.
//
// An error before the first entity is written is an error answer as
// elsewhere; one after it aborts the answer (the client sees the chunked
// body end without its last chunk), never a shorter list that looks whole.
func (s *server) typeAt(w http.ResponseWriter, r *http.Request) {
	v, ok := s.view(w, r)
	if !ok {
		return
	}
	typ := v.EntityType()
	at := r.URL.Query().Get("at")
	if at == "" {
		s.fail(w, r, http.StatusBadRequest, fmt.Errorf("at= is required: the moment (an RFC 3339 time or a history offset) to read every %s at; /v1/history/%s/{id} lists one entity's changes", typ, typ))
		return
	}
	h, ok := s.historyReader(w, r)
	if !ok {
		return
	}
	ctx := r.Context()
	end, err := EndOffset(ctx, h, at)
	if err != nil {
		s.fail(w, r, statusOf(err), err)
		return
	}
	release, err := s.scans.acquire(ctx)
	if err != nil {
		s.busy(w, r, err)
		return
	}
	defer release()
	var idx *history.Index
	if s.cfg.HistoryIndex != nil {
		if idx = s.cfg.HistoryIndex(); idx != nil && (idx.Position() < end || !idx.KeepsTypes()) {
			// It has not read that far yet, or it keeps no checkpoints
			// of the types and would scan the history itself.
			idx = nil
		}
	}
	out := bufio.NewWriterSize(deadlineWriter{w: w, timeout: s.cfg.WriteTimeout}, 64<<10)
	started := false
	start := func() {
		if !started {
			started = true
			w.Header().Set("Content-Type", "application/x-ndjson")
			w.WriteHeader(http.StatusOK)
		}
	}
	entities := 0
	write := func(entity []byte) error {
		start()
		entities++
		out.Write(entity)
		return out.WriteByte('\n')
	}
	w.Header().Set(HeaderHistoryOffset, strconv.FormatInt(end, 10))
	source := "scan"
	if idx != nil {
		source = "index"
		w.Header().Set(HeaderHistorySource, source)
		err = idx.TypeJSONAt(ctx, typ, end, nil, write)
		if !started && (errors.Is(err, history.ErrIndexMismatch) || errors.Is(err, history.ErrIndexClosed)) {
			s.log.Warn("the history index failed a read; scanning the history", "entity_type", typ, "err", err)
			source, idx = "scan", nil
		}
	}
	if idx == nil {
		w.Header().Set(HeaderHistorySource, source)
		err = h.TypeJSONAt(ctx, typ, end, nil, write)
	}
	if err == nil {
		start()
		err = out.Flush()
	}
	switch {
	case err == nil:
		s.log.Debug("a type at a moment", "entity_type", typ, "at", at, "history_offset", end, "entities", entities, "source", source)
	case !started:
		s.fail(w, r, statusOf(err), err)
	default:
		level := slog.LevelWarn
		if ctx.Err() != nil {
			level = slog.LevelDebug // the client left: counted as any request, not logged
		}
		s.log.Log(ctx, level, "a type at a moment failed while it was written; the answer is cut off", "entity_type", typ, "at", at,
			"entities_written", entities, "source", source, "err", err)
		panic(http.ErrAbortHandler)
	}
}

// deadlineWriter gives each write to w a deadline of its own, timeout from
// its start (none if timeout is 0): an answer written in many writes may
// take longer than one write timeout, and a client that stops reading is
// dropped all the same.
type deadlineWriter struct {
	w       http.ResponseWriter
	timeout time.Duration
}

func (d deadlineWriter) Write(p []byte) (int, error) {
	if d.timeout > 0 {
		// ErrNotSupported by a wrapping ResponseWriter without Unwrap:
		// the http.Server's WriteTimeout then applies.
		_ = http.NewResponseController(d.w).SetWriteDeadline(time.Now().Add(d.timeout))
	}
	return d.w.Write(p)
}

// HeaderHistorySource says what answered a /v1/history?at= request:
// "index" (the history index, which had read up to the asked moment) or
// "scan" (a read of the history from its start). The errors of either
// carry it too; an at= that is not a moment of the history (400, or 410
// for a time before its start) does not.
const HeaderHistorySource = "X-Changes-History-Source"

// changeSource is what changes reads: a *history.Reader, or a test's fake.
type changeSource interface {
	Bounds(ctx context.Context) (history.Bounds, error)
	ChangesSeq(ctx context.Context, entityType string, id codecs.Key, from, to int64) iter.Seq2[history.Change, error]
}

// changes reads a page of an entity's changes from offset from: the JSON
// of a Changes.
func (s *server) changes(ctx context.Context, h changeSource, typ string, id codecs.Key, from int64, limit int) ([]byte, error) {
	b, err := h.Bounds(ctx)
	if err != nil {
		return nil, err
	}
	if from > 0 && from < b.Start {
		return nil, fmt.Errorf("%w: offset %d is before the history's start at offset %d (retention %s)", history.ErrBeforeHistory, from, b.Start, b.Retention)
	}
	page := s.newPage(limit)
	last := int64(-1)
	for c, err := range h.ChangesSeq(ctx, typ, id, max(from, b.Start), b.End) {
		if err != nil {
			return nil, err
		}
		fits, err := page.add(c)
		if err != nil {
			return nil, fmt.Errorf("encode the change at history offset %d: %w", c.Offset, err)
		}
		if !fits {
			page.nextAfter, page.more = strconv.FormatInt(last, 10), true
			break
		}
		last = c.Offset
	}
	head, err := json.Marshal(struct {
		Type string `json:"type"`
		ID   string `json:"id"`
	}{typ, id.String()})
	if err != nil {
		return nil, err
	}
	// {"type":...,"id":"..." then ,"changes":[...]...}
	return page.body(string(head[:len(head)-1]) + `,"changes":`), nil
}

// stateAt reads the state of one entity at the time or offset at, from the
// history index if it has read that far, else from the history under a
// HistoryScans turn (a *busyError if none comes); source says which
// ("index" or "scan"), or is empty when at is not a moment of the history.
// The turn covers the reading only: the answer is in memory before it is
// written.
func (s *server) stateAt(ctx context.Context, h *history.Reader, v *views.View, id codecs.Key, at string) (_ *StateAt, source string, _ error) {
	typ := v.EntityType()
	var idx *history.Index
	if s.cfg.HistoryIndex != nil {
		idx = s.cfg.HistoryIndex()
	}
	// Finding the offset of a time reads the history's time index and a
	// batch or so: no scan turn.
	end, err := EndOffset(ctx, h, at)
	if err != nil {
		return nil, "", err
	}
	// Entities unchanged since the history's start: the view vouches for
	// them once it has caught up.
	current := func(ctx context.Context, id codecs.Key) (*codecs.State, error) {
		if !v.Recovered() {
			return nil, fmt.Errorf("%s %q is older than the history: %w", typ, id, errCatchingUp)
		}
		return v.GetKey(ctx, id)
	}
	var st *codecs.State
	if idx != nil && idx.Position() < end {
		idx = nil // it has not read that far yet
	}
	if idx != nil {
		source = "index"
		st, err = idx.EntityAt(ctx, typ, id, end, current)
		if errors.Is(err, history.ErrIndexMismatch) || errors.Is(err, history.ErrIndexClosed) {
			// The index cannot answer (closing, or not built from this
			// history): the scan can.
			s.log.Warn("the history index failed a read; scanning the history", "entity_type", typ, "entity_id", id.String(), "err", err)
			idx = nil
		}
	}
	if idx == nil {
		source = "scan"
		var release func()
		if release, err = s.scans.acquire(ctx); err != nil {
			return nil, source, err
		}
		defer release()
		st, err = h.EntityAt(ctx, typ, id, end, current)
	}
	if err != nil {
		return nil, source, err
	}
	out := history.StateAtOf(typ, id, at, end, st)
	return &out, source, nil
}

// EndOffset parses at, an RFC 3339 time or a history offset, into the end
// (exclusive) of the history to replay: for a time, the first change
// committed after it; for an offset N, N+1 (the change at N included).
func EndOffset(ctx context.Context, h *history.Reader, at string) (int64, error) {
	if n, err := strconv.ParseInt(at, 10, 64); err == nil {
		if n < 0 {
			return 0, badRequest(fmt.Errorf("offset %d is negative", n))
		}
		b, err := h.Bounds(ctx)
		if err != nil {
			return 0, err
		}
		if n < b.Start {
			return 0, fmt.Errorf("%w: offset %d is before the history's start at offset %d (retention %s)", history.ErrBeforeHistory, n, b.Start, b.Retention)
		}
		if n >= b.End {
			return 0, badRequest(fmt.Errorf("offset %d is not in the history yet (it ends at %d)", n, b.End))
		}
		return n + 1, nil
	}
	t, err := time.Parse(time.RFC3339Nano, at)
	if err != nil {
		return 0, badRequest(fmt.Errorf("at %q is neither an RFC 3339 time nor a history offset", at))
	}
	return h.OffsetAt(ctx, t)
}

// errCatchingUp answers what the view cannot know yet: 503 with
// Retry-After, never a 404 or 410 for something that may exist.
var errCatchingUp = errors.New("the view is still catching up with its table: retry shortly")

type badRequestError struct{ error }

func (e badRequestError) Unwrap() error { return e.error }

func badRequest(err error) error { return badRequestError{err} }

func statusOf(err error) int {
	var bad badRequestError
	switch {
	case errors.As(err, &bad):
		return http.StatusBadRequest
	case errors.Is(err, history.ErrBeforeHistory), errors.Is(err, history.ErrOlderThanHistory):
		return http.StatusGone
	case errors.Is(err, views.ErrNotRunning), errors.Is(err, errCatchingUp):
		return http.StatusServiceUnavailable
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

// ready answers 200 when every view has caught up and reaches Kafka, else
// 503 (a view whose Kafka is away still answers reads, from its local copy:
// see the stale_seconds field and HeaderStale).
func (s *server) ready(w http.ResponseWriter, r *http.Request) {
	status := map[string]string{}
	stale := map[string]*float64{}
	applied := map[string]*string{}
	ready := true
	for typ, v := range s.cfg.Views {
		status[typ] = v.Status().String()
		if !v.Recovered() || !v.Connected() {
			ready = false
		}
		applied[typ] = nil
		if wm := v.AppliedThrough(); !wm.IsZero() {
			lsn := wm.LSN.String()
			applied[typ] = &lsn
		}
		stale[typ] = nil
		if at := v.SyncedAt(); !at.IsZero() {
			sec := math.Round(staleSeconds(at)*1000) / 1000
			stale[typ] = &sec
		}
	}
	code := http.StatusOK
	if !ready {
		code = http.StatusServiceUnavailable
	}
	s.writeJSON(w, r, code, map[string]any{"ready": ready, "views": status, "stale_seconds": stale, "applied_lsn": applied})
}

// fail answers err with code and logs it. A 500 answers only "internal
// error" and an id: the detail (an address, a storage path, a panic) is
// for the log line that carries the same request_id, not for the client.
func (s *server) fail(w http.ResponseWriter, r *http.Request, code int, err error) {
	level := slog.LevelDebug
	var busy *busyError
	if errors.Is(err, errCatchingUp) {
		w.Header().Set("Retry-After", "1")
	}
	if code >= 500 && !errors.As(err, &busy) && !errors.Is(err, context.Canceled) && !errors.Is(err, errCatchingUp) {
		// Turns refused and clients gone are counted, not logged: a flood
		// of them must not become a flood of log lines.
		level = slog.LevelError
	}
	body := errorBody{Error: err.Error()}
	attrs := []any{"method", r.Method, "path", r.URL.Path, "status", code, "err", err}
	if code == http.StatusInternalServerError {
		body = errorBody{Error: "internal error", ID: requestID()}
		attrs = append(attrs, "request_id", body.ID)
	}
	s.log.Log(r.Context(), level, "request failed", attrs...)
	s.writeJSON(w, r, code, body)
}

// requestID is a random id that ties a 500 to its log line.
func requestID() string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	return hex.EncodeToString(b[:])
}

// writeJSON writes v as the JSON answer.
func (s *server) writeJSON(w http.ResponseWriter, r *http.Request, code int, v any) {
	var buf bytes.Buffer
	if err := json.NewEncoder(&buf).Encode(v); err != nil {
		if _, isErr := v.(errorBody); isErr || code == http.StatusInternalServerError {
			http.Error(w, `{"error":"internal error"}`, http.StatusInternalServerError)
			return
		}
		s.fail(w, r, http.StatusInternalServerError, fmt.Errorf("encode the answer: %w", err))
		return
	}
	s.write(w, r, code, buf.Bytes())
}

// write writes a JSON answer whose every byte is known: its length goes in
// Content-Length (a cut answer is then seen as cut), and with
// Config.WriteTimeout the write deadline starts now.
func (s *server) write(w http.ResponseWriter, r *http.Request, code int, body []byte) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	if s.cfg.WriteTimeout > 0 {
		// ErrNotSupported by a wrapping ResponseWriter without Unwrap:
		// the http.Server's WriteTimeout then applies.
		_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout))
	}
	w.WriteHeader(code)
	if _, err := w.Write(body); err != nil {
		s.log.Debug("write the answer", "method", r.Method, "path", r.URL.Path, "bytes", len(body), "err", err)
	}
}
