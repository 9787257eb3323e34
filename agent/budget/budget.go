// Package budget caps how many times something may happen per second of a
// clock (audit records of denied requests, of kernel drops): what is over
// the cap is counted, so one summary can say how much was left out.
package budget

import (
	"sync"
	"time"
)

// PerSecond allows at most Max events in each second of Now. It is safe for
// concurrent use: the second's rollover and the count are changed together
// under one lock, so no interleaving lets more than Max through in a
// second.
type PerSecond struct {
	max int64
	now func() time.Time

	mu     sync.Mutex
	second int64
	used   int64
	over   uint64 // refused since the last Over
}

// NewPerSecond returns a budget of max events per second of now (time.Now
// when nil).
func NewPerSecond(max int, now func() time.Time) *PerSecond {
	if now == nil {
		now = time.Now
	}
	return &PerSecond{max: int64(max), now: now}
}

// Take reports whether one more event fits in the current second; one that
// does not is counted for Over.
func (b *PerSecond) Take() bool {
	sec := b.now().Unix()
	b.mu.Lock()
	defer b.mu.Unlock()
	if sec != b.second {
		b.second, b.used = sec, 0
	}
	if b.used >= b.max {
		b.over++
		return false
	}
	b.used++
	return true
}

// Over returns how many events were refused since it was last called, and
// resets that count.
func (b *PerSecond) Over() uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := b.over
	b.over = 0
	return n
}

// Max is the cap per second.
func (b *PerSecond) Max() int { return int(b.max) }
