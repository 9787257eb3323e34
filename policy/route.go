package policy

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"unicode/utf8"
)

// MaxPathBytes bounds a request path considered for matching; longer paths
// match no route.
const MaxPathBytes = 8 << 10

// Route is one compiled route rule of a service.
type Route struct {
	// ID names the rule in decisions, metrics and audit records: "service#index".
	ID      string
	Service string
	Index   int
	Pattern string
	Methods []string // empty means any method
	Scopes  []string // every one is required
	Public  bool

	methodMask uint16 // bit per known method; 0 = any
	segments   []string
}

var knownMethods = [...]string{"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"}

func methodBit(m string) uint16 {
	for i, k := range knownMethods {
		if m == k {
			return 1 << i
		}
	}
	return 0
}

// allowsMethod reports whether the route applies to method (exact, upper case).
func (r *Route) allowsMethod(method string) bool {
	if r.methodMask == 0 {
		return true
	}
	return r.methodMask&methodBit(method) != 0
}

var errBadPattern = errors.New("bad path pattern")

// parsePattern splits a path pattern into segments, checking that "*" and
// "**" stand alone as segments and that every other segment could match a
// request path at all.
func parsePattern(p string) ([]string, error) {
	if !strings.HasPrefix(p, "/") {
		return nil, fmt.Errorf("%w %q: a pattern starts with /, e.g. \"/orders/**\"", errBadPattern, p)
	}
	if len(p) > MaxPathBytes {
		return nil, fmt.Errorf("%w: longer than %d bytes", errBadPattern, MaxPathBytes)
	}
	if p == "/" {
		return nil, nil
	}
	segs := strings.Split(strings.TrimSuffix(p[1:], "/"), "/")
	for i, s := range segs {
		switch {
		case s == "":
			return nil, fmt.Errorf("%w %q: empty segment (//): remove the extra /", errBadPattern, p)
		case s == "." || s == "..":
			return nil, fmt.Errorf("%w %q: dot segments (. and ..) are not allowed: write the path out", errBadPattern, p)
		case s == "*" || s == "**":
		case strings.Contains(s, "*"):
			return nil, fmt.Errorf("%w %q: segment %d mixes * with text: use * (one segment) or ** (any number) as a whole segment", errBadPattern, p, i+1)
		case strings.ContainsAny(s, "?#"):
			return nil, fmt.Errorf("%w %q: a pattern matches the path only: drop the ? or # part", errBadPattern, p)
		default:
			if !patternSegment(s) {
				return nil, fmt.Errorf("%w %q: segment %d can never match: paths are matched decoded, and a path holding ';', '\\', '%%' (decoded), a control character or text that is not UTF-8 is denied as ambiguous: write the segment decoded, as the application sees it (\"a b\", not \"a%%20b\")", errBadPattern, p, i+1)
			}
		}
	}
	return segs, nil
}

// patternSegment reports whether a literal pattern segment can equal a
// segment of a path cleanPath accepts (decoded).
func patternSegment(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == '%' || ambiguousByte(s[i]) {
			return false
		}
	}
	return utf8.ValidString(s)
}

// covers reports whether every path matched by pattern b is matched by a.
func covers(a, b []string) bool {
	if len(a) == 0 {
		return len(b) == 0
	}
	switch a[0] {
	case "**":
		// ** takes none of b, or one more segment of b (any kind).
		if covers(a[1:], b) {
			return true
		}
		return len(b) > 0 && covers(a, b[1:])
	case "*":
		return len(b) > 0 && b[0] != "**" && covers(a[1:], b[1:])
	default:
		return len(b) > 0 && b[0] == a[0] && covers(a[1:], b[1:])
	}
}

// routeTrie finds the first route (lowest index) of a service matching a
// path, walking segments without allocating.
type routeTrie struct {
	literal  map[string]*routeTrie
	one      *routeTrie // "*"
	any      *routeTrie // "**"
	terminal []int      // routes whose pattern ends here, ascending
	anyID    int        // for a node reached by "**": its row in a matchMemo
}

func (t *routeTrie) insert(segs []string, idx int) {
	n := t
	for _, s := range segs {
		switch s {
		case "*":
			if n.one == nil {
				n.one = &routeTrie{}
			}
			n = n.one
		case "**":
			if n.any == nil {
				n.any = &routeTrie{}
			}
			n = n.any
		default:
			if n.literal == nil {
				n.literal = map[string]*routeTrie{}
			}
			c := n.literal[s]
			if c == nil {
				c = &routeTrie{}
				n.literal[s] = c
			}
			n = c
		}
	}
	n.terminal = append(n.terminal, idx)
}

