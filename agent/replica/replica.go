// Package replica is this node's copy of the store's enforcement state: the
// revocation set every check consults and the index of known tokens by id
// and wire hash the kernel side needs. Run loads it, watches the store and
// applies every change, and reloads everything after a gap in the watch;
// Writer makes this node's own writes enforced before they return.
package replica

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tokenwarden/tokenwarden/agent/revocation"
	"github.com/tokenwarden/tokenwarden/agent/store"
	"github.com/tokenwarden/tokenwarden/policy"
)

// DefaultRetryEvery is how long Run waits between attempts to re-establish
// a broken store watch.
const DefaultRetryEvery = time.Second

// Config configures a Replica.
type Config struct {
	// ReloadKeys is called when a signing key changed in the store and
	// after a gap in the watch (keys may have rotated meanwhile).
	ReloadKeys func(ctx context.Context) error
	RetryEvery time.Duration // DefaultRetryEvery when zero
	Now        func() time.Time
	Logger     *slog.Logger
}

// Replica holds the revocation set and the token index and keeps them in
// step with the store.
type Replica struct {
	cfg    Config
	set    *revocation.Set
	tokens *index
	// changed has a value when what the kernel's revoked map must hold may
	// have changed; the kernel side drains it.
	changed chan struct{}
	// gap is set while the store's watch is down and being re-established.
	gap    atomic.Bool
	synced chan struct{}
	once   sync.Once

	timersMu sync.Mutex
	timers   map[int64]*time.Timer // future effective times -> wake-up

	// barrier is the revision of the last EventProgress applied: every
	// change up to it is applied. barrierMu guards advanced, closed and
	// replaced each time barrier moves.
	barrier   atomic.Int64
	barrierMu sync.Mutex
	advanced  chan struct{}

	// changes counts the rule and key changes applied (and reloads): what
	// a local snapshot of them follows.
	changes atomic.Uint64
	// restored is set when the replica started from a local snapshot:
	// the first load may then fail (the store is unreachable).
	restored atomic.Bool
}

// New returns an empty replica; Run fills it.
func New(cfg Config) *Replica {
	cfg.RetryEvery = cmp.Or(cfg.RetryEvery, DefaultRetryEvery)
	cfg.Logger = cmp.Or(cfg.Logger, slog.Default())
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.ReloadKeys == nil {
		cfg.ReloadKeys = func(context.Context) error { return nil }
	}
	return &Replica{
		cfg: cfg, set: revocation.NewSet(), tokens: newIndex(),
		changed: make(chan struct{}, 1), synced: make(chan struct{}), timers: map[int64]*time.Timer{},
		advanced: make(chan struct{}),
	}
}

// Revocations is the revocation set: what every check consults.
func (r *Replica) Revocations() *revocation.Set { return r.set }

// Changed delivers a value when the revoked hashes may have changed (a
// rule added, removed or taking effect, a revoked token learned, a reload).
// It is buffered by one: many changes between two reads are one value.
func (r *Replica) Changed() <-chan struct{} { return r.changed }

// Synced is closed once Run has loaded the store's state for the first
// time.
func (r *Replica) Synced() <-chan struct{} { return r.synced }

// Gap reports an error while the store's watch is interrupted: revocations
// made elsewhere may not be enforced here yet.
func (r *Replica) Gap() error {
	if r.gap.Load() {
		return errors.New("store watch interrupted; reloading state (revocations made elsewhere may not be enforced yet)")
	}
	return nil
}

func (r *Replica) signal() {
	select {
	case r.changed <- struct{}{}:
	default:
	}
}

// Restore starts the replica from a local snapshot of the rules, for a
// node started while the store is unreachable: the rules are enforced at
// once, Synced is closed, and Gap reports the store missing until Run has
// loaded it (Run then retries its first load instead of failing).
func (r *Replica) Restore(rules []policy.Revocation) {
	for _, rule := range rules {
		r.add(rule)
	}
	r.gap.Store(true)
	r.restored.Store(true)
	r.signal()
	r.once.Do(func() { close(r.synced) })
}

// Changes counts the rule and key changes applied and the reloads: it
// moves whenever what a snapshot of the store holds may have changed.
func (r *Replica) Changes() uint64 { return r.changes.Load() }

// Revision is the store revision of the last confirmation applied: every
// change up to it is applied here (0 before the first).
func (r *Replica) Revision() int64 { return r.barrier.Load() }

