package policy

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// MakeDPoPProof signs a DPoP proof (RFC 9449 section 4.2) for one request
// with key (an Ed25519 or EC P-256 private key): htm method, htu url
// (query and fragment are dropped), iat now, a fresh random jti and, when
// token is not empty, ath its hash. It is what `tokenwarden dpop proof`
// runs, for scripts and tests.
func MakeDPoPProof(key crypto.Signer, method, url, token string, now time.Time) (string, error) {
	jwk, err := jose.JSONWebKey{Key: key.Public()}.MarshalJSON()
	if err != nil {
		return "", err
	}
	alg, err := dpopAlgFor(key.Public())
	if err != nil {
		return "", err
	}
	hdr, err := json.Marshal(map[string]any{"typ": dpopTyp, "alg": alg, "jwk": json.RawMessage(jwk)})
	if err != nil {
		return "", err
	}
	c := dpopClaims{JTI: NewTokenID(), HTM: method, HTU: pathOnly(url), IAT: now.Unix()}
	if token != "" {
		c.ATH = AccessTokenHash(token)
	}
	body, err := json.Marshal(c)
	if err != nil {
		return "", err
	}
	input := b64.EncodeToString(hdr) + "." + b64.EncodeToString(body)
	var sig []byte
	switch k := key.(type) {
	case ed25519.PrivateKey:
		sig = ed25519.Sign(k, []byte(input))
	case *ecdsa.PrivateKey:
		sum := sha256.Sum256([]byte(input))
		r, s, err := ecdsa.Sign(rand.Reader, k, sum[:])
		if err != nil {
			return "", err
		}
		sig = make([]byte, 64)
		r.FillBytes(sig[:32])
		s.FillBytes(sig[32:])
	default:
		return "", errors.New("dpop: key must be Ed25519 or EC P-256")
	}
	return input + "." + b64.EncodeToString(sig), nil
}
