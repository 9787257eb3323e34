// Package graceful is the one way the agent's servers stop: when their
// context ends they stop accepting, let what is in flight finish for a
// bounded time, then close what remains, and the serve call returns only
// after that, so nothing a request still writes (store, audit log) races
// with the agent closing those.
package graceful

import (
	"context"
	"errors"
	"net"
	"net/http"
	"time"

	"google.golang.org/grpc"
)

// DefaultGrace bounds how long a stopping server waits for work in flight.
const DefaultGrace = 10 * time.Second

// HTTP serves srv on lis until ctx ends, then shuts it down: requests in
// flight get grace (DefaultGrace when zero) to finish before their
// connections are closed. It returns nil after ctx ends, and the serve
// error (once the server has stopped) when serving fails first.
func HTTP(ctx context.Context, srv *http.Server, lis net.Listener, grace time.Duration) error {
	return serve(ctx, func() error {
		err := srv.Serve(lis)
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return err
	}, func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), orDefault(grace))
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil {
			srv.Close()
		}
	}, func() { srv.Close() })
}

// GRPC serves gs on lis until ctx ends, then calls onStop (when not nil:
// report NOT_SERVING, end streams that never finish on their own) and
// stops gs gracefully, forcing it after grace (DefaultGrace when zero). It
// returns like HTTP.
func GRPC(ctx context.Context, gs *grpc.Server, lis net.Listener, grace time.Duration, onStop func()) error {
	return serve(ctx, func() error { return gs.Serve(lis) }, func() {
		if onStop != nil {
			onStop()
		}
		stopped := make(chan struct{})
		go func() {
			gs.GracefulStop()
			close(stopped)
		}()
		t := time.NewTimer(orDefault(grace))
		defer t.Stop()
		select {
		case <-stopped:
		case <-t.C:
			gs.Stop()
			<-stopped
		}
	}, gs.Stop)
}

// serve runs run until ctx ends (then drain, waiting for run to return) or
// run fails (then stop, so nothing is left serving).
func serve(ctx context.Context, run func() error, drain, stop func()) error {
	served := make(chan error, 1)
	go func() { served <- run() }()
	select {
	case err := <-served:
		// Serving failed, or someone else stopped the server (nil).
		stop()
		if ctx.Err() != nil {
			return nil
		}
		return err
	case <-ctx.Done():
	}
	drain()
	<-served
	return nil
}

func orDefault(d time.Duration) time.Duration {
	if d <= 0 {
		return DefaultGrace
	}
	return d
}