// numberAny numbers the "**" nodes from next on and reports how many there
// are and whether one lies below another (a pattern with two or more "**").
func (t *routeTrie) numberAny(next int, underAny bool) (int, bool) {
	nested := false
	visit := func(c *routeTrie, isAny bool) {
		if c == nil {
			return
		}
		if isAny {
			nested = nested || underAny
			c.anyID = next
			next++
		}
		var n bool
		next, n = c.numberAny(next, underAny || isAny)
		nested = nested || n
	}
	for _, k := range sortedKeys(t.literal) {
		visit(t.literal[k], false)
	}
	visit(t.one, false)
	visit(t.any, true)
	return next, nested
}

// matchMemo records which ("**" node, remaining path length) pairs a match
// has explored. Without it, nested "**" backtrack: a pattern such as
// /**/x/**/x/**/y takes seconds on a 1 KiB path of x/x/x/... With it, each
// pair is explored once. Exploring a pair again cannot find a lower route
// index, because best only falls.
type matchMemo struct {
	bits   []uint64
	stride int // remaining lengths 0..len(path)
}

var memoPool = sync.Pool{New: func() any { return new(matchMemo) }}

func (m *matchMemo) reset(anyNodes, pathLen int) {
	m.stride = pathLen + 1
	words := (anyNodes*m.stride + 63) / 64
	if cap(m.bits) < words {
		m.bits = make([]uint64, words)
	}
	m.bits = m.bits[:words]
	clear(m.bits)
}

// seen marks the pair and reports whether it was marked before.
func (m *matchMemo) seen(anyID, remaining int) bool {
	i := anyID*m.stride + remaining
	w, b := i/64, uint64(1)<<(i%64)
	if m.bits[w]&b != 0 {
		return true
	}
	m.bits[w] |= b
	return false
}

// match returns the lowest route index that matches path (the rest of the
// request path, just after a '/') and accepts the method, or best unchanged.
// memo is nil when the trie has no nested "**".
func (t *routeTrie) match(routes []Route, path string, method string, best int, memo *matchMemo) int {
	if t.any != nil {
		// ** swallows zero or more segments: try every suffix. A suffix the
		// memo has seen was reached by an earlier loop over this same node,
		// which went on through every shorter suffix: stop there.
		for off := 0; ; {
			if memo != nil && memo.seen(t.any.anyID, len(path)-off) {
				break
			}
			best = t.any.match(routes, path[off:], method, best, memo)
			i := strings.IndexByte(path[off:], '/')
			if i < 0 {
				if path != "" && (memo == nil || !memo.seen(t.any.anyID, 0)) {
					best = t.any.match(routes, "", method, best, memo)
				}
				break
			}
			off += i + 1
		}
	}
	if path == "" {
		for _, idx := range t.terminal {
			if best >= 0 && idx >= best {
				break
			}
			if routes[idx].allowsMethod(method) {
				best = idx
				break
			}
		}
		return best
	}
	seg, rest := path, ""
	if i := strings.IndexByte(path, '/'); i >= 0 {
		seg, rest = path[:i], path[i+1:]
	}
	if t.literal != nil {
		if c := t.literal[seg]; c != nil {
			best = c.match(routes, rest, method, best, memo)
		}
	}
	if t.one != nil {
		best = t.one.match(routes, rest, method, best, memo)
	}
	return best
}

