package views

import (
	"context"
	"errors"
	"fmt"
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
// The cut is the next progress watermark (see Watermark): each partition
// of each view stops right after it applies that watermark, before the
// changes after it, and stays there while the read runs. Every partition
// gets every watermark, behind the changes before it, so stopped there the
// views hold exactly the changes committed before it. A read therefore
// waits for the next watermark to reach every partition (about
// postgres.watermark_interval and the pipeline's latency, 100-200 ms by
// default), and while it runs the views apply nothing: keep it short. A
// Group is safe for concurrent use; reads that overlap share a cut.
type Group struct {
	views []*View

	mu      sync.Mutex
	current *cut // the cut reads join, while it is held and young
}

// NewGroup returns the group of views; a view may be in several groups.
func NewGroup(views ...*View) *Group {
	return &Group{views: views}
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

// ErrNoWatermark: a view of a Group has not stopped at a watermark within
// the read's context (the capture or the processors are down, or the view
// does not run).
var ErrNoWatermark = errors.New("views: no watermark reached every partition of the group's views")

// maxJoin is how long after a cut is taken a read may still join it: reads
// that keep coming must not keep the views stopped.
const maxJoin = 20 * time.Millisecond

// Read stops the group's views at the next watermark, calls fn with the
// cut, and lets the views go on when fn returns (with fn's error). Inside
// fn, the views' reads (Get, All, Range, ...) see the cut; they are the
// views' ordinary methods. It waits for the cut within ctx: without
// a deadline, a platform that is down makes it wait until ctx is done.
// A read that comes while another holds a cut taken less than 20 ms ago
// joins it.
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
	c := newCut(g.views)
	if err := c.establish(ctx); err != nil {
		c.release()
		return nil, err
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

// cut is a request to stop the partitions of some views at one watermark.
type cut struct {
	views []*View

	mu      sync.Mutex
	target  codecs.LSN // stop at the first watermark at or after it; 0: not yet
	stops   map[stopKey]*stop
	need    int
	changed chan struct{} // closed and replaced when a partition stops
	done    bool          // released

	at      Cut
	taken   time.Time // under the group's mu
	readers int       // under the group's mu
}

type stopKey struct {
	v *View
	p int32
}

// stop is a partition stopped at a watermark.
type stop struct {
	at      Watermark
	release chan struct{}
}

func newCut(vs []*View) *cut {
	c := &cut{views: vs, stops: map[stopKey]*stop{}, changed: make(chan struct{})}
	for _, v := range vs {
		c.need += len(v.stores)
	}
	return c
}

// establish registers c with its views and waits until every partition has
// stopped at the same watermark.
func (c *cut) establish(ctx context.Context) error {
	for _, v := range c.views {
		v.cuts.add(c)
	}
	// The next watermark after every partition's: one that some partition
	// applies before c is active makes it stop at a later one, and the
	// partitions stopped earlier are let go to that one (below).
	var high codecs.LSN
	for _, v := range c.views {
		for _, w := range v.PartitionsAppliedThrough() {
			high = max(high, w.LSN)
		}
	}
	c.mu.Lock()
	c.target = high + 1
	c.mu.Unlock()
	for {
		c.mu.Lock()
		changed := c.changed
		if len(c.stops) == c.need {
			var top Watermark
			for _, s := range c.stops {
				if s.at.LSN > top.LSN {
					top = s.at
				}
			}
			behind := 0
			for k, s := range c.stops {
				if s.at.LSN < top.LSN {
					close(s.release) // on to top
					delete(c.stops, k)
					behind++
				}
			}
			c.target = top.LSN
			if behind == 0 {
				c.at = Cut{LSN: top.LSN, CommitTime: top.CommitTime}
				c.mu.Unlock()
				return nil
			}
			changed = c.changed
		}
		c.mu.Unlock()
		select {
		case <-changed:
		case <-ctx.Done():
			return fmt.Errorf("%w: %d of %d partitions stopped: %w", ErrNoWatermark, c.stopped(), c.need, ctx.Err())
		}
	}
}

func (c *cut) stopped() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.stops)
}

// arrived is called by partition p of v right after it applied the
// watermark w: the release channel to wait on if p stops here, else nil.
func (c *cut) arrived(v *View, p int32, w Watermark) <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	k := stopKey{v, p}
	if c.done || c.target == 0 || w.LSN < c.target || c.stops[k] != nil {
		return nil
	}
	s := &stop{at: w, release: make(chan struct{})}
	c.stops[k] = s
	close(c.changed)
	c.changed = make(chan struct{})
	return s.release
}

// release lets every stopped partition go on and unregisters c.
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

// stopAt is called by partition p of v right after it applied the
// watermark w: it blocks while a cut holds the partition there, or until
// the view stops.
func (v *View) stopAt(p int32, w Watermark) {
	if v.cuts.n.Load() == 0 {
		return
	}
	v.cuts.mu.Lock()
	var waits []<-chan struct{}
	for c := range v.cuts.set {
		if ch := c.arrived(v, p, w); ch != nil {
			waits = append(waits, ch)
		}
	}
	v.cuts.mu.Unlock()
	for _, ch := range waits {
		select {
		case <-ch:
		case <-v.halt:
			return
		}
	}
}
