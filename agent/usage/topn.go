// Package usage keeps per-token Prometheus series bounded: it counts requests
// per token without a lock on the hot path and, each interval, exports only
// the N busiest tokens, deleting the series of tokens that fell out. The
// ext_authz servers and the kernel side both count through it.
package usage

import (
	"context"
	"math"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// DefaultInterval is how often Run flushes counts to Prometheus: a scrape
// interval, so the exported set follows the busiest tokens closely.
const DefaultInterval = 15 * time.Second

// TopN counts requests per token and exports the N busiest of the last
// interval into a CounterVec labelled (token_id, subject).
//
// Counting a token seen in an earlier interval is a look-up in an immutable
// map and an atomic add: no lock. A token's first request in an interval
// takes a mutex. Flush does the sorting and the Prometheus work.
type TopN struct {
	vec *prometheus.CounterVec
	n   int

	seen atomic.Pointer[map[string]*tally] // tokens known at the last Flush; never written

	mu       sync.Mutex
	fresh    map[string]*tally   // tokens first counted since the last Flush
	exported map[string]exported // token id -> its live series
}

type exported struct {
	subject string
	counter prometheus.Counter
}

// tally is one token's count since the last Flush, as float64 bits. The
// value retired marks a tally Flush has dropped: an Add that sees it counts
// into a fresh tally instead, so no count is lost to the drop.
type tally struct {
	subject string
	bits    atomic.Uint64
}

const retired = math.MaxUint64 // a NaN that no sum of counts produces

// add counts delta unless the tally is retired.
func (c *tally) add(delta float64) bool {
	for {
		old := c.bits.Load()
		if old == retired {
			return false
		}
		if c.bits.CompareAndSwap(old, math.Float64bits(math.Float64frombits(old)+delta)) {
			return true
		}
	}
}

// NewTopN exports at most n tokens into vec, whose labels must be exactly
// (token_id, subject). n <= 0 exports none (counts are still kept).
func NewTopN(vec *prometheus.CounterVec, n int) *TopN {
	t := &TopN{vec: vec, n: max(n, 0), fresh: map[string]*tally{}, exported: map[string]exported{}}
	t.seen.Store(&map[string]*tally{})
	return t
}

// Add counts delta requests for a token. It is safe for concurrent use.
func (t *TopN) Add(tokenID, subject string, delta float64) {
	if tokenID == "" || !(delta > 0) {
		return
	}
	if c, ok := (*t.seen.Load())[tokenID]; ok && c.add(delta) {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	// Flush publishes seen under mu: look again, so that a token is never
	// in both maps.
	if c, ok := (*t.seen.Load())[tokenID]; ok && c.add(delta) {
		return
	}
	c, ok := t.fresh[tokenID]
	if !ok {
		c = &tally{subject: subject}
		t.fresh[tokenID] = c
	}
	c.add(delta) // only Flush retires, and not fresh tallies
}

// Flush moves the counts of the last interval into the exported series:
// the n busiest tokens of the interval are added to their counters; series
// of tokens idle in the interval stay while fewer than n are exported; every
// other series is deleted. Counts of tokens outside the top n are dropped
// (the aggregate metrics still hold them). Tokens idle for a whole interval
// are forgotten.
func (t *TopN) Flush() {
	t.mu.Lock()
	defer t.mu.Unlock()

	type busy struct {
		id, subject string
		count       float64
	}
	var active []busy
	next := make(map[string]*tally, len(*t.seen.Load())+len(t.fresh))
	take := func(id string, c *tally) {
		bits := c.bits.Swap(0)
		if bits == 0 {
			// Idle since the last Flush: retire it, unless an Add just came.
			if c.bits.CompareAndSwap(0, retired) {
				return
			}
			bits = c.bits.Swap(0)
		}
		next[id] = c
		if bits != 0 {
			active = append(active, busy{id: id, subject: c.subject, count: math.Float64frombits(bits)})
		}
	}
	for id, c := range *t.seen.Load() {
		if c.bits.Load() != retired {
			take(id, c)
		}
	}
	for id, c := range t.fresh {
		take(id, c) // not in seen, or only as a retired tally
	}
	t.seen.Store(&next)
	t.fresh = map[string]*tally{}

	sort.Slice(active, func(i, j int) bool {
		if active[i].count != active[j].count {
			return active[i].count > active[j].count
		}
		return active[i].id < active[j].id
	})
	counted := make(map[string]bool, len(active))
	for _, b := range active {
		counted[b.id] = true
	}
	if len(active) > t.n {
		active = active[:t.n]
	}
	keep := make(map[string]exported, t.n)
	for _, b := range active {
		e, ok := t.exported[b.id]
		if !ok {
			e = exported{subject: b.subject, counter: t.vec.WithLabelValues(b.id, b.subject)}
		}
		e.counter.Add(b.count)
		keep[b.id] = e
	}
	for id, e := range t.exported {
		if _, ok := keep[id]; ok {
			continue
		}
		// A token idle this interval keeps its series while there is room,
		// so a bursty token's counter does not reset every other interval;
		// one that was active but outranked goes.
		if !counted[id] && len(keep) < t.n {
			keep[id] = e
			continue
		}
		t.vec.DeleteLabelValues(id, e.subject)
	}
	t.exported = keep
}

// Run flushes every interval (DefaultInterval when zero) until ctx ends,
// then flushes once more.
func (t *TopN) Run(ctx context.Context, interval time.Duration) {
	if interval <= 0 {
		interval = DefaultInterval
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			t.Flush()
			return
		case <-tick.C:
			t.Flush()
		}
	}
}
