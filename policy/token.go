package policy

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
)

const (
	// TokenPrefix starts every token so that secret scanners find them.
	TokenPrefix = "tw_"
	// MaxTokenBytes bounds a token string; longer ones are malformed.
	MaxTokenBytes = 8 << 10
	// DefaultClockSkew is the policy's clock_skew when it sets none: how
	// far in the future a token's nbf and iat may be (clocks of the node
	// that issued it and of this one disagree).
	DefaultClockSkew = 5 * time.Second
	// MaxClockSkew caps clock_skew and exp_leeway. It is also the margin by
	// which what is kept about tokens (revocation rules, learned hashes,
	// cached verifications) outlives their exp, whatever the policy in
	// force allows: a reload cannot make a forgotten token valid again.
	MaxClockSkew = 60 * time.Second

	algEdDSA = "EdDSA"
)

var (
	b64       = base64.RawURLEncoding.Strict()
	idEncoder = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)
)

// Claims are the JWT claims of a tokenwarden token.
type Claims struct {
	Issuer    string `json:"iss"`
	Subject   string `json:"sub"`
	ID        string `json:"jti"`
	IssuedAt  int64  `json:"iat"`
	NotBefore int64  `json:"nbf"`
	Expires   int64  `json:"exp"`
	Scope     string `json:"scope"`
	Env       string `json:"env"`
	Class     string `json:"cls"`
	Tenant    string `json:"ten,omitempty"`
	Rotated   string `json:"rot,omitempty"`
	// Cnf binds the token to its sender (RFC 7800); nil for a bearer
	// token. See Confirmation.
	Cnf *Confirmation `json:"cnf,omitempty"`
}

// Token is a verified token: its claims, parsed scopes, signing key and the
// hashes enforcement points know it by. It never holds the token string.
type Token struct {
	Claims
	KeyID string
	// Scopes are the scopes the token holds: after Verify, those of its
	// scope claim that its class still grants under the policy it was
	// verified against (Claims.Scope keeps the claim as signed).
	Scopes []string
	// WireHash is the token's wire identity: the first 64 bits of its
	// signature (see WireHash), as the kernel computes it.
	WireHash uint64

	// verifiedBy is the Verifier (policy, keys) a Decider verified the
	// token under before caching it; a cached token is trusted only under
	// that same Verifier.
	verifiedBy *Verifier
}

// HasScope reports whether the token holds scope.
func (t *Token) HasScope(scope string) bool {
	for _, s := range t.Scopes {
		if s == scope {
			return true
		}
	}
	return false
}

// ExpiresAt is exp as a time.
func (t *Token) ExpiresAt() time.Time { return time.Unix(t.Expires, 0) }

// NewTokenID returns a fresh random jti: 16 random bytes in lower-case base32.
func NewTokenID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("crypto/rand failed: " + err.Error())
	}
	return idEncoder.EncodeToString(b[:])
}

// WireHash is a token's wire identity: what the kernel side counts and
// revokes by, the agent's per-token counters and the store's second key. It
// is the base64url decoding of the 11 characters that start SignatureChars
// bytes before the token's end (at its start if it is shorter), read
// big-endian and cut to 64 bits; characters past the end, and bytes outside
// the base64url alphabet, count as 0.
//
// A token this package mints ends with its 86-character Ed25519 signature
// segment, so its identity is the first 8 bytes of that signature (the
// encoding of the point R, unique per signed message). Two tokens share an
// identity only if they carry the same signature bits: a holder who alters
// the header or claims either keeps the signature (same identity, same
// revocation) or produces a token Verify refuses. It is not a hash of
// attacker-chosen bytes, so nobody can aim a crafted token at another
// token's identity without knowing that token's signature.
//
// The identity is read at a fixed distance from the end, not after the last
// '.': the kernel finds it without searching the token for a '.', at the
// same cost for every token length. Every token an agent accepts is one
// minted here (EdDSA, the tw_ prefix); for any other string the identity is
// just 64 bits of its tail, which ext_authz refuses anyway.
func WireHash(token string) uint64 {
	seg := token
	if len(token) >= SignatureChars {
		seg = token[len(token)-SignatureChars:]
	}
	var id uint64
	for i := 0; i < wireIDChars-1; i++ {
		var v byte
		if i < len(seg) {
			v = b64urlValue[seg[i]]
		}
		id = id<<6 | uint64(v)
	}
	var v byte
	if len(seg) >= wireIDChars {
		v = b64urlValue[seg[wireIDChars-1]]
	}
	return id<<4 | uint64(v>>2)
}

