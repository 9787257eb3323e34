// Package wellknown serves what verifiers outside the mesh need to check
// tokenwarden tokens on their own: the verification keys as a JWK Set (RFC
// 7517, Ed25519 keys as RFC 8037 OKP keys) at /.well-known/jwks.json, and
// OpenID Connect Discovery 1.0 metadata at /.well-known/openid-configuration
// naming the issuer, the JWKS and the RFC 7662 introspection endpoint.
// Both are public by design and need no authentication.
package wellknown

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/tokenwarden/tokenwarden/agent/store"
	"github.com/tokenwarden/tokenwarden/policy"
)

// Paths served.
const (
	JWKSPath      = "/.well-known/jwks.json"
	DiscoveryPath = "/.well-known/openid-configuration"
	// IntrospectPath is where the RFC 7662 endpoint is served (package
	// introspect); discovery names it.
	IntrospectPath = "/oauth2/introspect"
)

// MaxAge is how long a verifier may cache the JWK Set. A rotation
// publishes the new key ahead, for longer than MaxAge (issuer.KeyLead),
// before it signs; a rotated-out key keeps verifying for the policy's
// longest token lifetime, far longer than this. So a set cached for at
// most MaxAge has every key that signs a live token (docs/verifiers.md).
const MaxAge = 5 * time.Minute

// Config configures the handler.
type Config struct {
	// Keys lists the signing key records (public halves).
	Keys func() []store.Key
	// Policy is the policy in force: its issuer names the discovery
	// document's issuer and base URL.
	Policy func() *policy.Policy
}

// Handler serves the JWK Set and the discovery document.
type Handler struct {
	cfg Config
	mux *http.ServeMux
}

// New builds the handler.
func New(cfg Config) (*Handler, error) {
	if cfg.Keys == nil || cfg.Policy == nil {
		return nil, fmt.Errorf("wellknown: Keys and Policy are required")
	}
	h := &Handler{cfg: cfg, mux: http.NewServeMux()}
	h.mux.HandleFunc("GET "+JWKSPath, h.jwks)
	h.mux.HandleFunc("GET "+DiscoveryPath, h.discovery)
	return h, nil
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

// Set is the JWK Set of the keys that verify tokens now: the active key,
// the pending one published ahead of its first signature, and those
// rotated out whose tokens may still be live. Retired keys verify nothing
// and are left out.
func Set(keys []store.Key) jose.JSONWebKeySet {
	set := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{}}
	for _, k := range keys {
		if k.State != store.KeyPending && k.State != store.KeyActive && k.State != store.KeyVerifying {
			continue
		}
		set.Keys = append(set.Keys, jose.JSONWebKey{Key: k.Public, KeyID: k.ID, Algorithm: string(jose.EdDSA), Use: "sig"})
	}
	return set
}

func (h *Handler) jwks(w http.ResponseWriter, r *http.Request) {
	body, err := json.Marshal(Set(h.cfg.Keys()))
	if err != nil {
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Cache-Control", "public, max-age="+strconv.Itoa(int(MaxAge/time.Second)))
	writeBody(w, "application/jwk-set+json", body)
}

// Discovery is the OpenID Connect Discovery document, restricted to what
// tokenwarden is: an issuer of bearer tokens signed with EdDSA, with a JWKS
// and an introspection endpoint. It has no authorization or token endpoint
// and issues no ID tokens; the OIDC fields verifiers read are filled, and
// nothing is claimed that the agent does not serve.
type Discovery struct {
	Issuer                   string   `json:"issuer"`
	JWKSURI                  string   `json:"jwks_uri"`
	IntrospectionEndpoint    string   `json:"introspection_endpoint"`
	IntrospectionAuthMethods []string `json:"introspection_endpoint_auth_methods_supported"`
	SigningAlgValues         []string `json:"id_token_signing_alg_values_supported"`
	ResponseTypesSupported   []string `json:"response_types_supported"`
	SubjectTypesSupported    []string `json:"subject_types_supported"`
}

// DiscoveryOf builds the discovery document of policy p, whose issuer must
// be an https URL (policy.IssuerIsURL); ok is false when it is a name, as a
// name gives no base URL to publish.
func DiscoveryOf(p *policy.Policy) (d Discovery, ok bool) {
	iss := p.Issuer()
	if !policy.IssuerIsURL(iss) {
		return Discovery{}, false
	}
	base := trimSlash(iss)
	return Discovery{
		Issuer:                   iss,
		JWKSURI:                  base + JWKSPath,
		IntrospectionEndpoint:    base + IntrospectPath,
		IntrospectionAuthMethods: []string{"bearer"},
		SigningAlgValues:         []string{string(jose.EdDSA)},
		ResponseTypesSupported:   []string{},
		SubjectTypesSupported:    []string{"public"},
	}, true
}

func trimSlash(s string) string {
	for len(s) > 0 && s[len(s)-1] == '/' {
		s = s[:len(s)-1]
	}
	return s
}

func (h *Handler) discovery(w http.ResponseWriter, r *http.Request) {
	d, ok := DiscoveryOf(h.cfg.Policy())
	if !ok {
		w.Header().Set("Cache-Control", "no-store")
		http.Error(w, "discovery needs the policy's issuer to be an https URL; the JWK Set is at "+JWKSPath, http.StatusNotFound)
		return
	}
	body, err := json.Marshal(d)
	if err != nil {
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Cache-Control", "public, max-age="+strconv.Itoa(int(MaxAge/time.Second)))
	writeBody(w, "application/json", body)
}

func writeBody(w http.ResponseWriter, contentType string, body []byte) {
	w.Header().Set("Content-Type", contentType)
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.Write(body)
}
