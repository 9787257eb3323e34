package rotation

import (
	"context"
	"fmt"
	"os"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenwarden/tokenwarden/agent/store"
)

// LeaderRole is the name of the role, in a store many agents share, whose
// holder runs the rotation schedule.
const LeaderRole = "rotation"

// Leadership runs a Scheduler once per mesh: with a store many agents share
// (a store.Leader), only the elected agent runs it, so a token is rotated
// once, not once per node; the role moves when that agent stops or
// vanishes. With a single-node store this agent always leads.
type Leadership struct {
	s       *Scheduler
	leading atomic.Bool
}

// NewLeadership registers tokenwarden_rotation_leader on reg (when not nil).
func NewLeadership(s *Scheduler, reg prometheus.Registerer) (*Leadership, error) {
	l := &Leadership{s: s}
	if reg != nil {
		if err := reg.Register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tokenwarden_rotation_leader",
			Help: "1 on the agent that runs the rotation schedule (one per mesh with a shared store).",
		}, func() float64 {
			if l.leading.Load() {
				return 1
			}
			return 0
		})); err != nil {
			return nil, fmt.Errorf("rotation: register metrics: %w", err)
		}
	}
	return l, nil
}

// Leading reports whether this agent runs the schedule now.
func (l *Leadership) Leading() bool { return l.leading.Load() }

// Run runs the schedule while this agent leads, until ctx ends.
func (l *Leadership) Run(ctx context.Context, st store.Store) error {
	run := func(ctx context.Context) {
		l.leading.Store(true)
		defer l.leading.Store(false)
		l.s.log.Info("running the rotation schedule")
		l.s.Run(ctx)
	}
	if leader, ok := st.(store.Leader); ok {
		host, _ := os.Hostname()
		return leader.Lead(ctx, LeaderRole, fmt.Sprintf("%s/%d", host, os.Getpid()), run)
	}
	run(ctx)
	return nil
}
