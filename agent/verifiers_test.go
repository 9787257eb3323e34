package agent

import (
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/go-jose/go-jose/v4"

	"github.com/tokenwarden/tokenwarden/agent/introspect"
	"github.com/tokenwarden/tokenwarden/agent/wellknown"
	"github.com/tokenwarden/tokenwarden/policy"
)

// fetchJWKS gets the live JWK Set over HTTP, unauthenticated, as a
// verifier does, and decodes it with go-jose.
func fetchJWKS(t *testing.T, adminAddr string) (jose.JSONWebKeySet, *http.Response) {
	t.Helper()
	resp, err := http.Get("http://" + adminAddr + wellknown.JWKSPath)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %s", wellknown.JWKSPath, resp.StatusCode, body)
	}
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(body, &set); err != nil {
		t.Fatalf("go-jose cannot decode the JWK Set: %v\n%s", err, body)
	}
	return set, resp
}

// verifyOffline verifies token as an offline verifier does: strip the
// Bearer prefix tw_, parse the compact JWS allowing EdDSA only, pick the
// key by kid from the fetched set, check the signature.
func verifyOffline(set jose.JSONWebKeySet, token string) (policy.Claims, error) {
	var c policy.Claims
	jws, err := jose.ParseSigned(strings.TrimPrefix(token, policy.TokenPrefix), []jose.SignatureAlgorithm{jose.EdDSA})
	if err != nil {
		return c, err
	}
	keys := set.Key(jws.Signatures[0].Header.KeyID)
	if len(keys) != 1 {
		return c, jose.ErrJWKSKidNotFound
	}
	payload, err := jws.Verify(keys[0])
	if err != nil {
		return c, err
	}
	return c, json.Unmarshal(payload, &c)
}

// TestJWKSInteropWithGoJose: tokens the agent issues verify with go-jose
// against the JWK Set fetched live over HTTP, across a key rotation; a
// token signed by a key the set does not hold does not.
func TestJWKSInteropWithGoJose(t *testing.T) {
	r := startAgentWith(t, Config{})
	tok, id := issue(t, r, `{"subject":"svc","class":"service","scopes":["orders:read"]}`)

	set, resp := fetchJWKS(t, r.AdminAddr)
	if got := resp.Header.Get("Cache-Control"); got != "public, max-age=300" {
		t.Errorf("Cache-Control %q, want public, max-age=300", got)
	}
	if got := resp.Header.Get("Content-Type"); got != "application/jwk-set+json" {
		t.Errorf("Content-Type %q", got)
	}
	if len(set.Keys) != 1 {
		t.Fatalf("JWK Set holds %d keys, want the active one", len(set.Keys))
	}
	k := set.Keys[0]
	if !k.Valid() || !k.IsPublic() || k.Algorithm != "EdDSA" || k.Use != "sig" || k.KeyID == "" {
		t.Fatalf("key %+v: want a public EdDSA signing key with a kid", k)
	}
	c, err := verifyOffline(set, tok)
	if err != nil {
		t.Fatalf("go-jose rejects an issued token: %v", err)
	}
	if c.ID != id || c.Subject != "svc" || c.Issuer != "tokenwarden.example" {
		t.Errorf("claims %+v", c)
	}

	// Rotation: the new key is published before it signs anything.
	status, out := call(t, "POST", "http://"+r.AdminAddr+"/v1/keys/rotate", readToken(t, r.AdminTokenFile), "")
	if status != http.StatusCreated {
		t.Fatalf("rotate keys: %d %v", status, out)
	}
	set, _ = fetchJWKS(t, r.AdminAddr)
	if len(set.Keys) != 2 || len(set.Key(out["id"].(string))) != 1 {
		t.Fatalf("after rotation the set holds %d keys, want 2 (active and pending)", len(set.Keys))
	}
	// The emergency rotation signs at once: the old keys stay while their
	// tokens may live; tokens of both verify offline.
	status, out = call(t, "POST", "http://"+r.AdminAddr+"/v1/keys/rotate?now=true", readToken(t, r.AdminTokenFile), "")
	if status != http.StatusCreated {
		t.Fatalf("rotate keys now: %d %v", status, out)
	}
	tok2, _ := issue(t, r, `{"subject":"svc2","class":"service","scopes":["orders:read"]}`)
	set, _ = fetchJWKS(t, r.AdminAddr)
	if len(set.Keys) != 3 {
		t.Fatalf("after rotation the set holds %d keys, want 3 (active and verifying)", len(set.Keys))
	}
	for _, tk := range []string{tok, tok2} {
		if _, err := verifyOffline(set, tk); err != nil {
			t.Errorf("after rotation go-jose rejects a token: %v", err)
		}
	}
	// A set without the signing key must not verify (the kid look-up is
	// what an attacker with another key would need to pass).
	old := jose.JSONWebKeySet{Keys: set.Key(k.KeyID)}
	if _, err := verifyOffline(old, tok2); err == nil {
		t.Error("a token verified against a set lacking its key")
	}
	// Tampered payload: go-jose refuses it.
	parts := strings.Split(tok, ".")
	parts[1] = parts[1][:len(parts[1])-2] + "AA"
	if _, err := verifyOffline(set, strings.Join(parts, ".")); err == nil {
		t.Error("a tampered token verified")
	}
}

