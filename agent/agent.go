// Package agent wires tokenwarden's node agent: it builds every part from a
// Config (store, keys, policy, revocation set, audit log, admin API,
// ext_authz, xDS, kernel side), runs them until the context ends, and stops
// them in order.
package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tokenwarden/tokenwarden/agent/admin"
	"github.com/tokenwarden/tokenwarden/agent/anomaly"
	"github.com/tokenwarden/tokenwarden/agent/audit"
	"github.com/tokenwarden/tokenwarden/agent/authz"
	"github.com/tokenwarden/tokenwarden/agent/issuer"
	"github.com/tokenwarden/tokenwarden/agent/listen"
	"github.com/tokenwarden/tokenwarden/agent/revocation"
	"github.com/tokenwarden/tokenwarden/agent/rotation"
	"github.com/tokenwarden/tokenwarden/agent/store"
	"github.com/tokenwarden/tokenwarden/agent/store/bolt"
	etcdstore "github.com/tokenwarden/tokenwarden/agent/store/etcd"
	"github.com/tokenwarden/tokenwarden/policy"
	"github.com/tokenwarden/tokenwarden/xds"
)

// Config is everything the agent needs; cli fills it from flags.
type Config struct {
	DataDir    string
	PolicyPath string
	Env        string

	AdminAddr   string // admin API, /healthz, /readyz
	MetricsAddr string // Prometheus /metrics; "" disables

	AuthzGRPCAddr string // ext_authz gRPC: host:port or unix socket path
	AuthzHTTPAddr string // ext_authz HTTP mode (Envoy HTTP, nginx, Caddy)
	XDSAddr       string // ADS for the node's sidecars
	// XDSAuthzAddress is the ext_authz address as sidecars reach it
	// (default AuthzGRPCAddr); XDSAppAddress is the application behind
	// each sidecar (default 127.0.0.1:8080).
	XDSAuthzAddress string
	XDSAppAddress   string
	// XDSCredentials is the file of sidecar credentials that decide each
	// sidecar's service (docs/xds.md); without it every xDS stream is
	// refused, unless XDSAllowUnauthenticated (development only).
	XDSCredentials          string
	XDSAllowUnauthenticated bool
	// StripAuthorization removes Authorization from allowed requests
	// before the application sees them (the kernel side then cannot count
	// them where the application receives them).
	StripAuthorization bool
	// ClientCertHeader is authz.Config.ClientCertHeader: where HTTP mode
	// reads the peer's workload identity; "" reads none.
	ClientCertHeader string
	// Connections bounds each enforcement listener (ext_authz, xDS); zero
	// fields are derived from RLIMIT_NOFILE (see listen.NewPlan).
	Connections listen.Limits

	BPF           string   // BPFAuto, BPFRequired or BPFOff
	BPFInterfaces []string // TCX attach points
	BPFCgroup     string   // cgroup_skb attach point

	// StoreBackend is StoreBolt (one file in DataDir, the default) or
	// StoreEtcd (many nodes share EtcdEndpoints; a revocation made on any
	// node is enforced on all). The KEK, admin token and audit log stay in
	// DataDir on each node; every node sharing an etcd needs the same KEK
	// file to sign.
	StoreBackend  string
	EtcdEndpoints []string
	EtcdPrefix    string

	// NodeName names this node's audit chain head in the store (default:
	// DefaultNodeName). Nodes sharing a store need distinct names.
	NodeName string
	// AuditMaxBytes is the audit log's size budget (default
	// audit.DefaultMaxTotalBytes); the oldest files go beyond it.
	AuditMaxBytes int64

	CacheSize int // verified tokens remembered
	TopTokens int // per-token metric series kept (busiest tokens)
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

// Store backends.
const (
	StoreBolt = "bolt"
	StoreEtcd = "etcd"
)

// openStore opens the configured backend.
func openStore(ctx context.Context, cfg Config) (store.Store, error) {
	switch cfg.StoreBackend {
	case "", StoreBolt:
		return bolt.Open(filepath.Join(cfg.DataDir, storeFile))
	case StoreEtcd:
		if len(cfg.EtcdEndpoints) == 0 {
			return nil, errors.New("--store=etcd needs --etcd-endpoints (e.g. http://10.0.0.5:2379)")
		}
		return etcdstore.Open(ctx, etcdstore.Config{Endpoints: cfg.EtcdEndpoints, Prefix: cfg.EtcdPrefix})
	}
	return nil, fmt.Errorf("--store %q: want bolt or etcd", cfg.StoreBackend)
}

// Defaults for Config fields left empty.
const (
	DefaultAdminAddr   = "127.0.0.1:9003"
	DefaultMetricsAddr = "127.0.0.1:9090"
	DefaultAuthzGRPC   = "127.0.0.1:9001"
	DefaultAuthzHTTP   = "127.0.0.1:9002"
	DefaultXDSAddr     = "127.0.0.1:18000"
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
	conns    *listen.Metrics

	authz        *authz.Server
	authzMetrics *authz.Metrics
	use          *audit.UseRecorder
	tokens       *tokenIndex
	kernel       *kernel
	anomaly      *anomaly.Detector
	rotation     *rotation.Scheduler
	xds          *xds.Server

	policy atomic.Pointer[policy.Policy]
	// loadedPolicy is the policy file's content as New read it: the
	// file watcher's starting point.
	loadedPolicy []byte
	onPolicy     []func(*policy.Policy) // parts that follow policy reloads
	reloadMu     sync.Mutex
	ready        atomic.Bool
	// watchBroken is set while the store's Watch is down and being
	// re-established: revocations made elsewhere may not be enforced yet,
	// and /readyz says so.
	watchBroken atomic.Bool
	// runCtx ends when Run starts shutting down; background work started
	// from callbacks (anomaly revocation retries) follows it.
	runCtx         atomic.Pointer[context.Context]
	bg             sync.WaitGroup
	lastStorePrune time.Time   // touched by housekeeping only
	rotationLeader atomic.Bool // this agent runs the rotation schedule
	closers        []func() error
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
	p, raw, err := loadPolicy(cfg.PolicyPath)
	if err != nil {
		return nil, err
	}
	a.loadedPolicy = raw
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
	if st, err := os.Stat(cfg.DataDir); err == nil && st.Mode().Perm()&0o077 != 0 {
		a.log.Warn("data dir is open to group or others; run chmod 700 on it",
			"data_dir", cfg.DataDir, "mode", fmt.Sprintf("%04o", st.Mode().Perm()))
	}
	kek, err := store.LoadOrCreateKEK(filepath.Join(cfg.DataDir, kekFile))
	if err != nil {
		return nil, err
	}
	st, err := openStore(ctx, cfg)
	if err != nil {
		return nil, err
	}
	a.store = st
	a.closers = append(a.closers, st.Close)

	if err := a.openAudit(ctx, kek); err != nil {
		return nil, err
	}

	a.revoked = revocation.NewSet()
	a.tokens = newTokenIndex()
	// The agent's own writers go through enforcingStore, so what they
	// revoke is enforced here before their call returns.
	est := enforcingStore{Store: st, a: a}
	a.issuer, err = issuer.New(ctx, issuer.Config{
		Store: est, KEK: kek, Env: cfg.Env, Policy: a.policy.Load, Audit: a.audit, Now: cfg.Now, Logger: cfg.Logger,
	})
	if err != nil {
		return nil, err
	}
	if a.cache, err = revocation.NewCache(cfg.CacheSize); err != nil {
		return nil, err
	}
	a.registerMetrics()
	if a.conns, err = listen.NewMetrics(a.registry); err != nil {
		return nil, err
	}
	if a.authzMetrics, err = authz.NewMetrics(a.registry, authz.MetricsConfig{TopTokens: cfg.TopTokens}); err != nil {
		return nil, err
	}
	a.decider = policy.NewDecider(policy.DeciderConfig{
		Env: cfg.Env, Policy: p, Keys: a.issuer.KeySet(), Cache: a.authzMetrics.CountingCache(a.cache), Revocations: a.revoked,
	})
	a.use = audit.NewUseRecorder(audit.UseConfig{
		Log: a.audit, Allows: p.Doc.Audit.Allows, Interval: p.Doc.Audit.SummaryInterval.D(), Now: cfg.Now, Logger: cfg.Logger,
	})
	if err := audit.RegisterMetrics(a.registry, a.audit, a.use); err != nil {
		return nil, err
	}
	if a.kernel, err = a.startKernel(); err != nil {
		return nil, err
	}
	if a.anomaly, err = anomaly.New(anomaly.Config{
		Policy: p.Doc.Anomaly, OnTrigger: a.onAnomaly, Registerer: a.registry, Now: cfg.Now,
	}); err != nil {
		return nil, err
	}
	if a.rotation, err = rotation.New(rotation.Config{
		Store: est, Rotator: a.issuer, Policy: a.policy.Load, Audit: a.audit, Now: cfg.Now,
		Registerer: a.registry, Logger: cfg.Logger,
	}); err != nil {
		return nil, err
	}
	if a.authz, err = authz.New(authz.Config{
		Decider: a.decider, Now: cfg.Now, StripAuthorization: cfg.StripAuthorization, ClientCertHeader: cfg.ClientCertHeader,
		Observer: authz.ObserverFunc(a.observeCheck), Metrics: a.authzMetrics, ListenerMetrics: a.conns, Logger: cfg.Logger,
	}); err != nil {
		return nil, err
	}
	a.admin, err = admin.New(admin.Config{
		Issuer: a.issuer, Rotator: a.rotation, Store: est, Audit: a.audit, AuditDir: filepath.Join(cfg.DataDir, auditDir), NodeName: a.cfg.NodeName,
		Decider: a.decider, Revocations: a.revoked, Ready: a.readiness, Now: cfg.Now, Logger: cfg.Logger,
	})
	if err != nil {
		return nil, err
	}
	if err := a.startXDS(); err != nil {
		return nil, err
	}
	a.onPolicy = append(a.onPolicy,
		func(p *policy.Policy) { a.anomaly.SetPolicy(p.Doc.Anomaly) },
		func(p *policy.Policy) { a.use.SetAllows(p.Doc.Audit.Allows) },
	)
	return a, nil
}

// openAudit opens the audit log keyed with the store's audit key and checks
// it against the chain head this node last recorded in the store.
func (a *Agent) openAudit(ctx context.Context, kek []byte) error {
	if a.cfg.NodeName == "" {
		name, err := DefaultNodeName(a.cfg.DataDir)
		if err != nil {
			return err
		}
		a.cfg.NodeName = name
	}
	key, err := audit.LoadKey(ctx, a.store, kek, a.cfg.Now())
	if err != nil {
		return err
	}
	a.audit, err = audit.Open(audit.Config{
		Dir: filepath.Join(a.cfg.DataDir, auditDir), Key: key, MaxTotalBytes: a.cfg.AuditMaxBytes, Now: a.cfg.Now, Logger: a.cfg.Logger,
	})
	if err != nil {
		return fmt.Errorf("open audit log: %w", err)
	}
	a.closers = append(a.closers, a.audit.Close)
	if err := a.audit.CheckHead(ctx, a.store, a.cfg.NodeName); err != nil {
		a.log.Error("audit log does not reach the head recorded in the store", "node", a.cfg.NodeName, "err", err)
	}
	return nil
}

// DefaultNodeName names the audit chain of the agent using dataDir when no
// node name is given: the host name and a digest of the data dir's absolute
// path, so two agents on one host (tests, a mesh on a laptop) keep apart.
func DefaultNodeName(dataDir string) (string, error) {
	host, err := os.Hostname()
	if err == nil {
		dataDir, err = filepath.Abs(dataDir)
	}
	if err != nil {
		return "", fmt.Errorf("node name: %w; pass --node-name", err)
	}
	sum := sha256.Sum256([]byte(dataDir))
	return fmt.Sprintf("%s-%x", host, sum[:4]), nil
}

func envNames(p *policy.Policy) []string {
	var names []string
	for name := range p.Doc.Environments {
		names = append(names, name)
	}
	return names
}

func loadPolicy(path string) (*policy.Policy, []byte, error) {
	data, err := readPolicyFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("read policy: %w", err)
	}
	p, err := policy.Load(path, data)
	if err != nil {
		return nil, nil, fmt.Errorf("policy %s has errors (run `tokenwarden policy check %s`):\n%w", path, path, err)
	}
	return p, data, nil
}