// Run loads the store's state and applies its changes until ctx ends. It
// starts watching before it loads, so nothing written in between is missed
// (applying a change twice is harmless). When the store drops the watch
// (this node fell behind), it watches again and reloads everything,
// retrying until that succeeds; Gap reports the interruption meanwhile.
// Run returns an error only when the first load fails and the replica was
// not restored from a snapshot.
func (r *Replica) Run(ctx context.Context, st store.Store) error {
	events, stop, err := r.sync(ctx, st)
	if err != nil && !r.restored.Load() {
		return err
	}
	defer r.stopTimers()
	if err != nil {
		r.cfg.Logger.Warn("store unreachable at start; enforcing the rules of the local snapshot until it answers", "err", err)
		if events, stop = r.resync(ctx, st); events == nil {
			return nil
		}
	}
	r.changes.Add(1)
	r.once.Do(func() { close(r.synced) })
	for {
		for ev := range events {
			r.apply(ctx, ev)
		}
		stop()
		if ctx.Err() != nil {
			return nil
		}
		r.gap.Store(true)
		r.cfg.Logger.Warn("store watch interrupted; reloading state")
		if events, stop = r.resync(ctx, st); events == nil {
			return nil
		}
		r.changes.Add(1)
	}
}

// resync watches and reloads everything, keys included, retrying until it
// succeeds; it returns a nil channel once ctx ends.
func (r *Replica) resync(ctx context.Context, st store.Store) (<-chan store.Event, context.CancelFunc) {
	for {
		events, stop, err := r.sync(ctx, st)
		if err == nil {
			if err = r.cfg.ReloadKeys(ctx); err == nil {
				r.gap.Store(false)
				r.cfg.Logger.Info("store watch re-established; state reloaded")
				return events, stop
			}
			stop()
		}
		if ctx.Err() != nil {
			return nil, nil
		}
		r.cfg.Logger.Error("reload after watch interruption; retrying", "err", err, "in", r.cfg.RetryEvery)
		t := time.NewTimer(r.cfg.RetryEvery)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, nil
		case <-t.C:
		}
	}
}

// sync watches st and loads every revocation rule and known token. A failed
// attempt unregisters its watch, or it would sit unread until the store
// dropped it.
func (r *Replica) sync(ctx context.Context, st store.Store) (<-chan store.Event, context.CancelFunc, error) {
	wctx, stop := context.WithCancel(ctx)
	events, err := st.Watch(wctx)
	if err != nil {
		stop()
		return nil, nil, fmt.Errorf("watch store: %w", err)
	}
	if err := r.Load(ctx, st); err != nil {
		stop()
		return nil, nil, err
	}
	return events, stop, nil
}

// Load adds every stored revocation rule and every token that has not
// expired: live ones, and revoked ones, whose hashes the kernel's revoked
// map must hold (a request that bypasses the sidecar meets only the
// kernel). Nothing is removed: a rule leaves the set only by its expiry.
func (r *Replica) Load(ctx context.Context, st store.Store) error {
	rules, err := st.Revocations(ctx)
	if err != nil {
		return fmt.Errorf("load revocations: %w", err)
	}
	for _, rule := range rules {
		r.add(rule)
	}
	recs, err := st.Tokens(ctx, store.TokenFilter{})
	if err != nil {
		return fmt.Errorf("load tokens: %w", err)
	}
	now := r.cfg.Now()
	for i := range recs {
		if !expired(&recs[i], now) {
			r.tokens.put(tokenOf(&recs[i]))
		}
	}
	r.signal()
	return nil
}

func (r *Replica) apply(ctx context.Context, ev store.Event) {
	switch ev.Kind {
	case store.EventRevocation:
		// A deleted rule is not lifted here: rules are deleted only once
		// past their expiry (retention), when the set's own Prune drops
		// them. Failing closed, a rule deleted early stays enforced on
		// running nodes until then.
		if ev.Revocation != nil && !ev.Deleted {
			r.Enforce(*ev.Revocation)
		}
	case store.EventToken:
		if ev.Token == nil {
			return
		}
		if ev.Deleted {
			r.tokens.remove(ev.Token.ID)
		} else {
			r.PutToken(ev.Token)
		}
	case store.EventKey:
		r.changes.Add(1)
		if err := r.cfg.ReloadKeys(ctx); err != nil {
			r.cfg.Logger.Error("reload signing keys", "err", err)
		}
	case store.EventProgress:
		r.reached(ev.Revision)
	}
}

func (r *Replica) reached(rev int64) {
	r.barrierMu.Lock()
	defer r.barrierMu.Unlock()
	if rev > r.barrier.Load() {
		r.barrier.Store(rev)
		close(r.advanced)
		r.advanced = make(chan struct{})
	}
}

