package views

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/changes-dev/changes/codecs"
)

// Group reads several views as of one position of the history: a
// consistent cut across entity types. A service that reads an advertiser
// and its campaigns from two views sees, within Group.Read, every change
// committed before the cut's LSN and none after it, in every view of the
// group: a transaction that changed rows of both types is there whole or
// not at all.
//
// The cut is a progress watermark (see Watermark) at which every
// partition of every view stands: right after applying it, before any
// change after it. Every partition gets every watermark, behind the
// changes before it, so stopped there the views hold exactly the changes
// committed before it. Partitions already there (the tables are quiet)
// are held where they are, at once; the others are stopped when they
// apply the watermark, or the next one if one of them is past it. A read
// therefore waits for at most the next watermark to reach every
// partition (about postgres.watermark_interval and the pipeline's
// latency, 100-200 ms by default), and while it runs the views apply
// nothing: keep it short, and do not wait inside it for the views to
// apply more (AtLeast, WaitApplied, another Group's read). A partition
// that is still recovering takes part once it has recovered. A Group is
// safe for concurrent use; reads that overlap share a cut.
type Group struct {
	views []*View

	mu      sync.Mutex
	current *cut // the cut reads join, while it is held and young
}

// NewGroup returns the group of views; a view may be in several groups.
func NewGroup(views ...*View) *Group {
	var vs []*View
	for _, v := range views {
		if !slices.Contains(vs, v) {
			vs = append(vs, v)
		}
	}
	return &Group{views: vs}
}

// Cut is where a Group's read is: every view of the group holds exactly
// the changes committed before LSN.
type Cut struct {
	// LSN: every transaction that committed before it is in the views,
	// none that committed at or after it.
	LSN codecs.LSN
	// CommitTime is the commit time of the last transaction before LSN,
	// by the database's clock; while the tables are quiet, the server's
	// time at the watermark.
	CommitTime time.Time
}

// ErrNoWatermark: the partitions of a Group's views did not all stand at
// one watermark within the read's context (the capture or the processors
// are down, a view does not run or is recovering, or the group is empty).
var ErrNoWatermark = errors.New("views: no watermark reached every partition of the group's views")

const (
	// maxJoin is how long after a cut is taken a read may still join it:
	// reads that keep coming must not keep the views stopped.
	maxJoin = 20 * time.Millisecond
	// maxHold is how long partitions stay held while a cut waits for the
	// others; then they are let go for holdPause and the cut starts over,
	// so a view that does not move (down, recovering) does not stop the
	// others for the whole read's context.
	maxHold   = 2 * time.Second
	holdPause = 200 * time.Millisecond
)

// Read holds the group's views at one cut, calls fn with it, and lets the
// views go on when fn returns (with fn's error). Inside fn, the views'
// reads (Get, All, Range, ...) see the cut; they are the views' ordinary
// methods. It waits for the cut within ctx: without a deadline, a
// platform that is down makes it wait until ctx is done. A read that
// comes while another holds a cut taken less than 20 ms ago joins it.
func (g *Group) Read(ctx context.Context, fn func(Cut) error) error {
	c, err := g.take(ctx)
	if err != nil {
		return err
	}
	defer g.leave(c)
	return fn(c.at)
}

// take returns a held cut, joined or new.
func (g *Group) take(ctx context.Context) (*cut, error) {
	g.mu.Lock()
	if c := g.current; c != nil && time.Since(c.taken) < maxJoin {
		c.readers++
		g.mu.Unlock()
		return c, nil
	}
	g.mu.Unlock()
	if len(g.views) == 0 {
		return nil, fmt.Errorf("%w: no views", ErrNoWatermark)
	}
	var c *cut
	for {
		c = newCut(g.views)
		err := c.establish(ctx)
		if err == nil {
			break
		}
		c.release()
		if !errors.Is(err, errHeldTooLong) {
			return nil, err
		}
		select { // let the held partitions go on for a while
		case <-time.After(holdPause):
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: %w", ErrNoWatermark, ctx.Err())
		}
	}
	g.mu.Lock()
	c.readers++
	c.taken = time.Now()
	g.current = c
	g.mu.Unlock()
	return c, nil
}

