package agent

import (
	"context"
	"fmt"
	"net"
	"os"

	"github.com/tokenwarden/tokenwarden/agent/listen"
	"github.com/tokenwarden/tokenwarden/agent/store"

	"github.com/tokenwarden/tokenwarden/policy"
	"github.com/tokenwarden/tokenwarden/xds"
)

// startXDS builds the ADS server for the node's sidecars and makes it
// follow policy reloads.
func (a *Agent) startXDS() error {
	if a.cfg.XDSAddr == "" {
		return nil
	}
	authzAddr := a.cfg.XDSAuthzAddress
	if authzAddr == "" {
		authzAddr = a.cfg.AuthzGRPCAddr
	}
	var creds *xds.Credentials
	if a.cfg.XDSCredentials != "" {
		var err error
		if creds, err = xds.LoadCredentials(a.cfg.XDSCredentials); err != nil {
			return err
		}
	}
	srv, err := xds.New(xds.Config{
		AuthzAddress: authzAddr, AppAddress: a.cfg.XDSAppAddress,
		Credentials: creds, AllowUnauthenticated: a.cfg.XDSAllowUnauthenticated,
		Registerer: a.registry, ListenerMetrics: a.conns, Logger: a.log,
	})
	if err != nil {
		return err
	}
	if err := srv.SetPolicy(a.policy.Load()); err != nil {
		return err
	}
	a.xds = srv
	a.onPolicy = append(a.onPolicy, func(p *policy.Policy) {
		if err := srv.SetPolicy(p); err != nil {
			a.log.Error("push policy to sidecars", "err", err)
		}
	})
	return nil
}

// extraListeners opens the xDS listener.
func (a *Agent) extraListeners(open func(name, addr string, listen func(string) (net.Listener, error), serve func(net.Listener) func(context.Context) error) error) error {
	if a.xds == nil {
		return nil
	}
	socket := func(addr string) (net.Listener, error) { return listen.Open(addr, xds.UnixSocketMode) }
	return open("xds", a.cfg.XDSAddr, socket, func(lis net.Listener) func(context.Context) error {
		return func(ctx context.Context) error { return a.xds.Serve(ctx, lis) }
	})
}

// extraTasks are the agent's background loops beyond the listeners.
func (a *Agent) extraTasks() []task {
	return []task{
		{"anomaly", func(ctx context.Context) error { a.anomaly.Run(ctx); return nil }},
		{"rotation", a.runRotation},
	}
}

// runRotation runs the rotation schedule. With a store many agents share,
// only the elected agent runs it, so a token is rotated once per mesh, not
// once per node; the role moves when that agent stops or vanishes.
func (a *Agent) runRotation(ctx context.Context) error {
	run := func(ctx context.Context) {
		a.rotationLeader.Store(true)
		defer a.rotationLeader.Store(false)
		a.log.Info("running the rotation schedule")
		a.rotation.Run(ctx)
	}
	if l, ok := a.store.(store.Leader); ok {
		host, _ := os.Hostname()
		return l.Lead(ctx, "rotation", fmt.Sprintf("%s/%d", host, os.Getpid()), run)
	}
	run(ctx)
	return nil
}
