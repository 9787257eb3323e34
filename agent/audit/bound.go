package audit

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"unicode/utf8"
)

// Bounds on what one record may carry. Most of a record's text can come
// from a client (the source address, an X-Forwarded-For value, a route, an
// admin's revocation reason), so every field is cut to a size no real
// value reaches, with a visible marker: a client cannot make the log grow
// by more than a few KiB per record, nor make a reader hold more.
const (
	MaxIDBytes      = 256     // Action, Actor, TokenID, Subject, Tenant
	MaxSourceBytes  = 256     // Source
	MaxRouteBytes   = 512     // Route
	MaxReasonBytes  = 1024    // Reason
	MaxDetailsBytes = 4 << 10 // Details, as encoded JSON
)

// RedactedToken replaces token-shaped text inside a record. Records name
// tokens by jti only; text that looks like a token (a client's header, an
// admin's free-text reason) is redacted rather than refused, so that
// putting a token in a header cannot keep a request out of the log.
const RedactedToken = "[redacted token]"

// tokenText matches tokenMarker and the base64url and dots that follow it:
// all of a token, or of anything shaped like one.
var tokenText = regexp.MustCompile(`tw_eyJ[A-Za-z0-9_\-.]*`)

// Redact replaces token-shaped text in s with RedactedToken, for free text
// that is kept outside the log as well (a revocation rule's reason).
func Redact(s string) string {
	if !strings.Contains(s, string(tokenMarker)) {
		return s
	}
	return tokenText.ReplaceAllLiteralString(s, RedactedToken)
}

// detailsPrefixBytes is how much of oversized Details a record keeps.
const detailsPrefixBytes = 1 << 10

// bounded is what bound changed in a record.
type bounded struct {
	truncated int // fields cut to their bound
	redacted  int // token-shaped strings replaced
}

// bound makes r safe to write and to read back: valid UTF-8, token-shaped
// text redacted, every field within its bound. Details that are not JSON,
// or are too long, are replaced by a JSON object that says so.
func bound(r *Record) bounded {
	var b bounded
	for _, f := range []struct {
		s   *string
		max int
	}{
		{&r.Action, MaxIDBytes}, {&r.Actor, MaxIDBytes}, {&r.TokenID, MaxIDBytes},
		{&r.Subject, MaxIDBytes}, {&r.Tenant, MaxIDBytes}, {&r.Source, MaxSourceBytes},
		{&r.Route, MaxRouteBytes}, {&r.Reason, MaxReasonBytes},
	} {
		*f.s = b.text(*f.s, f.max)
	}
	r.Details = b.details(r.Details)
	return b
}

func (b *bounded) text(s string, max int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if strings.Contains(s, string(tokenMarker)) {
		n := 0
		s = tokenText.ReplaceAllStringFunc(s, func(string) string { n++; return RedactedToken })
		b.redacted += n
	}
	if len(s) <= max {
		return s
	}
	b.truncated++
	return truncate(s, max)
}

// truncate cuts s to at most max bytes on a rune boundary and says how much
// was cut.
func truncate(s string, max int) string {
	cut := max
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return fmt.Sprintf("%s…[truncated %d bytes]", s[:cut], len(s)-cut)
}

func (b *bounded) details(d json.RawMessage) json.RawMessage {
	if len(d) == 0 {
		return d
	}
	if !utf8.Valid(d) {
		d = bytes.ToValidUTF8(d, []byte("\uFFFD"))
	}
	if bytes.Contains(d, tokenMarker) {
		n := 0
		d = tokenText.ReplaceAllFunc(d, func([]byte) []byte { n++; return []byte(RedactedToken) })
		b.redacted += n
	}
	valid := json.Valid(d)
	if valid && len(d) <= MaxDetailsBytes {
		return d
	}
	b.truncated++
	prefix := string(d)
	if len(prefix) > detailsPrefixBytes {
		prefix = truncate(prefix, detailsPrefixBytes)
	}
	problem := "details_truncated_bytes"
	if !valid {
		problem = "details_not_json_bytes"
	}
	return Details(map[string]any{problem: len(d), "details_prefix": prefix})
}
