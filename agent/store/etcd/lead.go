package etcd

import (
	"context"
	"fmt"
	"time"

	"go.etcd.io/etcd/client/v3/concurrency"
)

// leaseTTL is how long a leader that vanished (crash, partition) keeps its
// role before another agent takes over.
const leaseTTL = 10 * time.Second

// Lead runs fn while this agent leads name among the agents sharing the
// prefix, and campaigns again when it loses the role, until ctx ends. Work
// that must run once per mesh (scheduled rotation) runs under it. fn's
// context ends when the leadership is lost.
func (s *Store) Lead(ctx context.Context, name, id string, fn func(ctx context.Context)) error {
	for ctx.Err() == nil {
		if err := s.leadOnce(ctx, name, id, fn); err != nil && ctx.Err() == nil {
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
	return nil
}

func (s *Store) leadOnce(ctx context.Context, name, id string, fn func(ctx context.Context)) error {
	if err := s.usable(ctx); err != nil {
		return err
	}
	session, err := concurrency.NewSession(s.cli, concurrency.WithTTL(int(leaseTTL/time.Second)), concurrency.WithContext(ctx))
	if err != nil {
		return fmt.Errorf("etcd session for %s leadership: %w", name, err)
	}
	defer session.Close()
	election := concurrency.NewElection(session, s.prefix+"leader/"+name)
	if err := election.Campaign(ctx, id); err != nil {
		return err
	}
	leadCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-session.Done(): // lease lost: another agent may lead now
			cancel()
		case <-leadCtx.Done():
		}
	}()
	fn(leadCtx)
	resign, stop := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer stop()
	_ = election.Resign(resign)
	return nil
}
