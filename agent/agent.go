// Package agent wires tokenwarden's node agent: it builds every part from a
// Config (store, keys, policy, revocation set, audit log, admin API,
// ext_authz, xDS, kernel side), runs them until the context ends, and stops
// them in order.
package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tokenwarden/tokenwarden/agent/admin"
	"github.com/tokenwarden/tokenwarden/agent/audit"
	"github.com/tokenwarden/tokenwarden/agent/issuer"
	"github.com/tokenwarden/tokenwarden/agent/revocation"
	"github.com/tokenwarden/tokenwarden/agent/store"
	"github.com/tokenwarden/tokenwarden/agent/store/bolt"
	"github.com/tokenwarden/tokenwarden/policy"
)

// Config is everything the agent needs; cli fills it from flags.
type Config struct {
	DataDir    string
	PolicyPath string
	Env        string

	AdminAddr   string // admin API, /healthz, /readyz
	MetricsAddr string // Prometheus /metrics; "" disables

	CacheSize int // verified tokens remembered
	// OnReady, if set, is called once every listener is up.
	OnReady func(Ready)
	Logger  *slog.Logger
	Now     func() time.Time
}

// Ready tells an operator where the running agent can be reached.
type Ready struct {
	Env            string
	AdminAddr      string
	MetricsAddr    string
	AdminTokenFile string
	Listeners      map[string]string // name -> address of every other listener
}

// Defaults for Config fields left empty.
const (
	DefaultAdminAddr   = "127.0.0.1:9003"
	DefaultMetricsAddr = "127.0.0.1:9090"
	AdminTokenFile     = "admin.token"
	kekFile            = "kek"
	storeFile          = "tokenwarden.db"
	auditDir           = "audit"
	housekeepingEvery  = time.Minute
)

// Agent is a running node agent.
type Agent struct {
	cfg      Config
	log      *slog.Logger
	store    store.Store
	audit    *audit.Log
	issuer   *issuer.Issuer
	revoked  *revocation.Set
	cache    *revocation.Cache
	decider  *policy.Decider
	admin    *admin.API
	registry *prometheus.Registry

	policy   atomic.Pointer[policy.Policy]
	onPolicy []func(*policy.Policy) // parts that follow policy reloads
	reloadMu sync.Mutex
	ready    atomic.Bool
	closers  []func() error
}

// New builds an agent: opens the store and audit log, loads the policy and
// keys, fills the revocation set, and writes the admin token on first start.
func New(ctx context.Context, cfg Config) (_ *Agent, err error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.AdminAddr == "" {
		cfg.AdminAddr = DefaultAdminAddr
	}
	if cfg.DataDir == "" || cfg.PolicyPath == "" || cfg.Env == "" {
		return nil, errors.New("agent: --data-dir, --policy and --env are required")
	}
	a := &Agent{cfg: cfg, log: cfg.Logger, registry: prometheus.NewRegistry()}
	defer func() {
		if err != nil {
			a.Close()
		}
	}()
	p, err := loadPolicy(cfg.PolicyPath)
	if err != nil {
		return nil, err
	}
	if _, ok := p.Environment(cfg.Env); !ok {
		return nil, fmt.Errorf("environment %q is not in policy %s (it defines: %v)", cfg.Env, cfg.PolicyPath, envNames(p))
	}
	for _, w := range p.Warnings {
		a.log.Warn("policy", "problem", w.String())
	}
	a.policy.Store(p)

	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("create data dir: %w", err)
	}
	kek, err := store.LoadOrCreateKEK(filepath.Join(cfg.DataDir, kekFile))
	if err != nil {
		return nil, err
	}
	st, err := bolt.Open(filepath.Join(cfg.DataDir, storeFile))
	if err != nil {
		return nil, err
	}
	a.store = st
	a.closers = append(a.closers, st.Close)

	a.audit, err = audit.Open(audit.Config{Dir: filepath.Join(cfg.DataDir, auditDir), Now: cfg.Now, Logger: cfg.Logger})
	if err != nil {
		return nil, fmt.Errorf("open audit log: %w", err)
	}
	a.closers = append(a.closers, a.audit.Close)

	a.issuer, err = issuer.New(ctx, issuer.Config{
		Store: st, KEK: kek, Env: cfg.Env, Policy: a.policy.Load, Audit: a.audit, Now: cfg.Now, Logger: cfg.Logger,
	})
	if err != nil {
		return nil, err
	}
	a.revoked = revocation.NewSet()
	if a.cache, err = revocation.NewCache(cfg.CacheSize); err != nil {
		return nil, err
	}
	a.decider = policy.NewDecider(policy.DeciderConfig{
		Env: cfg.Env, Policy: p, Keys: a.issuer.KeySet(), Cache: a.cache, Revocations: a.revoked,
	})
	a.admin, err = admin.New(admin.Config{
		Issuer: a.issuer, Store: st, Audit: a.audit, AuditDir: filepath.Join(cfg.DataDir, auditDir),
		Decider: a.decider, Revocations: a.revoked, Ready: a.readiness, Now: cfg.Now, Logger: cfg.Logger,
	})
	if err != nil {
		return nil, err
	}
	a.registerMetrics()
	return a, nil
}

