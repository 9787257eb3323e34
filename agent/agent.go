// Package agent wires tokenwarden's node agent: New builds every part from
// a Config (store, keys, policy, replica of the store's state, audit log,
// admin API, ext_authz, xDS, kernel side), Run runs them as a flat list of
// named tasks until the context ends, and Close releases what New opened.
// The parts live in packages of their own; nothing here decides anything.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/tokenwarden/tokenwarden/agent/admin"
	"github.com/tokenwarden/tokenwarden/agent/admintoken"
	"github.com/tokenwarden/tokenwarden/agent/anomaly"
	"github.com/tokenwarden/tokenwarden/agent/audit"
	"github.com/tokenwarden/tokenwarden/agent/authz"
	"github.com/tokenwarden/tokenwarden/agent/freshness"
	"github.com/tokenwarden/tokenwarden/agent/issuer"
	"github.com/tokenwarden/tokenwarden/agent/kernel"
	"github.com/tokenwarden/tokenwarden/agent/listen"
	"github.com/tokenwarden/tokenwarden/agent/replica"
	"github.com/tokenwarden/tokenwarden/agent/revocation"
	"github.com/tokenwarden/tokenwarden/agent/revoke"
	"github.com/tokenwarden/tokenwarden/agent/rotation"
	"github.com/tokenwarden/tokenwarden/agent/scrape"
	"github.com/tokenwarden/tokenwarden/agent/snapshot"
	"github.com/tokenwarden/tokenwarden/agent/store"
	etcdstore "github.com/tokenwarden/tokenwarden/agent/store/etcd"
	"github.com/tokenwarden/tokenwarden/agent/usage"
	"github.com/tokenwarden/tokenwarden/bpf"
	"github.com/tokenwarden/tokenwarden/policy"
	"github.com/tokenwarden/tokenwarden/xds"
)

// Agent is a node agent: its parts, built by New.
type Agent struct {
	cfg      Config
	log      *slog.Logger
	registry *prometheus.Registry
	closers  []func() error

	store      store.Store
	audit      *audit.Log
	replica    *replica.Replica
	fresh      *freshness.Tracker // nil: a store with one node, always current
	issuer     *issuer.Issuer
	revoker    *revoke.Revoker
	cache      *revocation.Cache
	decider    *policy.Decider // the one holder of the policy in force
	use        *audit.UseRecorder
	kernel     *kernel.Kernel // nil without the kernel side
	anomaly    *anomaly.Detector
	rotation   *rotation.Scheduler
	leadership *rotation.Leadership
	authz      *authz.Server
	metrics    *authz.Metrics
	conns      *listen.Metrics  // connection limits of every listener
	scrape     *scrape.Bearer   // nil: /metrics takes no token
	tls        *listen.Reloader // nil without TLS
	admin      *admin.API
	xds        *xds.Server // nil without XDSAddr
	sidecars   policyPush  // a.xds, when there is one
	adminToken *admintoken.Keeper
	// offline is the local snapshot the agent started from, the store
	// being unreachable; snapshots keeps that file current (etcd only).
	offline   *snapshot.Snapshot
	snapshots *snapshot.Writer

	policyFile []byte // the policy file as New loaded it: the poller's baseline
	reloads    *prometheus.CounterVec
	generation prometheus.Gauge
	reloading  chan struct{}
	ready      atomic.Bool
}

