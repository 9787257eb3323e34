package agent

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tokenwarden/tokenwarden/agent/audit"
	"github.com/tokenwarden/tokenwarden/agent/graceful"
	"github.com/tokenwarden/tokenwarden/agent/listen"
	"github.com/tokenwarden/tokenwarden/agent/retention"
	"github.com/tokenwarden/tokenwarden/policy"
	"github.com/tokenwarden/tokenwarden/xds"
)

// task is one goroutine of the agent: it runs until ctx ends and returns
// nil then, or returns an error that stops the agent.
type task struct {
	name string
	run  func(ctx context.Context) error
}

// loop adapts a function that runs until ctx ends.
func loop(f func(ctx context.Context)) func(context.Context) error {
	return func(ctx context.Context) error { f(ctx); return nil }
}

// records is the task that outlives every other: the audit chain head is
// recorded in the store until the last record is written, and once more
// after it.
func (a *Agent) records() []task {
	return []task{
		{"audit-heads", loop(func(ctx context.Context) {
			a.audit.RecordHeads(ctx, a.store, a.cfg.NodeName, audit.DefaultHeadInterval)
		})},
	}
}

// foundation are the tasks that outlive the serving ones: the replica keeps
// enforcing revocations made elsewhere while requests drain, and the use
// recorder writes the last records (denies during drain) before the agent
// stops.
func (a *Agent) foundation() []task {
	return []task{
		{"replica", func(ctx context.Context) error { return a.replica.Run(ctx, a.store) }},
		{"freshness", loop(a.fresh.Run)},
		{"audit-use", loop(a.use.Run)},
	}
}

// tasks are the agent's goroutines while it serves, one per listener
// opened and one per loop; docs/architecture.md lists them.
func (a *Agent) tasks(lis map[string]net.Listener) []task {
	ts := []task{
		{"housekeeping", loop(a.housekeeping)},
		{"policy-watch", loop(a.watchPolicyFile)},
		{"authz-metrics", loop(func(ctx context.Context) { a.metrics.Run(ctx, 0) })},
		{"anomaly", loop(a.anomaly.Run)},
		{"rotation", func(ctx context.Context) error { return a.leadership.Run(ctx, a.store) }},
		{"retention", loop(func(ctx context.Context) {
			p := retention.Pruner{Store: a.store, Now: a.cfg.Now, Logger: a.log}
			every(ctx, a.cfg.Timing.Retention, func() { p.Prune(ctx) })
		})},
		{"revoke-retry", loop(a.revoker.Run)},
	}
	if a.kernel != nil {
		ts = append(ts, task{"kernel", loop(a.kernel.Run)})
	}
	if a.snapshots != nil {
		ts = append(ts, task{"snapshot", loop(a.snapshots.Run)})
	}
	if a.tls != nil {
		ts = append(ts, task{"tls-reload", loop(func(ctx context.Context) { a.tls.Run(ctx, a.cfg.Timing.TLSPoll) })})
	}
	serve := map[string]func(context.Context, net.Listener) error{
		"admin":      a.admin.Serve,
		"metrics":    a.serveMetrics,
		"authz-grpc": a.authz.ServeGRPC,
		"authz-http": a.authz.ServeHTTPMode,
	}
	if a.xds != nil {
		serve["xds"] = a.xds.Serve
	}
	for _, name := range listenerNames {
		if l, ok := lis[name]; ok {
			ts = append(ts, task{name, func(ctx context.Context) error { return serve[name](ctx, l) }})
		}
	}
	return ts
}

// Run serves until ctx ends, then shuts down gracefully: readiness drops
// first, listeners drain, the loops stop, the replica and the use recorder
// last, the audit chain head after them. It returns the fault of the
// first task that failed, if one did.
func (a *Agent) Run(ctx context.Context) error {
	records := start(context.WithoutCancel(ctx), a.records())
	defer records.stop()
	foundation := start(context.WithoutCancel(ctx), a.foundation())
	defer foundation.stop()
	select {
	case <-a.replica.Synced():
	case <-foundation.ctx.Done():
		return foundation.stop()
	case <-ctx.Done():
		return nil
	}
	adminToken := a.adminToken.Ensure(ctx)
	if adminToken != nil && a.offline == nil {
		return adminToken
	}
	lis, err := a.listen()
	if err != nil {
		return err
	}
	ts := a.tasks(lis)
	if adminToken != nil {
		// Started from the snapshot: the token cannot be issued until the
		// store takes writes.
		a.log.Warn("cannot write the admin token while the store is unreachable; retrying", "err", adminToken)
		ts = append(ts, task{"admin-token", loop(a.retryAdminToken)})
	}
	serving := start(ctx, ts)
	a.announce(lis)
	select {
	case <-serving.ctx.Done():
	case <-foundation.ctx.Done():
	}
	a.ready.Store(false)
	a.log.Info("shutting down")
	err = serving.stop()
	if ferr := foundation.stop(); err == nil {
		err = ferr
	}
	if rerr := records.stop(); err == nil {
		err = rerr
	}
	if err != nil {
		a.log.Error("stopped after a fault", "err", err)
		return err
	}
	a.log.Info("stopped")
	return nil
}

