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
//	event: <op>
//	data: <the event's JSON, as in the history>
//
// The stream starts after the Last-Event-ID header's offset when the
// client sends one (an EventSource does when it reconnects), else at
// from=OFFSET (the first offset sent), else at the history's end (only
// changes from now on). Resuming after the last id received misses no
// change and repeats none: the history is read at read_committed, in
// order. An offset retention has passed is 410. A stream does not hold a
// /v1 request turn: Config.MaxSubscriptions bounds them instead (503 with
// Retry-After beyond).
func (s *server) subscribe(w http.ResponseWriter, r *http.Request) {
	if !s.authorized(w, r) {
		return
	}
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
	select {
	case s.subs <- struct{}{}:
		defer func() { <-s.subs }()
	default:
		w.Header().Set("Retry-After", strconv.Itoa(RetryAfter))
		s.fail(w, r, http.StatusServiceUnavailable, &busyError{reason: "subscriptions_full", msg: fmt.Sprintf("%d change streams are served already", cap(s.subs))})
		return
	}
	if from >= 0 {
		b, err := h.Bounds(r.Context())
		if err != nil {
			s.fail(w, r, statusOf(err), err)
			return
		}
		switch {
		case from < b.Start:
			s.fail(w, r, http.StatusGone, fmt.Errorf("%w: offset %d, the history starts at %d", history.ErrBeforeHistory, from, b.Start))
			return
		case from > b.End:
			s.fail(w, r, http.StatusBadRequest, fmt.Errorf("offset %d is past the history's end, %d", from, b.End))
			return
		}
	}
	rc := http.NewResponseController(w)
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
	if err := send([]byte(": changes of " + typ + "\n\n")); err != nil {
		return
	}

	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	changes := make(chan history.Change, 256)
	followed := make(chan error, 1)
	go func() {
		followed <- h.Follow(ctx, typ, from, func(c history.Change) error {
			select {
			case changes <- c:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		})
	}()
	keepAlive := time.NewTicker(KeepAlive)
	defer keepAlive.Stop()
	var buf []byte
	for {
		select {
		case c := <-changes:
			data, err := (codecs.EventCodec{}).Encode(c.Event)
			if err != nil {
				s.log.Error("change stream: an event does not encode", "offset", c.Offset, "err", err)
				return
			}
			buf = strconv.AppendInt(append(buf[:0], "id: "...), c.Offset, 10)
			buf = append(append(append(buf, "\nevent: "...), c.Event.Op...), "\ndata: "...)
			buf = append(append(buf, data...), "\n\n"...)
			if err := send(buf); err != nil {
				return // the client is gone, or stopped reading
			}
		case <-keepAlive.C:
			if err := send([]byte(": keepalive\n\n")); err != nil {
				return
			}
		case err := <-followed:
			if err != nil && !errors.Is(err, context.Canceled) {
				s.log.Warn("change stream ended", "entity_type", typ, "err", err)
				_ = send([]byte("event: error\ndata: " + strconv.Quote(err.Error()) + "\n\n"))
			}
			return
		case <-r.Context().Done():
			return
		}
	}
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
