package wellknown_test

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/tokenwarden/tokenwarden/agent/store"
	"github.com/tokenwarden/tokenwarden/agent/wellknown"
	"github.com/tokenwarden/tokenwarden/policy"
)

func pub(t *testing.T) ed25519.PublicKey {
	p, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestSetHoldsOnlyKeysThatVerify: retired keys leave the set; private
// halves never enter it.
func TestSetHoldsOnlyKeysThatVerify(t *testing.T) {
	keys := []store.Key{
		{ID: "a", Public: pub(t), State: store.KeyActive, Sealed: []byte("sealed-private")},
		{ID: "v", Public: pub(t), State: store.KeyVerifying},
		{ID: "r", Public: pub(t), State: store.KeyRetired},
	}
	body, err := json.Marshal(wellknown.Set(keys))
	if err != nil {
		t.Fatal(err)
	}
	var raw struct {
		Keys []map[string]any `json:"keys"`
	}
	if err := json.Unmarshal(body, &raw); err != nil {
		t.Fatal(err)
	}
	var kids []string
	for _, k := range raw.Keys {
		kids = append(kids, k["kid"].(string))
		if k["kty"] != "OKP" || k["crv"] != "Ed25519" || k["alg"] != "EdDSA" || k["use"] != "sig" || k["x"] == nil {
			t.Errorf("key %v: want RFC 8037 OKP Ed25519 fields", k)
		}
		if _, ok := k["d"]; ok {
			t.Errorf("key %v carries a private part", k)
		}
	}
	if strings.Join(kids, ",") != "a,v" {
		t.Errorf("kids %v, want a,v", kids)
	}
	if strings.Contains(string(body), "sealed") {
		t.Error("sealed private key reached the set")
	}
	if body, _ := json.Marshal(wellknown.Set(nil)); string(body) != `{"keys":[]}` {
		t.Errorf("empty set encodes as %s, want an empty array", body)
	}
}

func loadPolicy(t *testing.T, issuer string) *policy.Policy {
	t.Helper()
	p, err := policy.Load("p.yaml", []byte("version: 1\nissuer: "+issuer+"\nenvironments:\n  prod: { max_ttl: 24h }\n"))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestDiscovery: with an https issuer the document names it byte for byte
// and the endpoints under it; with a name issuer there is none.
func TestDiscovery(t *testing.T) {
	p := loadPolicy(t, "https://tokens.example.com/tw")
	h, err := wellknown.New(wellknown.Config{Keys: func() []store.Key { return nil }, Policy: func() *policy.Policy { return p }})
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", wellknown.DiscoveryPath, nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("discovery: %d %s", rec.Code, rec.Body)
	}
	var d map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &d); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"issuer":                 "https://tokens.example.com/tw",
		"jwks_uri":               "https://tokens.example.com/tw/.well-known/jwks.json",
		"introspection_endpoint": "https://tokens.example.com/tw/oauth2/introspect",
	}
	for k, v := range want {
		if d[k] != v {
			t.Errorf("%s = %v, want %s", k, d[k], v)
		}
	}
	// A Host header is not trusted to build URLs.
	req := httptest.NewRequest("GET", wellknown.DiscoveryPath, nil)
	req.Host = "evil.example"
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if strings.Contains(rec.Body.String(), "evil") {
		t.Errorf("discovery reflects the Host header: %s", rec.Body)
	}

	named := loadPolicy(t, "tokenwarden.example")
	if _, ok := wellknown.DiscoveryOf(named); ok {
		t.Error("a name issuer got a discovery document")
	}
}
