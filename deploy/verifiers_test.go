// Package deploy_test decodes the offline-verifier examples under deploy/
// strictly, with the types their consumers use.
package deploy_test

import (
	"bytes"
	"encoding/json"
	"os"
	"strings"
	"testing"

	jwtauthn "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	"google.golang.org/protobuf/encoding/protojson"
	securityv1beta1 "istio.io/api/security/v1beta1"
	"sigs.k8s.io/yaml"

	"github.com/tokenwarden/tokenwarden/agent/wellknown"
	"github.com/tokenwarden/tokenwarden/policy"
)

func readJSON(t *testing.T, path string) []byte {
	t.Helper()
	y, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	js, err := yaml.YAMLToJSON(y)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return js
}

func examplePolicy(t *testing.T) *policy.Policy {
	t.Helper()
	data, err := os.ReadFile("policy.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	p, err := policy.Load("policy.example.yaml", data)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestEnvoyJWTAuthnExample: the Envoy example decodes as a
// JwtAuthentication with no unknown field, passes Envoy's own validation,
// and points at the JWKS with the prefix that strips "Bearer tw_".
func TestEnvoyJWTAuthnExample(t *testing.T) {
	var cfg jwtauthn.JwtAuthentication
	if err := (protojson.UnmarshalOptions{}).Unmarshal(readJSON(t, "envoy/jwt_authn.yaml"), &cfg); err != nil {
		t.Fatalf("strict decode: %v", err)
	}
	if err := cfg.ValidateAll(); err != nil {
		t.Fatalf("ValidateAll: %v", err)
	}
	p := cfg.Providers["tokenwarden"]
	if p == nil {
		t.Fatal("no tokenwarden provider")
	}
	if p.Issuer != examplePolicy(t).Issuer() {
		t.Errorf("issuer %q is not the example policy's", p.Issuer)
	}
	if uri := p.GetRemoteJwks().GetHttpUri().GetUri(); !strings.HasSuffix(uri, wellknown.JWKSPath) {
		t.Errorf("remote_jwks uri %q does not end in %s", uri, wellknown.JWKSPath)
	}
	if d := p.GetRemoteJwks().GetCacheDuration().AsDuration(); d != wellknown.MaxAge {
		t.Errorf("cache_duration %s, want the JWKS max-age %s", d, wellknown.MaxAge)
	}
	if h := p.FromHeaders; len(h) != 1 || h[0].Name != "authorization" || h[0].ValuePrefix != "Bearer "+policy.TokenPrefix {
		t.Errorf("from_headers %v, want authorization with prefix \"Bearer tw_\"", h)
	}
	if !p.Forward {
		t.Error("forward is off: ext_authz behind it would not see the token")
	}
	// Strictness of the decoder itself: a misspelt field is refused.
	bad := bytes.Replace(readJSON(t, "envoy/jwt_authn.yaml"), []byte(`"from_headers"`), []byte(`"from_header"`), 1)
	if err := protojson.Unmarshal(bad, &jwtauthn.JwtAuthentication{}); err == nil {
		t.Error("a misspelt field decoded")
	}
}

// TestIstioRequestAuthenticationExample: the Istio example is a
// RequestAuthentication whose spec decodes with istio.io/api types and no
// unknown field, pointing at the JWKS with the "Bearer tw_" prefix.
func TestIstioRequestAuthenticationExample(t *testing.T) {
	var obj struct {
		APIVersion string            `json:"apiVersion"`
		Kind       string            `json:"kind"`
		Metadata   map[string]string `json:"metadata"`
		Spec       json.RawMessage   `json:"spec"`
	}
	dec := json.NewDecoder(bytes.NewReader(readJSON(t, "kubernetes/istio-requestauthentication.yaml")))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&obj); err != nil {
		t.Fatalf("strict decode of the object: %v", err)
	}
	if obj.APIVersion != "security.istio.io/v1" || obj.Kind != "RequestAuthentication" || obj.Metadata["name"] == "" {
		t.Fatalf("object %s/%s %v", obj.APIVersion, obj.Kind, obj.Metadata)
	}
	var spec securityv1beta1.RequestAuthentication
	if err := protojson.Unmarshal(obj.Spec, &spec); err != nil {
		t.Fatalf("strict decode of the spec: %v", err)
	}
	if len(spec.JwtRules) != 1 {
		t.Fatalf("%d jwtRules", len(spec.JwtRules))
	}
	r := spec.JwtRules[0]
	if r.Issuer != examplePolicy(t).Issuer() {
		t.Errorf("issuer %q is not the example policy's", r.Issuer)
	}
	if !strings.HasSuffix(r.JwksUri, wellknown.JWKSPath) {
		t.Errorf("jwksUri %q", r.JwksUri)
	}
	if h := r.FromHeaders; len(h) != 1 || !strings.EqualFold(h[0].Name, "authorization") || h[0].Prefix != "Bearer "+policy.TokenPrefix {
		t.Errorf("fromHeaders %v", h)
	}
	if !r.ForwardOriginalToken {
		t.Error("forwardOriginalToken is off: ext_authz behind it would not see the token")
	}
	bad := bytes.Replace(obj.Spec, []byte(`"jwksUri"`), []byte(`"jwks_url"`), 1)
	if err := protojson.Unmarshal(bad, &securityv1beta1.RequestAuthentication{}); err == nil {
		t.Error("a misspelt field decoded")
	}
}
