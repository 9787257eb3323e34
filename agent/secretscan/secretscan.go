// Package secretscan is the agent's side of GitHub's secret scanning
// partner program: GitHub finds strings matching the registered token
// pattern in public places and POSTs them here, signed. The handler
// verifies GitHub's ECDSA P-256 signature over the raw body with a key from
// the operator's key file or, when configured, fetched from GitHub's key URL
// (unknown key identifier: refused), confirms each
// string is a genuine tokenwarden token by its Ed25519 signature (a string
// that only looks like one is a false positive), revokes genuine ones by
// their SHA-256 through the same path as POST /v1/leaks, audits the report
// with where each token was found, and answers with the partner feedback
// array. Replays are idempotent: a token revoked before is not revoked
// again. The token strings are never logged or stored.
package secretscan

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"os"
	"strconv"

	"github.com/tokenwarden/tokenwarden/agent/audit"
	"github.com/tokenwarden/tokenwarden/agent/revoke"
	"github.com/tokenwarden/tokenwarden/agent/store"
	"github.com/tokenwarden/tokenwarden/policy"
)

// Path is where GitHub posts alerts.
const Path = "/github/secret-scanning"

// Bounds on what GitHub may send.
const (
	MaxBodyBytes = 1 << 20
	MaxAlerts    = 1000
	maxURLBytes  = 400 // of the url recorded with a revocation
	maxKeysBytes = 1 << 20
)

// Actor is the audit actor of revocations made from GitHub's alerts.
const Actor = "github-secret-scanning"

// Headers GitHub signs its requests with.
const (
	KeyIDHeader     = "Github-Public-Key-Identifier"
	SignatureHeader = "Github-Public-Key-Signature"
)

// Feedback labels.
const (
	TruePositive  = "true_positive"
	FalsePositive = "false_positive"
)

// Alert is one string GitHub found.
type Alert struct {
	Token  string `json:"token"`
	Type   string `json:"type"`
	URL    string `json:"url"`
	Source string `json:"source"`
}

// Feedback is the partner's answer about one alert.
type Feedback struct {
	TokenRaw  string `json:"token_raw"`
	TokenType string `json:"token_type"`
	Label     string `json:"label"`
}

// Keys are GitHub's secret scanning public keys by key identifier.
type Keys map[string]*ecdsa.PublicKey

// ParseKeys reads GitHub's key document, as served at
// https://api.github.com/meta/public_keys/secret_scanning:
// {"public_keys": [{"key_identifier": "...", "key": "<PEM>", "is_current": true}]}.
// Every key must be an ECDSA P-256 public key; a document without any is
// refused.
func ParseKeys(data []byte) (Keys, error) {
	var doc struct {
		PublicKeys []struct {
			KeyIdentifier string `json:"key_identifier"`
			Key           string `json:"key"`
		} `json:"public_keys"`
	}
	if len(data) > maxKeysBytes {
		return nil, fmt.Errorf("key document is over %d bytes", maxKeysBytes)
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("key document: %w", err)
	}
	keys := Keys{}
	for n, k := range doc.PublicKeys {
		if k.KeyIdentifier == "" {
			return nil, fmt.Errorf("public_keys[%d]: key_identifier is empty", n)
		}
		if _, dup := keys[k.KeyIdentifier]; dup {
			return nil, fmt.Errorf("public_keys[%d]: key_identifier %q given twice", n, k.KeyIdentifier)
		}
		block, rest := pem.Decode([]byte(k.Key))
		if block == nil || block.Type != "PUBLIC KEY" || len(bytes.TrimSpace(rest)) != 0 {
			return nil, fmt.Errorf("public_keys[%d]: key is not one PEM PUBLIC KEY block", n)
		}
		pub, err := x509.ParsePKIXPublicKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("public_keys[%d]: %w", n, err)
		}
		ec, ok := pub.(*ecdsa.PublicKey)
		if !ok || ec.Curve != elliptic.P256() {
			return nil, fmt.Errorf("public_keys[%d]: want an ECDSA P-256 key", n)
		}
		keys[k.KeyIdentifier] = ec
	}
	if len(keys) == 0 {
		return nil, errors.New("key document holds no public_keys")
	}
	return keys, nil
}

