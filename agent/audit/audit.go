// Package audit is the append-only, hash-chained audit log of every token's
// creation, use and retirement, and the live stream of its records.
//
// Each record carries the hash of the one before it, so an edited, inserted,
// reordered or deleted record breaks the chain where it happened; Verify
// finds the break and names the file and line. With a Key (the store's audit
// key) the hashes are HMACs, so the chain cannot be rewritten without it,
// and the chain's head, recorded in the store, shows a cut tail or a
// deleted log. Every field is bounded and token-shaped text redacted before
// a record is written, and the log keeps within a size budget and leaves
// free space on its filesystem for the store.
package audit

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"strings"
	"time"
	"unicode/utf8"
)

// Actions recorded by tokenwarden. Other packages use these names so that a
// Filter on an action (or a prefix such as "token.") finds every writer's records.
const (
	ActionTokenIssue        = "token.issue"
	ActionTokenRotate       = "token.rotate"
	ActionTokenRevoke       = "token.revoke"
	ActionTokenExpire       = "token.expire"
	ActionRevocationCreate  = "revocation.create"
	ActionKeyRotate         = "key.rotate"
	ActionAuthzDeny         = "authz.deny"
	ActionAuthzAllowSummary = "authz.allow_summary"
	ActionAuthzAllow        = "authz.allow"
	ActionDenySuppressed    = "authz.deny_suppressed"
	ActionTokenExpiring     = "token.expiring"
	ActionAnomaly           = "anomaly"
	ActionKernelDrop        = "kernel.drop"
	ActionRotationFailed    = "rotation.failed"
	// ActionDeliveryFailed: a successor was issued but a sink did not get it.
	ActionDeliveryFailed = "rotation.delivery_failed"
	// ActionAuditPrune: the size budget removed the oldest files; Details
	// name the first seq kept.
	ActionAuditPrune = "audit.prune"
	// ActionAuditGap: at start the agent found the log behind the head
	// recorded in the store: records after that head were cut or deleted.
	ActionAuditGap = "audit.gap"
)

// ActorSystem is the actor of records the agent writes on its own behalf
// (expiry, anomaly revocations, scheduled rotation).
const ActorSystem = "system"

// Details encodes a record's evidence. A value that cannot be encoded is
// recorded as its encoding error rather than dropped, so a record never
// goes out with its evidence silently missing.
func Details(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		b, _ = json.Marshal(map[string]string{"encode_error": err.Error()})
	}
	return b
}

// MaxRecordBytes bounds one encoded record (one line, without its newline).
// Readers refuse longer lines, so a damaged or hostile file cannot make them
// buffer without limit.
const MaxRecordBytes = 1 << 20

var (
	// ErrLineTooLong is returned when a line exceeds MaxRecordBytes.
	ErrLineTooLong = fmt.Errorf("audit: line longer than %d bytes", MaxRecordBytes)
	// ErrRecordTooLarge is returned by Append for a record that would encode
	// to more than MaxRecordBytes; trim its Details.
	ErrRecordTooLarge = fmt.Errorf("audit: record encodes to more than %d bytes; trim its details", MaxRecordBytes)
	// ErrTokenInRecord is returned by Append when a record appears to hold a
	// token string. Audit records name tokens by jti only.
	ErrTokenInRecord = errors.New("audit: record contains what looks like a tokenwarden token; name tokens by jti only")
)

// tokenMarker is how every token string begins: the "tw_" prefix followed by
// the base64url of a JWS header's opening `{"`.
var tokenMarker = []byte("tw_eyJ")

// Record is one line of the audit log. Append fills Seq, Time, Prev and Hash.
// Tokens appear only by id (TokenID, Actor); never store a token string here.
// A record from Append or Subscribe shares Details with other receivers:
// treat it as read-only.
type Record struct {
	Seq     uint64          `json:"seq"`
	Time    time.Time       `json:"time"`
	Action  string          `json:"action"`
	Actor   string          `json:"actor"` // jti of the admin token, or ActorSystem
	TokenID string          `json:"token_id,omitempty"`
	Subject string          `json:"subject,omitempty"`
	Tenant  string          `json:"tenant,omitempty"`
	Reason  string          `json:"reason,omitempty"`
	Source  string          `json:"source,omitempty"` // client address
	Route   string          `json:"route,omitempty"`
	Count   uint64          `json:"count,omitempty"`   // requests covered by a summary
	Details json.RawMessage `json:"details,omitempty"` // evidence, as a JSON value
	// ChainKey names the audit key that Hash is an HMAC under; empty for
	// an unkeyed record (plain SHA-256, as every record before keying).
	ChainKey string `json:"chain_key,omitempty"`
	Prev     string `json:"prev,omitempty"` // Hash of the previous record; empty for seq 1
	// Hash is the hex HMAC-SHA256 under ChainKey (or, unkeyed, the hex
	// SHA-256) of Prev followed by the record's JSON without Hash. It must
	// stay the last field: the written line is that JSON with the hash
	// appended, so readers hash the bytes as written.
	Hash string `json:"hash,omitempty"`
}

