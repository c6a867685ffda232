// Package server exposes views and the history over HTTP with JSON, for
// `changes serve` and for services that mount it in their own mux.
//
//	GET /v1/entities/{type}/{id}              latest state of one entity
//	GET /v1/entities/{type}?after=ID&limit=N  a page of entities in id order
//	GET /v1/history/{type}/{id}               the entity's changes in the history
//	GET /v1/history/{type}/{id}?at=T          its state at T (RFC 3339 time, or a history offset)
//	GET /healthz                              the process serves
//	GET /readyz                               every view has caught up and reaches Kafka (503 else)
//
// Answers that read a view carry X-Changes-Synced-At and X-Changes-Stale:
// how current its local copy is (reads go on from it while Kafka is away).
//
// Errors are JSON {"error": "..."} with 400 (bad id, time or limit), 401
// (token missing or wrong), 404 (unknown type, no such entity), 410 (older
// than the history), 503 (not ready, or too many history reads at once).
// Ids travel as strings, like in the
// events: a 64-bit id stays exact in every JSON reader.
package server

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/views"
	"github.com/changes-dev/changes/views/history"
)

// DefaultLimit and MaxLimit bound a page of the entity listing.
const (
	DefaultLimit = 100
	MaxLimit     = 1000
)

// Config is what the handler serves.
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
	// Token, when not empty, is required as "Authorization: Bearer <token>"
	// on every /v1 request.
	Token string
	// Log receives one line per failed request. Default: slog.Default().
	Log *slog.Logger
	// Metrics, when not nil, is served at /metrics.
	Metrics http.Handler
	// HistoryScans bounds the /v1/history requests served at once: each
	// reads the history topic from its start. More wait up to 10 s, then
	// get 503. Default: 2.
	HistoryScans int
}

// Handler returns the HTTP handler of cfg.
func Handler(cfg Config) http.Handler {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.HistoryScans < 1 {
		cfg.HistoryScans = 2
	}
	s := &server{cfg: cfg, log: cfg.Log.With("component", "server"), scans: make(chan struct{}, cfg.HistoryScans)}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", s.ready)
	if cfg.Metrics != nil {
		mux.Handle("GET /metrics", cfg.Metrics)
	}
	mux.Handle("GET /v1/entities/{type}/{id}", s.auth(s.entity))
	mux.Handle("GET /v1/entities/{type}", s.auth(s.list))
	mux.Handle("GET /v1/history/{type}/{id}", s.auth(s.history))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		s.fail(w, r, http.StatusNotFound, fmt.Errorf("no such endpoint: %s %s", r.Method, r.URL.Path))
	})
	return mux
}

type server struct {
	cfg   Config
	log   *slog.Logger
	scans chan struct{} // a token per history request in flight
}

// Entity is the JSON of one entity's state.
type Entity struct {
	Type       string          `json:"type"`
	ID         int64           `json:"id,string"`
	Row        codecs.Row      `json:"row"`
	Position   codecs.Position `json:"position"`
	CommitTime time.Time       `json:"commit_time"`
}

func entityOf(st *codecs.State) Entity {
	return Entity{Type: st.EntityType, ID: st.EntityID, Row: st.Row, Position: st.Position, CommitTime: st.CommitTime}
}

// Page is the JSON of a page of the listing. NextAfter, when present, is the
// after= of the next page.
type Page struct {
	Entities  []Entity `json:"entities"`
	NextAfter string   `json:"next_after,omitempty"`
}

// StateAt is the JSON of a point-in-time read.
type StateAt struct {
	Type string `json:"type"`
	ID   int64  `json:"id,string"`
	// At echoes the asked time or offset.
	At string `json:"at"`
	// HistoryOffset is the first history offset not included.
	HistoryOffset int64 `json:"history_offset"`
	// Entity is the state then; absent if the entity did not exist.
	Entity *Entity `json:"entity,omitempty"`
}

// Changes is the JSON of an entity's changes.
type Changes struct {
	Type    string           `json:"type"`
	ID      int64            `json:"id,string"`
	Changes []history.Change `json:"changes"`
}

type errorBody struct {
	Error string `json:"error"`
}

