package agent

import (
	"fmt"
	"slices"

	"github.com/tokenwarden/tokenwarden/agent/admintoken"
	"github.com/tokenwarden/tokenwarden/policy"
)

// LoadPolicy reads and compiles the policy file and checks what this node
// needs of it: its environment, and a class to issue the admin token in.
// The agent runs it at start and on every reload, and `tokenwarden policy
// check --env` runs it too, so that check's ok means the agent starts.
func LoadPolicy(path, env string) (*policy.Policy, []byte, error) {
	data, err := policy.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("read policy: %w", err)
	}
	p, err := policy.Load(path, data)
	if err != nil {
		return nil, nil, fmt.Errorf("policy %s has errors (run `tokenwarden policy check %s`):\n%w", path, path, err)
	}
	if _, ok := p.Environment(env); !ok {
		return nil, nil, fmt.Errorf("environment %q is not in policy %s (it defines: %v)", env, path, envNames(p))
	}
	if _, err := admintoken.Class(p, env); err != nil {
		return nil, nil, fmt.Errorf("policy %s: %w", path, err)
	}
	return p, data, nil
}

func envNames(p *policy.Policy) []string {
	var names []string
	for name := range p.Doc.Environments {
		names = append(names, name)
	}
	slices.Sort(names)
	return names
}

// Reload re-reads the policy file. It is all or nothing: a policy with
// errors, one that drops this node's environment, or one the sidecars
// cannot be given (the xDS push fails) is refused, and the policy in force
// stays everywhere.
func (a *Agent) Reload() error {
	a.reloading <- struct{}{}
	defer func() { <-a.reloading }()
	err := a.reload()
	if err != nil {
		a.reloads.WithLabelValues("refused").Inc()
		return err
	}
	a.reloads.WithLabelValues("ok").Inc()
	a.generation.Inc()
	return nil
}

func (a *Agent) reload() error {
	p, _, err := LoadPolicy(a.cfg.PolicyPath, a.cfg.Env)
	if err != nil {
		return err
	}
	if a.sidecars != nil {
		// First, as the only step that can fail: a route made private must
		// not stay unchecked at the sidecar while the Decider enforces it.
		if err := a.sidecars.SetPolicy(p); err != nil {
			return fmt.Errorf("the sidecars cannot be given the new policy; keeping the old one: %w", err)
		}
	}
	a.decider.SetPolicy(p)
	a.cache.Purge()
	a.anomaly.SetPolicy(p.Doc.Anomaly)
	a.use.SetAllows(p.Doc.Audit.Allows)
	for _, w := range p.Warnings {
		a.log.Warn("policy", "problem", w.String())
	}
	a.log.Info("policy reloaded", "path", a.cfg.PolicyPath, "services", len(p.ServiceNames()), "warnings", len(p.Warnings))
	return nil
}

// policyPush gives the node's sidecars a policy (the xDS server).
type policyPush interface {
	SetPolicy(p *policy.Policy) error
}
