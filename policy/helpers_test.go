package policy_test

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"os"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/policy"
)

// Fixtures shared by the token and decision tests. Keys come from fixed
// seeds so that tokens, and the fuzz corpus built from them, are the same on
// every run.

// testNow is the clock of every test: tokens are minted at it.
var testNow = time.Unix(1_900_000_000, 0)

var (
	testKey  = seededKey("k_test", 1)
	otherKey = seededKey("k_other", 2)
)

func seededKey(kid string, seed byte) policy.SigningKey {
	return policy.SigningKey{ID: kid, Private: ed25519.NewKeyFromSeed(bytes.Repeat([]byte{seed}, ed25519.SeedSize))}
}

func public(k policy.SigningKey) ed25519.PublicKey { return k.Private.Public().(ed25519.PublicKey) }

// keySet trusts the given keys.
func keySet(keys ...policy.SigningKey) *policy.KeySet {
	m := map[string]ed25519.PublicKey{}
	for _, k := range keys {
		m[k.ID] = public(k)
	}
	return policy.NewKeySet(m)
}

// loadPolicy loads a policy from testdata and fails the test on any error.
func loadPolicy(tb testing.TB, name string) *policy.Policy {
	tb.Helper()
	data, err := os.ReadFile(name)
	if err != nil {
		tb.Fatal(err)
	}
	p, err := policy.Load(name, data)
	if err != nil {
		tb.Fatalf("load %s: %v", name, err)
	}
	return p
}

// claims are valid claims for the test policy in prod: class service,
// orders:read, one hour. Edit the copy to make a case.
func claims() policy.Claims {
	iat := testNow.Unix()
	return policy.Claims{
		Issuer: "tokenwarden.test", Subject: "svc-billing", ID: "aaaaaaaaaaaaaaaaaaaaaaaaaa",
		IssuedAt: iat, NotBefore: iat, Expires: iat + 3600,
		Scope: "orders:read", Env: "prod", Class: "service",
	}
}

func mint(tb testing.TB, key policy.SigningKey, c policy.Claims) string {
	tb.Helper()
	tok, err := policy.Mint(key, c)
	if err != nil {
		tb.Fatal(err)
	}
	return tok
}

var b64 = base64.RawURLEncoding

// signRaw builds a token from raw header and claims bytes, signed with key:
// how a forger holding a key (or none) crafts what Mint never would.
func signRaw(key policy.SigningKey, header, body []byte) string {
	input := b64.EncodeToString(header) + "." + b64.EncodeToString(body)
	return policy.TokenPrefix + input + "." + b64.EncodeToString(ed25519.Sign(key.Private, []byte(input)))
}

func headerJSON(alg, kid string) []byte {
	h, _ := json.Marshal(map[string]string{"alg": alg, "kid": kid, "typ": "JWT"})
	return h
}

func claimsJSON(tb testing.TB, c any) []byte {
	tb.Helper()
	b, err := json.Marshal(c)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}