func (s *server) auth(h http.HandlerFunc) http.Handler {
	if s.cfg.Token == "" {
		return h
	}
	want := []byte("Bearer " + s.cfg.Token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got := []byte(r.Header.Get("Authorization"))
		if subtle.ConstantTimeCompare(got, want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="changes"`)
			msg := "missing bearer token"
			if len(got) > 0 {
				msg = "wrong bearer token"
			}
			s.fail(w, r, http.StatusUnauthorized, errors.New(msg))
			return
		}
		h(w, r)
	})
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
	return v, ok
}

// Headers of every /v1 answer that reads a view: how current the view's
// local copy is. A view checks every second that it holds its whole table;
// while Kafka is away it answers from its local copy and the age grows.
const (
	// HeaderSyncedAt is when the view last held every record of its table
	// (RFC 3339); absent before the first time.
	HeaderSyncedAt = "X-Changes-Synced-At"
	// HeaderStale is how many seconds ago that was: about 1 or less while
	// Kafka answers and the view keeps up.
	HeaderStale = "X-Changes-Stale"
)

func staleSeconds(at time.Time) float64 { return max(time.Since(at).Seconds(), 0) }

func (s *server) id(w http.ResponseWriter, r *http.Request) (int64, bool) {
	raw := r.PathValue("id")
	id, err := strconv.ParseInt(raw, 10, 64)
	if err != nil {
		s.fail(w, r, http.StatusBadRequest, fmt.Errorf("id %q is not a 64-bit integer", raw))
	}
	return id, err == nil
}

func (s *server) entity(w http.ResponseWriter, r *http.Request) {
	v, ok := s.view(w, r)
	if !ok {
		return
	}
	id, ok := s.id(w, r)
	if !ok {
		return
	}
	st, err := v.Get(r.Context(), id)
	switch {
	case err != nil:
		s.fail(w, r, statusOf(err), err)
	case st == nil:
		s.fail(w, r, http.StatusNotFound, fmt.Errorf("%s %d not found", v.EntityType(), id))
	default:
		writeJSON(w, http.StatusOK, entityOf(st))
	}
}

func (s *server) list(w http.ResponseWriter, r *http.Request) {
	v, ok := s.view(w, r)
	if !ok {
		return
	}
	q := r.URL.Query()
	first := int64(math.MinInt64)
	if a := q.Get("after"); a != "" {
		after, err := strconv.ParseInt(a, 10, 64)
		if err != nil {
			s.fail(w, r, http.StatusBadRequest, fmt.Errorf("after %q is not a 64-bit integer", a))
			return
		}
		if after == math.MaxInt64 {
			writeJSON(w, http.StatusOK, Page{Entities: []Entity{}})
			return
		}
		first = after + 1
	}
	limit := DefaultLimit
	if l := q.Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 1 || n > MaxLimit {
			s.fail(w, r, http.StatusBadRequest, fmt.Errorf("limit %q must be an integer from 1 to %d", l, MaxLimit))
			return
		}
		limit = n
	}
	page := Page{Entities: make([]Entity, 0, min(limit, 64))}
	more := false
	for st, err := range v.Range(r.Context(), first, math.MaxInt64) {
		if err != nil {
			s.fail(w, r, statusOf(err), err)
			return
		}
		if len(page.Entities) == limit {
			more = true
			break
		}
		page.Entities = append(page.Entities, entityOf(st))
	}
	if more {
		page.NextAfter = strconv.FormatInt(page.Entities[len(page.Entities)-1].ID, 10)
	}
	writeJSON(w, http.StatusOK, page)
}

func (s *server) history(w http.ResponseWriter, r *http.Request) {
	h := s.cfg.History
	switch {
	case h == nil && s.cfg.HistoryLater == nil:
		s.fail(w, r, http.StatusNotFound, errors.New("this server does not read the history"))
		return
	case h == nil:
		if h = s.cfg.HistoryLater(); h == nil {
			s.fail(w, r, http.StatusServiceUnavailable, errors.New("the history is not reachable yet (kafka); try again later"))
			return
		}
	}
	v, ok := s.view(w, r)
	if !ok {
		return
	}
	id, ok := s.id(w, r)
	if !ok {
		return
	}
	typ := v.EntityType()
	wait := time.NewTimer(10 * time.Second)
	defer wait.Stop()
	select {
	case s.scans <- struct{}{}:
		defer func() { <-s.scans }()
	case <-wait.C:
		s.fail(w, r, http.StatusServiceUnavailable, fmt.Errorf("%d history reads are running; try again later", cap(s.scans)))
		return
	case <-r.Context().Done():
		s.fail(w, r, http.StatusServiceUnavailable, r.Context().Err())
		return
	}
	at := r.URL.Query().Get("at")
	if at == "" {
		b, err := h.Bounds(r.Context())
		if err != nil {
			s.fail(w, r, statusOf(err), err)
			return
		}
		changes, err := h.Changes(r.Context(), typ, id, b.Start, b.End)
		if err != nil {
			s.fail(w, r, statusOf(err), err)
			return
		}
		if changes == nil {
			changes = []history.Change{}
		}
		writeJSON(w, http.StatusOK, Changes{Type: typ, ID: id, Changes: changes})
		return
	}
	end, err := EndOffset(r.Context(), h, at)
	if err != nil {
		s.fail(w, r, statusOf(err), err)
		return
	}
	// Entities unchanged since the history's start: the view vouches for
	// them once it has caught up.
	current := func(ctx context.Context, id int64) (*codecs.State, error) {
		if !v.Recovered() {
			return nil, fmt.Errorf("%w: the view of %s has not caught up yet", history.ErrOlderThanHistory, typ)
		}
		return v.Get(ctx, id)
	}
	st, err := h.EntityAt(r.Context(), typ, id, end, current)
	if err != nil {
		s.fail(w, r, statusOf(err), err)
		return
	}
	out := StateAt{Type: typ, ID: id, At: at, HistoryOffset: end}
	if st != nil {
		e := entityOf(st)
		out.Entity = &e
	}
	writeJSON(w, http.StatusOK, out)
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
	case errors.Is(err, views.ErrNotRunning):
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
	ready := true
	for typ, v := range s.cfg.Views {
		status[typ] = v.Status().String()
		if !v.Recovered() || !v.Connected() {
			ready = false
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
	writeJSON(w, code, map[string]any{"ready": ready, "views": status, "stale_seconds": stale})
}

func (s *server) fail(w http.ResponseWriter, r *http.Request, code int, err error) {
	level := slog.LevelDebug
	if code >= 500 {
		level = slog.LevelError
	}
	s.log.Log(r.Context(), level, "request failed", "method", r.Method, "path", r.URL.Path, "status", code, "err", err)
	writeJSON(w, code, errorBody{Error: err.Error()})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	if err := enc.Encode(v); err != nil && !strings.Contains(err.Error(), "broken pipe") {
		slog.Debug("write response", "err", err)
	}
}