// readPolicyFile reads at most one byte more than a policy may hold, so an
// oversized file (or a path pointing at a device) is refused by
// policy.Load's size check instead of being read into memory.
func readPolicyFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, policy.MaxDocumentBytes+1))
}

// Decider is the decision maker every enforcement point uses.
func (a *Agent) Decider() *policy.Decider { return a.decider }

// Registry is the agent's Prometheus registry.
func (a *Agent) Registry() *prometheus.Registry { return a.registry }

func (a *Agent) readiness() error {
	if !a.ready.Load() {
		return errors.New("not serving (starting or shutting down)")
	}
	if a.watchBroken.Load() {
		return errors.New("store watch interrupted; reloading state (revocations made elsewhere may not be enforced yet)")
	}
	return nil
}

func (a *Agent) registerMetrics() {
	a.registry.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		authz.RevocationRulesGauge(a.revoked),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tokenwarden_rotation_leader", Help: "1 on the agent that runs the rotation schedule (one per mesh with a shared store).",
		}, func() float64 {
			if a.rotationLeader.Load() {
				return 1
			}
			return 0
		}),
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
	p, _, err := loadPolicy(a.cfg.PolicyPath)
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

// task is one long-running part of the agent: it runs until ctx ends and
// returns nil then, or returns an error that stops the agent.
type task struct {
	name string
	run  func(ctx context.Context) error
}

