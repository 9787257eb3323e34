package bpf

import (
	"bytes"

	"github.com/tokenwarden/tokenwarden/policy"
)

// The Go twin of the scan in tokenmeter.c. The kernel program and this file
// must apply the same rules byte for byte: FuzzParseAgreement runs both on
// the same packets and fails on any difference.

const (
	// MaxTokenLen is the longest bearer token the kernel meters: every
	// token the agent can issue or accept (policy.MaxTokenBytes). A
	// longer token is counted in Stats.Truncated and neither metered nor
	// dropped.
	MaxTokenLen = policy.MaxTokenBytes

	// MaxScanLen is how many bytes of a packet's TCP payload are searched
	// for the Authorization header. Bytes past it are not looked at. It
	// leaves room for 8 KiB of headers before a token of MaxTokenLen.
	MaxScanLen = 16 << 10

	// MaxHeaderLines is how many lines after the request line are
	// examined. It bounds the kernel's work on a packet made of short
	// lines; Envoy refuses requests with more than 100 headers by default.
	MaxHeaderLines = 128

	// maxMethodLen is the longest method token that makes a packet a
	// request.
	maxMethodLen = 16
)

// HashToken returns a bearer token's wire identity, the key the kernel
// counts and revokes by: policy.WireHash, the first 64 bits of the token's
// signature.
func HashToken(token string) uint64 {
	return policy.WireHash(token)
}

// isTchar reports whether c is an RFC 9110 tchar: "!" / "#" / "$" / "%" /
// "&" / "'" / "*" / "+" / "-" / "." / "^" / "_" / "`" / "|" / "~" / DIGIT /
// ALPHA.
func isTchar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	switch c {
	case '!', '#', '$', '%', '&', '\'', '*', '+', '-', '.', '^', '_', '`', '|', '~':
		return true
	}
	return false
}

// isTargetStart reports whether a request target may start with c: '/'
// (origin-form), '*' (asterisk-form), a letter (absolute-form), a digit or
// '[' (authority-form, CONNECT).
func isTargetStart(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return c == '/' || c == '*' || c == '['
}

// isRequestLine reports whether p starts like a request line: a method of
// 1..maxMethodLen tchar bytes, one SP, and the first byte of a request
// target. Responses ("HTTP/1.1 200") fail at the '/', TLS and most binary
// protocols at the first byte.
func isRequestLine(p []byte) bool {
	n := 0
	for n < len(p) && n <= maxMethodLen && isTchar(p[n]) {
		n++
	}
	return n > 0 && n <= maxMethodLen && n+1 < len(p) && p[n] == ' ' && isTargetStart(p[n+1])
}

// isTokenByte reports whether c can be part of a token: visible ASCII,
// 0x21..0x7e. SP, HTAB, CR, LF, other control bytes, DEL and bytes >= 0x80
// end a token. Wider than RFC 6750's b64token (which a token ext_authz
// accepts never leaves), so that one comparison pair per byte, eight bytes
// at a time, finds the end.
func isTokenByte(c byte) bool {
	return 0x21 <= c && c <= 0x7e
}

// hasPrefixFold reports whether b starts with lower, comparing ASCII letters
// without regard to case. lower must be lower case. Unlike bytes.EqualFold
// it never folds non-ASCII runes (the kernel sees bytes, not UTF-8).
func hasPrefixFold(b []byte, lower string) bool {
	if len(b) < len(lower) {
		return false
	}
	for i := 0; i < len(lower); i++ {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != lower[i] {
			return false
		}
	}
	return true
}

// parseResult is what the scan of one packet's payload found.
type parseResult struct {
	isRequest  bool
	tokenFound bool
	truncated  bool // token longer than MaxTokenLen
	incomplete bool // token runs to the end of the scanned bytes
	hash       uint64
}

// scanResult is parseResult plus the identities of every complete bearer
// token in the header block (the first one's too, if found), in order: the
// kernel drops the request if any of them is revoked.
type scanResult struct {
	parseResult
	hashes []uint64
}

// ParseRequest applies the kernel's rules to the TCP payload of one packet.
//
//   - The packet is a request if the payload starts with a method token
//     (1..16 RFC 9110 tchar bytes), a space, and '/', '*', a letter, a
//     digit or '['.
//   - Only the first MaxScanLen bytes and the first MaxHeaderLines lines
//     after the request line are searched. A line starts after a '\n'; the
//     first empty line ("\r\n" or "\n") ends the header block.
//   - A bearer token is on a header line that starts with "authorization:"
//     (any case), optional SP/HTAB, "bearer" (any case), one or more SP/HTAB,
//     and at least one visible ASCII byte. The token is the run of visible
//     ASCII bytes (0x21..0x7e); the first other byte ends it. Every such
//     line is looked at; the first token is the one reported (and counted
//     by the kernel), and the kernel drops the request if any complete
//     token's identity is revoked.
//   - A token that runs to the end of the searched bytes (its header
//     continues in a later segment) is incomplete: not found. Otherwise a
//     token of more than MaxTokenLen bytes is truncated: not found either.
//
// The hash is HashToken of the token, its wire identity, and is valid only
// if tokenFound.
func ParseRequest(tcpPayload []byte) (hash uint64, tokenFound, isRequest, truncated bool) {
	r := parse(tcpPayload)
	return r.hash, r.tokenFound, r.isRequest, r.truncated
}

func parse(p []byte) parseResult {
	return scan(p).parseResult
}

// scan is parse plus the hashes of all complete bearer tokens.
func scan(p []byte) scanResult {
	var r scanResult
	if len(p) > MaxScanLen {
		p = p[:MaxScanLen]
	}
	r.isRequest = isRequestLine(p)
	if !r.isRequest {
		return r
	}
	first := true

	for i, lines := 0, 0; ; {
		nl := bytes.IndexByte(p[i:], '\n')
		if nl < 0 {
			return r
		}
		s := i + nl + 1 // start of a line
		i = s
		if lines++; lines > MaxHeaderLines {
			return r
		}
		if s < len(p) && p[s] == '\n' || s+1 < len(p) && p[s] == '\r' && p[s+1] == '\n' {
			return r // end of the header block
		}
		if !hasPrefixFold(p[s:], "authorization:") {
			continue
		}
		j := s + len("authorization:")
		for j < len(p) && (p[j] == ' ' || p[j] == '\t') {
			j++
		}
		if !hasPrefixFold(p[j:], "bearer") || j+6 >= len(p) || p[j+6] != ' ' && p[j+6] != '\t' {
			i = j
			continue
		}
		j += len("bearer ")
		for j < len(p) && (p[j] == ' ' || p[j] == '\t') {
			j++
		}
		if j >= len(p) || !isTokenByte(p[j]) {
			i = j
			continue
		}

		k := 0 // token length
		for j+k < len(p) && isTokenByte(p[j+k]) {
			k++
		}
		switch {
		case j+k == len(p):
			r.incomplete = r.incomplete || first
			return r // the rest of the data is this token
		case k > MaxTokenLen:
			r.truncated = r.truncated || first
		default:
			h := policy.WireHash(string(p[j : j+k]))
			if first {
				r.tokenFound = true
				r.hash = h
			}
			r.hashes = append(r.hashes, h)
		}
		first = false
		i = j + k
	}
}
