// Package rotation keeps tokens fresh without a human: it issues successors
// of tokens whose class sets rotate_after when they come due, delivers them
// to the class's sinks (an atomically replaced file, a signed webhook), warns
// before tokens that will not be rotated expire, and records each expiry.
package rotation

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenwarden/tokenwarden/agent/audit"
	"github.com/tokenwarden/tokenwarden/agent/issuer"
	"github.com/tokenwarden/tokenwarden/agent/store"
	"github.com/tokenwarden/tokenwarden/policy"
)

// Triggers, the trigger label of tokenwarden_rotations_total.
const (
	TriggerSchedule = "schedule"
	TriggerManual   = "manual"
)

const (
	resultOK    = "ok"
	resultError = "error"
)

const (
	// DefaultInterval is how often Run scans the tokens. Rotation and expiry
	// are scheduled in hours; half a minute of lateness does not matter.
	DefaultInterval = 30 * time.Second
	// The default expiry warning is the smaller of a tenth of the token's
	// lifetime and an hour: an hour's notice for a day-long token, six
	// minutes for an hour-long one (which is likely re-issued by its owner).
	expiryWarningFraction = 0.1
	expiryWarningMax      = time.Hour
	// deliveryTimeout bounds delivering one successor to all its sinks.
	deliveryTimeout = 2 * time.Minute
	// maxRetryDelay caps the wait before a failed scheduled rotation is
	// tried again; the wait starts at Interval and doubles.
	maxRetryDelay = time.Hour
)

// ErrDelivery is wrapped by Rotate's error when the successor was issued but
// at least one sink failed; the successor is returned all the same.
var ErrDelivery = errors.New("successor issued but not delivered")

// Rotator issues a successor of a token; *issuer.Issuer implements it.
type Rotator interface {
	Rotate(ctx context.Context, id, actor string) (issuer.Issued, error)
}

var _ Rotator = (*issuer.Issuer)(nil)

// Config configures a Scheduler.
type Config struct {
	Store   store.Store
	Rotator Rotator
	Policy  func() *policy.Policy // the policy in force (reloads swap it)
	Audit   issuer.Auditor
	Now     func() time.Time // nil means time.Now
	// Interval is how often Run ticks (DefaultInterval when zero).
	Interval time.Duration
	// ExpiryWarning is how long before expiry a token that will not be
	// rotated is reported. Zero means the smaller of 10% of the token's
	// lifetime and one hour.
	ExpiryWarning time.Duration
	Registerer    prometheus.Registerer // nil registers no metrics
	Logger        *slog.Logger          // nil means slog.Default()
	// HTTPClient sends webhook deliveries; nil means a 10s-timeout client
	// that does not follow redirects.
	HTTPClient *http.Client
	// WebhookMaxAttempts and WebhookBackoff override the webhook retry
	// defaults (DefaultMaxAttempts, DefaultBackoff) when non-zero.
	WebhookMaxAttempts int
	WebhookBackoff     time.Duration
}

// Scheduler rotates due tokens, delivers successors and audits expiry.
type Scheduler struct {
	cfg Config
	log *slog.Logger

	// rotateMu admits one rotation, or one record update, at a time:
	// issuer.Rotate's "no successor yet" check and the read-modify-write of
	// the expiry flags are not atomic in the store.
	rotateMu sync.Mutex

	tickMu sync.Mutex            // serialises Tick; guards retry
	retry  map[string]retryState // token id -> failed scheduled rotation

	rotations  map[string]map[string]prometheus.Counter // trigger -> result
	deliveries map[string]map[string]prometheus.Counter // sink kind -> result
	expiring   prometheus.Gauge
}

// retryState delays the next try of a scheduled rotation that failed, so a
// token that cannot be rotated (its class was removed from the environment,
// say) is not retried and audited every tick.
type retryState struct {
	failures int
	next     time.Time
}