// group runs tasks until its context ends or one of them fails, which ends
// it for all (an errgroup that names the task that failed).
type group struct {
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	first  error
}

func start(parent context.Context, tasks []task) *group {
	g := &group{}
	g.ctx, g.cancel = context.WithCancel(parent)
	for _, t := range tasks {
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			if err := t.run(g.ctx); err != nil && g.ctx.Err() == nil {
				g.mu.Lock()
				if g.first == nil {
					g.first = fmt.Errorf("%s: %w", t.name, err)
				}
				g.mu.Unlock()
				g.cancel()
			}
		}()
	}
	return g
}

// stop ends the group's tasks, waits for them and returns the first fault.
func (g *group) stop() error {
	g.cancel()
	g.wg.Wait()
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.first
}

// housekeeping drops from memory what can no longer matter (revocation
// rules and tokens past every possible exp) and keeps the admin token
// fresh.
func (a *Agent) housekeeping(ctx context.Context) {
	every(ctx, a.cfg.Timing.Housekeeping, func() {
		now := a.cfg.Now()
		rules := a.replica.Prune(now)
		tokens := a.cache.Prune(now)
		if rules+tokens > 0 {
			a.log.Debug("pruned", "revocation_rules", rules, "cached_tokens", tokens)
		}
		if err := a.adminToken.Ensure(ctx); err != nil {
			a.log.Error("refresh admin token", "err", err)
		}
	})
}

// retryAdminToken writes the admin token every second until it succeeds.
func (a *Agent) retryAdminToken(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := a.adminToken.Ensure(ctx); err == nil {
			a.log.Info("admin token written")
			return
		}
	}
}

// watchPolicyFile reloads the policy when the file's content changes.
func (a *Agent) watchPolicyFile(ctx context.Context) {
	last := a.policyFile
	every(ctx, a.cfg.Timing.PolicyPoll, func() {
		cur, err := policy.ReadFile(a.cfg.PolicyPath)
		if err != nil || bytes.Equal(cur, last) {
			return
		}
		last = cur
		if err := a.Reload(); err != nil {
			a.log.Error("policy file changed but was refused; the old policy stays in force", "err", err)
		}
	})
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

// serveMetrics serves /metrics on lis until ctx ends.
func (a *Agent) serveMetrics(ctx context.Context, lis net.Listener) error {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(a.registry, promhttp.HandlerOpts{Registry: a.registry}))
	var h http.Handler = mux
	if a.scrape != nil {
		h = a.scrape.Wrap(mux)
	}
	return graceful.HTTP(ctx, listen.HTTPServer(h), lis, 0)
}

// listenerNames orders the listeners: the ready banner and the tasks follow
// it.
var listenerNames = []string{listen.AdminListener, listen.MetricsListener, "authz-grpc", "authz-http", "xds"}

// listen opens every configured listener, or none, each bounded by its
// share of the file descriptors (listen.Limit).
func (a *Agent) listen() (map[string]net.Listener, error) {
	addrs := map[string]string{
		listen.AdminListener: a.cfg.AdminAddr, listen.MetricsListener: a.cfg.MetricsAddr,
		"authz-grpc": a.cfg.AuthzGRPCAddr, "authz-http": a.cfg.AuthzHTTPAddr,
	}
	if a.xds != nil {
		addrs["xds"] = a.cfg.XDSAddr
	}
	enforcing := 0
	for name, addr := range addrs {
		if addr != "" && name != listen.AdminListener && name != listen.MetricsListener {
			enforcing++
		}
	}
	fds, err := listen.FDBudget()
	if err != nil {
		return nil, err
	}
	plan, err := listen.NewPlan(fds, enforcing, a.cfg.Connections)
	if err != nil {
		return nil, err
	}
	lis := map[string]net.Listener{}
	for _, name := range listenerNames {
		addr := addrs[name]
		if addr == "" {
			continue
		}
		var mode fs.FileMode // socket file mode: the directory decides who may connect
		if name == "xds" {
			mode = xds.UnixSocketMode
		}
		l, err := listen.Open(addr, mode)
		if err != nil {
			for _, l := range lis {
				l.Close()
			}
			return nil, fmt.Errorf("%s listener %s: %w", name, addr, err)
		}
		lis[name] = listen.Secure(listen.Limit(l, name, plan.For(name), a.conns, a.log), name, a.tls)
	}
	return lis, nil
}
