package game

import (
	"sort"
	"sync"
	"time"
)

// Clock is the time source of rooms and the matchmaker: tick loops, room
// timers, grace windows and queue windows all read it. The module uses the
// system clock unless Options.Clock sets another, which tests do to drive
// ticks one by one (ManualClock).
type Clock interface {
	// Now returns the current time.
	Now() time.Time
	// NewTicker returns a ticker firing every d until stopped.
	NewTicker(d time.Duration) Ticker
}

// Ticker delivers the times of a Clock's ticks.
type Ticker interface {
	// C returns the channel ticks arrive on.
	C() <-chan time.Time
	// Stop ends the ticker; no tick arrives after it returns.
	Stop()
}

// SystemClock returns the Clock of the time package.
func SystemClock() Clock { return systemClock{} }

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

func (systemClock) NewTicker(d time.Duration) Ticker { return sysTicker{time.NewTicker(d)} }

type sysTicker struct{ t *time.Ticker }

func (t sysTicker) C() <-chan time.Time { return t.t.C }
func (t sysTicker) Stop()               { t.t.Stop() }

// ManualClock is a Clock that moves only when Advance is called, so tests
// and simulations run tick loops deterministically. Advance hands every
// tick to its ticker's reader and waits until it is taken: after Advance
// returns, each room has received each of its ticks (though it may still
// be processing the last one).
type ManualClock struct {
	mu      sync.Mutex
	now     time.Time
	tickers map[*manualTicker]struct{}
	made    int64
}

// NewManualClock returns a ManualClock reading t.
func NewManualClock(t time.Time) *ManualClock {
	return &ManualClock{now: t, tickers: map[*manualTicker]struct{}{}}
}

// Now returns the clock's time.
func (c *ManualClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// NewTicker returns a ticker whose first tick is due d from now.
func (c *ManualClock) NewTicker(d time.Duration) Ticker {
	if d <= 0 {
		panic("game: non-positive ticker interval")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.made++
	t := &manualTicker{c: c, id: c.made, every: d, next: c.now.Add(d), ch: make(chan time.Time), stop: make(chan struct{})}
	c.tickers[t] = struct{}{}
	return t
}

// Advance moves the clock forward by d, firing every tick that falls due
// on the way, in time order.
func (c *ManualClock) Advance(d time.Duration) {
	c.mu.Lock()
	end := c.now.Add(d)
	c.mu.Unlock()
	for {
		c.mu.Lock()
		due := make([]*manualTicker, 0, len(c.tickers))
		var first time.Time
		for t := range c.tickers {
			if t.next.After(end) {
				continue
			}
			switch {
			case len(due) == 0 || t.next.Before(first):
				due, first = append(due[:0], t), t.next
			case t.next.Equal(first):
				due = append(due, t)
			}
		}
		if len(due) == 0 {
			c.now = end
			c.mu.Unlock()
			return
		}
		c.now = first
		for _, t := range due {
			t.next = t.next.Add(t.every)
		}
		c.mu.Unlock()
		// Deterministic order among tickers due at once.
		sort.Slice(due, func(i, j int) bool { return due[i].id < due[j].id })
		for _, t := range due {
			select {
			case t.ch <- first:
			case <-t.stop:
			}
		}
	}
}

// Tickers returns how many tickers are running: a test can wait for a
// room's loop to have started before advancing the clock.
func (c *ManualClock) Tickers() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.tickers)
}

type manualTicker struct {
	c     *ManualClock
	id    int64
	every time.Duration
	next  time.Time
	ch    chan time.Time
	stop  chan struct{}
	once  sync.Once
}

func (t *manualTicker) C() <-chan time.Time { return t.ch }

func (t *manualTicker) Stop() {
	t.once.Do(func() {
		t.c.mu.Lock()
		delete(t.c.tickers, t)
		t.c.mu.Unlock()
		close(t.stop)
	})
}