// New builds a Scheduler and registers its metrics.
func New(cfg Config) (*Scheduler, error) {
	if cfg.Store == nil || cfg.Rotator == nil || cfg.Policy == nil || cfg.Audit == nil {
		return nil, errors.New("rotation: Store, Rotator, Policy and Audit are required")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s := &Scheduler{
		cfg: cfg, log: cfg.Logger, retry: map[string]retryState{},
		rotations: map[string]map[string]prometheus.Counter{}, deliveries: map[string]map[string]prometheus.Counter{},
	}
	rotations := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tokenwarden_rotations_total",
		Help: "Token rotations, by trigger (schedule, manual) and result (ok, error).",
	}, []string{"trigger", "result"})
	deliveries := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tokenwarden_rotation_deliveries_total",
		Help: "Deliveries of successor tokens, by sink (file, webhook) and result (ok, error).",
	}, []string{"sink", "result"})
	s.expiring = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "tokenwarden_tokens_expiring",
		Help: "Live tokens within their expiry warning that have no successor and will not be rotated in time.",
	})
	// Every series exists from the start, so alerts on increase() see the
	// first failure.
	for _, trigger := range []string{TriggerSchedule, TriggerManual} {
		s.rotations[trigger] = map[string]prometheus.Counter{}
		for _, result := range []string{resultOK, resultError} {
			s.rotations[trigger][result] = rotations.WithLabelValues(trigger, result)
		}
	}
	for _, kind := range []string{KindFile, KindWebhook} {
		s.deliveries[kind] = map[string]prometheus.Counter{}
		for _, result := range []string{resultOK, resultError} {
			s.deliveries[kind][result] = deliveries.WithLabelValues(kind, result)
		}
	}
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{rotations, deliveries, s.expiring} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("rotation: register metrics: %w", err)
			}
		}
	}
	return s, nil
}