// listen opens addr (host:port, or a unix socket for the enforcement
// listeners) and records it for the ready banner.
func (a *Agent) listen(name, addr string, open func(string) (net.Listener, error), ready map[string]string) (net.Listener, error) {
	lis, err := open(addr)
	if err != nil {
		return nil, fmt.Errorf("%s listener %s: %w", name, addr, err)
	}
	ready[name] = lis.Addr().String()
	return lis, nil
}

func tcpListen(addr string) (net.Listener, error) { return net.Listen("tcp", addr) }

func socketListen(addr string) (net.Listener, error) { return listen.Open(addr, 0) }

// connectionPlan shares the file descriptors among the listeners to open.
func (a *Agent) connectionPlan() (listen.Plan, error) {
	b, err := listen.FDBudget()
	if err != nil {
		return listen.Plan{}, err
	}
	n := 0
	for _, addr := range []string{a.cfg.AuthzGRPCAddr, a.cfg.AuthzHTTPAddr} {
		if addr != "" {
			n++
		}
	}
	if a.xds != nil {
		n++
	}
	return listen.NewPlan(b, n, a.cfg.Connections)
}

// Limits of the admin and metrics HTTP servers. Their clients (the CLI,
// kubelet probes, Prometheus) send a request at once and read the answer
// at once; a client that trickles either is dropped. Request bodies are
// bounded by the admin API itself (64 KiB).
const (
	// httpDrainTimeout bounds how long a draining HTTP server waits for
	// requests in flight before it closes their connections.
	httpDrainTimeout = 10 * time.Second
	// httpReadHeaderTimeout drops clients that trickle headers (slowloris).
	httpReadHeaderTimeout = 3 * time.Second
	// httpReadTimeout bounds reading a whole request, body included.
	httpReadTimeout = 10 * time.Second
	// httpWriteTimeout bounds writing an answer (a scrape, a token list);
	// the audit stream re-arms it before each write.
	httpWriteTimeout = 30 * time.Second
	// httpIdleTimeout closes a keep-alive connection idle this long.
	httpIdleTimeout = 60 * time.Second
	// httpMaxHeaderBytes bounds request headers: a bearer token and a few
	// ordinary headers.
	httpMaxHeaderBytes = 16 << 10
)