// SignatureChars is the length of a minted token's signature segment: 64
// Ed25519 signature bytes in unpadded base64url. WireHash reads the
// identity from the first characters of the token's last SignatureChars.
const SignatureChars = 86

// wireIDChars is how many signature characters WireHash decodes: 66 bits,
// of which the first 64 are kept.
const wireIDChars = 11

// b64urlValue maps a base64url character to its value and every other byte
// to 0, exactly as the kernel program's table does.
var b64urlValue = func() (t [256]byte) {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	for i := 0; i < len(alphabet); i++ {
		t[alphabet[i]] = byte(i)
	}
	return t
}()

// LeakHash is sha256 of the token string: what the store keeps so a leaked
// token can be looked up without the token ever being stored.
func LeakHash(token string) [32]byte { return sha256.Sum256([]byte(token)) }

// SigningKey is an Ed25519 private key with its kid.
type SigningKey struct {
	ID      string
	Private ed25519.PrivateKey
}

// NewSigningKey generates a key with a fresh kid.
func NewSigningKey() (SigningKey, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return SigningKey{}, fmt.Errorf("generate ed25519 key: %w", err)
	}
	return SigningKey{ID: "k_" + NewTokenID()[:12], Private: priv}, nil
}

// KeySet holds the public keys that verify tokens, by kid. It is immutable.
type KeySet struct {
	keys map[string]ed25519.PublicKey
}

// NewKeySet builds a key set.
func NewKeySet(keys map[string]ed25519.PublicKey) *KeySet {
	m := make(map[string]ed25519.PublicKey, len(keys))
	for k, v := range keys {
		m[k] = v
	}
	return &KeySet{keys: m}
}

// Has reports whether kid verifies tokens.
func (k *KeySet) Has(kid string) bool {
	if k == nil {
		return false
	}
	_, ok := k.keys[kid]
	return ok
}

type header struct {
	Alg string `json:"alg"`
	Kid string `json:"kid"`
	Typ string `json:"typ,omitempty"`
}

// Mint signs claims into a token string. It checks nothing about policy:
// Issue does that.
func Mint(key SigningKey, c Claims) (string, error) {
	if key.ID == "" || len(key.Private) != ed25519.PrivateKeySize {
		return "", errors.New("mint: signing key is not set")
	}
	if c.Expires == 0 || c.ID == "" {
		return "", errors.New("mint: claims need jti and exp")
	}
	h, err := json.Marshal(header{Alg: algEdDSA, Kid: key.ID, Typ: "JWT"})
	if err != nil {
		return "", err
	}
	body, err := json.Marshal(c)
	if err != nil {
		return "", err
	}
	input := b64.EncodeToString(h) + "." + b64.EncodeToString(body)
	sig := ed25519.Sign(key.Private, []byte(input))
	tok := TokenPrefix + input + "." + b64.EncodeToString(sig)
	if len(tok) > MaxTokenBytes {
		// Verify would refuse it, and the kernel side meters tokens up
		// to this size (docs/kernel.md).
		return "", refuse("the token would be %d bytes, over the %d-byte limit that verification and the kernel side accept: ask for fewer scopes or a shorter subject or tenant", len(tok), MaxTokenBytes)
	}
	return tok, nil
}

// VerifyError is a token rejection with its reason code.
type VerifyError struct {
	Reason Reason
	Detail string
}

func (e *VerifyError) Error() string { return string(e.Reason) + ": " + e.Detail }

func reject(r Reason, detail string) *VerifyError { return &VerifyError{Reason: r, Detail: detail} }

// Verifier checks tokens against a key set and a policy for one environment.
type Verifier struct {
	Keys   *KeySet
	Policy *Policy
	Env    string
}

// Verify parses and verifies a token string. It pins alg to EdDSA and checks
// the signature, kid, iss, exp, nbf, lifetime and environment.
//
// Every segment is decoded before the signature is checked, and only the
// canonical form of a token is accepted: one string, one token. Otherwise a
// holder could alter the bytes without breaking the signature and so dodge
// everything keyed by the token bytes (the kernel's revoked map, WireHash).
func (v *Verifier) Verify(token string, now time.Time) (*Token, *VerifyError) {
	t, verr := v.Keys.VerifySignature(token)
	if verr != nil {
		return nil, verr
	}
	if verr := v.checkClaims(t, now); verr != nil {
		return nil, verr
	}
	return t, nil
}