// cleanPath reads the path of a request target as nginx and Go's net/http
// (and the file servers and routers built on them) read it, and refuses any
// target that they, RFC 3986 or other common servers could read otherwise,
// so that a route cannot be dodged by spelling its path another way. The
// table in docs/authz.md lists every rule; in short, it refuses:
//   - a '#' anywhere: RFC 3986 and nginx end the path there, Go's server
//     does not ("/pub/#/../admin" is "/admin" to a Go file server),
//   - dot segments and empty segments ("/a/../b", "/a/./b", "/a//b"),
//   - ';' (Tomcat and Jetty strip path parameters: "/pub/..;/admin" and
//     "/admin;x" are "/admin" to them, not to nginx or Go),
//   - '\' (a '/' to some servers), raw control characters and spaces,
//   - percent-encoding that is malformed, or that decodes to an unreserved
//     character ("%2e", "%61": RFC 3986 decodes them, some servers do
//     not), to '/' or '\' (nginx decodes "%2F" before it resolves dot
//     segments, so "/pub/..%2Fadmin" is "/admin" to nginx), to ';', to '%'
//     (an application that decodes twice reads "%252e" as "."), or to a
//     control character (NUL included),
//   - anything that is not UTF-8 once decoded (overlong forms such as
//     "%c0%ae" are '.' to some decoders).
//
// Everything else percent-encoded is decoded, as nginx and Go decode it,
// so that routes match the path the application serves. The query starts at
// the first '?'. It returns the decoded path without its leading '/' and
// trailing '/'; it allocates only for a path with percent-encoding.
func cleanPath(target string) (string, bool) {
	if len(target) == 0 || target[0] != '/' || strings.IndexByte(target, '#') >= 0 {
		return "", false
	}
	p := target
	if i := strings.IndexByte(p, '?'); i >= 0 {
		p = p[:i]
	}
	if len(p) > MaxPathBytes {
		return "", false
	}
	p = p[1:]
	if p == "" {
		return "", true
	}
	if p[len(p)-1] == '/' {
		p = p[:len(p)-1]
	}
	escaped := false
	for i := 0; i < len(p); i++ {
		switch c := p[i]; {
		case c == '%':
			if i+2 >= len(p) {
				return "", false
			}
			hi, ok1 := unhex(p[i+1])
			lo, ok2 := unhex(p[i+2])
			if d := hi<<4 | lo; !ok1 || !ok2 || isUnreserved(d) || d == '/' || d == '%' || ambiguousByte(d) {
				return "", false
			}
			escaped = true
			i += 2
		case c == ' ' || ambiguousByte(c):
			return "", false
		}
	}
	if escaped {
		p = unescape(p)
	}
	if !utf8.ValidString(p) {
		return "", false
	}
	for s := p; ; {
		seg := s
		i := strings.IndexByte(s, '/')
		if i >= 0 {
			seg = s[:i]
		}
		if seg == "" || seg == "." || seg == ".." {
			return "", false
		}
		if i < 0 {
			break
		}
		s = s[i+1:]
	}
	return p, true
}

// ambiguousByte reports whether c, raw or decoded, is refused anywhere in a
// path: control characters (NUL included), '\' and ';'.
func ambiguousByte(c byte) bool {
	return c < 0x20 || c == 0x7f || c == '\\' || c == ';'
}

// unescape decodes the percent-encoding of p, which cleanPath has checked.
func unescape(p string) string {
	var b strings.Builder
	b.Grow(len(p))
	for i := 0; i < len(p); i++ {
		if p[i] != '%' {
			b.WriteByte(p[i])
			continue
		}
		hi, _ := unhex(p[i+1])
		lo, _ := unhex(p[i+2])
		b.WriteByte(hi<<4 | lo)
		i += 2
	}
	return b.String()
}

func unhex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// isUnreserved reports whether c is an RFC 3986 unreserved character, one
// that is never percent-encoded in a normalized URI.
func isUnreserved(c byte) bool {
	return c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' ||
		c == '-' || c == '.' || c == '_' || c == '~'
}

// service is the compiled form of one ServiceSpec.
type service struct {
	name     string
	routes   []Route
	trie     routeTrie
	anyNodes int  // "**" nodes in trie
	nested   bool // a "**" below another: match needs a memo
}

// build fills the trie from the routes.
func (s *service) build() {
	for i := range s.routes {
		s.trie.insert(s.routes[i].segments, i)
	}
	s.anyNodes, s.nested = s.trie.numberAny(0, false)
}

func (s *service) match(method, path string) *Route {
	p, ok := cleanPath(path)
	if !ok {
		return nil
	}
	var best int
	if s.nested {
		memo := memoPool.Get().(*matchMemo)
		memo.reset(s.anyNodes, len(p))
		best = s.trie.match(s.routes, p, method, -1, memo)
		memoPool.Put(memo)
	} else {
		best = s.trie.match(s.routes, p, method, -1, nil)
	}
	if best < 0 {
		return nil
	}
	return &s.routes[best]
}

// normalizeHost lower-cases a host and strips a port (digits only),
// allocating only when the host has upper-case letters. A host it cannot
// read (a port that is not a number) becomes "", which no service has. A
// trailing dot is kept: "orders." is no policy host.
func normalizeHost(h string) string {
	if i := strings.LastIndexByte(h, ':'); i >= 0 && !strings.HasSuffix(h, "]") {
		port := h[i+1:]
		if len(port) == 0 || len(port) > 5 {
			return ""
		}
		for j := 0; j < len(port); j++ {
			if port[j] < '0' || port[j] > '9' {
				return ""
			}
		}
		h = h[:i]
	}
	for i := 0; i < len(h); i++ {
		if c := h[i]; c >= 'A' && c <= 'Z' {
			return strings.ToLower(h)
		}
	}
	return h
}