// TestWellKnownNeedsNoAuthAndRefusesWrites: the public endpoints answer
// without a token, refuse other methods, and discovery is absent while the
// issuer is a name.
func TestWellKnownNeedsNoAuthAndRefusesWrites(t *testing.T) {
	r := startAgentWith(t, Config{})
	base := "http://" + r.AdminAddr
	tests := []struct {
		method, path string
		want         int
	}{
		{"GET", wellknown.JWKSPath, http.StatusOK},
		{"HEAD", wellknown.JWKSPath, http.StatusOK},
		{"POST", wellknown.JWKSPath, http.StatusMethodNotAllowed},
		{"DELETE", wellknown.JWKSPath, http.StatusMethodNotAllowed},
		{"GET", wellknown.DiscoveryPath, http.StatusNotFound}, // example issuer is a name
		{"GET", "/.well-known/other", http.StatusNotFound},
		{"GET", "/v1/keys", http.StatusUnauthorized}, // admin API still guarded
	}
	for _, tt := range tests {
		req, _ := http.NewRequest(tt.method, base+tt.path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tt.want {
			t.Errorf("%s %s: %d, want %d", tt.method, tt.path, resp.StatusCode, tt.want)
		}
	}
}

// TestIntrospectionOnTheAdminListener: a live agent answers RFC 7662
// introspection for an introspector token, and stops calling a token
// active the moment it is revoked.
func TestIntrospectionOnTheAdminListener(t *testing.T) {
	r := startAgentWith(t, Config{})
	caller, _ := issue(t, r, `{"subject":"gateway","class":"introspector"}`)
	tok, id := issue(t, r, `{"subject":"svc","class":"service","scopes":["orders:read"]}`)
	ask := func(auth string) (int, map[string]any) {
		req, _ := http.NewRequest("POST", "http://"+r.AdminAddr+introspect.Path, strings.NewReader("token="+url.QueryEscape(tok)))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Authorization", "Bearer "+auth)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out map[string]any
		json.NewDecoder(resp.Body).Decode(&out)
		return resp.StatusCode, out
	}
	if status, out := ask(caller); status != http.StatusOK || out["active"] != true || out["jti"] != id || out["scope"] != "orders:read" {
		t.Fatalf("introspect: %d %v", status, out)
	}
	if status, _ := ask(tok); status != http.StatusForbidden {
		t.Errorf("a service token introspected: %d", status)
	}
	admin := readToken(t, r.AdminTokenFile)
	if status, _ := ask(admin); status != http.StatusForbidden {
		t.Errorf("the admin token introspected without the introspect scope: %d", status)
	}
	if status, out := call(t, "POST", "http://"+r.AdminAddr+"/v1/tokens/"+id+"/revoke", admin, `{"reason":"test"}`); status != http.StatusCreated {
		t.Fatalf("revoke: %d %v", status, out)
	}
	if status, out := ask(caller); status != http.StatusOK || len(out) != 1 || out["active"] != false {
		t.Errorf("revoked token: %d %v, want exactly {\"active\":false}", status, out)
	}
}