// leave ends a read of c; the last reader releases the views.
func (g *Group) leave(c *cut) {
	g.mu.Lock()
	c.readers--
	last := c.readers == 0
	if last && g.current == c {
		g.current = nil
	}
	g.mu.Unlock()
	if last {
		c.release()
	}
}

// errHeldTooLong: a cut held partitions for maxHold without the others.
var errHeldTooLong = errors.New("held too long")

// cut is a request to hold the partitions of some views at one watermark.
// Lock order: a partition's gate, then the cut.
type cut struct {
	views []*View

	mu      sync.Mutex
	target  codecs.LSN // hold at the first watermark at or after it; 0: not yet
	stops   map[stopKey]*stop
	need    int
	changed chan struct{} // closed and replaced when a partition moves
	done    bool          // released

	at      Cut
	taken   time.Time // under the group's mu
	readers int       // under the group's mu
}

type stopKey struct {
	v *View
	p int32
}

// stop is a partition held at a watermark.
type stop struct {
	at      Watermark
	release chan struct{}
}

func newCut(vs []*View) *cut {
	c := &cut{views: vs, stops: map[stopKey]*stop{}, changed: make(chan struct{})}
	for _, v := range vs {
		c.need += len(v.gates)
	}
	return c
}

// establish registers c with its views and waits until every partition is
// held at the same watermark.
func (c *cut) establish(ctx context.Context) error {
	for _, v := range c.views {
		v.cuts.add(c)
	}
	var heldSince time.Time
	for {
		c.mu.Lock()
		changed := c.changed
		c.mu.Unlock()

		// The target: the highest watermark any partition has applied.
		// Held partitions below it go on to it; partitions standing at it
		// (nothing applied since) are held where they are.
		var target codecs.LSN
		for _, v := range c.views {
			for p := range v.gates {
				target = max(target, v.gates[p].watermark().LSN)
			}
		}
		if target > 0 {
			c.raise(target)
			for _, v := range c.views {
				for p := range v.gates {
					v.gates[p].holdIfAt(c, v, int32(p), target)
				}
			}
		}
		c.mu.Lock()
		if len(c.stops) > 0 && heldSince.IsZero() {
			heldSince = time.Now()
		}
		if len(c.stops) == c.need {
			c.at = Cut{LSN: c.target}
			for _, s := range c.stops {
				c.at.CommitTime = s.at.CommitTime
				break
			}
			c.mu.Unlock()
			return nil
		}
		held := len(c.stops)
		c.mu.Unlock()
		var timeout <-chan time.Time
		if !heldSince.IsZero() {
			timeout = time.After(time.Until(heldSince.Add(maxHold)))
		}
		select {
		case <-changed:
		case <-timeout:
			return errHeldTooLong
		case <-ctx.Done():
			return fmt.Errorf("%w: %d of %d partitions at one watermark: %w", ErrNoWatermark, held, c.need, ctx.Err())
		}
	}
}

// raise sets the target to at least lsn, letting the partitions held below
// it go on.
func (c *cut) raise(lsn codecs.LSN) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if lsn <= c.target {
		return
	}
	c.target = lsn
	for k, s := range c.stops {
		if s.at.LSN < lsn {
			close(s.release)
			delete(c.stops, k)
		}
	}
}

// hold records partition k held at w, if c wants it there: the release
// channel to hold it with, or nil. The caller holds the partition's gate.
func (c *cut) hold(k stopKey, w Watermark) chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done || c.target == 0 || w.LSN < c.target || c.stops[k] != nil {
		return nil
	}
	if w.LSN > c.target {
		// Past the target: the others go on to this one.
		c.target = w.LSN
		for k2, s := range c.stops {
			close(s.release)
			delete(c.stops, k2)
		}
	}
	s := &stop{at: w, release: make(chan struct{})}
	c.stops[k] = s
	c.signal()
	return s.release
}

// signal wakes establish; the caller holds c.mu.
func (c *cut) signal() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// moved wakes establish: a partition applied a watermark.
func (c *cut) moved() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.signal()
}