// LoadKeys reads the key document from a file.
func LoadKeys(path string) (Keys, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	keys, err := ParseKeys(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return keys, nil
}

// ErrSignature is a request whose signature does not verify.
var ErrSignature = errors.New("signature does not verify")

// Verify checks GitHub's signature of body: sig is the base64 ASN.1 DER
// ECDSA signature over SHA-256(body) by the key named keyID.
func (k Keys) Verify(keyID, sig string, body []byte) error {
	pub, ok := k[keyID]
	if !ok || keyID == "" {
		return ErrUnknownKey
	}
	der, err := base64.StdEncoding.Strict().DecodeString(sig)
	if err != nil || len(der) == 0 || len(der) > 128 {
		return fmt.Errorf("%w: signature is not base64 DER", ErrSignature)
	}
	digest := sha256.Sum256(body)
	if !ecdsa.VerifyASN1(pub, digest[:], der) {
		return ErrSignature
	}
	return nil
}

// ParseAlerts decodes GitHub's alert array. Fields GitHub may add are
// ignored; anything but one JSON array of at most MaxAlerts objects is
// refused.
func ParseAlerts(body []byte) ([]Alert, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	var alerts []Alert
	if err := dec.Decode(&alerts); err != nil {
		return nil, fmt.Errorf("body: want a JSON array of alerts: %w", err)
	}
	if alerts == nil {
		return nil, errors.New("body: want a JSON array of alerts, got null")
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("body: data after the array")
	}
	if len(alerts) > MaxAlerts {
		return nil, fmt.Errorf("body: %d alerts, at most %d", len(alerts), MaxAlerts)
	}
	return alerts, nil
}

// Leaks revokes leaked tokens; *revoke.Revoker implements it.
type Leaks interface {
	RevokeLeak(ctx context.Context, h [32]byte, source, actor string) (revoke.Leak, error)
}

// Auditor records audit records; *audit.Log implements it.
type Auditor interface {
	Append(r audit.Record) (audit.Record, error)
}

// Config configures the handler.
type Config struct {
	Keys   *KeySource            // GitHub's public keys
	Tokens func() *policy.KeySet // keys that verify tokenwarden tokens
	Leaks  Leaks
	Audit  Auditor
	Logger *slog.Logger
}

// Handler receives GitHub's alerts.
type Handler struct{ cfg Config }

// New builds the handler.
func New(cfg Config) (*Handler, error) {
	if cfg.Keys == nil || cfg.Tokens == nil || cfg.Leaks == nil || cfg.Audit == nil {
		return nil, errors.New("secretscan: Keys, Tokens, Leaks and Audit are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Handler{cfg: cfg}, nil
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		fail(w, http.StatusMethodNotAllowed, "use POST")
		return
	}
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		fail(w, http.StatusUnsupportedMediaType, "send Content-Type: application/json")
		return
	}
	if len(r.Header.Values(KeyIDHeader)) != 1 || len(r.Header.Values(SignatureHeader)) != 1 {
		fail(w, http.StatusUnauthorized, "send one "+KeyIDHeader+" and one "+SignatureHeader)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			fail(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("body is over %d bytes", MaxBodyBytes))
			return
		}
		fail(w, http.StatusBadRequest, "could not read the body")
		return
	}
	if err := h.cfg.Keys.Verify(r.Context(), r.Header.Get(KeyIDHeader), r.Header.Get(SignatureHeader), body); err != nil {
		h.cfg.Logger.Warn("secret scanning alert refused: signature", "key_id", truncate(r.Header.Get(KeyIDHeader), 128), "remote", r.RemoteAddr, "err", err)
		fail(w, http.StatusUnauthorized, "signature does not verify")
		return
	}
	alerts, err := ParseAlerts(body)
	if err != nil {
		fail(w, http.StatusBadRequest, err.Error())
		return
	}
	feedback, err := h.process(r.Context(), alerts, r.Header.Get(KeyIDHeader))
	if err != nil {
		// A genuine token that could not be revoked: GitHub retries on
		// an error, and the replay is idempotent.
		h.cfg.Logger.Error("secret scanning alert not fully handled", "err", err)
		fail(w, http.StatusInternalServerError, "internal error; retry")
		return
	}
	out, _ := json.Marshal(feedback)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(out)))
	w.Write(out)
}

// found is an audit entry for one genuine token: named by id, never by
// its string.
type found struct {
	TokenID string `json:"token_id"`
	URL     string `json:"url,omitempty"`
	Rule    string `json:"rule,omitempty"`
	Already bool   `json:"already_revoked,omitempty"`
	// NoRecord: no token record has its hash, so nothing was revoked.
	NoRecord bool `json:"no_record,omitempty"`
}

func (h *Handler) process(ctx context.Context, alerts []Alert, keyID string) ([]Feedback, error) {
	keys := h.cfg.Tokens()
	feedback := make([]Feedback, len(alerts))
	var genuine []found
	var failed error
	for n, a := range alerts {
		feedback[n] = Feedback{TokenRaw: a.Token, TokenType: a.Type, Label: FalsePositive}
		if len(a.Token) > policy.MaxTokenBytes {
			continue
		}
		t, verr := keys.VerifySignature(a.Token)
		if verr != nil {
			continue
		}
		feedback[n].Label = TruePositive
		url := truncate(a.URL, maxURLBytes)
		leak, err := h.cfg.Leaks.RevokeLeak(ctx, policy.LeakHash(a.Token), "GitHub "+url, Actor)
		if errors.Is(err, store.ErrNotFound) {
			// Signed by a key of ours but never recorded here (its
			// record pruned after expiry, or issued against another
			// store): nothing to revoke by hash. Retrying cannot help.
			h.cfg.Logger.Error("genuine leaked token has no record here; revoke it by id", "token_id", t.ID, "subject", t.Subject)
			genuine = append(genuine, found{TokenID: t.ID, URL: url, NoRecord: true})
			continue
		}
		if err != nil {
			failed = errors.Join(failed, fmt.Errorf("revoke token %s: %w", t.ID, err))
			continue
		}
		genuine = append(genuine, found{TokenID: t.ID, URL: url, Rule: leak.Rule.ID, Already: leak.Already})
	}
	details, _ := json.Marshal(map[string]any{
		"key_id": truncate(keyID, 128), "alerts": len(alerts), "true_positive": len(genuine), "tokens": genuine,
	})
	if _, err := h.cfg.Audit.Append(audit.Record{Action: "leak.github", Actor: Actor, Details: details}); err != nil {
		failed = errors.Join(failed, fmt.Errorf("audit the report: %w", err))
	}
	return feedback, failed
}

func truncate(s string, n int) string {
	if len(s) > n {
		s = s[:n]
	}
	return printable(s)
}

// printable replaces control characters so a recorded string cannot forge
// log lines.
func printable(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c < 0x20 || c == 0x7f {
			b[i] = '?'
		}
	}
	return string(b)
}

func fail(w http.ResponseWriter, status int, msg string) {
	out, _ := json.Marshal(map[string]string{"error": msg})
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(out)
}
