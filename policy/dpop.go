package policy

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"math/big"
	"net/url"
	"strings"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// BindingDPoP is the class binding that ties a token to a client key (RFC
// 9449): the token's cnf.jkt is the key's RFC 7638 thumbprint, and every
// request must carry a DPoP proof signed by that key.
const BindingDPoP = "dpop"

// DPoP limits.
const (
	// MaxDPoPProofBytes bounds a proof; a longer one is invalid.
	MaxDPoPProofBytes = 4 << 10
	// DefaultDPoPWindow is how far a proof's iat may be from now, either
	// way, and how long its jti is remembered.
	DefaultDPoPWindow = 60 * time.Second
	// DefaultDPoPReplayEntries bounds the replay cache of one node.
	DefaultDPoPReplayEntries = 1 << 16
	maxDPoPJTIBytes          = 128
	dpopTyp                  = "dpop+jwt"
)

// DPoPAlgs are the proof algorithms accepted, as the WWW-Authenticate
// challenge lists them.
const DPoPAlgs = "ES256 EdDSA"

// ValidJKT reports why jkt is not an RFC 7638 SHA-256 thumbprint in
// base64url ("" when it is).
func ValidJKT(jkt string) string {
	b, err := b64.DecodeString(jkt)
	if err != nil || len(b) != sha256.Size {
		return "want the base64url (no padding) SHA-256 JWK thumbprint of RFC 7638, 43 characters"
	}
	return ""
}

// JWKThumbprint returns the RFC 7638 SHA-256 thumbprint (base64url) of a
// public JWK in JSON, refusing private keys and key types proofs cannot use.
func JWKThumbprint(jwkJSON []byte) (string, error) {
	var k jose.JSONWebKey
	if err := k.UnmarshalJSON(jwkJSON); err != nil {
		return "", fmt.Errorf("not a JWK: %w", err)
	}
	if !k.IsPublic() {
		return "", fmt.Errorf("a private key: give the public JWK only")
	}
	if _, err := dpopAlgFor(k.Key); err != nil {
		return "", err
	}
	tp, err := k.Thumbprint(crypto.SHA256)
	if err != nil {
		return "", err
	}
	return b64.EncodeToString(tp), nil
}

func dpopAlgFor(key any) (string, error) {
	switch k := key.(type) {
	case *ecdsa.PublicKey:
		if k.Curve == elliptic.P256() {
			return "ES256", nil
		}
	case ed25519.PublicKey:
		return "EdDSA", nil
	}
	return "", fmt.Errorf("key type %T is not usable for DPoP: use an EC P-256 (ES256) or Ed25519 (EdDSA) key", key)
}

// ProofRequest is what a DPoP proof must match: the request's method and
// URL (scheme, host and path; query and fragment are ignored) and the
// access token it accompanies.
type ProofRequest struct {
	Method, Scheme, Host, Path string
	Token                      string
}

type dpopHeader struct {
	Typ string          `json:"typ"`
	Alg string          `json:"alg"`
	JWK json.RawMessage `json:"jwk"`
}

type dpopClaims struct {
	JTI string `json:"jti"`
	HTM string `json:"htm"`
	HTU string `json:"htu"`
	IAT int64  `json:"iat"`
	ATH string `json:"ath,omitempty"`
}

// ParsedProof is a DPoP proof whose signature verified under its own jwk.
type ParsedProof struct {
	JKT string // thumbprint of the proof's jwk
	JTI string
	HTM string
	HTU string
	IAT int64
	ATH string
}

// ParseDPoPProof parses a DPoP proof JWT and verifies its signature under
// the jwk of its header (RFC 9449 section 4.3 checks 2 to 7): one compact
// JWS, typ dpop+jwt, alg ES256 or EdDSA, a public jwk of the matching type,
// jti, htm, htu and iat present. It does not check the request, time,
// token or replay: DPoPChecker.Check does.
func ParseDPoPProof(proof string) (*ParsedProof, string) {
	if proof == "" {
		return nil, "no DPoP proof"
	}
	if len(proof) > MaxDPoPProofBytes {
		return nil, "proof too large"
	}
	if !isCompactJWS(proof) {
		return nil, "not one compact JWS"
	}
	hdrB64, rest, ok1 := strings.Cut(proof, ".")
	bodyB64, sigB64, ok2 := strings.Cut(rest, ".")
	if !ok1 || !ok2 || strings.Contains(sigB64, ".") {
		return nil, "want three dot-separated segments"
	}
	hdrJSON, err1 := b64.DecodeString(hdrB64)
	body, err2 := b64.DecodeString(bodyB64)
	sig, err3 := b64.DecodeString(sigB64)
	if err1 != nil || err2 != nil || err3 != nil {
		return nil, "segment is not base64url"
	}
	var h dpopHeader
	if err := strictJSON(hdrJSON, &h); err != nil {
		return nil, "header: " + err.Error()
	}
	if h.Typ != dpopTyp {
		return nil, "typ is not dpop+jwt"
	}
	if h.Alg != "ES256" && h.Alg != "EdDSA" {
		return nil, "alg is not ES256 or EdDSA"
	}
	if len(h.JWK) == 0 {
		return nil, "no jwk"
	}
	var k jose.JSONWebKey
	if err := k.UnmarshalJSON(h.JWK); err != nil {
		return nil, "jwk is not a JWK"
	}
	if !k.IsPublic() {
		return nil, "jwk is a private key"
	}
	alg, err := dpopAlgFor(k.Key)
	if err != nil || alg != h.Alg {
		return nil, "jwk does not fit alg"
	}
	input := []byte(proof[:len(hdrB64)+1+len(bodyB64)])
	if !verifyProofSignature(k.Key, input, sig) {
		return nil, "signature does not verify"
	}
	var c dpopClaims
	if err := strictJSON(body, &c); err != nil {
		return nil, "claims: " + err.Error()
	}
	if c.JTI == "" || len(c.JTI) > maxDPoPJTIBytes || c.HTM == "" || c.HTU == "" || c.IAT <= 0 {
		return nil, "jti, htm, htu and iat are required"
	}
	tp, err := k.Thumbprint(crypto.SHA256)
	if err != nil {
		return nil, "jwk has no thumbprint"
	}
	return &ParsedProof{JKT: b64.EncodeToString(tp), JTI: c.JTI, HTM: c.HTM, HTU: c.HTU, IAT: c.IAT, ATH: c.ATH}, ""
}

