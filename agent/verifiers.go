package agent

import (
	"fmt"
	"net/http"

	"github.com/tokenwarden/tokenwarden/agent/introspect"
	"github.com/tokenwarden/tokenwarden/agent/secretscan"
	"github.com/tokenwarden/tokenwarden/agent/wellknown"
)

// verifierEndpoints serves, on the admin listener beside the admin API,
// what verifiers outside the mesh use: the JWK Set and discovery document
// (public), RFC 7662 introspection (tokenwarden:introspect callers) and,
// when configured, GitHub's secret scanning alerts (signed by GitHub). Verifiers reach the admin listener, or a TLS proxy in front of
// it that forwards only these paths (docs/verifiers.md).
func (a *Agent) verifierEndpoints() (http.Handler, error) {
	wk, err := wellknown.New(wellknown.Config{Keys: a.issuer.Keys, Policy: a.policy.Load})
	if err != nil {
		return nil, err
	}
	in, err := introspect.New(introspect.Config{
		Decider: a.decider, Revocations: a.revoked, Audit: a.audit, Registerer: a.registry, Now: a.cfg.Now, Logger: a.log,
	})
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	if a.cfg.SecretScanningKeys != "" {
		keys, err := secretscan.LoadKeys(a.cfg.SecretScanningKeys)
		if err != nil {
			return nil, fmt.Errorf("--secret-scanning-keys: %w", err)
		}
		src, err := secretscan.NewKeySource(keys, a.cfg.SecretScanningKeysURL, nil)
		if err != nil {
			return nil, fmt.Errorf("--secret-scanning-keys-url: %w", err)
		}
		gh, err := secretscan.New(secretscan.Config{Keys: src, Tokens: a.decider.Keys, Leaks: a.issuer, Audit: a.audit, Logger: a.log})
		if err != nil {
			return nil, err
		}
		mux.Handle(secretscan.Path, gh)
	}
	mux.Handle("/.well-known/", wk)
	mux.Handle(introspect.Path, in)
	mux.Handle("/", a.admin)
	return mux, nil
}