func envNames(p *policy.Policy) []string {
	var names []string
	for name := range p.Doc.Environments {
		names = append(names, name)
	}
	return names
}

func loadPolicy(path string) (*policy.Policy, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read policy: %w", err)
	}
	p, err := policy.Load(path, data)
	if err != nil {
		return nil, fmt.Errorf("policy %s has errors (run `tokenwarden policy check %s`):\n%w", path, path, err)
	}
	return p, nil
}

// Decider is the decision maker every enforcement point uses.
func (a *Agent) Decider() *policy.Decider { return a.decider }

// Registry is the agent's Prometheus registry.
func (a *Agent) Registry() *prometheus.Registry { return a.registry }

func (a *Agent) readiness() error {
	if !a.ready.Load() {
		return errors.New("starting")
	}
	return nil
}

func (a *Agent) registerMetrics() {
	a.registry.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tokenwarden_revocation_rules", Help: "Revocation rules held in memory.",
		}, func() float64 { return float64(a.revoked.Len()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tokenwarden_token_cache_entries", Help: "Verified tokens held in the LRU.",
		}, func() float64 { return float64(a.cache.Len()) }),
	)
}

// Reload re-reads the policy file. A policy with errors is refused and the
// one in force stays.
func (a *Agent) Reload() error {
	a.reloadMu.Lock()
	defer a.reloadMu.Unlock()
	p, err := loadPolicy(a.cfg.PolicyPath)
	if err != nil {
		return err
	}
	if _, ok := p.Environment(a.cfg.Env); !ok {
		return fmt.Errorf("reloaded policy drops environment %q; keeping the old policy", a.cfg.Env)
	}
	a.policy.Store(p)
	a.decider.SetPolicy(p)
	a.cache.Purge()
	for _, f := range a.onPolicy {
		f(p)
	}
	for _, w := range p.Warnings {
		a.log.Warn("policy", "problem", w.String())
	}
	a.log.Info("policy reloaded", "path", a.cfg.PolicyPath, "services", len(p.ServiceNames()), "warnings", len(p.Warnings))
	return nil
}

// Run serves until ctx ends, then shuts down gracefully.
func (a *Agent) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if err := a.syncRevocations(ctx); err != nil {
		return err
	}
	tokenFile, err := a.ensureAdminToken(ctx)
	if err != nil {
		return err
	}

	var servers []*http.Server
	adminLis, err := net.Listen("tcp", a.cfg.AdminAddr)
	if err != nil {
		return fmt.Errorf("admin listener %s: %w", a.cfg.AdminAddr, err)
	}
	servers = append(servers, &http.Server{Handler: a.admin, ReadHeaderTimeout: 10 * time.Second})
	listeners := []net.Listener{adminLis}
	metricsAddr := ""
	if a.cfg.MetricsAddr != "" {
		lis, err := net.Listen("tcp", a.cfg.MetricsAddr)
		if err != nil {
			adminLis.Close()
			return fmt.Errorf("metrics listener %s: %w", a.cfg.MetricsAddr, err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(a.registry, promhttp.HandlerOpts{Registry: a.registry}))
		metricsAddr = lis.Addr().String()
		servers = append(servers, &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second})
		listeners = append(listeners, lis)
	}

	errc := make(chan error, len(servers)+1)
	var wg sync.WaitGroup
	for i, srv := range servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := srv.Serve(listeners[i]); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- err
			}
		}()
	}
	wg.Add(2)
	go func() {
		defer wg.Done()
		a.housekeeping(ctx)
	}()
	go func() {
		defer wg.Done()
		a.watchPolicyFile(ctx)
	}()

	a.ready.Store(true)
	if a.cfg.OnReady != nil {
		a.cfg.OnReady(Ready{Env: a.cfg.Env, AdminAddr: adminLis.Addr().String(), MetricsAddr: metricsAddr, AdminTokenFile: tokenFile, Listeners: map[string]string{}})
	}
	a.log.Info("tokenwarden agent ready",
		"env", a.cfg.Env, "admin", adminLis.Addr().String(), "metrics", metricsAddr,
		"admin_token_file", tokenFile, "policy", a.cfg.PolicyPath)

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
	}
	a.ready.Store(false)
	a.log.Info("shutting down")
	shutdownCtx, stop := context.WithTimeout(context.Background(), 10*time.Second)
	defer stop()
	for _, srv := range servers {
		srv.Shutdown(shutdownCtx)
	}
	cancel()
	wg.Wait()
	return runErr
}