func verifyProofSignature(key any, input, sig []byte) bool {
	switch k := key.(type) {
	case ed25519.PublicKey:
		return len(sig) == ed25519.SignatureSize && ed25519.Verify(k, input, sig)
	case *ecdsa.PublicKey:
		if len(sig) != 64 {
			return false
		}
		sum := sha256.Sum256(input)
		r, s := new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])
		return ecdsa.Verify(k, sum[:], r, s)
	}
	return false
}

// NormalizeHTU is the form in which htu and the request URL are compared
// (RFC 9449 section 4.3 check 9, RFC 3986 section 6.2.2 and 6.2.3): scheme
// and host lower case, the default port dropped, an empty path "/", the
// percent-encoding hex upper case, query and fragment dropped. ok is false
// for what is not an absolute http(s) URL.
func NormalizeHTU(raw string) (string, bool) {
	u, err := url.Parse(raw)
	if err != nil || u.Opaque != "" || u.User != nil {
		return "", false
	}
	scheme := strings.ToLower(u.Scheme)
	if scheme != "https" && scheme != "http" {
		return "", false
	}
	host := strings.ToLower(u.Host)
	if host == "" {
		return "", false
	}
	if scheme == "https" {
		host = strings.TrimSuffix(host, ":443")
	} else {
		host = strings.TrimSuffix(host, ":80")
	}
	path := u.EscapedPath()
	if path == "" {
		path = "/"
	}
	return scheme + "://" + host + upperPercent(path), true
}

func upperPercent(p string) string {
	if !strings.Contains(p, "%") {
		return p
	}
	b := []byte(p)
	for i := 0; i+2 < len(b); i++ {
		if b[i] == '%' {
			b[i+1], b[i+2] = upperHex(b[i+1]), upperHex(b[i+2])
		}
	}
	return string(b)
}

func upperHex(c byte) byte {
	if c >= 'a' && c <= 'f' {
		return c - 'a' + 'A'
	}
	return c
}

// AccessTokenHash is the ath of a proof for token: base64url(SHA-256).
func AccessTokenHash(token string) string {
	sum := sha256.Sum256([]byte(token))
	return b64.EncodeToString(sum[:])
}

// DPoPChecker checks proofs for one node: the request they name, their
// age, their key against the token's cnf.jkt, and replay. Replay protection
// is per node: a proof replayed at another node within the window is not
// caught there (see docs/binding.md). Safe for concurrent use.
type DPoPChecker struct {
	window time.Duration
	max    int

	mu   sync.Mutex
	seen map[string]int64 // jkt + " " + jti -> unix second it may be forgotten
}

// NewDPoPChecker builds a checker; zero values take the defaults.
func NewDPoPChecker(window time.Duration, maxEntries int) *DPoPChecker {
	if window <= 0 {
		window = DefaultDPoPWindow
	}
	if maxEntries <= 0 {
		maxEntries = DefaultDPoPReplayEntries
	}
	return &DPoPChecker{window: window, max: maxEntries, seen: map[string]int64{}}
}

// Check verifies proof for req and a token bound to jkt at now, and
// records its jti. The reason is dpop_invalid for a proof that is not
// valid for this request, sender_mismatch for a valid proof by another key,
// dpop_replayed for a jti seen before within the window.
func (c *DPoPChecker) Check(proof, jkt string, req ProofRequest, now time.Time) Reason {
	p, why := ParseDPoPProof(proof)
	if why != "" {
		return ReasonDPoPInvalid
	}
	if p.HTM != req.Method {
		return ReasonDPoPInvalid
	}
	want, ok1 := NormalizeHTU(req.Scheme + "://" + req.Host + pathOnly(req.Path))
	got, ok2 := NormalizeHTU(p.HTU)
	if !ok1 || !ok2 || got != want {
		return ReasonDPoPInvalid
	}
	w := int64(c.window / time.Second)
	if sec := now.Unix(); p.IAT < sec-w || p.IAT > sec+w {
		return ReasonDPoPInvalid
	}
	if p.ATH == "" || p.ATH != AccessTokenHash(req.Token) {
		return ReasonDPoPInvalid
	}
	if p.JKT != jkt {
		return ReasonSenderMismatch
	}
	if !c.remember(p.JKT+" "+p.JTI, p.IAT+2*w, now.Unix()) {
		return ReasonDPoPReplayed
	}
	return ""
}

// remember records key until forgetAt; false when it is already there.
// When full, it drops expired entries; still full, it refuses (fail
// closed: a proof that cannot be remembered could be replayed).
func (c *DPoPChecker) remember(key string, forgetAt, now int64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if until, ok := c.seen[key]; ok && until > now {
		return false
	}
	if len(c.seen) >= c.max {
		for k, until := range c.seen {
			if until <= now {
				delete(c.seen, k)
			}
		}
		if len(c.seen) >= c.max {
			return false
		}
	}
	c.seen[key] = forgetAt
	return true
}

func pathOnly(p string) string {
	if i := strings.IndexAny(p, "?#"); i >= 0 {
		return p[:i]
	}
	return p
}