// release lets every held partition go on and unregisters c.
func (c *cut) release() {
	c.mu.Lock()
	c.done = true
	for k, s := range c.stops {
		close(s.release)
		delete(c.stops, k)
	}
	c.mu.Unlock()
	for _, v := range c.views {
		v.cuts.remove(c)
	}
}

// cuts are the cuts a view takes part in.
type cuts struct {
	n   atomic.Int32 // len(set), read on every watermark
	mu  sync.Mutex
	set map[*cut]struct{}
}

func (cs *cuts) add(c *cut) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.set == nil {
		cs.set = map[*cut]struct{}{}
	}
	cs.set[c] = struct{}{}
	cs.n.Store(int32(len(cs.set)))
}

func (cs *cuts) remove(c *cut) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	delete(cs.set, c)
	cs.n.Store(int32(len(cs.set)))
}

func (cs *cuts) list() []*cut {
	if cs.n.Load() == 0 {
		return nil
	}
	cs.mu.Lock()
	defer cs.mu.Unlock()
	out := make([]*cut, 0, len(cs.set))
	for c := range cs.set {
		out = append(out, c)
	}
	return out
}

// gate is where a partition stands relative to the watermarks, and the
// cuts holding it there. The partition's goroutine holds mu while it
// applies a record (View.update), so a cut sees it between records.
type gate struct {
	mu    sync.Mutex
	wm    Watermark // the last watermark applied once recovered; zero if none
	since int       // records that changed the partition since it (tombstones of hidden states do not)
	holds map[*cut]chan struct{}
	// waiting: a record waits in enter for the holds to end. A new cut
	// does not hold the partition where it stands then: reads back to
	// back would otherwise keep the view from ever applying it.
	waiting bool
}

// watermark is the last watermark g applied (once recovered).
func (g *gate) watermark() Watermark {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.wm
}

// holdIfAt holds the partition for c if it stands at lsn with nothing
// applied since.
func (g *gate) holdIfAt(c *cut, v *View, p int32, lsn codecs.LSN) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.since > 0 || g.waiting || g.wm.LSN != lsn {
		return
	}
	if ch := c.hold(stopKey{v, p}, g.wm); ch != nil {
		g.addHold(c, ch)
	}
}

func (g *gate) addHold(c *cut, ch chan struct{}) {
	if g.holds == nil {
		g.holds = map[*cut]chan struct{}{}
	}
	g.holds[c] = ch
}

// enter waits until no cut holds the partition, then locks g for the
// record about to be applied (leave unlocks it). It gives up waiting when
// halt is closed (the view stops).
func (g *gate) enter(halt <-chan struct{}) {
	g.mu.Lock()
	for len(g.holds) > 0 {
		var waits []chan struct{}
		for c, ch := range g.holds {
			select {
			case <-ch:
				delete(g.holds, c) // released
			default:
				waits = append(waits, ch)
			}
		}
		if len(waits) == 0 {
			break
		}
		g.waiting = true
		g.mu.Unlock()
		for _, ch := range waits {
			select {
			case <-ch:
			case <-halt:
				g.mu.Lock()
				clear(g.holds)
				g.waiting = false
				return
			}
		}
		g.mu.Lock()
	}
	g.waiting = false
}

func (g *gate) leave() { g.mu.Unlock() }

// applied records, under g's lock, a record that changed the partition.
func (g *gate) applied() { g.since++ }

// passed records, under g's lock, that the partition applied the
// watermark w (recovered: see store.recoveryWatermark), and lets the cuts
// of v hold it there.
func (g *gate) passed(v *View, p int32, w Watermark) {
	if w.LSN <= g.wm.LSN {
		g.since++ // not a step forward: nothing to stand at
		return
	}
	g.wm, g.since = w, 0
	for _, c := range v.cuts.list() {
		if ch := c.hold(stopKey{v, p}, w); ch != nil {
			g.addHold(c, ch)
		} else {
			c.moved()
		}
	}
}

// recovered records, under g's lock, the watermark a partition holds
// once it has recovered: it stands there if the last record it read was
// that watermark.
func (g *gate) recovered(w Watermark, since int) {
	g.wm, g.since = w, since
}
