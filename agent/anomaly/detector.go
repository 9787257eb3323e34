// Package anomaly tracks per-token request rates and asks for a revocation
// (or raises an alert) when a token behaves unlike itself or beyond the
// policy's ceilings: too fast, a sudden spike over its own baseline, or used
// from too many clients at once. It decides; the caller (the agent) revokes.
package anomaly

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"net/netip"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenwarden/tokenwarden/policy"
)

// Rule names the check that fired; it is the rule label of
// tokenwarden_anomalies_total.
type Rule string

const (
	RuleMaxRPS       Rule = "max_rps"        // rate above the policy's ceiling
	RuleSpike        Rule = "spike"          // rate far above the token's own baseline
	RuleMaxSourceIPs Rule = "max_source_ips" // too many distinct clients in one window
)

var rules = []Rule{RuleMaxRPS, RuleSpike, RuleMaxSourceIPs}

// Actions (policy anomaly.action).
const (
	ActionRevoke = "revoke"
	ActionAlert  = "alert"
)

// Defaults for Config fields left zero.
const (
	// DefaultAlpha is the weight of the newest window in the baseline. At
	// 0.05 the baseline's half-life is about 14 windows (2¼ minutes at the
	// default 10s window): slow enough that a burst does not become normal
	// in the window it happens, fast enough to follow a daily cycle.
	DefaultAlpha = 0.05
	// DefaultWarmupWindows is how many windows with traffic a token needs
	// before the spike rule looks at it: a baseline from one window is
	// mostly noise (and the first window is usually partial).
	DefaultWarmupWindows = 3
	// DefaultMinSpikeRPS is the least rate that can count as a spike, so a
	// token idling at 0.1 rps does not trip the rule by doing 1 rps.
	DefaultMinSpikeRPS = 5
	// DefaultAlertEvery is how many windows pass before a token that keeps
	// misbehaving under action alert is reported again.
	DefaultAlertEvery = 30
	// DefaultIdleWindows is how many windows without traffic a token is
	// remembered for; after that its baseline is forgotten.
	DefaultIdleWindows = 60
	// DefaultMaxTokens bounds the tokens tracked at once. Only verified
	// tokens are observed, so the cap is a safety net, not a working limit.
	DefaultMaxTokens = 100_000

	// spikeSigmas is how many standard deviations above its baseline a rate
	// must also be to count as a spike: the factor alone would flag a noisy
	// token whose baseline happens to be low.
	spikeSigmas = 3
	// defaultWindow is used when the policy gives none.
	defaultWindow = 10 * time.Second
)

// Trigger is one anomaly: a token that broke a rule in a window.
type Trigger struct {
	TokenID string
	Subject string
	Rule    Rule
	Action  string  // ActionRevoke or ActionAlert, from the policy
	Rate    float64 // requests per second in the window
	// Baseline and StdDev are the token's usual rate and its spread before
	// this window (zero during warm-up).
	Baseline float64
	StdDev   float64
	// Sources is the distinct client addresses seen in the window, counted
	// up to max_source_ips+1 (so a value above the limit means "more than").
	Sources int
	Window  time.Duration
	At      time.Time
}

// Config configures a Detector.
type Config struct {
	// Policy is the anomaly section in force; SetPolicy replaces it.
	Policy policy.AnomalySpec
	// OnTrigger is called once per anomaly, from Evaluate, outside any lock.
	// It may block (it usually revokes through the store). A revoke trigger
	// comes once per token: if the revocation fails, OnTrigger must retry
	// or report it, as the detector will not ask again.
	OnTrigger func(Trigger)
	// Registerer receives the metrics; nil registers none.
	Registerer prometheus.Registerer
	// Now is the clock; nil means time.Now.
	Now func() time.Time

	// Tuning; zero means the Default* constant.
	Alpha         float64
	WarmupWindows int
	MinSpikeRPS   float64
	AlertEvery    int
	IdleWindows   int
	MaxTokens     int
}

