package bpf

import "bytes"

// The Go twin of the scan in tokenmeter.c. The kernel program and this file
// must apply the same rules byte for byte: FuzzParseAgreement runs both on
// the same packets and fails on any difference.

const (
	// MaxTokenLen is the longest bearer token the kernel hashes. A longer
	// token is counted in Stats.Truncated and neither metered nor dropped.
	MaxTokenLen = 1024

	// MaxScanLen is how many bytes of a packet's TCP payload are searched
	// for the Authorization header. Bytes past it are not looked at.
	MaxScanLen = 8192

	// MaxHeaderLines is how many lines after the request line are
	// examined. It bounds the kernel's work on a packet made of short
	// lines; Envoy refuses requests with more than 100 headers by default.
	MaxHeaderLines = 128

	// maxMethodLen is the longest method token that makes a packet a
	// request.
	maxMethodLen = 16
)

const (
	fnv64Offset = 14695981039346656037
	fnv64Prime  = 1099511628211
)

// HashToken returns the 64-bit FNV-1a hash of a bearer token, the key the
// kernel counts and revokes by. It equals hash/fnv.New64a over the token.
func HashToken(token string) uint64 {
	return fnv1a(token)
}

func fnv1a[T string | []byte](b T) uint64 {
	h := uint64(fnv64Offset)
	for i := 0; i < len(b); i++ {
		h ^= uint64(b[i])
		h *= fnv64Prime
	}
	return h
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

// isTokenByte reports whether c belongs to the RFC 6750 b64token alphabet:
// ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" / "=".
func isTokenByte(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	switch c {
	case '-', '.', '_', '~', '+', '/', '=':
		return true
	}
	return false
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

// scanResult is parseResult plus the hashes of every complete bearer token
// in the header block (the first one's too, if found), in order: the kernel
// drops the request if any of them is revoked.
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
//     and at least one b64token byte. The token is the run of b64token
//     bytes; the first other byte ends it. Every such line is looked at; the
//     first token is the one reported (and counted by the kernel), and the
//     kernel drops the request if any complete token's hash is revoked.
//   - A token of more than MaxTokenLen bytes is truncated: not found. A token
//     that runs to the end of the searched bytes (its header continues in a
//     later segment) is not found either.
//
// The hash is HashToken of the token and is valid only if tokenFound.
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

		k := 0 // token length, looking one byte past MaxTokenLen
		for j+k < len(p) && k <= MaxTokenLen && isTokenByte(p[j+k]) {
			k++
		}
		switch {
		case k > MaxTokenLen:
			r.truncated = r.truncated || first
		case j+k == len(p):
			r.incomplete = r.incomplete || first
			return r // the rest of the data is this token
		default:
			h := fnv1a(p[j : j+k])
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