// VerifySignature parses a token and checks its signature under the key
// set, and nothing else: not time, environment or policy. It is what
// `tokenwarden scan` uses to confirm that a string found in the wild is a
// real token (no false positives), whatever its state.
func (k *KeySet) VerifySignature(token string) (*Token, *VerifyError) {
	if len(token) > MaxTokenBytes {
		return nil, reject(ReasonMalformedToken, fmt.Sprintf("token is over %d bytes", MaxTokenBytes))
	}
	rest, ok := strings.CutPrefix(token, TokenPrefix)
	if !ok {
		return nil, reject(ReasonMalformedToken, "token lacks the "+TokenPrefix+" prefix")
	}
	if !isCompactJWS(rest) {
		return nil, reject(ReasonMalformedToken, "token holds bytes outside base64url and '.'")
	}
	hdrB64, rest, ok1 := strings.Cut(rest, ".")
	bodyB64, sigB64, ok2 := strings.Cut(rest, ".")
	if !ok1 || !ok2 || strings.Contains(sigB64, ".") {
		return nil, reject(ReasonMalformedToken, "want three dot-separated segments")
	}
	hdrJSON, err := b64.DecodeString(hdrB64)
	if err != nil {
		return nil, reject(ReasonMalformedToken, "header is not base64url")
	}
	body, err := b64.DecodeString(bodyB64)
	if err != nil {
		return nil, reject(ReasonMalformedToken, "claims are not base64url")
	}
	sig, err := b64.DecodeString(sigB64)
	if err != nil {
		return nil, reject(ReasonMalformedToken, "signature is not base64url")
	}
	var h header
	if err := strictJSON(hdrJSON, &h); err != nil {
		return nil, reject(ReasonMalformedToken, "header: "+err.Error())
	}
	if h.Alg != algEdDSA {
		return nil, reject(ReasonBadSignature, fmt.Sprintf("alg %q is not accepted; only EdDSA", h.Alg))
	}
	if k == nil {
		return nil, reject(ReasonUnknownKey, "no verification keys")
	}
	pub, ok := k.keys[h.Kid]
	if !ok {
		return nil, reject(ReasonUnknownKey, "unknown or retired kid")
	}
	if len(sig) != ed25519.SignatureSize {
		return nil, reject(ReasonMalformedToken, "signature is not an Ed25519 signature")
	}
	input := token[len(TokenPrefix) : len(TokenPrefix)+len(hdrB64)+1+len(bodyB64)]
	if !ed25519.Verify(pub, []byte(input), sig) {
		return nil, reject(ReasonBadSignature, "signature does not verify")
	}
	var c Claims
	if err := strictJSON(body, &c); err != nil {
		return nil, reject(ReasonMalformedToken, "claims: "+err.Error())
	}
	return &Token{Claims: c, KeyID: h.Kid, Scopes: strings.Fields(c.Scope), WireHash: WireHash(token)}, nil
}

// isCompactJWS reports whether s holds only base64url characters and dots.
// The base64 decoder skips \r and \n, so they must be refused before it.
func isCompactJWS(s string) bool {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-', c == '_', c == '.':
		default:
			return false
		}
	}
	return true
}