// Detector counts requests per token and, each window, checks every token
// against the anomaly rules.
//
// A token's requests are counted twice over, by ext_authz (Observe) and by
// the kernel side (AddRequests), and its rate in a window is the larger of
// the two counts: a token the kernel cannot see (hidden past its parser's
// limits) is still counted by ext_authz, and traffic that bypasses the
// sidecar is still counted by the kernel.
//
// Observe and AddRequests are safe for concurrent use and cheap: a sync.Map
// look-up and an atomic add; a source address costs a mutex only the first
// time it is seen in a window. Evaluate does the arithmetic.
type Detector struct {
	cfg Config

	spec        atomic.Pointer[policy.AnomalySpec]
	sourceLimit atomic.Int32 // max_source_ips+1; 0 when the rule is off

	tokens  sync.Map // token id -> *tokenState
	tracked atomic.Int64

	evalMu  sync.Mutex // serialises Evaluate; guards the fields below
	window  uint64     // windows evaluated so far
	lastRun time.Time

	anomalies map[Rule]map[string]prometheus.Counter // rule -> action -> counter
}

// tokenState is one token's counts for the window in progress and its
// history. The atomics and sources are written by Observe/AddRequests; the
// rest is read and written only by Evaluate.
type tokenState struct {
	subject string
	authz   atomic.Uint64
	kernel  atomic.Uint64

	// lastSource is the key of the last address added to sources, so a
	// token used from one client (the common case) skips the mutex.
	lastSource atomic.Uint64
	nSources   atomic.Int32
	mu         sync.Mutex
	sources    []uint64 // distinct address keys this window, at most sourceLimit

	learned   int     // windows with traffic folded into the baseline
	mean      float64 // baseline rate (EWMA)
	variance  float64 // EWMA of the squared deviation from mean
	idle      int     // consecutive windows without traffic
	revoked   bool    // a revoke was asked for; never trigger again
	alertedAt uint64  // window of the last alert; 0 for none
}

// New builds a Detector and registers its metrics.
func New(cfg Config) (*Detector, error) {
	if cfg.Alpha < 0 || cfg.Alpha > 1 {
		return nil, fmt.Errorf("anomaly: Alpha %v: want a weight in (0, 1], or 0 for %v", cfg.Alpha, DefaultAlpha)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	cfg.Alpha = orDefault(cfg.Alpha, DefaultAlpha)
	cfg.WarmupWindows = orDefault(cfg.WarmupWindows, DefaultWarmupWindows)
	cfg.MinSpikeRPS = orDefault(cfg.MinSpikeRPS, DefaultMinSpikeRPS)
	cfg.AlertEvery = orDefault(cfg.AlertEvery, DefaultAlertEvery)
	cfg.IdleWindows = orDefault(cfg.IdleWindows, DefaultIdleWindows)
	cfg.MaxTokens = orDefault(cfg.MaxTokens, DefaultMaxTokens)

	d := &Detector{cfg: cfg, lastRun: cfg.Now(), anomalies: map[Rule]map[string]prometheus.Counter{}}
	d.SetPolicy(cfg.Policy)

	// Every (rule, action) series exists from the start, so alerts on
	// increase() see the first anomaly.
	anomalies := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tokenwarden_anomalies_total",
		Help: "Anomalies detected, by rule (max_rps, spike, max_source_ips) and action (revoke, alert).",
	}, []string{"rule", "action"})
	for _, r := range rules {
		d.anomalies[r] = map[string]prometheus.Counter{}
		for _, a := range []string{ActionRevoke, ActionAlert} {
			d.anomalies[r][a] = anomalies.WithLabelValues(string(r), a)
		}
	}
	tracked := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "tokenwarden_anomaly_tracked_tokens",
		Help: "Tokens whose request rate the anomaly detector is tracking.",
	}, func() float64 { return float64(d.tracked.Load()) })
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{anomalies, tracked} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("anomaly: register metrics: %w", err)
			}
		}
	}
	return d, nil
}

func orDefault[T int | float64](v, def T) T {
	if v == 0 {
		return def
	}
	return v
}

// SetPolicy replaces the anomaly rules (on a policy reload). Baselines are
// kept: they describe the tokens, not the rules.
func (d *Detector) SetPolicy(spec policy.AnomalySpec) {
	if spec.Window <= 0 {
		spec.Window = policy.Duration(defaultWindow)
	}
	if spec.Action == "" {
		spec.Action = ActionAlert
	}
	d.spec.Store(&spec)
	limit := 0
	if spec.MaxSourceIPs > 0 {
		limit = min(spec.MaxSourceIPs, math.MaxInt32-1) + 1
	}
	d.sourceLimit.Store(int32(limit))
}

