package authz

import "strings"

// xfccURI returns the URI= value of an x-forwarded-client-cert header
// (Envoy's format: key=value pairs separated by ';', elements by ',',
// values optionally double-quoted with '\' escapes). It trusts only a
// header of exactly one element holding exactly one URI key: what Envoy
// writes with forward_client_cert_details: SANITIZE_SET. A second element
// (APPEND_FORWARD, where an earlier one may come from the client), a
// repeated URI, or anything it cannot read gives ok false. It returns a
// substring of v and never allocates.
func xfccURI(v string) (uri string, ok bool) {
	found := false
	for len(v) > 0 {
		eq := strings.IndexByte(v, '=')
		if eq <= 0 || !isXFCCKey(v[:eq]) {
			return "", false
		}
		key := v[:eq]
		v = v[eq+1:]
		var val string
		if len(v) > 0 && v[0] == '"' {
			end := closingQuote(v)
			if end < 0 {
				return "", false
			}
			val, v = v[1:end], v[end+1:]
		} else {
			end := strings.IndexAny(v, `;,"`)
			if end < 0 {
				end = len(v)
			}
			val, v = v[:end], v[end:]
		}
		if len(v) > 0 {
			if v[0] != ';' || len(v) == 1 {
				// ',' starts a second element; '"' inside a bare value and
				// a trailing ';' are not Envoy's.
				return "", false
			}
			v = v[1:]
		}
		if len(key) == 3 && equalFold(key, "uri") {
			if found {
				return "", false
			}
			found, uri = true, val
		}
	}
	return uri, found && uri != ""
}

// closingQuote returns the index of the '"' closing the quoted value that
// v starts with, skipping '\'-escaped characters; -1 when there is none.
func closingQuote(v string) int {
	for i := 1; i < len(v); i++ {
		switch v[i] {
		case '\\':
			i++
		case '"':
			return i
		}
	}
	return -1
}

// isXFCCKey reports whether k is a key as Envoy writes them (By, Hash,
// Cert, Chain, Subject, URI, DNS): letters only.
func isXFCCKey(k string) bool {
	for i := 0; i < len(k); i++ {
		if c := k[i] | 0x20; c < 'a' || c > 'z' {
			return false
		}
	}
	return true
}