// checkClaims checks the time-dependent and policy-dependent claims and
// narrows t.Scopes to what the token's class grants; Decide repeats the time
// checks on cached tokens, and verifies again a token cached under another
// policy.
func (v *Verifier) checkClaims(t *Token, now time.Time) *VerifyError {
	switch {
	case t.ID == "" || t.Subject == "":
		return reject(ReasonMalformedToken, "jti and sub are required")
	case t.Expires == 0:
		return reject(ReasonMalformedToken, "exp is required")
	case t.IssuedAt <= 0:
		return reject(ReasonMalformedToken, "iat is required")
	case t.Expires <= t.IssuedAt:
		// Also keeps exp - iat below from overflowing.
		return reject(ReasonMalformedToken, "exp must be after iat")
	case v.Policy == nil:
		return reject(ReasonInternalError, "no policy loaded")
	case t.Issuer != v.Policy.Issuer():
		return reject(ReasonMalformedToken, "iss does not name this issuer")
	}
	if r := checkTimes(&t.Claims, now, v.Policy); r != "" {
		return reject(r, "outside its validity window")
	}
	if t.Env != v.Env {
		return reject(ReasonWrongEnvironment, fmt.Sprintf("minted for %q, this is %q", t.Env, v.Env))
	}
	class, ok := v.Policy.Class(t.Class)
	if !ok {
		return reject(ReasonUnknownClass, fmt.Sprintf("class %q is not in the policy", t.Class))
	}
	limit := v.Policy.Lifetime(v.Env, t.Class)
	if limit == 0 {
		return reject(ReasonWrongEnvironment, fmt.Sprintf("class %q is not allowed in %q", t.Class, v.Env))
	}
	// In seconds: exp - iat in nanoseconds would overflow for a far exp and
	// let an everlasting token through.
	if t.Expires-t.IssuedAt > int64(limit/time.Second) {
		return reject(ReasonLifetimeExceedsPolicy, fmt.Sprintf("lifetime above the policy's %s", limit))
	}
	if r := class.checkBinding(t.Cnf); r != nil {
		return r
	}
	t.Scopes = class.grantedOf(t.Scopes)
	return nil
}

// grantedOf keeps, in place, the scopes of a token that the class grants
// under this policy: a scope withdrawn from the class stops working in
// tokens issued before, as a lifetime cut does. scopes must be the token's
// own slice (fresh from VerifySignature), never one shared with a cache.
func (c *Class) grantedOf(scopes []string) []string {
	kept := scopes[:0]
	for _, s := range scopes {
		if c.scopes[s] {
			kept = append(kept, s)
		}
	}
	return kept
}

// checkTimes returns the reason a token is not valid at now under p, or
// "". With exp_leeway 0 (the default) a token is refused from the second
// its exp names; nbf and iat may be up to clock_skew ahead of now.
func checkTimes(c *Claims, now time.Time, p *Policy) Reason {
	sec := now.Unix()
	if sec >= c.Expires+int64(p.expLeeway/time.Second) {
		return ReasonExpired
	}
	skew := int64(p.clockSkew / time.Second)
	if c.NotBefore > sec+skew || c.IssuedAt > sec+skew {
		return ReasonNotYetValid
	}
	return ""
}

// strictJSON decodes one JSON object, refusing trailing data. (Decoder.More
// alone misses a trailing '}' or ']'.)
func strictJSON(data []byte, v any) error {
	if t := bytes.TrimLeft(data, " \t\r\n"); len(t) == 0 || t[0] != '{' {
		return errors.New("not a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(v); err != nil {
		return errors.New("not a JSON object")
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("trailing data after the JSON object")
	}
	return nil
}

// idDecode maps a byte of a jti to its 5-bit value, or to 0xff.
var idDecode = func() (t [256]byte) {
	for i := range t {
		t[i] = 0xff
	}
	for i, c := range "abcdefghijklmnopqrstuvwxyz234567" {
		t[c] = byte(i)
	}
	return t
}()

// TokenIDKey decodes a jti minted by NewTokenID into its 16 bytes, without
// allocating. ok is false for ids of any other shape. It is on the hot path
// (every revocation look-up), so it decodes 8 characters (40 bits) at a time
// and checks validity once.
func TokenIDKey(id string) (key [16]byte, ok bool) {
	if len(id) != 26 {
		return key, false
	}
	var bad byte // a 0xff from idDecode sets bit 7
	for blk := 0; blk < 3; blk++ {
		var acc uint64
		for _, c := range []byte(id[blk*8 : blk*8+8]) {
			v := idDecode[c]
			bad |= v
			acc = acc<<5 | uint64(v&31)
		}
		o := blk * 5
		key[o], key[o+1], key[o+2], key[o+3], key[o+4] = byte(acc>>32), byte(acc>>24), byte(acc>>16), byte(acc>>8), byte(acc)
	}
	hi, lo := idDecode[id[24]], idDecode[id[25]]
	// 26*5 = 130 bits: the last 2 are padding and must be zero.
	if (bad|hi|lo)&0x80 != 0 || lo&3 != 0 {
		return [16]byte{}, false
	}
	key[15] = hi<<3 | lo>>2
	return key, true
}