// New validates cfg, then builds the agent: opens the store and audit log,
// loads the policy and keys, and loads the kernel side as cfg.BPF says.
func New(ctx context.Context, cfg Config) (_ *Agent, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	p, raw, err := LoadPolicy(cfg.PolicyPath, cfg.Env)
	if err != nil {
		return nil, err
	}
	a := &Agent{cfg: cfg, log: cfg.Logger, registry: prometheus.NewRegistry(), policyFile: raw, reloading: make(chan struct{}, 1)}
	defer func() {
		if err != nil {
			a.Close()
		}
	}()
	for _, w := range p.Warnings {
		a.log.Warn("policy", "problem", w.String())
	}
	var creds *xds.Credentials
	if cfg.XDSAddr != "" && cfg.XDSCredentials != "" {
		if creds, err = xds.LoadCredentials(cfg.XDSCredentials); err != nil {
			return nil, err
		}
	}
	if cfg.MetricsBearerFile != "" {
		if a.scrape, err = scrape.NewBearer(cfg.MetricsBearerFile, a.log, cfg.Now); err != nil {
			return nil, err
		}
	}
	kek, err := a.openData(ctx)
	if err != nil {
		return nil, err
	}
	if a.cache, err = revocation.NewCache(cfg.CacheSize); err != nil {
		return nil, err
	}
	if a.metrics, err = authz.NewMetrics(a.registry, authz.MetricsConfig{TopTokens: cfg.TopTokens, TokenLabels: usage.TokenLabels(cfg.MetricsTokenLabels)}); err != nil {
		return nil, err
	}
	if a.conns, err = listen.NewMetrics(a.registry); err != nil {
		return nil, err
	}
	if cfg.TLS.Enabled() {
		if a.tls, err = listen.NewReloader(cfg.TLS, a.registry, a.log); err != nil {
			return nil, err
		}
	}
	a.replica = replica.New(replica.Config{ReloadKeys: a.reloadKeys, Now: cfg.Now, Logger: cfg.Logger})
	var admit authz.Admitter
	var startKeys []store.Key // nil: read the store
	var confirmedAt time.Time
	if a.offline != nil {
		a.replica.Restore(a.offline.Rules)
		startKeys = append([]store.Key{}, a.offline.Keys...)
		confirmedAt = a.offline.TakenAt
	}
	if p, ok := a.store.(store.Progresser); ok {
		if a.fresh, err = freshness.New(freshness.Config{
			Confirm:      func(ctx context.Context) error { return a.replica.Confirm(ctx, p) },
			MaxStaleness: cfg.MaxStaleness, Action: freshness.Action(cfg.StaleAction), ConfirmedAt: confirmedAt, Logger: cfg.Logger,
		}); err != nil {
			return nil, err
		}
		admit = a.fresh
		a.snapshots = &snapshot.Writer{
			Path: filepath.Join(cfg.DataDir, snapshot.FileName), KEK: kek, Store: a.store, Prefix: etcdstore.NormalPrefix(cfg.EtcdPrefix),
			Changes: a.replica.Changes, Revision: a.replica.Revision, Now: cfg.Now, Logger: cfg.Logger,
		}
	}
	a.decider = policy.NewDecider(policy.DeciderConfig{
		Env: cfg.Env, Policy: p, Keys: policy.NewKeySet(nil), Cache: a.cache, CacheStats: a.metrics, Revocations: a.replica.Revocations(),
	})
	// The agent's own writers go through the replica's writer, so what
	// they revoke is enforced here before their call returns.
	writer := a.replica.Writer(a.store)
	if a.issuer, err = issuer.New(ctx, issuer.Config{
		Store: writer, KEK: kek, Env: cfg.Env, Policy: a.decider.Policy, Audit: a.audit, Keys: startKeys, Now: cfg.Now, Logger: cfg.Logger,
	}); err != nil {
		return nil, err
	}
	a.decider.SetKeys(a.issuer.KeySet())
	journal, err := revoke.OpenJournal(filepath.Join(cfg.DataDir, revoke.JournalFile))
	if err != nil {
		return nil, err
	}
	a.closers = append(a.closers, journal.Close)
	if a.revoker, err = revoke.New(revoke.Config{
		Store: a.issuer, Enforce: a.replica, Revocations: a.replica.Revocations(), Journal: journal,
		Now: cfg.Now, Logger: cfg.Logger,
	}); err != nil {
		return nil, err
	}
	a.use = audit.NewUseRecorder(audit.UseConfig{
		Log: a.audit, Allows: p.Doc.Audit.Allows, Interval: p.Doc.Audit.SummaryInterval.D(), Now: cfg.Now, Logger: cfg.Logger,
	})
	if err := audit.RegisterMetrics(a.registry, a.audit, a.use); err != nil {
		return nil, err
	}
	sentry, kstatus, err := kernel.Open(cfg.BPF, kernel.Attach{Interfaces: cfg.BPFInterfaces, Cgroup: cfg.BPFCgroup}, a.log)
	if err != nil {
		return nil, err
	}
	if sentry != nil {
		a.closers = append(a.closers, func() error {
			if err := sentry.Close(); err != nil && !errors.Is(err, bpf.ErrClosed) {
				return err
			}
			return nil
		})
	}
	if err := kernel.RegisterAttached(a.registry, kstatus); err != nil {
		return nil, err
	}
	if a.anomaly, err = anomaly.New(anomaly.Config{
		Policy: p.Doc.Anomaly, OnTrigger: a.onAnomaly, Registerer: a.registry, Now: cfg.Now,
	}); err != nil {
		return nil, err
	}
	if sentry != nil {
		if a.kernel, err = kernel.New(kernel.Config{
			Sentry: sentry, Tokens: a.replica, Audit: a.use, Requests: a.anomaly, TopTokens: cfg.TopTokens, TokenLabels: usage.TokenLabels(cfg.MetricsTokenLabels),
			Every: cfg.Timing.Kernel, Registerer: a.registry, Now: cfg.Now, Logger: cfg.Logger,
		}); err != nil {
			return nil, err
		}
	}
	if a.rotation, err = rotation.New(rotation.Config{
		Store: writer, Rotator: a.issuer, Policy: a.decider.Policy, Audit: a.audit, Now: cfg.Now,
		Registerer: a.registry, Logger: cfg.Logger,
	}); err != nil {
		return nil, err
	}
	if a.leadership, err = rotation.NewLeadership(a.rotation, a.registry); err != nil {
		return nil, err
	}
	if a.authz, err = authz.New(authz.Config{
		Decider: a.decider, Now: cfg.Now, StripAuthorization: cfg.StripAuthorization, ClientCertHeader: cfg.ClientCertHeader,
		Observer: authz.ObserverFunc(a.observeCheck), Metrics: a.metrics, ListenerMetrics: a.conns, Logger: cfg.Logger,
		Freshness: admit,
	}); err != nil {
		return nil, err
	}
	if a.admin, err = admin.New(admin.Config{
		Issuer: a.issuer, Revoker: a.revoker, Rotator: a.rotation, Store: writer, Audit: a.audit, AuditDir: filepath.Join(cfg.DataDir, auditDir), NodeName: a.cfg.NodeName,
		Decider: a.decider, Revocations: a.replica.Revocations(), Ready: a.readiness, Now: cfg.Now, Logger: cfg.Logger,
		AdminTokenRevoked: func(ctx context.Context) error { return a.adminToken.Ensure(ctx) },
	}); err != nil {
		return nil, err
	}
	if err := a.verifierEndpoints(); err != nil {
		return nil, err
	}
	if cfg.XDSAddr != "" {
		if a.xds, err = xds.New(xds.Config{
			AuthzAddress: cfg.XDSAuthzAddress, AppAddress: cfg.XDSAppAddress, AuthzTLS: cfg.XDSAuthzTLS,
			Credentials: creds, AllowUnauthenticated: cfg.XDSAllowUnauthenticated,
			Registerer: a.registry, ListenerMetrics: a.conns, Logger: a.log,
		}); err != nil {
			return nil, err
		}
		if err := a.xds.SetPolicy(p); err != nil {
			return nil, err
		}
		a.sidecars = a.xds
	}
	if a.adminToken, err = admintoken.New(admintoken.Config{
		Path: filepath.Join(cfg.DataDir, admintoken.FileName), Env: cfg.Env, Issuer: a.issuer, Revoker: a.revoker,
		Decider: a.decider, Revocations: a.replica.Revocations(), Now: cfg.Now, Logger: cfg.Logger,
	}); err != nil {
		return nil, err
	}
	a.reloads = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tokenwarden_policy_reload_total",
		Help: "Policy reloads, by result: ok, or refused (errors, a dropped environment, a failed push to the sidecars; the old policy stays).",
	}, []string{"result"})
	a.reloads.WithLabelValues("ok")
	a.reloads.WithLabelValues("refused")
	a.generation = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "tokenwarden_policy_generation",
		Help: "Policies put in force since start: 1 for the policy loaded at start, plus one per accepted reload.",
	})
	a.generation.Set(1)
	a.registry.MustRegister(
		a.reloads,
		a.generation,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		revocation.RulesGauge(a.replica.Revocations()),
		revocation.CacheGauge(a.cache),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tokenwarden_store_staleness_seconds",
			Help: "Age of this node's view of the store: time since it last confirmed it had applied every change (0 with the one-node store). Past --max-staleness the node is not ready and checks follow --stale-action.",
		}, func() float64 { return a.fresh.Staleness().Seconds() }),
	)
	return a, nil
}