// Run ticks at once and then every Interval until ctx ends.
func (s *Scheduler) Run(ctx context.Context) {
	t := time.NewTicker(s.cfg.Interval)
	defer t.Stop()
	for {
		if err := s.Tick(ctx); err != nil && ctx.Err() == nil {
			s.log.Error("rotation tick", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Tick scans the stored tokens once: it rotates those due, warns about those
// about to expire without a successor, and records those that expired. It
// carries on past a failing token and returns every failure joined.
func (s *Scheduler) Tick(ctx context.Context) error {
	s.tickMu.Lock()
	defer s.tickMu.Unlock()
	now := s.cfg.Now()
	p := s.cfg.Policy()
	// Expired records are included on purpose: their expiry is audited here.
	recs, err := s.cfg.Store.Tokens(ctx, store.TokenFilter{})
	if err != nil {
		return fmt.Errorf("rotation: list tokens: %w", err)
	}
	var errs []error
	expiring := 0
	due := map[string]bool{}
	for _, r := range recs {
		if err := ctx.Err(); err != nil {
			return err
		}
		if !now.Before(r.ExpiresAt) {
			if !r.ExpiryRecorded {
				errs = append(errs, s.recordExpiry(ctx, r))
			}
			continue
		}
		if r.Status != store.TokenActive || r.Successor != "" {
			continue // rotated or revoked: its end is already arranged
		}
		if rotationDue(p, r, now) {
			due[r.ID] = true
			rotated, err := s.rotateDue(ctx, r, now)
			errs = append(errs, err)
			if rotated {
				continue
			}
		}
		if now.Before(r.ExpiresAt.Add(-s.warnBefore(r))) {
			continue
		}
		expiring++
		if !r.ExpiryWarned {
			errs = append(errs, s.warnExpiring(ctx, r, now))
		}
	}
	for id := range s.retry {
		if !due[id] {
			delete(s.retry, id)
		}
	}
	s.expiring.Set(float64(expiring))
	return errors.Join(errs...)
}

// rotationDue reports whether an active token without a successor has
// reached its class's rotate_after.
func rotationDue(p *policy.Policy, r store.TokenRecord, now time.Time) bool {
	c, ok := p.Class(r.Class)
	return ok && c.RotateAfter > 0 && !now.Before(r.IssuedAt.Add(c.RotateAfter.D()))
}

// rotateDue rotates a due token unless an earlier failure says to wait.
// rotated is true when a successor now exists (even if a sink failed).
func (s *Scheduler) rotateDue(ctx context.Context, r store.TokenRecord, now time.Time) (rotated bool, err error) {
	if rs, ok := s.retry[r.ID]; ok && now.Before(rs.next) {
		return false, nil
	}
	_, err = s.rotate(ctx, r.ID, audit.ActorSystem, TriggerSchedule)
	if err == nil || errors.Is(err, ErrDelivery) {
		delete(s.retry, r.ID)
		return true, err
	}
	rs := s.retry[r.ID]
	rs.failures++
	rs.next = now.Add(min(s.cfg.Interval<<min(rs.failures-1, 16), maxRetryDelay))
	s.retry[r.ID] = rs
	s.appendAudit(audit.Record{
		Action: audit.ActionRotationFailed, Actor: audit.ActorSystem, TokenID: r.ID,
		Subject: r.Subject, Tenant: r.Tenant, Reason: "schedule",
		Details: audit.Details(map[string]any{"error": err.Error(), "failures": rs.failures, "next_attempt": rs.next.UTC()}),
	})
	return false, err
}

// Rotate issues a successor of token id on behalf of actor and delivers it
// to its class's sinks: the admin API's manual rotation, through the same
// path as the schedule. When the successor was issued but a sink failed,
// the successor is returned with an error wrapping ErrDelivery, so the
// caller can still hand the token to the operator.
func (s *Scheduler) Rotate(ctx context.Context, id, actor string) (issuer.Issued, error) {
	return s.rotate(ctx, id, actor, TriggerManual)
}

func (s *Scheduler) rotate(ctx context.Context, id, actor, trigger string) (issuer.Issued, error) {
	s.rotateMu.Lock()
	issued, err := s.cfg.Rotator.Rotate(ctx, id, actor)
	s.rotateMu.Unlock()
	if err != nil {
		s.rotations[trigger][resultError].Inc()
		return issuer.Issued{}, fmt.Errorf("rotate: %w", err) // err names the token
	}
	s.rotations[trigger][resultOK].Inc()
	s.log.Info("token rotated", "token_id", id, "successor", issued.Record.ID, "trigger", trigger, "actor", actor)
	// The successor exists now and its predecessor's days are numbered:
	// deliver it even if the caller (an admin request) goes away meanwhile.
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), deliveryTimeout)
	defer cancel()
	return issued, s.deliver(dctx, id, issued, actor)
}

// deliver hands the successor to every sink of its class. Each sink is tried
// even if another failed; every failure is audited and counted.
func (s *Scheduler) deliver(ctx context.Context, predecessor string, issued issuer.Issued, actor string) error {
	rec := issued.Record
	c, ok := s.cfg.Policy().Class(rec.Class)
	if !ok || c.Delivery == nil {
		return nil
	}
	d := Delivery{
		TokenID: rec.ID, Predecessor: predecessor, Subject: rec.Subject, Class: rec.Class,
		Tenant: rec.Tenant, ExpiresAt: rec.ExpiresAt, Token: issued.Token,
	}
	var failed []error
	for _, b := range buildSinks(c.Delivery) {
		err := b.err
		if err == nil {
			if w, ok := b.sink.(*WebhookSink); ok {
				w.Client, w.MaxAttempts, w.Backoff, w.Now = s.cfg.HTTPClient, s.cfg.WebhookMaxAttempts, s.cfg.WebhookBackoff, s.cfg.Now
			}
			err = b.sink.Deliver(ctx, d)
		}
		if err == nil {
			s.deliveries[b.kind][resultOK].Inc()
			s.log.Info("successor delivered", "token_id", rec.ID, "sink", b.kind)
			continue
		}
		s.deliveries[b.kind][resultError].Inc()
		s.log.Error("successor not delivered", "token_id", rec.ID, "predecessor", predecessor, "sink", b.kind, "err", err)
		s.appendAudit(audit.Record{
			Action: audit.ActionDeliveryFailed, Actor: actor, TokenID: rec.ID, Subject: rec.Subject, Tenant: rec.Tenant,
			Reason: b.kind, Details: audit.Details(map[string]any{"sink": b.kind, "error": err.Error(), "predecessor": predecessor}),
		})
		failed = append(failed, fmt.Errorf("%s sink: %w", b.kind, err))
	}
	if len(failed) > 0 {
		return fmt.Errorf("token %s: %w: %w", rec.ID, ErrDelivery, errors.Join(failed...))
	}
	return nil
}

// warnBefore is how long before its expiry a token is reported.
func (s *Scheduler) warnBefore(r store.TokenRecord) time.Duration {
	if s.cfg.ExpiryWarning > 0 {
		return s.cfg.ExpiryWarning
	}
	life := r.ExpiresAt.Sub(r.IssuedAt)
	return min(time.Duration(float64(life)*expiryWarningFraction), expiryWarningMax)
}

func (s *Scheduler) warnExpiring(ctx context.Context, r store.TokenRecord, now time.Time) error {
	if _, err := s.cfg.Audit.Append(audit.Record{
		Action: audit.ActionTokenExpiring, Actor: audit.ActorSystem, TokenID: r.ID, Subject: r.Subject, Tenant: r.Tenant,
		Details: audit.Details(map[string]any{"class": r.Class, "expires_at": r.ExpiresAt.UTC(), "remaining": r.ExpiresAt.Sub(now).Round(time.Second).String()}),
	}); err != nil {
		return fmt.Errorf("audit expiring token %s: %w", r.ID, err)
	}
	return s.mark(ctx, r.ID, func(r *store.TokenRecord) { r.ExpiryWarned = true })
}

func (s *Scheduler) recordExpiry(ctx context.Context, r store.TokenRecord) error {
	if _, err := s.cfg.Audit.Append(audit.Record{
		Action: audit.ActionTokenExpire, Actor: audit.ActorSystem, TokenID: r.ID, Subject: r.Subject, Tenant: r.Tenant,
		Details: audit.Details(map[string]any{"class": r.Class, "expired_at": r.ExpiresAt.UTC(), "status": r.Status}),
	}); err != nil {
		return fmt.Errorf("audit expiry of token %s: %w", r.ID, err)
	}
	return s.mark(ctx, r.ID, func(r *store.TokenRecord) { r.ExpiryRecorded = true })
}

// mark sets a flag on the stored record. It re-reads the record first so a
// rotation or revocation written since the scan is not overwritten. The
// audit record comes before the flag: a crash in between repeats the record
// rather than losing it.
func (s *Scheduler) mark(ctx context.Context, id string, set func(*store.TokenRecord)) error {
	s.rotateMu.Lock()
	defer s.rotateMu.Unlock()
	r, err := s.cfg.Store.Token(ctx, id)
	if err != nil {
		return fmt.Errorf("re-read token %s: %w", id, err)
	}
	set(&r)
	if err := s.cfg.Store.PutToken(ctx, r); err != nil {
		return fmt.Errorf("update token %s: %w", id, err)
	}
	return nil
}

// appendAudit records a failure. Failing to audit a failure is logged: the
// caller is already returning the original error.
func (s *Scheduler) appendAudit(r audit.Record) {
	if _, err := s.cfg.Audit.Append(r); err != nil {
		s.log.Error("audit", "action", r.Action, "token_id", r.TokenID, "err", err)
	}
}