// Confirm proves this replica current: it asks st for its revision now
// and returns once every change up to it has been applied here, or fails
// when ctx ends first (the store or the link to it is down, the watch is
// being re-established). Every write acknowledged anywhere before Confirm
// was called is then enforced here.
func (r *Replica) Confirm(ctx context.Context, st store.Progresser) error {
	rev, err := st.Progress(ctx)
	if err != nil {
		return err
	}
	for {
		r.barrierMu.Lock()
		at, advanced := r.barrier.Load(), r.advanced
		r.barrierMu.Unlock()
		if at >= rev {
			return nil
		}
		select {
		case <-advanced:
		case <-ctx.Done():
			return fmt.Errorf("changes up to revision %d not applied yet (at %d): %w", rev, at, ctx.Err())
		}
	}
}

// Enforce applies a rule: the revocation set at once, the kernel's revoked
// map within moments (at its effective time, for a rule that takes effect
// later).
func (r *Replica) Enforce(rule policy.Revocation) {
	r.add(rule)
	r.signal()
}

func (r *Replica) add(rule policy.Revocation) {
	r.set.Add(rule)
	r.changes.Add(1)
	if wait := rule.EffectiveAt.Sub(r.cfg.Now()); wait > 0 {
		r.wakeAt(rule.EffectiveAt, wait)
	}
}

// wakeAt signals a change when a rule takes effect: until then the tokens it
// covers are not revoked, and nothing else would tell the kernel side. One
// timer per distinct second.
func (r *Replica) wakeAt(at time.Time, wait time.Duration) {
	key := at.Unix()
	r.timersMu.Lock()
	defer r.timersMu.Unlock()
	if r.timers == nil || r.timers[key] != nil {
		return
	}
	r.timers[key] = time.AfterFunc(wait+time.Second, func() {
		r.timersMu.Lock()
		delete(r.timers, key)
		r.timersMu.Unlock()
		r.signal()
	})
}

func (r *Replica) stopTimers() {
	r.timersMu.Lock()
	defer r.timersMu.Unlock()
	for _, t := range r.timers {
		t.Stop()
	}
	r.timers = nil
}

// PutToken keeps the index in step with a stored record: live tokens and
// revoked ones (whose hashes the kernel must drop) are known.
func (r *Replica) PutToken(rec *store.TokenRecord) {
	now := r.cfg.Now()
	if rec.Live(now) || (rec.Status == store.TokenRevoked && !expired(rec, now)) {
		r.tokens.put(tokenOf(rec))
		if rec.Status == store.TokenRevoked {
			r.signal()
		}
	}
}

// Learn records the hash of a token seen at check time that the index does
// not know (its record was lost or not yet replicated), kept no longer than
// until(). A revoked token learned this way is a change: the kernel can
// drop it now that its hash is known. It costs a read-locked look-up for a
// token seen before.
func (r *Replica) Learn(d *policy.Decision, until func() time.Time) {
	if r.tokens.learn(d, until) && d.Reason == policy.ReasonRevoked {
		r.signal()
	}
}

// Lookup names a wire hash.
func (r *Replica) Lookup(hash uint64) (id, subject string, ok bool) { return r.tokens.lookup(hash) }

// Token returns what the index knows of a token id.
func (r *Replica) Token(id string) (*policy.Token, bool) { return r.tokens.get(id) }

// RevokedHashes lists the wire hashes of known tokens revoked at now, sorted:
// what the kernel's revoked map must hold.
func (r *Replica) RevokedHashes(now time.Time) []uint64 {
	h := r.tokens.revokedHashes(r.set, now)
	slices.Sort(h)
	return h
}

// Prune drops rules and tokens past every possible exp; it reports how many
// rules it dropped. Dropping a token whose hash was revoked is a change.
func (r *Replica) Prune(now time.Time) (rules int) {
	rules = r.set.Prune(now)
	if r.tokens.prune(now) > 0 || rules > 0 {
		r.signal()
	}
	return rules
}

// Writer is st as this node's own writers (issuer, admin API, rotation)
// see it: a revocation rule or token record written through it is applied
// here once it is durable and before the write returns, so the admin API
// never answers a revocation this node does not enforce yet. Watch
// delivers the same change again (applying it twice is harmless) and
// brings changes made elsewhere.
func (r *Replica) Writer(st store.Store) store.Store { return writer{Store: st, r: r} }

type writer struct {
	store.Store
	r *Replica
}

func (w writer) PutRevocation(ctx context.Context, rule policy.Revocation) error {
	if err := w.Store.PutRevocation(ctx, rule); err != nil {
		return err
	}
	w.r.Enforce(rule)
	return nil
}

func (w writer) PutToken(ctx context.Context, t store.TokenRecord) error {
	if err := w.Store.PutToken(ctx, t); err != nil {
		return err
	}
	t.Scopes = slices.Clone(t.Scopes) // the index keeps no memory of the caller's
	w.r.PutToken(&t)
	return nil
}