// syncRevocations loads every rule into the set, then follows the store so
// a revocation made anywhere is enforced here.
func (a *Agent) syncRevocations(ctx context.Context) error {
	events, err := a.store.Watch(ctx)
	if err != nil {
		return fmt.Errorf("watch store: %w", err)
	}
	if err := a.loadRevocations(ctx); err != nil {
		return err
	}
	go a.follow(ctx, events)
	return nil
}

func (a *Agent) loadRevocations(ctx context.Context) error {
	rules, err := a.store.Revocations(ctx)
	if err != nil {
		return fmt.Errorf("load revocations: %w", err)
	}
	for _, r := range rules {
		a.revoked.Add(r)
	}
	return nil
}

func (a *Agent) follow(ctx context.Context, events <-chan store.Event) {
	for {
		for ev := range events {
			a.apply(ctx, ev)
		}
		if ctx.Err() != nil {
			return
		}
		// Dropped as a slow watcher: watch again and reload, so nothing is
		// missed (applying a rule twice is harmless).
		a.log.Warn("store watch interrupted; reloading state")
		for {
			var err error
			if events, err = a.store.Watch(ctx); err == nil {
				if err = a.loadRevocations(ctx); err == nil {
					if err = a.reloadKeys(ctx); err == nil {
						break
					}
				}
			}
			if ctx.Err() != nil {
				return
			}
			a.log.Error("reload after watch interruption", "err", err)
			time.Sleep(time.Second)
		}
	}
}

func (a *Agent) apply(ctx context.Context, ev store.Event) {
	switch ev.Kind {
	case store.EventRevocation:
		if ev.Deleted {
			a.revoked.Remove(*ev.Revocation)
		} else {
			a.revoked.Add(*ev.Revocation)
		}
	case store.EventKey:
		if err := a.reloadKeys(ctx); err != nil {
			a.log.Error("reload signing keys", "err", err)
		}
	}
}

func (a *Agent) reloadKeys(ctx context.Context) error {
	if err := a.issuer.Reload(ctx); err != nil {
		return err
	}
	a.decider.SetKeys(a.issuer.KeySet())
	return nil
}

func (a *Agent) housekeeping(ctx context.Context) {
	t := time.NewTicker(housekeepingEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			now := a.cfg.Now()
			rules := a.revoked.Prune(now)
			tokens := a.cache.Prune(now)
			if rules+tokens > 0 {
				a.log.Debug("pruned", "revocation_rules", rules, "cached_tokens", tokens)
			}
			if _, err := a.ensureAdminToken(ctx); err != nil {
				a.log.Error("refresh admin token", "err", err)
			}
		}
	}
}

// policyPollEvery is how often the policy file is checked for changes. A
// poll of the content (not inotify) also sees Kubernetes ConfigMap updates,
// which swap a symlink rather than write the file.
const policyPollEvery = 2 * time.Second

// watchPolicyFile reloads the policy when the file's content changes.
func (a *Agent) watchPolicyFile(ctx context.Context) {
	last, _ := os.ReadFile(a.cfg.PolicyPath)
	t := time.NewTicker(policyPollEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			cur, err := os.ReadFile(a.cfg.PolicyPath)
			if err != nil || bytes.Equal(cur, last) {
				continue
			}
			last = cur
			if err := a.Reload(); err != nil {
				a.log.Error("policy file changed but was refused; the old policy stays in force", "err", err)
			}
		}
	}
}

// Close releases the store and the audit log.
func (a *Agent) Close() error {
	var errs []error
	for i := len(a.closers) - 1; i >= 0; i-- {
		errs = append(errs, a.closers[i]())
	}
	a.closers = nil
	return errors.Join(errs...)
}
