// Package freshness bounds how stale this node's view of a shared store may
// be when a check is decided. A Tracker holds the instant until which the
// view is known current ("fresh until"); every check reads it with one
// atomic load and one clock read. Run confirms the view periodically (the
// store's revision read as a quorum read, then the watch seen to reach it);
// a check that finds the bound passed (the store is unreachable, or this
// process was paused: SIGSTOP, a long GC, a frozen VM) triggers one
// confirmation, shared by every check that arrives meanwhile, and waits for
// it up to ConfirmWait. Confirmed, the check proceeds on the current rules;
// otherwise it is decided under the configured Action.
package freshness

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// DefaultMaxStaleness is how old the view may be before a check is
	// decided under the stale action (--max-staleness).
	DefaultMaxStaleness = 2 * time.Second

	// ConfirmWait bounds how long a check that finds the view stale waits
	// for the confirmation it triggered. A process resumed after a pause
	// meets it once: with the store reachable, a confirmation takes a
	// round trip or two.
	ConfirmWait = 500 * time.Millisecond

	// MaxPollEvery caps the interval between two confirmations (a failed
	// one, at start or in an outage, is tried again this soon).
	MaxPollEvery = 500 * time.Millisecond
)

// Action is what a node does with a check once its view is stale
// (--stale-action).
type Action string

const (
	// ActionServe keeps deciding checks on the rules the node has: an etcd
	// outage does not take every service in the mesh down, at the price of
	// not enforcing revocations made elsewhere meanwhile.
	ActionServe Action = "serve"
	// ActionDeny denies every check (store_unavailable, 503): nothing is
	// allowed on rules older than the bound.
	ActionDeny Action = "deny"
)

// Actions lists the valid actions, for flag validation.
var Actions = []Action{ActionServe, ActionDeny}

// Config configures a Tracker.
type Config struct {
	// Confirm proves the view current as of the moment it was called, or
	// fails. It must honour ctx.
	Confirm func(ctx context.Context) error
	// MaxStaleness is the bound (DefaultMaxStaleness when zero).
	MaxStaleness time.Duration
	// PollEvery is how often Run confirms (MaxStaleness/4, at most
	// MaxPollEvery, when zero): a reachable store keeps the view fresh
	// without any check waiting.
	PollEvery time.Duration
	Action    Action // ActionServe when empty
	// ConfirmedAt, when set, is when the view was last known current
	// before New (a local snapshot the node started from): Staleness
	// counts from it. The view is stale until the first confirmation
	// either way.
	ConfirmedAt time.Time
	// Now is a monotonic clock (time.Now when nil): a paused process must
	// see the time that passed, so it is read, never cached.
	Now    func() time.Time
	Logger *slog.Logger
}

// Tracker knows how fresh the view is. A nil *Tracker is always fresh (a
// store with one node: bolt).
type Tracker struct {
	cfg  Config
	base time.Time

	// Nanoseconds since base, read on every check.
	freshUntil atomic.Int64
	// Until when checks decide under the action without waiting: a
	// confirmation failed lately, waiting again would only add latency.
	knownStaleUntil atomic.Int64
	confirmedAt     atomic.Int64 // start of the last successful confirmation; 0 none, negative before New

	mu      sync.Mutex
	flight  *flight
	lastErr error
	stale   bool // for logging the transitions
}

type flight struct {
	done chan struct{}
	ok   bool
}

