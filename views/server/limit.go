package server

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/changes-dev/changes/internal/promreg"
)

// limiter lets a bounded number of requests run at once and a bounded
// number more wait for a turn, each for a bounded time: beyond that, the
// caller answers 503 at once rather than letting a queue of goroutines and
// connections grow without end. Waiters are served in arrival order (a
// channel's blocked senders are). It is safe for concurrent use.
type limiter struct {
	name       string // the limit label of the metrics
	what       string // what a turn is for, in error messages
	turns      chan struct{}
	waiting    atomic.Int64
	maxWaiting int64
	maxWait    time.Duration
	m          *metrics
}

func newLimiter(name, what string, running, maxWaiting int, maxWait time.Duration, m *metrics) *limiter {
	return &limiter{name: name, what: what, turns: make(chan struct{}, running), maxWaiting: int64(maxWaiting), maxWait: maxWait, m: m}
}

// busyError is a request refused for want of a turn: 503 with Retry-After.
type busyError struct {
	reason string // queue_full or wait_timeout
	msg    string
}

func (e *busyError) Error() string { return e.msg }

// acquire takes a turn, waiting if none is free, and returns the function
// that gives it back (calling it more than once is harmless). It fails
// with a *busyError when maxWaiting requests are already waiting or no
// turn came within maxWait, and with ctx's error when the client left.
func (l *limiter) acquire(ctx context.Context) (release func(), err error) {
	select {
	case l.turns <- struct{}{}:
		return l.taken(), nil
	default:
	}
	if l.waiting.Add(1) > l.maxWaiting {
		l.waiting.Add(-1)
		l.m.rejected.WithLabelValues(l.name, "queue_full").Inc()
		return nil, &busyError{reason: "queue_full", msg: fmt.Sprintf("too busy: %d %s running and %d waiting; try again later", cap(l.turns), l.what, l.maxWaiting)}
	}
	waiting := l.m.waiting.WithLabelValues(l.name)
	waiting.Inc()
	defer func() {
		l.waiting.Add(-1)
		waiting.Dec()
	}()
	timer := time.NewTimer(l.maxWait)
	defer timer.Stop()
	select {
	case l.turns <- struct{}{}:
		return l.taken(), nil
	case <-timer.C:
		l.m.rejected.WithLabelValues(l.name, "wait_timeout").Inc()
		return nil, &busyError{reason: "wait_timeout", msg: fmt.Sprintf("too busy: %d %s running, none finished within %s; try again later", cap(l.turns), l.what, l.maxWait)}
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (l *limiter) taken() func() {
	running := l.m.running.WithLabelValues(l.name)
	running.Inc()
	var once sync.Once
	return func() {
		once.Do(func() {
			running.Dec()
			<-l.turns
		})
	}
}

// metrics are the server's changes_serve_* series, labelled with the
// limit they count: requests (every /v1 request) or history (reading the
// history topic).
type metrics struct {
	running  *prometheus.GaugeVec
	waiting  *prometheus.GaugeVec
	rejected *prometheus.CounterVec
}

// newMetrics registers the metrics with r (nil: none). On an error, the
// metrics count but are not all exported.
func newMetrics(r prometheus.Registerer) (*metrics, error) {
	f := promreg.With(r)
	m := &metrics{
		running: f.GaugeVec("changes_serve_running_requests",
			"Query server requests holding a turn, by limit (requests: every /v1 request; history: reading the history).", "limit"),
		waiting: f.GaugeVec("changes_serve_waiting_requests",
			"Query server requests waiting for a turn, by limit.", "limit"),
		rejected: f.CounterVec("changes_serve_rejected_requests_total",
			"Query server requests answered 503 for want of a turn, by limit and reason (queue_full: too many waiting; wait_timeout: waited the longest wait).", "limit", "reason"),
	}
	return m, f.Err()
}