// Policy returns the anomaly rules in force.
func (d *Detector) Policy() policy.AnomalySpec { return *d.spec.Load() }

// Observe records one ext_authz check (allowed or denied) that carried a
// token. source is the client address; an invalid one is not counted.
func (d *Detector) Observe(tokenID, subject string, source netip.Addr) {
	st := d.state(tokenID, subject)
	if st == nil {
		return
	}
	st.authz.Add(1)
	if limit := d.sourceLimit.Load(); limit > 0 && source.IsValid() {
		st.addSource(addrKey(source), limit)
	}
}

// AddRequests adds n requests counted by the kernel side for a token.
// They are not added to Observe's: the window's rate is the larger of the
// two counts, as the same request is usually seen by both.
func (d *Detector) AddRequests(tokenID, subject string, n uint64) {
	if n == 0 {
		return
	}
	if st := d.state(tokenID, subject); st != nil {
		st.kernel.Add(n)
	}
}

// state returns the token's state, creating it on first sight; nil when the
// token cannot be tracked.
func (d *Detector) state(tokenID, subject string) *tokenState {
	if tokenID == "" {
		return nil
	}
	if v, ok := d.tokens.Load(tokenID); ok {
		return v.(*tokenState)
	}
	// Reserve a slot before storing: checking the count and adding after
	// the store let concurrent first sightings all pass the check.
	for {
		n := d.tracked.Load()
		if n >= int64(d.cfg.MaxTokens) {
			return nil
		}
		if d.tracked.CompareAndSwap(n, n+1) {
			break
		}
	}
	v, loaded := d.tokens.LoadOrStore(tokenID, &tokenState{subject: subject})
	if loaded {
		d.tracked.Add(-1) // another sighting stored it first
	}
	return v.(*tokenState)
}

