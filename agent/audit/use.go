package audit

import (
	"context"
	"encoding/json"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// Allow-audit modes (policy audit.allows).
const (
	AllowsEvery   = "every"   // one record per allowed request
	AllowsSummary = "summary" // one record per token per interval, with a count
)

// Use defaults.
const (
	DefaultUseQueue      = 8192
	DefaultDenyPerSecond = 200
)

// UseConfig configures a UseRecorder.
type UseConfig struct {
	Log      Appender
	Allows   string        // AllowsEvery or AllowsSummary (default)
	Interval time.Duration // summary interval (default 10s)
	// DenyPerSecond caps deny records per second; denies above it are
	// counted into one authz.deny_suppressed record per interval, so a
	// flood of junk tokens cannot fill the disk.
	DenyPerSecond int
	Queue         int // records waiting for the disk; beyond it they are dropped and counted
	Now           func() time.Time
	Logger        *slog.Logger
}

// Appender is what a UseRecorder writes to; *Log implements it.
type Appender interface {
	Append(r Record) (Record, error)
}

// UseRecorder audits token use from the request path without ever making a
// request wait for the disk: records are queued to one writer goroutine,
// allows are summed per token and written each interval, and denies are
// rate-capped.
type UseRecorder struct {
	cfg   UseConfig
	queue chan Record

	allows  sync.Map // tokenID -> *allowCount
	flushMu sync.Mutex

	denyWindow  atomic.Int64 // unix second of the current deny budget
	denyUsed    atomic.Int64
	suppressed  atomic.Uint64
	dropped     atomic.Uint64 // records lost to a full queue
	writeErrors atomic.Uint64 // records the log refused; only the first is logged
	mode        atomic.Value  // string
}

type allowCount struct {
	subject, tenant string
	n               atomic.Uint64
}

// NewUseRecorder builds a recorder; call Run to start writing.
func NewUseRecorder(cfg UseConfig) *UseRecorder {
	if cfg.Interval <= 0 {
		cfg.Interval = 10 * time.Second
	}
	if cfg.DenyPerSecond <= 0 {
		cfg.DenyPerSecond = DefaultDenyPerSecond
	}
	if cfg.Queue <= 0 {
		cfg.Queue = DefaultUseQueue
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	u := &UseRecorder{cfg: cfg, queue: make(chan Record, cfg.Queue)}
	u.SetAllows(cfg.Allows)
	return u
}

// SetAllows switches between AllowsEvery and AllowsSummary (policy reload).
func (u *UseRecorder) SetAllows(mode string) {
	if mode != AllowsEvery {
		mode = AllowsSummary
	}
	u.mode.Store(mode)
}

// Allow records an allowed request made with a token.
func (u *UseRecorder) Allow(tokenID, subject, tenant, route, source string) {
	if u.mode.Load() == AllowsEvery {
		u.enqueue(Record{Action: ActionAuthzAllow, Actor: ActorSystem, TokenID: tokenID, Subject: subject, Tenant: tenant, Route: route, Source: source})
		return
	}
	for {
		c, ok := u.allows.Load(tokenID)
		if !ok {
			c, _ = u.allows.LoadOrStore(tokenID, &allowCount{subject: subject, tenant: tenant})
		}
		if c.(*allowCount).add() {
			return
		}
		// Flush retired this entry between our Load and add: it is gone
		// from the map, so the next Load makes a fresh one.
	}
}

// retiredCount marks an allowCount that Flush removed from the map; an
// Allow that still holds it must count into a fresh entry instead.
const retiredCount = ^uint64(0)

func (c *allowCount) add() bool {
	for {
		old := c.n.Load()
		if old == retiredCount {
			return false
		}
		if c.n.CompareAndSwap(old, old+1) {
			return true
		}
	}
}

// Deny records a denied request. tokenID and subject are empty when the
// token could not be verified.
func (u *UseRecorder) Deny(reason, tokenID, subject, route, source string) {
	sec := u.cfg.Now().Unix()
	if w := u.denyWindow.Load(); w != sec && u.denyWindow.CompareAndSwap(w, sec) {
		u.denyUsed.Store(0)
	}
	if u.denyUsed.Add(1) > int64(u.cfg.DenyPerSecond) {
		u.suppressed.Add(1)
		return
	}
	u.enqueue(Record{Action: ActionAuthzDeny, Actor: ActorSystem, Reason: reason, TokenID: tokenID, Subject: subject, Route: route, Source: source})
}

// Record queues any other record (kernel drops, anomaly evidence) for the
// writer without blocking.
func (u *UseRecorder) Record(r Record) { u.enqueue(r) }

func (u *UseRecorder) enqueue(r Record) {
	select {
	case u.queue <- r:
	default:
		u.dropped.Add(1)
	}
}

// Dropped is how many records were lost to a full queue.
func (u *UseRecorder) Dropped() uint64 { return u.dropped.Load() }

// Run writes queued records and the per-interval summaries until ctx ends,
// then flushes what is left.
func (u *UseRecorder) Run(ctx context.Context) {
	t := time.NewTicker(u.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case r := <-u.queue:
			u.write(r)
		case <-t.C:
			u.Flush()
		case <-ctx.Done():
			for {
				select {
				case r := <-u.queue:
					u.write(r)
				default:
					u.Flush()
					return
				}
			}
		}
	}
}

// Flush writes one authz.allow_summary per token used since the last flush
// and one authz.deny_suppressed if denies were capped.
func (u *UseRecorder) Flush() {
	u.flushMu.Lock() // retiring entries is only safe one Flush at a time
	defer u.flushMu.Unlock()
	type summary struct {
		id string
		c  *allowCount
		n  uint64
	}
	var out []summary
	u.allows.Range(func(k, v any) bool {
		c := v.(*allowCount)
		if c.n.CompareAndSwap(0, retiredCount) {
			// Idle for a whole interval: forget it, bounding the map. An
			// Allow racing with this sees retiredCount and starts afresh.
			u.allows.Delete(k)
			return true
		}
		if n := c.n.Swap(0); n > 0 {
			out = append(out, summary{k.(string), c, n})
		}
		return true
	})
	sort.Slice(out, func(i, j int) bool { return out[i].id < out[j].id })
	interval, _ := json.Marshal(map[string]string{"interval": u.cfg.Interval.String()})
	for _, s := range out {
		u.write(Record{Action: ActionAuthzAllowSummary, Actor: ActorSystem, TokenID: s.id, Subject: s.c.subject, Tenant: s.c.tenant, Count: s.n, Details: interval})
	}
	if n := u.suppressed.Swap(0); n > 0 {
		u.write(Record{Action: ActionDenySuppressed, Actor: ActorSystem, Count: n, Details: interval})
	}
}

func (u *UseRecorder) write(r Record) {
	if _, err := u.cfg.Log.Append(r); err != nil {
		if u.writeErrors.Add(1) == 1 {
			u.cfg.Logger.Error("audit write failed", "action", r.Action, "err", err)
		}
	}
}
