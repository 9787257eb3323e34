package authz

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenwarden/tokenwarden/agent/usage"
	"github.com/tokenwarden/tokenwarden/policy"
)

// DefaultTopTokens is how many tokens get their own request series.
const DefaultTopTokens = 50

// Metrics are the authz Prometheus metrics. Label values are bounded: the
// reasons are policy.Reasons, pre-registered so every series exists from
// the start, and per-token series exist only for the busiest tokens.
type Metrics struct {
	checks      map[policy.Reason]prometheus.Counter
	duration    prometheus.Histogram
	cacheHits   prometheus.Counter
	cacheMisses prometheus.Counter
	tokens      *usage.TopN
	labels      usage.TokenLabels
}

// MetricsConfig configures NewMetrics.
type MetricsConfig struct {
	// TopTokens is how many of the busiest tokens of each flush interval
	// get a tokenwarden_authz_token_requests_total series; 0 means
	// DefaultTopTokens, negative means none.
	TopTokens int
	// TokenLabels says what the per-token series carry; "" (none) exports
	// none, whatever TopTokens says.
	TokenLabels usage.TokenLabels
}

// NewMetrics registers the authz metrics on reg.
func NewMetrics(reg prometheus.Registerer, cfg MetricsConfig) (*Metrics, error) {
	checks := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tokenwarden_authz_checks_total",
		Help: "Authorization checks answered, by decision (allow, deny) and reason code.",
	}, []string{"decision", "reason"})
	duration := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "tokenwarden_authz_check_duration_seconds",
		Help:    "Time to answer an authorization check inside the server, from request decoded to response built.",
		Buckets: prometheus.ExponentialBuckets(5e-6, 2, 15), // 5µs .. ~82ms
	})
	hits := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "tokenwarden_authz_cache_hits_total",
		Help: "Token look-ups answered by the verified-token cache (no signature check).",
	})
	misses := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "tokenwarden_authz_cache_misses_total",
		Help: "Token look-ups the verified-token cache could not answer (signature checked).",
	})
	perToken := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tokenwarden_authz_token_requests_total",
		Help: "Checks per token, for the busiest tokens only; series of tokens that drop out are deleted.",
	}, []string{"token_id", "subject"})
	for _, c := range []prometheus.Collector{checks, duration, hits, misses, perToken} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	top := cfg.TopTokens
	if top == 0 {
		top = DefaultTopTokens
	}
	labels, err := usage.ParseTokenLabels(string(cfg.TokenLabels))
	if err != nil {
		return nil, err
	}
	if !labels.PerToken() {
		top = -1
	}
	m := &Metrics{
		checks:      make(map[policy.Reason]prometheus.Counter, len(policy.Reasons)),
		duration:    duration,
		cacheHits:   hits,
		cacheMisses: misses,
		tokens:      usage.NewTopN(perToken, top),
		labels:      labels,
	}
	for _, r := range policy.Reasons {
		decision := "deny"
		if r.Status() == 200 {
			decision = "allow"
		}
		m.checks[r] = checks.WithLabelValues(decision, string(r))
	}
	return m, nil
}

func (m *Metrics) observe(dec *policy.Decision, d time.Duration) {
	c, ok := m.checks[dec.Reason]
	if !ok {
		c = m.checks[policy.ReasonInternalError]
	}
	c.Inc()
	m.duration.Observe(d.Seconds())
	if dec.TokenID != "" && m.labels.PerToken() {
		m.tokens.Add(dec.TokenID, m.labels.Subject(dec.Subject), 1)
	}
}

// Run exports the per-token counts every interval (usage.DefaultInterval
// when zero) until ctx ends. Without it no per-token series appear.
func (m *Metrics) Run(ctx context.Context, interval time.Duration) {
	m.tokens.Run(ctx, interval)
}

// Flush exports the per-token counts now (tests, shutdown).
func (m *Metrics) Flush() { m.tokens.Flush() }

// CacheHit counts a check answered from a cached verification; the
// Decider calls it (Metrics is its policy.CacheStats).
func (m *Metrics) CacheHit() { m.cacheHits.Inc() }

// CacheMiss counts a check whose token signature was verified.
func (m *Metrics) CacheMiss() { m.cacheMisses.Inc() }

var _ policy.CacheStats = (*Metrics)(nil)
