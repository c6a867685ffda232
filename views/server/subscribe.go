package server

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"time"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/views/history"
)

// KeepAlive is how often a change stream without changes sends a comment,
// so proxies and clients see the connection alive.
const KeepAlive = 15 * time.Second

// subscriptionWriteTimeout bounds each write of a change stream when
// Config.WriteTimeout is zero: a client that stops reading is dropped.
const subscriptionWriteTimeout = 30 * time.Second

// subscribe serves GET /v1/changes/{type}: the type's changes in the
// history as server-sent events (text/event-stream), from a position on,
// for as long as the client stays. Each event is
//
//	id: <history offset>
//	event: <op>            (resync: a resync's marker, see codecs.Resync)
//	data: <the event's JSON>
//
// The stream starts after the Last-Event-ID header's offset when the
// client sends one (an EventSource does when it reconnects), else at
// from=OFFSET (the first offset sent), else at the history's end (its
// first line is then an id without an event, which an EventSource keeps
// for its reconnect). Resuming after the last id received misses no change
// and repeats none: the history is read at read_committed, in order. An
// offset retention has passed is 410. A stream does not hold a /v1 request
// turn: Config.MaxSubscriptions bounds them instead (503 with Retry-After
// beyond), and Config.Shutdown ends them.
func (s *server) subscribe(w http.ResponseWriter, r *http.Request) {
	if !s.authorized(w, r) {
		return
	}
	rc := http.NewResponseController(w)
	// No deadline from the request's start: the stream sets one per write
	// (under HTTP/2 a passed deadline resets the stream).
	_ = rc.SetWriteDeadline(time.Time{})
	typ := r.PathValue("type")
	if _, ok := s.cfg.Views[typ]; !ok {
		s.fail(w, r, http.StatusNotFound, fmt.Errorf("entity type %q is not served", typ))
		return
	}
	from, err := streamStart(r)
	if err != nil {
		s.fail(w, r, http.StatusBadRequest, err)
		return
	}
	h, ok := s.historyReader(w, r)
	if !ok {
		return
	}
	if r.Method == http.MethodHead {
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(http.StatusOK)
		return
	}
	select {
	case s.subs <- struct{}{}:
		defer func() { <-s.subs }()
	default:
		w.Header().Set("Retry-After", strconv.Itoa(RetryAfter))
		s.fail(w, r, http.StatusServiceUnavailable, &busyError{reason: "subscriptions_full", msg: fmt.Sprintf("%d change streams are served already", cap(s.subs))})
		return
	}
	b, err := h.Bounds(r.Context())
	if err != nil {
		s.fail(w, r, statusOf(err), err)
		return
	}
	var first []byte // what the stream starts with
	switch {
	case from < 0:
		// The end now, as an id: a client that leaves before its first
		// change resumes from here, missing none.
		from = b.End
		first = fmt.Appendf(nil, "id: %d\n\n", b.End-1)
	case from < b.Start:
		s.fail(w, r, http.StatusGone, fmt.Errorf("%w: offset %d, the history starts at %d", history.ErrBeforeHistory, from, b.Start))
		return
	case from > b.End:
		s.fail(w, r, http.StatusBadRequest, fmt.Errorf("offset %d is past the history's end, %d", from, b.End))
		return
	}
	timeout := s.cfg.WriteTimeout
	if timeout <= 0 {
		timeout = subscriptionWriteTimeout
	}
	send := func(text []byte) error {
		_ = rc.SetWriteDeadline(time.Now().Add(timeout))
		if _, err := w.Write(text); err != nil {
			return err
		}
		return rc.Flush()
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("X-Accel-Buffering", "no") // nginx: do not buffer the stream
	w.WriteHeader(http.StatusOK)
	if err := send(append([]byte(": changes of "+typ+"\n\n"), first...)); err != nil {
		if errors.Is(err, http.ErrNotSupported) {
			s.log.Error("change stream: the response writer cannot flush (a middleware that wraps it without Unwrap?)", "path", r.URL.Path)
		}
		return
	}

	ctx, cancel := context.WithCancel(r.Context())
	changes := make(chan history.Change, 256)
	followed := make(chan error, 1)
	go func() {
		defer func() {
			if p := recover(); p != nil {
				followed <- fmt.Errorf("panic: %v", p)
			}
		}()
		followed <- h.Follow(ctx, typ, from, func(c history.Change) error {
			select {
			case changes <- c:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		})
	}()
	// The follower is gone before the slot is given back.
	defer func() {
		cancel()
		<-followed
	}()
	keepAlive := time.NewTicker(KeepAlive)
	defer keepAlive.Stop()
	last := from - 1
	var buf []byte
	write := func(c history.Change) bool {
		data, err := (codecs.EventCodec{}).Encode(c.Event)
		if err != nil {
			s.streamFailed(send, typ, last, err)
			return false
		}
		buf = strconv.AppendInt(append(buf[:0], "id: "...), c.Offset, 10)
		buf = append(append(append(buf, "\nevent: "...), c.Event.Op...), "\ndata: "...)
		buf = append(append(buf, data...), "\n\n"...)
		if err := send(buf); err != nil {
			s.log.Debug("change stream: the client is gone or stopped reading", "entity_type", typ, "last_id", last, "err", err)
			return false
		}
		last = c.Offset
		return true
	}
	for {
		select {
		case c := <-changes:
			if !write(c) {
				return
			}
		case <-keepAlive.C:
			if err := send([]byte(": keepalive\n\n")); err != nil {
				return
			}
		case err := <-followed:
			followed <- err // for the deferred wait
			for len(changes) > 0 {
				if !write(<-changes) {
					return
				}
			}
			if err != nil && !errors.Is(err, context.Canceled) {
				s.streamFailed(send, typ, last, err)
			}
			return
		case <-s.cfg.Shutdown:
			return
		case <-r.Context().Done():
			return
		}
	}
}

// streamFailed ends a change stream that failed: the client gets an event
// stream-error with an id to quote, the log the detail under that id.
func (s *server) streamFailed(send func([]byte) error, typ string, last int64, err error) {
	id := requestID()
	s.log.Error("change stream failed", "entity_type", typ, "last_id", last, "request_id", id, "err", err)
	_ = send(fmt.Appendf(nil, "event: stream-error\ndata: {\"error\":\"internal error\",\"id\":%q}\n\n", id))
}

// streamStart is the first history offset a change stream sends: after
// the Last-Event-ID header's, else from=, else -1 (the history's end).
func streamStart(r *http.Request) (int64, error) {
	if id := r.Header.Get("Last-Event-ID"); id != "" {
		last, err := strconv.ParseInt(id, 10, 64)
		if err != nil || last < 0 || last == math.MaxInt64 {
			return 0, fmt.Errorf("Last-Event-ID %q is not a history offset", id)
		}
		return last + 1, nil
	}
	if f := r.URL.Query().Get("from"); f != "" {
		from, err := strconv.ParseInt(f, 10, 64)
		if err != nil || from < 0 {
			return 0, fmt.Errorf("from %q is not a history offset", f)
		}
		return from, nil
	}
	return -1, nil
}