func (st *tokenState) addSource(key uint64, limit int32) {
	if st.lastSource.Load() == key || st.nSources.Load() >= limit {
		return
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	for _, k := range st.sources {
		if k == key {
			st.lastSource.Store(key)
			return
		}
	}
	if int32(len(st.sources)) < limit {
		st.sources = append(st.sources, key)
		st.nSources.Store(int32(len(st.sources)))
	}
	// Set under the mutex so that takeSources, which clears both, cannot
	// be overtaken by a stale key that would hide this address next window.
	st.lastSource.Store(key)
}

// takeSources returns the window's distinct source count and starts a new
// window, keeping the slice's memory.
func (st *tokenState) takeSources() int {
	st.mu.Lock()
	defer st.mu.Unlock()
	n := len(st.sources)
	st.sources = st.sources[:0]
	st.nSources.Store(0)
	st.lastSource.Store(0)
	return n
}

// addrKey maps an address to a 64-bit key (never 0, which means "none").
// IPv4 and its IPv4-mapped IPv6 form are one client.
func addrKey(a netip.Addr) uint64 {
	b := a.As16()
	h := binary.BigEndian.Uint64(b[:8])*0x9e3779b97f4a7c15 ^ binary.BigEndian.Uint64(b[8:])
	// splitmix64 finaliser: spreads the bits so distinct addresses do not
	// collide in practice.
	h ^= h >> 30
	h *= 0xbf58476d1ce4e5b9
	h ^= h >> 27
	h *= 0x94d049bb133111eb
	h ^= h >> 31
	return h | 1
}

// Evaluate closes the window ending at now: it computes every token's rate
// since the previous Evaluate, applies the rules, updates the baselines,
// forgets idle tokens, calls OnTrigger for each anomaly and returns them
// (sorted by token id). Run calls it every window; tests call it with their
// own clock.
func (d *Detector) Evaluate(now time.Time) []Trigger {
	spec := d.Policy()
	d.evalMu.Lock()
	elapsed := now.Sub(d.lastRun)
	if elapsed <= 0 {
		elapsed = spec.Window.D()
	}
	d.lastRun = now
	d.window++
	var fired []Trigger
	d.tokens.Range(func(k, v any) bool {
		id, st := k.(string), v.(*tokenState)
		authz, kernel := st.authz.Swap(0), st.kernel.Swap(0)
		sources := st.takeSources()
		if authz == 0 && kernel == 0 {
			st.idle++
			if st.idle >= d.cfg.IdleWindows {
				// A request racing this delete is lost with the state: at
				// most a few requests of a token that was idle for minutes.
				d.tokens.Delete(id)
				d.tracked.Add(-1)
			}
			return true
		}
		st.idle = 0
		// Each source sees requests the other cannot: the kernel sees
		// traffic that bypasses the sidecar, ext_authz sees every checked
		// request, including those whose token the kernel could not parse
		// (past its scan limits, split across segments). The larger count
		// is the lower bound on what the token really did.
		count := max(authz, kernel)
		rate := float64(count) / elapsed.Seconds()
		if t, ok := d.check(st, spec, rate, sources); ok {
			t.TokenID, t.At = id, now
			fired = append(fired, t)
		}
		if count > 0 {
			st.learn(rate, d.cfg.Alpha)
		}
		return true
	})
	d.evalMu.Unlock()

	sort.Slice(fired, func(i, j int) bool { return fired[i].TokenID < fired[j].TokenID })
	for _, t := range fired {
		d.anomalies[t.Rule][t.Action].Inc()
		if d.cfg.OnTrigger != nil {
			d.cfg.OnTrigger(t)
		}
	}
	return fired
}

// check applies the rules to one token's window. It is called with evalMu
// held, before the window is learned into the baseline.
func (d *Detector) check(st *tokenState, spec policy.AnomalySpec, rate float64, sources int) (Trigger, bool) {
	if st.revoked {
		return Trigger{}, false
	}
	if spec.Action == ActionAlert && st.alertedAt != 0 && d.window-st.alertedAt < uint64(d.cfg.AlertEvery) {
		return Trigger{}, false
	}
	sd := math.Sqrt(st.variance)
	var rule Rule
	switch {
	case spec.MaxRPS > 0 && rate > spec.MaxRPS:
		rule = RuleMaxRPS
	case spec.MaxSourceIPs > 0 && sources > spec.MaxSourceIPs:
		rule = RuleMaxSourceIPs
	case spec.SpikeFactor > 0 && st.learned >= d.cfg.WarmupWindows &&
		rate >= d.cfg.MinSpikeRPS &&
		rate > spec.SpikeFactor*st.mean &&
		rate > st.mean+spikeSigmas*sd:
		rule = RuleSpike
	default:
		return Trigger{}, false
	}
	if spec.Action == ActionRevoke {
		st.revoked = true
	} else {
		st.alertedAt = d.window
	}
	t := Trigger{
		Subject: st.subject, Rule: rule, Action: spec.Action, Rate: rate,
		Sources: sources, Window: spec.Window.D(),
	}
	if st.learned >= d.cfg.WarmupWindows {
		t.Baseline, t.StdDev = st.mean, sd
	}
	return t, true
}

// learn folds a window's rate into the baseline. Until 1/alpha windows have
// been seen the weight is 1/n, so the early baseline is the plain mean of
// the windows so far rather than biased toward the first (often partial)
// one. Windows without traffic are not learned: the baseline is the token's
// rate while in use, so a batch job that runs every few minutes is not
// "spiking" each time it wakes.
func (st *tokenState) learn(rate, alpha float64) {
	st.learned++
	w := max(alpha, 1/float64(st.learned))
	diff := rate - st.mean
	st.mean += w * diff
	st.variance = (1 - w) * (st.variance + w*diff*diff)
}

// Run evaluates every window (re-reading the window length after each, so a
// reload that changes it takes effect) until ctx ends.
func (d *Detector) Run(ctx context.Context) {
	for {
		t := time.NewTimer(d.Policy().Window.D())
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
			d.Evaluate(d.cfg.Now())
		}
	}
}

// Tracked is the number of tokens being tracked.
func (d *Detector) Tracked() int { return int(d.tracked.Load()) }

// Baseline returns a token's baseline rate, its standard deviation and how
// many windows it was learned from; ok is false for a token not tracked.
func (d *Detector) Baseline(tokenID string) (mean, stddev float64, windows int, ok bool) {
	v, ok := d.tokens.Load(tokenID)
	if !ok {
		return 0, 0, 0, false
	}
	st := v.(*tokenState)
	d.evalMu.Lock()
	defer d.evalMu.Unlock()
	return st.mean, math.Sqrt(st.variance), st.learned, true
}