// serveHTTP runs an HTTP server on lis until ctx ends, then drains it: it
// returns only once the requests in flight have finished (or the drain
// timed out and their connections were closed), so nothing they write
// (store, audit log) races with the agent closing those.
func serveHTTP(h http.Handler) func(net.Listener) func(context.Context) error {
	return func(lis net.Listener) func(context.Context) error {
		return func(ctx context.Context) error {
			srv := &http.Server{
				Handler:           endStreamsOn(ctx, h),
				ReadHeaderTimeout: httpReadHeaderTimeout,
				ReadTimeout:       httpReadTimeout,
				WriteTimeout:      httpWriteTimeout,
				IdleTimeout:       httpIdleTimeout,
				MaxHeaderBytes:    httpMaxHeaderBytes,
			}
			drained := make(chan struct{})
			go func() {
				defer close(drained)
				<-ctx.Done()
				sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), httpDrainTimeout)
				defer cancel()
				if err := srv.Shutdown(sctx); err != nil {
					srv.Close()
				}
			}()
			err := srv.Serve(lis)
			if errors.Is(err, http.ErrServerClosed) {
				// Serve returns as soon as Shutdown starts; wait for it.
				<-drained
				return nil
			}
			return err
		}
	}
}

// endStreamsOn ends long-lived responses (the audit stream) when ctx ends,
// so that they do not hold a drain open until its timeout; ordinary
// requests keep their own context and finish their work.
func endStreamsOn(ctx context.Context, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/stream") {
			rctx, cancel := context.WithCancel(r.Context())
			defer cancel()
			stop := context.AfterFunc(ctx, cancel)
			defer stop()
			r = r.WithContext(rctx)
		}
		h.ServeHTTP(w, r)
	})
}