// New returns a Tracker whose view is stale until its first confirmation.
func New(cfg Config) (*Tracker, error) {
	if cfg.Confirm == nil {
		return nil, errors.New("freshness: Config.Confirm is required")
	}
	cfg.MaxStaleness = cmp.Or(cfg.MaxStaleness, DefaultMaxStaleness)
	if cfg.MaxStaleness < 0 {
		return nil, fmt.Errorf("freshness: max staleness %v is negative", cfg.MaxStaleness)
	}
	cfg.PollEvery = cmp.Or(cfg.PollEvery, min(cfg.MaxStaleness/4, MaxPollEvery))
	cfg.Action = cmp.Or(cfg.Action, ActionServe)
	if cfg.Action != ActionServe && cfg.Action != ActionDeny {
		return nil, fmt.Errorf("freshness: stale action %q is neither %q nor %q", cfg.Action, ActionServe, ActionDeny)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	cfg.Logger = cmp.Or(cfg.Logger, slog.Default())
	t := &Tracker{cfg: cfg, base: cfg.Now(), lastErr: errors.New("not confirmed yet")}
	if !cfg.ConfirmedAt.IsZero() && cfg.ConfirmedAt.Before(t.base) {
		t.confirmedAt.Store(-int64(t.base.Sub(cfg.ConfirmedAt)))
	}
	return t, nil
}

func (t *Tracker) since() int64 { return int64(t.cfg.Now().Sub(t.base)) }

// Admit reports whether a check may be decided on the rules this node has:
// true while the view is fresh, or once a confirmation it waited for
// (ConfirmWait at most) proved it fresh, or when the view is stale and the
// action is ActionServe. False means deny the check (store_unavailable).
func (t *Tracker) Admit() bool {
	if t == nil || t.since() < t.freshUntil.Load() {
		return true
	}
	return t.admitStale()
}

func (t *Tracker) admitStale() bool {
	if t.since() < t.knownStaleUntil.Load() {
		t.start(false) // a confirmation failed lately: try again, but do not wait
		return t.cfg.Action == ActionServe
	}
	timer := time.NewTimer(ConfirmWait)
	defer timer.Stop()
	for {
		f := t.start(false)
		select {
		case <-f.done:
		case <-timer.C:
			return t.cfg.Action == ActionServe
		}
		if t.since() < t.freshUntil.Load() {
			return true
		}
		if !f.ok {
			return t.cfg.Action == ActionServe
		}
		// A confirmation that began before this process was paused proves
		// nothing about now: start another.
	}
}

// confirmed is the answer of a confirmation that just ended well.
var confirmed = func() *flight {
	f := &flight{done: make(chan struct{}), ok: true}
	close(f.done)
	return f
}()

// start returns the confirmation running, or starts one. Unless forced, a
// view found fresh meanwhile (a confirmation ended since the caller looked)
// needs none.
func (t *Tracker) start(force bool) *flight {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.flight != nil {
		return t.flight
	}
	if !force && t.since() < t.freshUntil.Load() {
		return confirmed
	}
	f := &flight{done: make(chan struct{})}
	t.flight = f
	go t.confirm(f)
	return f
}

func (t *Tracker) confirm(f *flight) {
	began := t.since()
	ctx, cancel := context.WithTimeout(context.Background(), max(t.cfg.PollEvery, ConfirmWait))
	err := t.cfg.Confirm(ctx)
	cancel()
	t.mu.Lock()
	defer t.mu.Unlock()
	t.flight = nil
	if err == nil {
		f.ok = true
		t.confirmedAt.Store(began)
		t.freshUntil.Store(began + int64(t.cfg.MaxStaleness))
		t.knownStaleUntil.Store(0)
		t.lastErr = nil
		if t.stale {
			t.stale = false
			t.cfg.Logger.Info("store view current again", "max_staleness", t.cfg.MaxStaleness)
		}
	} else {
		t.lastErr = err
		t.knownStaleUntil.Store(t.since() + int64(t.cfg.PollEvery))
		if !t.stale && t.since() >= t.freshUntil.Load() {
			t.stale = true
			t.cfg.Logger.Warn("store view stale: revocations made on other nodes may not be enforced here",
				"max_staleness", t.cfg.MaxStaleness, "stale_action", string(t.cfg.Action), "err", err)
		}
	}
	close(f.done)
}

// Confirm runs one confirmation (or joins the one running) and waits for
// its result.
func (t *Tracker) Confirm() bool {
	if t == nil {
		return true
	}
	f := t.start(true)
	<-f.done
	return f.ok
}

// Run confirms the view at once and every PollEvery until ctx ends.
func (t *Tracker) Run(ctx context.Context) {
	if t == nil {
		return
	}
	tick := time.NewTicker(t.cfg.PollEvery)
	defer tick.Stop()
	for {
		t.Confirm()
		t.logStale()
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// logStale notes the view going stale without a failed confirmation (the
// confirmations hang): the bound passes while one is still running.
func (t *Tracker) logStale() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.stale && t.since() >= t.freshUntil.Load() {
		t.stale = true
		t.cfg.Logger.Warn("store view stale: revocations made on other nodes may not be enforced here",
			"max_staleness", t.cfg.MaxStaleness, "stale_action", string(t.cfg.Action), "err", t.lastErr)
	}
}

// Staleness is the age of the view: the time since the start of the last
// successful confirmation (before any, since Config.ConfirmedAt, or since
// the Tracker was made). Zero
// for a nil Tracker.
func (t *Tracker) Staleness() time.Duration {
	if t == nil {
		return 0
	}
	at := t.confirmedAt.Load()
	return time.Duration(t.since() - at)
}

// Err says why the view is stale, or nil while it is fresh: what /readyz
// reports.
func (t *Tracker) Err() error {
	if t == nil || t.since() < t.freshUntil.Load() {
		return nil
	}
	t.mu.Lock()
	last := t.lastErr
	t.mu.Unlock()
	if last == nil {
		last = errors.New("confirmation still running")
	}
	return fmt.Errorf("store view is %s old, past --max-staleness %s (stale action %s): %v",
		t.Staleness().Round(time.Millisecond), t.cfg.MaxStaleness, t.cfg.Action, last)
}

// Action is the stale action in force.
func (t *Tracker) Action() Action {
	if t == nil {
		return ActionServe
	}
	return t.cfg.Action
}