// openData creates the data directory, loads (or creates) the
// key-encryption key and opens the store (state.go), then the audit log: the log keyed
// with the store's audit key and checked against the chain head this node
// last recorded in the store.
func (a *Agent) openData(ctx context.Context) (kek []byte, err error) {
	dir := a.cfg.DataDir
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create data dir: %w", err)
	}
	if st, err := os.Stat(dir); err == nil && st.Mode().Perm()&0o077 != 0 {
		a.log.Warn("data dir is open to group or others; run chmod 700 on it", "data_dir", dir, "mode", fmt.Sprintf("%04o", st.Mode().Perm()))
	}
	if kek, a.store, a.offline, err = openStateOrSnapshot(ctx, a.cfg); err != nil {
		return nil, err
	}
	a.closers = append(a.closers, a.store.Close)
	var keys audit.KeyStore = a.store
	if a.offline != nil {
		a.log.Warn("the store is unreachable: starting from the local snapshot, not ready until the store answers",
			"snapshot_taken_at", a.offline.TakenAt, "revision", a.offline.Revision, "rules", len(a.offline.Rules), "err", a.store.(*etcdstore.Store).Unreached())
		keys = a.offline
	}
	if a.cfg.NodeName == "" {
		if a.cfg.NodeName, err = DefaultNodeName(dir); err != nil {
			return nil, err
		}
	}
	key, err := audit.LoadKey(ctx, keys, kek, a.cfg.Now())
	if err != nil {
		return nil, err
	}
	if a.audit, err = audit.Open(audit.Config{
		Dir: filepath.Join(dir, auditDir), Key: key, MaxTotalBytes: a.cfg.AuditMaxBytes, Now: a.cfg.Now, Logger: a.cfg.Logger,
	}); err != nil {
		return nil, fmt.Errorf("open audit log: %w", err)
	}
	a.closers = append(a.closers, a.audit.Close)
	if a.offline != nil {
		a.log.Warn("audit log not checked against the head recorded in the store: the store is unreachable")
	} else if err := a.audit.CheckHead(ctx, a.store, a.cfg.NodeName); err != nil {
		a.log.Error("audit log does not reach the head recorded in the store", "node", a.cfg.NodeName, "err", err)
	}
	return kek, nil
}

// Decider is the decision maker every enforcement point uses; it holds the
// policy and keys in force.
func (a *Agent) Decider() *policy.Decider { return a.decider }

// Registry is the agent's Prometheus registry.
func (a *Agent) Registry() *prometheus.Registry { return a.registry }

func (a *Agent) readiness() error {
	if !a.ready.Load() {
		return errors.New("not serving (starting or shutting down)")
	}
	if err := a.replica.Gap(); err != nil {
		return err
	}
	return a.fresh.Err()
}

func (a *Agent) reloadKeys(ctx context.Context) error {
	if err := a.issuer.Reload(ctx); err != nil {
		return err
	}
	a.decider.SetKeys(a.issuer.KeySet())
	return nil
}

// Close releases what New opened: the kernel objects, the audit log and
// the store.
func (a *Agent) Close() error {
	var errs []error
	for i := len(a.closers) - 1; i >= 0; i-- {
		errs = append(errs, a.closers[i]())
	}
	a.closers = nil
	return errors.Join(errs...)
}