// KeySize is the size of an audit key's secret.
const KeySize = 32

// Key keys the chain. Its secret is kept sealed in the store (every node
// sharing the store can verify every node's log) and never written to the
// log; ID names it in each record.
type Key struct {
	ID     string
	Secret []byte
}

// Filter selects records. Empty fields match anything.
type Filter struct {
	TokenID string
	Subject string
	// Action matches exactly, or, when it ends in ".", as a prefix:
	// "token." matches token.issue and token.revoke but not tokenize.
	Action string
	// Before, when not 0, matches only records with a smaller seq: the
	// admin API's next page of older records.
	Before uint64
}

// Match reports whether r passes the filter.
func (f Filter) Match(r Record) bool {
	if f.Before != 0 && r.Seq >= f.Before {
		return false
	}
	if f.TokenID != "" && r.TokenID != f.TokenID {
		return false
	}
	if f.Subject != "" && r.Subject != f.Subject {
		return false
	}
	switch {
	case f.Action == "":
		return true
	case strings.HasSuffix(f.Action, "."):
		return strings.HasPrefix(r.Action, f.Action)
	default:
		return r.Action == f.Action
	}
}

const (
	hashPrefix = `,"hash":"`
	// hashSuffixLen is the length of `,"hash":"<64 hex>"}` that ends every line.
	hashSuffixLen = len(hashPrefix) + 2*sha256.Size + len(`"}`)
)

// encode sets r.Hash (keyed with key when it is set) and returns r's line
// without its newline.
func encode(r *Record, key *Key) ([]byte, error) {
	r.Hash = ""
	// JSON encoding would replace invalid UTF-8 anyway; doing it here first
	// makes r say exactly what the line says, and keeps the line valid UTF-8
	// for every reader.
	for _, s := range []*string{&r.Action, &r.Actor, &r.TokenID, &r.Subject, &r.Tenant, &r.Reason, &r.Source, &r.Route, &r.ChainKey, &r.Prev} {
		*s = strings.ToValidUTF8(*s, "\uFFFD")
	}
	if !utf8.Valid(r.Details) {
		r.Details = bytes.ToValidUTF8(r.Details, []byte("\uFFFD"))
	}
	body, err := json.Marshal(r)
	if err != nil {
		return nil, err
	}
	r.Hash = chainHash(key, r.Prev, body)
	line := make([]byte, 0, len(body)-1+hashSuffixLen)
	line = append(line, body[:len(body)-1]...)
	line = append(line, hashPrefix...)
	line = append(line, r.Hash...)
	return append(line, `"}`...), nil
}

func chainHash(key *Key, prev string, body []byte) string {
	var h hash.Hash
	if key != nil {
		h = hmac.New(sha256.New, key.Secret)
	} else {
		h = sha256.New()
	}
	h.Write([]byte(prev))
	h.Write(body)
	return hex.EncodeToString(h.Sum(nil))
}

// checkHash reports whether r's hash matches body, the bytes it was taken
// over. checked is false when r is keyed with a key other than key: its
// hash cannot be checked here.
func checkHash(r Record, body []byte, key *Key) (intact, checked bool) {
	switch {
	case r.ChainKey == "":
		return chainHash(nil, r.Prev, body) == r.Hash, true
	case key == nil || key.ID != r.ChainKey:
		return false, false
	}
	return hmac.Equal([]byte(chainHash(key, r.Prev, body)), []byte(r.Hash)), true
}

// parseLine decodes one line (without its newline) and returns the bytes
// its hash was taken over; checkHash says whether they match. The hash is
// taken over the bytes as written, not a re-encoding, so a record from a
// newer writer with fields this version does not know still verifies.
func parseLine(line []byte) (r Record, body []byte, err error) {
	if len(line) > MaxRecordBytes {
		return Record{}, nil, ErrLineTooLong
	}
	if len(line) < len("{}")+hashSuffixLen {
		return Record{}, nil, errors.New("too short to be a record")
	}
	split := len(line) - hashSuffixLen
	suffix := line[split:]
	hash := suffix[len(hashPrefix) : len(suffix)-len(`"}`)]
	if !bytes.HasPrefix(suffix, []byte(hashPrefix)) || !bytes.HasSuffix(suffix, []byte(`"}`)) || !isLowerHex(hash) {
		return Record{}, nil, errors.New(`does not end with "hash":"<64 hex digits>"}`)
	}
	// A fresh slice: line may be a reader's buffer, which must not be written.
	body = make([]byte, split+1)
	copy(body, line[:split])
	body[split] = '}'
	if err := json.Unmarshal(body, &r); err != nil {
		return Record{}, nil, err
	}
	switch {
	case r.Hash != "":
		return Record{}, nil, errors.New("hash appears twice")
	case r.Seq == 0:
		return Record{}, nil, errors.New("no seq")
	case r.Action == "":
		return Record{}, nil, errors.New("no action")
	case r.Time.IsZero():
		return Record{}, nil, errors.New("no time")
	}
	r.Hash = string(hash)
	return r, body, nil
}

func isLowerHex(b []byte) bool {
	for _, c := range b {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
