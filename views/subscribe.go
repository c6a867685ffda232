package views

import (
	"errors"
	"sync"
)

// ErrSlowSubscriber ends a Subscription whose reader fell behind by more
// than its buffer: the view never blocks on a subscriber, and never drops an
// update silently.
var ErrSlowSubscriber = errors.New("view subscription: reader fell behind its buffer")

// Subscription delivers a view's updates on a channel. See View.Subscribe.
type Subscription struct {
	v    *View
	c    chan Update
	once sync.Once
	err  error // set before c is closed
}

// Subscribe returns a subscription to every update the view applies from now
// on (updates applied while the view recovers included: subscribe after
// WaitRecovered to see live changes only). buffer is the channel's capacity;
// if the reader falls further behind, the channel is closed and Err returns
// ErrSlowSubscriber: re-read the view (Get, Range) and subscribe again.
// The channel is also closed when Run returns (or has returned: a View
// runs once) or Close is called. An update is delivered once it is
// committed: Get and Range see it.
func (v *View) Subscribe(buffer int) *Subscription {
	s := &Subscription{v: v, c: make(chan Update, max(buffer, 1))}
	v.subsMu.Lock()
	defer v.subsMu.Unlock()
	v.subs[s] = struct{}{}
	if v.stopped {
		s.end(ErrNotRunning)
	}
	return s
}

// C is the channel of updates.
func (s *Subscription) C() <-chan Update { return s.c }

// Err is why the channel was closed: ErrSlowSubscriber, ErrNotRunning (Run
// returned), or nil (Close, or still open).
func (s *Subscription) Err() error {
	s.v.subsMu.Lock()
	defer s.v.subsMu.Unlock()
	return s.err
}

// Close ends the subscription and closes its channel.
func (s *Subscription) Close() {
	s.v.subsMu.Lock()
	defer s.v.subsMu.Unlock()
	s.end(nil)
}

// end closes the channel; the caller holds subsMu.
func (s *Subscription) end(err error) {
	s.once.Do(func() {
		s.err = err
		delete(s.v.subs, s)
		close(s.c)
	})
}

func (v *View) hasSubscribers() bool {
	v.subsMu.Lock()
	defer v.subsMu.Unlock()
	return len(v.subs) > 0
}

// publish offers u to every subscriber without blocking.
func (v *View) publish(u Update) {
	v.subsMu.Lock()
	defer v.subsMu.Unlock()
	for s := range v.subs {
		select {
		case s.c <- u:
		default:
			v.metrics.slowSubscribers.Inc()
			v.log.Warn("view subscriber fell behind its buffer: subscription ended", "buffer", cap(s.c))
			s.end(ErrSlowSubscriber)
		}
	}
}

func (v *View) closeSubscriptions() {
	v.subsMu.Lock()
	defer v.subsMu.Unlock()
	for s := range v.subs {
		s.end(ErrNotRunning)
	}
}
