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

// methods are the request methods that make a packet a request when its TCP
// payload starts with one of them followed by a space. Case-sensitive, as
// in RFC 9110.
var methods = [...]string{"GET ", "POST ", "PUT ", "DELETE ", "PATCH ", "HEAD ", "OPTIONS ", "CONNECT ", "TRACE "}

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

// ParseRequest applies the kernel's rules to the TCP payload of one packet.
//
//   - The packet is a request if the payload starts with GET, POST, PUT,
//     DELETE, PATCH, HEAD, OPTIONS, CONNECT or TRACE and a space.
//   - Only the first MaxScanLen bytes and the first MaxHeaderLines lines
//     after the request line are searched. A line starts after a '\n'; the
//     first empty line ("\r\n" or "\n") ends the header block.
//   - The token comes from the first header line that starts with
//     "authorization:" (any case), optional SP/HTAB, "bearer" (any case),
//     one or more SP, and at least one b64token byte. The token is the run
//     of b64token bytes; the first other byte ends it.
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
	var r parseResult
	if len(p) > MaxScanLen {
		p = p[:MaxScanLen]
	}
	for _, m := range methods {
		if len(p) >= len(m) && string(p[:len(m)]) == m {
			r.isRequest = true
			break
		}
	}
	if !r.isRequest {
		return r
	}

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
		if !hasPrefixFold(p[j:], "bearer") || j+6 >= len(p) || p[j+6] != ' ' {
			i = j
			continue
		}
		j += len("bearer ")
		for j < len(p) && p[j] == ' ' {
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
			r.truncated = true
		case j+k == len(p):
			r.incomplete = true
		default:
			r.tokenFound = true
			r.hash = fnv1a(p[j : j+k])
		}
		return r
	}
}
