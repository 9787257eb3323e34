package agent

import (
	"fmt"

	"github.com/tokenwarden/tokenwarden/agent/introspect"
	"github.com/tokenwarden/tokenwarden/agent/secretscan"
	"github.com/tokenwarden/tokenwarden/agent/wellknown"
)

// verifierEndpoints serves, on the admin listener beside the admin API,
// what verifiers outside the mesh use: the JWK Set and discovery document
// (public), RFC 7662 introspection (tokenwarden:introspect callers) and,
// when configured, GitHub's secret scanning alerts (signed by GitHub). Verifiers reach the admin listener, or a TLS proxy in front of
// it that forwards only these paths (docs/verifiers.md).
func (a *Agent) verifierEndpoints() error {
	wk, err := wellknown.New(wellknown.Config{Keys: a.issuer.Keys, Policy: a.decider.Policy})
	if err != nil {
		return err
	}
	in, err := introspect.New(introspect.Config{
		Decider: a.decider, Revocations: a.replica.Revocations(), Audit: a.audit, Registerer: a.registry, Now: a.cfg.Now, Logger: a.log,
	})
	if err != nil {
		return err
	}
	if a.cfg.SecretScanningKeys != "" {
		keys, err := secretscan.LoadKeys(a.cfg.SecretScanningKeys)
		if err != nil {
			return fmt.Errorf("SecretScanningKeys: %w", err)
		}
		src, err := secretscan.NewKeySource(keys, a.cfg.SecretScanningKeysURL, nil)
		if err != nil {
			return fmt.Errorf("SecretScanningKeysURL: %w", err)
		}
		gh, err := secretscan.New(secretscan.Config{Keys: src, Tokens: a.decider.Keys, Leaks: a.revoker, Audit: a.audit, Logger: a.log})
		if err != nil {
			return err
		}
		a.admin.Handle(secretscan.Path, gh)
	}
	a.admin.Handle("/.well-known/", wk)
	a.admin.Handle(introspect.Path, in)
	return nil
}