// warnIfExposed says when a listener that answers in plain HTTP is reachable
// from beyond the node.
func (a *Agent) warnIfExposed(name, addr string, carriesTokens bool) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return // a unix socket
	}
	if ip, err := netip.ParseAddr(host); err == nil && ip.IsLoopback() {
		return
	}
	if carriesTokens {
		a.log.Warn("listener is reachable beyond loopback and speaks plain HTTP: admin tokens cross the network in clear text; bind it to 127.0.0.1 or put a TLS proxy in front",
			"listener", name, "address", addr)
		return
	}
	a.log.Warn("listener is reachable beyond loopback", "listener", name, "address", addr)
}

// Run serves until ctx ends, then shuts down gracefully: readiness drops
// first, listeners drain, background work stops, the audit log is flushed.
func (a *Agent) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	a.runCtx.Store(&ctx)
	// The store follower outlives the listeners' drain: a revocation made
	// elsewhere while requests finish is still enforced.
	followCtx, stopFollow := context.WithCancel(context.WithoutCancel(ctx))
	defer stopFollow()
	events, stopWatch, err := a.syncState(followCtx)
	if err != nil {
		return err
	}
	watching := make(chan struct{})
	go func() { defer close(watching); a.follow(followCtx, events, stopWatch) }()
	// However Run returns, the store follower and background work started
	// by callbacks (anomaly revocation retries) have ended first, so the
	// caller may close the store and the audit log.
	defer func() {
		cancel()
		stopFollow()
		<-watching
		a.bg.Wait()
	}()
	tokenFile, err := a.ensureAdminToken(ctx)
	if err != nil {
		return err
	}

	plan, err := a.connectionPlan()
	if err != nil {
		return err
	}
	addrs := map[string]string{}
	var tasks []task
	var opened []net.Listener
	fail := func(err error) error {
		for _, l := range opened {
			l.Close()
		}
		return err
	}
	open := func(name, addr string, openAddr func(string) (net.Listener, error), serve func(net.Listener) func(context.Context) error) error {
		if addr == "" {
			return nil
		}
		lis, err := a.listen(name, addr, openAddr, addrs)
		if err != nil {
			return err
		}
		lis = listen.Limit(lis, name, plan.For(name), a.conns, a.log)
		opened = append(opened, lis)
		tasks = append(tasks, task{name, serve(lis)})
		return nil
	}
	metricsMux := http.NewServeMux()
	metricsMux.Handle("/metrics", promhttp.HandlerFor(a.registry, promhttp.HandlerOpts{Registry: a.registry}))
	for _, l := range []struct {
		name, addr string
		listen     func(string) (net.Listener, error)
		serve      func(net.Listener) func(context.Context) error
	}{
		{listen.AdminListener, a.cfg.AdminAddr, tcpListen, serveHTTP(a.admin)},
		{listen.MetricsListener, a.cfg.MetricsAddr, tcpListen, serveHTTP(metricsMux)},
		{"authz-grpc", a.cfg.AuthzGRPCAddr, socketListen, func(lis net.Listener) func(context.Context) error {
			return func(ctx context.Context) error { return a.authz.ServeGRPC(ctx, lis) }
		}},
		{"authz-http", a.cfg.AuthzHTTPAddr, socketListen, func(lis net.Listener) func(context.Context) error {
			return func(ctx context.Context) error { return a.authz.ServeHTTPMode(ctx, lis) }
		}},
	} {
		if err := open(l.name, l.addr, l.listen, l.serve); err != nil {
			return fail(err)
		}
	}
	if err := a.extraListeners(open); err != nil {
		return fail(err)
	}

	tasks = append(tasks,
		task{"housekeeping", func(ctx context.Context) error { a.housekeeping(ctx); return nil }},
		task{"policy-watch", func(ctx context.Context) error { a.watchPolicyFile(ctx); return nil }},
		task{"authz-metrics", func(ctx context.Context) error { a.authzMetrics.Run(ctx, 0); return nil }},
	)
	if a.kernel != nil {
		tasks = append(tasks, task{"kernel", func(ctx context.Context) error { a.kernel.run(ctx); return nil }})
	}
	tasks = append(tasks, a.extraTasks()...)

	// The use recorder outlives the other tasks so that their last records
	// (denies during drain) are written before the agent stops.
	useCtx, stopUse := context.WithCancel(context.WithoutCancel(ctx))
	useDone := make(chan struct{})
	go func() { a.use.Run(useCtx); close(useDone) }()
	// The chain head is recorded in the store until the last record is
	// written, and once more after it.
	headCtx, stopHeads := context.WithCancel(context.WithoutCancel(ctx))
	headsDone := make(chan struct{})
	go func() {
		a.audit.RecordHeads(headCtx, a.store, a.cfg.NodeName, audit.DefaultHeadInterval)
		close(headsDone)
	}()

	errc := make(chan error, len(tasks))
	var wg sync.WaitGroup
	for _, t := range tasks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := t.run(ctx); err != nil && ctx.Err() == nil {
				errc <- fmt.Errorf("%s: %w", t.name, err)
			}
		}()
	}

	a.warnIfExposed("admin", addrs["admin"], true)
	if m := addrs["metrics"]; m != "" {
		a.warnIfExposed("metrics", m, false)
	}
	a.ready.Store(true)
	ready := Ready{Env: a.cfg.Env, AdminAddr: addrs["admin"], MetricsAddr: addrs["metrics"], AdminTokenFile: tokenFile, Listeners: map[string]string{}}
	for name, addr := range addrs {
		if name != "admin" && name != "metrics" {
			ready.Listeners[name] = addr
		}
	}
	if a.cfg.OnReady != nil {
		a.cfg.OnReady(ready)
	}
	a.log.Info("tokenwarden agent ready", "env", a.cfg.Env, "listeners", addrs,
		"kernel_side", a.kernel != nil, "admin_token_file", tokenFile, "policy", a.cfg.PolicyPath)

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
		a.log.Error("stopping after a fault", "err", runErr)
	}
	a.ready.Store(false)
	a.log.Info("shutting down")
	cancel()
	wg.Wait()
	stopUse()
	<-useDone
	stopHeads()
	<-headsDone
	a.log.Info("stopped")
	return runErr
}

