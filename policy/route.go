package policy

import (
	"errors"
	"fmt"
	"strings"
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
// "**" stand alone as segments.
func parsePattern(p string) ([]string, error) {
	if !strings.HasPrefix(p, "/") {
		return nil, fmt.Errorf("%w %q: a pattern starts with /", errBadPattern, p)
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
			return nil, fmt.Errorf("%w %q: empty segment (//)", errBadPattern, p)
		case s == "." || s == "..":
			return nil, fmt.Errorf("%w %q: dot segments are not allowed", errBadPattern, p)
		case s == "*" || s == "**":
		case strings.Contains(s, "*"):
			return nil, fmt.Errorf("%w %q: segment %d mixes * with text; use * or ** as a whole segment", errBadPattern, p, i+1)
		case strings.ContainsAny(s, "?#"):
			return nil, fmt.Errorf("%w %q: a pattern matches the path only, without ? or #", errBadPattern, p)
		}
	}
	return segs, nil
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

// match returns the lowest route index that matches path (starting at
// offset off, just after a '/') and accepts the method, or best unchanged.
func (t *routeTrie) match(routes []Route, path string, method string, best int) int {
	if t.any != nil {
		// ** swallows zero or more segments: try every suffix.
		for off := 0; ; {
			best = t.any.match(routes, path[off:], method, best)
			i := strings.IndexByte(path[off:], '/')
			if i < 0 {
				break
			}
			off += i + 1
		}
		if path != "" {
			best = t.any.match(routes, "", method, best)
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
			best = c.match(routes, rest, method, best)
		}
	}
	if t.one != nil {
		best = t.one.match(routes, rest, method, best)
	}
	return best
}

// cleanPath strips the query and fragment and rejects paths that a proxy
// might interpret differently from us (dot segments, empty segments).
// It returns the path without its leading '/' and trailing '/'.
func cleanPath(p string) (string, bool) {
	if i := strings.IndexAny(p, "?#"); i >= 0 {
		p = p[:i]
	}
	if len(p) == 0 || p[0] != '/' || len(p) > MaxPathBytes {
		return "", false
	}
	p = p[1:]
	if len(p) > 0 && p[len(p)-1] == '/' {
		p = p[:len(p)-1]
	}
	if p == "" {
		return "", true
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

// service is the compiled form of one ServiceSpec.
type service struct {
	name   string
	routes []Route
	trie   routeTrie
}

func (s *service) match(method, path string) *Route {
	p, ok := cleanPath(path)
	if !ok {
		return nil
	}
	best := s.trie.match(s.routes, p, method, -1)
	if best < 0 {
		return nil
	}
	return &s.routes[best]
}

// normalizeHost lower-cases a host and strips a port, allocating only when
// the host has upper-case letters.
func normalizeHost(h string) string {
	if i := strings.LastIndexByte(h, ':'); i >= 0 && !strings.HasSuffix(h, "]") {
		h = h[:i]
	}
	for i := 0; i < len(h); i++ {
		if c := h[i]; c >= 'A' && c <= 'Z' {
			return strings.ToLower(h)
		}
	}
	return h
}
