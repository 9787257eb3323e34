package audit

import (
	"context"
	"log/slog"
	"net/netip"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tokenwarden/tokenwarden/agent/budget"
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
	DefaultDenyPerClient = 10
	// maxDenyClients bounds the clients whose denies are counted in one
	// second. Beyond it, a client not yet counted has no budget that
	// second: a flood from many addresses (or forged X-Forwarded-For
	// values) is suppressed and counted, not written.
	maxDenyClients = 4096
	// maxClientKeyBytes bounds a client key that is not an IP address.
	maxClientKeyBytes = 64
)

// UseConfig configures a UseRecorder.
type UseConfig struct {
	Log      Appender
	Allows   string        // AllowsEvery or AllowsSummary (default)
	Interval time.Duration // summary interval (default 10s)
	// DenyPerSecond caps deny records per second, and DenyPerClient the
	// deny records of one client (source address) per second; denies
	// above either are counted into one authz.deny_suppressed record per
	// interval, so a flood of junk requests cannot fill the disk, and one
	// noisy client cannot use up everyone's budget.
	DenyPerSecond int
	DenyPerClient int
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

	denyMu      sync.Mutex
	denyWindow  int64             // unix second of the current deny budgets
	denyUsed    int               // deny records written this second
	denyClients map[string]int    // deny records per client this second
	overBudget  map[string]bool   // clients suppressed since the last flush (bounded)
	suppressed  atomic.Uint64     // denies suppressed since the last flush
	dropped     atomic.Uint64     // records lost to a full queue
	writeErrors atomic.Uint64     // records the log refused
	errLog      *budget.PerSecond // log lines about them: one a second
	mode        atomic.Value      // string

	suppressedClient atomic.Uint64 // over a client's budget, ever
	suppressedGlobal atomic.Uint64 // over the node's budget, ever
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
	if cfg.DenyPerClient <= 0 {
		cfg.DenyPerClient = DefaultDenyPerClient
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
	u := &UseRecorder{cfg: cfg, queue: make(chan Record, cfg.Queue), denyClients: map[string]int{}, overBudget: map[string]bool{},
		errLog: budget.NewPerSecond(1, cfg.Now)}
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
	if !u.denyBudget(source) {
		return
	}
	u.enqueue(Record{Action: ActionAuthzDeny, Actor: ActorSystem, Reason: reason, TokenID: tokenID, Subject: subject, Route: route, Source: source})
}

// DenySender records a sender_mismatch denial with both identities: the
// workload the token is bound to and the peer that presented it ("" when
// the connection had none). It shares Deny's budget.
func (u *UseRecorder) DenySender(tokenID, subject, route, source, bound, peer string) {
	if !u.denyBudget(source) {
		return
	}
	if len(peer) > maxPeerBytes {
		peer = peer[:maxPeerBytes] // a SPIFFE ID is at most 2048 bytes
	}
	details := Details(struct {
		Bound string `json:"bound"`
		Peer  string `json:"peer"`
	}{bound, peer})
	u.enqueue(Record{Action: ActionAuthzDeny, Actor: ActorSystem, Reason: "sender_mismatch", TokenID: tokenID, Subject: subject, Route: route, Source: source, Details: details})
}

// maxPeerBytes bounds the peer identity a sender_mismatch record keeps.
const maxPeerBytes = 2048

// denyBudget reports whether a deny from source may be written this
// second, counting it as suppressed when not.
func (u *UseRecorder) denyBudget(source string) bool {
	client := clientKey(source)
	u.denyMu.Lock()
	defer u.denyMu.Unlock()
	if sec := u.cfg.Now().Unix(); sec != u.denyWindow {
		u.denyWindow, u.denyUsed = sec, 0
		clear(u.denyClients)
	}
	n, known := u.denyClients[client]
	switch {
	case n >= u.cfg.DenyPerClient || (!known && len(u.denyClients) >= maxDenyClients):
		u.suppressedClient.Add(1)
	case u.denyUsed >= u.cfg.DenyPerSecond:
		u.suppressedGlobal.Add(1)
	default:
		u.denyClients[client] = n + 1
		u.denyUsed++
		return true
	}
	u.suppressed.Add(1)
	if len(u.overBudget) < maxDenyClients {
		u.overBudget[client] = true
	}
	return false
}

// clientKey is what a deny budget is kept per: the IP address of source
// (a port dropped), or, when source is not one, its first bytes.
func clientKey(source string) string {
	if ap, err := netip.ParseAddrPort(source); err == nil {
		return ap.Addr().Unmap().String()
	}
	if ip, err := netip.ParseAddr(source); err == nil {
		return ip.Unmap().String()
	}
	if len(source) > maxClientKeyBytes {
		return source[:maxClientKeyBytes]
	}
	return source
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

// UseStats counts what a UseRecorder did not write, for metrics.
type UseStats struct {
	// Dropped counts records lost to a full queue.
	Dropped uint64
	// SuppressedClient and SuppressedGlobal count denies left out for
	// being over a client's budget or the node's (each is in the count of
	// an authz.deny_suppressed record).
	SuppressedClient, SuppressedGlobal uint64
}

// Stats returns the recorder's counters.
func (u *UseRecorder) Stats() UseStats {
	return UseStats{Dropped: u.dropped.Load(), SuppressedClient: u.suppressedClient.Load(), SuppressedGlobal: u.suppressedGlobal.Load()}
}

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
	interval := Details(map[string]string{"interval": u.cfg.Interval.String()})
	for _, s := range out {
		u.write(Record{Action: ActionAuthzAllowSummary, Actor: ActorSystem, TokenID: s.id, Subject: s.c.subject, Tenant: s.c.tenant, Count: s.n, Details: interval})
	}
	u.denyMu.Lock()
	n, clients := u.suppressed.Swap(0), len(u.overBudget)
	clear(u.overBudget)
	u.denyMu.Unlock()
	if n > 0 {
		details := Details(map[string]any{"interval": u.cfg.Interval.String(), "clients": clients,
			"deny_per_client": u.cfg.DenyPerClient, "deny_per_second": u.cfg.DenyPerSecond})
		u.write(Record{Action: ActionDenySuppressed, Actor: ActorSystem, Count: n, Details: details})
	}
}

// write appends r. Every record the log refuses is counted (the log's
// tokenwarden_audit_records_lost_total) and logged: one line a second at
// most, saying how many failures went unlogged since the last one.
func (u *UseRecorder) write(r Record) {
	if _, err := u.cfg.Log.Append(r); err != nil {
		failed := u.writeErrors.Add(1)
		if u.errLog.Take() {
			u.cfg.Logger.Error("audit write failed", "action", r.Action, "err", err,
				"failed_total", failed, "unlogged_since_last", u.errLog.Over())
		}
	}
}