// syncState starts watching the store and loads every revocation rule and
// known token; follow then applies what changes, so a revocation made
// anywhere is enforced here. Watching starts before loading, so nothing
// written in between is missed (applying a change twice is harmless).
func (a *Agent) syncState(ctx context.Context) (<-chan store.Event, context.CancelFunc, error) {
	wctx, stop := context.WithCancel(ctx)
	events, err := a.store.Watch(wctx)
	if err != nil {
		stop()
		return nil, nil, fmt.Errorf("watch store: %w", err)
	}
	if err := a.loadState(ctx); err != nil {
		stop()
		return nil, nil, err
	}
	return events, stop, nil
}

func (a *Agent) loadState(ctx context.Context) error {
	rules, err := a.store.Revocations(ctx)
	if err != nil {
		return fmt.Errorf("load revocations: %w", err)
	}
	for _, r := range rules {
		a.revoked.Add(r)
	}
	if err := a.tokens.load(ctx, a.store, a.cfg.Now()); err != nil {
		return fmt.Errorf("load tokens: %w", err)
	}
	if a.kernel != nil {
		a.kernel.reconcileSoon()
	}
	return nil
}

// watchRetryEvery is how long follow waits between attempts to re-establish
// a broken store watch.
const watchRetryEvery = time.Second

