package testutil

import (
	"sync"
	"time"
)

// Clock is a clock for tests: it moves only when told (Add), so expiry and
// back-off are tested without sleeping. Pass its Now where a package takes
// a clock.
type Clock struct {
	mu sync.Mutex // protects t
	t  time.Time
}

// NewClock returns a clock standing at t.
func NewClock(t time.Time) *Clock { return &Clock{t: t} }

// Now is the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

// Add moves the clock by d.
func (c *Clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}