// follow applies store events until ctx ends. When the store drops the
// watch (this agent fell behind), it watches again and reloads everything;
// until that succeeds /readyz reports the gap.
func (a *Agent) follow(ctx context.Context, events <-chan store.Event, stopWatch context.CancelFunc) {
	for {
		for ev := range events {
			a.apply(ctx, ev)
		}
		stopWatch()
		if ctx.Err() != nil {
			return
		}
		a.watchBroken.Store(true)
		a.log.Warn("store watch interrupted; reloading state")
		for {
			wctx, stop := context.WithCancel(ctx)
			var err error
			if events, err = a.store.Watch(wctx); err == nil {
				if err = a.loadState(ctx); err == nil {
					if err = a.reloadKeys(ctx); err == nil {
						stopWatch = stop
						break
					}
				}
			}
			// Unregister the watch of a failed attempt, or it would sit
			// unread until the store drops it.
			stop()
			if ctx.Err() != nil {
				return
			}
			a.log.Error("reload after watch interruption; retrying", "err", err, "in", watchRetryEvery)
			select {
			case <-ctx.Done():
				return
			case <-time.After(watchRetryEvery):
			}
		}
		a.watchBroken.Store(false)
		a.log.Info("store watch re-established; state reloaded")
	}
}

func (a *Agent) apply(ctx context.Context, ev store.Event) {
	switch ev.Kind {
	case store.EventRevocation:
		if ev.Revocation == nil {
			return
		}
		if ev.Deleted {
			a.removeRevocation(ctx, *ev.Revocation)
		} else {
			a.applyRevocation(*ev.Revocation)
		}
	case store.EventToken:
		if ev.Token == nil {
			return
		}
		if ev.Deleted {
			a.tokens.remove(ev.Token.ID)
		} else {
			a.applyToken(ev.Token)
		}
	case store.EventKey:
		if err := a.reloadKeys(ctx); err != nil {
			a.log.Error("reload signing keys", "err", err)
		}
	}
}

// applyRevocation enforces a stored rule: the revocation set at once, the
// kernel's revoked map within moments.
func (a *Agent) applyRevocation(r policy.Revocation) {
	a.revoked.Add(r)
	if a.kernel != nil {
		a.kernel.reconcileSoon()
	}
}

// removeRevocation lifts a deleted rule. The set merges token and key rules
// on one target, and removing one removes them all, so a rule is lifted only
// when no other stored rule names its target; otherwise the merged rule
// stays (failing closed) until the set prunes it.
func (a *Agent) removeRevocation(ctx context.Context, r policy.Revocation) {
	if !r.Expires.IsZero() && a.cfg.Now().After(r.Expires) {
		return // past its expiry: the set's own pruning drops it
	}
	if r.Kind == policy.RevokeToken || r.Kind == policy.RevokeKey {
		rules, err := a.store.Revocations(ctx)
		if err != nil {
			a.log.Error("a revocation rule was deleted but the remaining rules could not be read; it stays enforced", "rule", r.ID, "err", err)
			return
		}
		for _, o := range rules {
			if o.Kind == r.Kind && o.Target == r.Target && o.ID != r.ID {
				a.log.Info("a revocation rule was deleted but another rule on its target stands; keeping it enforced", "rule", r.ID, "other", o.ID)
				return
			}
		}
	}
	a.revoked.Remove(r)
	if a.kernel != nil {
		a.kernel.reconcileSoon()
	}
}

// applyToken keeps the token index in step with a stored record: live
// tokens and revoked ones (whose hashes the kernel must drop) are known.
func (a *Agent) applyToken(r *store.TokenRecord) {
	if r.Live(a.cfg.Now()) || (r.Status == store.TokenRevoked && !expired(r, a.cfg.Now())) {
		a.tokens.put(tokenOf(r))
		if r.Status == store.TokenRevoked && a.kernel != nil {
			a.kernel.reconcileSoon()
		}
	}
}

// enforcingStore is the store as the agent's own writers (issuer, admin
// API, rotation) see it: a revocation rule or token record written on this
// node is applied to the revocation set and the token index once it is
// durable and before the write returns, so the admin API never answers a
// revocation this node does not enforce yet. Watch delivers the same change
// again (applying it twice is harmless) and brings changes made elsewhere.
type enforcingStore struct {
	store.Store
	a *Agent
}

func (s enforcingStore) PutRevocation(ctx context.Context, r policy.Revocation) error {
	if err := s.Store.PutRevocation(ctx, r); err != nil {
		return err
	}
	s.a.applyRevocation(r)
	return nil
}

func (s enforcingStore) PutToken(ctx context.Context, t store.TokenRecord) error {
	if err := s.Store.PutToken(ctx, t); err != nil {
		return err
	}
	t.Scopes = slices.Clone(t.Scopes) // the index keeps no memory of the caller's
	s.a.applyToken(&t)
	return nil
}

func (a *Agent) reloadKeys(ctx context.Context) error {
	if err := a.issuer.Reload(ctx); err != nil {
		return err
	}
	a.decider.SetKeys(a.issuer.KeySet())
	return nil
}

// every calls fn every d until ctx ends.
func every(ctx context.Context, d time.Duration, fn func()) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			fn()
		}
	}
}

// housekeeping drops what can no longer matter (revocation rules and cached
// tokens past every possible exp) and keeps the admin token fresh.
func (a *Agent) housekeeping(ctx context.Context) {
	every(ctx, housekeepingEvery, func() {
		now := a.cfg.Now()
		rules := a.revoked.Prune(now)
		tokens := a.cache.Prune(now)
		a.tokens.prune(now)
		if rules+tokens > 0 {
			a.log.Debug("pruned", "revocation_rules", rules, "cached_tokens", tokens)
		}
		if _, err := a.ensureAdminToken(ctx); err != nil {
			a.log.Error("refresh admin token", "err", err)
		}
		if now.Sub(a.lastStorePrune) >= storePruneEvery {
			a.lastStorePrune = now
			a.pruneStore(ctx, now)
		}
	})
}

// Store retention: rules are deleted once no token they cover can be valid
// (their Expires); token records are kept this long after they expire, for
// `token list` and leak look-ups, then deleted. The audit log keeps the
// history.
const (
	storePruneEvery = 10 * time.Minute
	tokenRetention  = 7 * 24 * time.Hour
)

// pruneStore deletes what can no longer matter, so the store (and every
// start's full load) stays bounded by issuance rate x lifetime. With many
// nodes each may prune; a rule another node deleted first is not an error.
func (a *Agent) pruneStore(ctx context.Context, now time.Time) {
	rules, err := a.store.Revocations(ctx)
	if err != nil {
		a.log.Warn("prune store: list revocations", "err", err)
		return
	}
	deletedRules, deletedTokens := 0, 0
	for _, r := range rules {
		if !r.Expires.IsZero() && now.After(r.Expires) {
			if err := a.store.DeleteRevocation(ctx, r.ID); err == nil {
				deletedRules++
			} else if !errors.Is(err, store.ErrNotFound) {
				a.log.Warn("prune store: delete revocation", "rule", r.ID, "err", err)
			}
		}
	}
	recs, err := a.store.Tokens(ctx, store.TokenFilter{})
	if err != nil {
		a.log.Warn("prune store: list tokens", "err", err)
		return
	}
	for _, t := range recs {
		if now.Sub(t.ExpiresAt) > tokenRetention {
			if err := a.store.DeleteToken(ctx, t.ID); err == nil {
				deletedTokens++
			} else if !errors.Is(err, store.ErrNotFound) {
				a.log.Warn("prune store: delete token", "token_id", t.ID, "err", err)
			}
		}
	}
	if deletedRules+deletedTokens > 0 {
		a.log.Info("pruned store", "revocation_rules", deletedRules, "token_records", deletedTokens)
	}
}

// policyPollEvery is how often the policy file is checked for changes. A
// poll of the content (not inotify) also sees Kubernetes ConfigMap updates,
// which swap a symlink rather than write the file.
const policyPollEvery = 2 * time.Second

// watchPolicyFile reloads the policy when the file's content changes.
func (a *Agent) watchPolicyFile(ctx context.Context) {
	last := a.loadedPolicy
	every(ctx, policyPollEvery, func() {
		cur, err := readPolicyFile(a.cfg.PolicyPath)
		if err != nil || bytes.Equal(cur, last) {
			return
		}
		last = cur
		if err := a.Reload(); err != nil {
			a.log.Error("policy file changed but was refused; the old policy stays in force", "err", err)
		}
	})
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
