package policy

import (
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"
)

const matchPolicy = `version: 1
issuer: tokenwarden.test
environments: { prod: { max_ttl: 24h } }
classes:
  c: { scopes: [shop:read], default_ttl: 1h, max_ttl: 1h, environments: [prod] }
services:
  shop:
    hosts: [shop, shop.default.svc.cluster.local]
    routes:
      - { methods: [GET], path: "/", scopes: [shop:read] }                       # 0
      - { methods: [GET], path: "/items/*", scopes: [shop:read] }                # 1
      - { methods: [GET, HEAD], path: "/items/*/reviews/**", scopes: [shop:read] } # 2
      - { path: "/a/**/b", scopes: [shop:read] }                                 # 3
      - { path: "/**/healthz", public: true }                                    # 4
      - { methods: [POST], path: "/items/**", scopes: [shop:read] }              # 5
      - { methods: [DELETE], path: "/items/special", scopes: [shop:read] }       # 6
      - { path: "/files/**", scopes: [shop:read] }                               # 7
      - { path: "/exact/", scopes: [shop:read] }                                 # 8
      - { path: "/café/x y", scopes: [shop:read] }                               # 9
  other:
    hosts: [other]
    routes:
      - { path: "/**", scopes: [shop:read] }
`

func mustLoad(tb testing.TB, doc string) *Policy {
	tb.Helper()
	p, err := Load("test.yaml", []byte(doc))
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

func TestMatch(t *testing.T) {
	p := mustLoad(t, matchPolicy)
	tests := map[string]struct {
		method, host, path string
		want               string // route ID, "" for none
	}{
		"root":                        {"GET", "shop", "/", "shop#0"},
		"star is one segment":         {"GET", "shop", "/items/42", "shop#1"},
		"star is not zero segments":   {"GET", "shop", "/items", ""},
		"star is not two segments":    {"GET", "shop", "/items/42/x", ""},
		"double star zero":            {"GET", "shop", "/items/42/reviews", "shop#2"},
		"double star many":            {"HEAD", "shop", "/items/42/reviews/a/b/c", "shop#2"},
		"double star at start, zero":  {"GET", "shop", "/healthz", "shop#4"},
		"double star at start, many":  {"PUT", "shop", "/x/y/healthz", "shop#4"},
		"double star at end only":     {"GET", "other", "/", "other#0"},
		"double star middle, zero":    {"GET", "shop", "/a/b", "shop#3"},
		"double star middle, many":    {"GET", "shop", "/a/x/y/b", "shop#3"},
		"double star middle, b twice": {"GET", "shop", "/a/b/b", "shop#3"},
		"double star middle, no b":    {"GET", "shop", "/a/x", ""},
		"double star middle, only a":  {"GET", "shop", "/a", ""},
		"first match wins":            {"POST", "shop", "/items/special", "shop#5"},
		"later route, other method":   {"DELETE", "shop", "/items/special", "shop#6"},
		"method not allowed":          {"PUT", "shop", "/items/42", ""},
		"lower-case method":           {"get", "shop", "/items/42", ""},
		"any-method route":            {"PATCH", "shop", "/files/x", "shop#7"},
		"HEAD is not GET":             {"HEAD", "shop", "/items/42", ""},
		"host upper case":             {"GET", "SHOP", "/items/42", "shop#1"},
		"host with port":              {"GET", "shop:8080", "/items/42", "shop#1"},
		"host mixed case and port":    {"GET", "Shop.Default.Svc.Cluster.Local:443", "/items/42", "shop#1"},
		"host with trailing dot":      {"GET", "shop.", "/items/42", ""},
		"unknown host":                {"GET", "nobody", "/items/42", ""},
		"empty host":                  {"GET", "", "/items/42", ""},
		"ipv6 host":                   {"GET", "[::1]:8080", "/items/42", ""},
		"host with a name for a port": {"GET", "shop:abc", "/items/42", ""},
		"host with an empty port":     {"GET", "shop:", "/items/42", ""},
		"host with two ports":         {"GET", "shop:1:2", "/items/42", ""},
		"host with a long port":       {"GET", "shop:123456", "/items/42", ""},
		"query stripped":              {"GET", "shop", "/items/42?x=1&y=/2", "shop#1"},
		"fragment":                    {"GET", "shop", "/items/42#top", ""},
		"fragment hiding dot dot":     {"GET", "shop", "/healthz#/../items/42", ""},
		"fragment in the query":       {"GET", "shop", "/items/42?x#/../y", ""},
		"query after trailing slash":  {"GET", "shop", "/items/42/?x", "shop#1"},
		"query only":                  {"GET", "shop", "?x=1", ""},
		"trailing slash":              {"GET", "shop", "/items/42/", "shop#1"},
		"pattern trailing slash":      {"GET", "shop", "/exact", "shop#8"},
		"both trailing slash":         {"GET", "shop", "/exact/", "shop#8"},
		"dot dot":                     {"GET", "shop", "/items/../healthz", ""},
		"dot":                         {"GET", "shop", "/items/./42", ""},
		"trailing dot dot":            {"GET", "shop", "/files/x/..", ""},
		"encoded dot dot":             {"GET", "shop", "/files/%2e%2e/x", ""},
		"encoded dot dot upper":       {"GET", "shop", "/files/%2E%2e/x", ""},
		"dot dot with parameter":      {"GET", "shop", "/files/..;/x", ""},
		"parameter-only segment":      {"GET", "shop", "/files/;x/y", ""},
		"parameter on a name":         {"GET", "shop", "/files/x;v=1", ""},
		"encoded semicolon":           {"GET", "shop", "/files/x%3Bv=1", ""},
		"encoded unreserved":          {"GET", "shop", "/items/%34%32", ""},
		"encoded tilde":               {"GET", "shop", "/files/%7e", ""},
		"encoded slash":               {"GET", "shop", "/files/a%2Fb", ""},
		"encoded slash hiding dots":   {"GET", "shop", "/files/..%2f..%2fitems/42", ""},
		"encoded backslash":           {"GET", "shop", "/files/..%5Cx", ""},
		"encoded percent":             {"GET", "shop", "/files/a%25b", ""},
		"double-encoded dot dot":      {"GET", "shop", "/files/%252e%252e/x", ""},
		"encoded space decoded":       {"GET", "shop", "/files/a%20b", "shop#7"},
		"raw space":                   {"GET", "shop", "/files/a b", ""},
		"decoded literal":             {"GET", "shop", "/caf%C3%A9/x%20y", "shop#9"},
		"decoded literal, lower hex":  {"GET", "shop", "/caf%c3%a9/x%20y", "shop#9"},
		"raw UTF-8":                   {"GET", "shop", "/café/x%20y", "shop#9"},
		"still encoded is not equal":  {"GET", "shop", "/caf%C3%A9/x%2520y", ""},
		"encoded question mark":       {"GET", "shop", "/files/a%3Fb", "shop#7"},
		"encoded hash":                {"GET", "shop", "/files/a%23b", "shop#7"},
		"encoded NUL":                 {"GET", "shop", "/files/a%00", ""},
		"raw NUL":                     {"GET", "shop", "/files/a\x00", ""},
		"encoded tab":                 {"GET", "shop", "/files/a%09", ""},
		"raw tab":                     {"GET", "shop", "/files/a\tb", ""},
		"raw DEL":                     {"GET", "shop", "/files/a\x7f", ""},
		"overlong dot":                {"GET", "shop", "/files/%c0%ae%c0%ae/x", ""},
		"not UTF-8, encoded":          {"GET", "shop", "/files/%ff", ""},
		"not UTF-8, raw":              {"GET", "shop", "/files/\xff", ""},
		"malformed escape":            {"GET", "shop", "/files/%zz", ""},
		"truncated escape":            {"GET", "shop", "/files/%4", ""},
		"backslash":                   {"GET", "shop", `/files/x\..\y`, ""},
		"double slash root":           {"GET", "shop", "//", ""},
		"empty segment":               {"GET", "shop", "/files//x", ""},
		"two trailing slashes":        {"GET", "shop", "/files/x//", ""},
		"no leading slash":            {"GET", "shop", "files/x", ""},
		"empty path":                  {"GET", "shop", "", ""},
		"asterisk form":               {"OPTIONS", "shop", "*", ""},
		"path too long":               {"GET", "shop", "/files/" + strings.Repeat("x", MaxPathBytes), ""},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			r, ok := p.Match(tt.method, tt.host, tt.path)
			got := ""
			if ok {
				got = r.ID
			}
			if got != tt.want || ok != (r != nil) {
				t.Errorf("Match(%q, %q, %q) = %q, want %q", tt.method, tt.host, tt.path, got, tt.want)
			}
		})
	}
}

// TestMatchService attacks a proxy that names the service: whatever host
// the client sends, it cannot have its request judged under another
// service's routes, nor reach the service under a host that is not its own.
func TestMatchService(t *testing.T) {
	p := mustLoad(t, matchPolicy)
	tests := map[string]struct {
		service, host, path string
		want                string
	}{
		"own host":                  {"shop", "shop", "/items/42", "shop#1"},
		"own other host":            {"shop", "shop.default.svc.cluster.local", "/items/42", "shop#1"},
		"own host, case and port":   {"shop", "SHOP:8080", "/items/42", "shop#1"},
		"other service's host":      {"shop", "other", "/items/42", ""},
		"other service, own route":  {"other", "shop", "/anything", ""},
		"other service's own host":  {"other", "other", "/anything", "other#0"},
		"absent host":               {"shop", "", "/items/42", ""},
		"unknown host":              {"shop", "nobody", "/items/42", ""},
		"trailing dot":              {"shop", "shop.", "/items/42", ""},
		"port that is not a number": {"shop", "shop:x", "/items/42", ""},
		"two hosts":                 {"shop", "shop, other", "/items/42", ""},
		"userinfo":                  {"shop", "other@shop", "/items/42", ""},
		"unknown service":           {"nosuch", "shop", "/items/42", ""},
		"service named by host":     {"shop.default.svc.cluster.local", "shop", "/items/42", ""},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			r, ok := p.MatchService(tt.service, "GET", tt.host, tt.path)
			got := ""
			if ok {
				got = r.ID
			}
			if got != tt.want {
				t.Errorf("MatchService(%q, GET, %q, %q) = %q, want %q", tt.service, tt.host, tt.path, got, tt.want)
			}
		})
	}
	if n := testing.AllocsPerRun(100, func() { p.MatchService("shop", "GET", "shop:8080", "/items/42") }); n != 0 {
		t.Errorf("MatchService allocates %v times per call", n)
	}
}

func TestMatchDoesNotAllocate(t *testing.T) {
	p := mustLoad(t, matchPolicy+`  nested:
    hosts: [nested]
    routes:
      - { path: "/**/x/**/y", scopes: [shop:read] }
`)
	tests := map[string]struct{ host, path string }{
		"literal":         {"shop", "/items/42"},
		"double star":     {"shop", "/a/x/y/z/b"},
		"nested ** memo":  {"nested", "/a/x/b/c/y"},
		"no route":        {"shop", "/nothing/here"},
		"denied path":     {"shop", "/files/../x"},
		"host with port":  {"shop:8080", "/items/42"},
		"unknown host":    {"nobody", "/"},
		"query and slash": {"shop", "/items/42/?q=1"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			if n := testing.AllocsPerRun(100, func() { p.Match("GET", tt.host, tt.path) }); n != 0 {
				t.Errorf("Match allocates %v times per call", n)
			}
		})
	}
}

// Nested ** used to backtrack: /**/x/**/x/**/y against x/x/x/... took 1.6 s
// at 400 segments and grew with the fourth power.
func TestMatchNestedDoubleStarIsLinear(t *testing.T) {
	p := mustLoad(t, strings.Replace(matchPolicy, `"/a/**/b"`, `"/**/x/**/x/**/y"`, 1))
	path := "/" + strings.Repeat("x/", MaxPathBytes/2-2) + "z"
	start := time.Now()
	if r, ok := p.Match("GET", "shop", path); ok {
		t.Fatalf("matched %s", r.ID)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("a %d-byte path took %s to match", len(path), d)
	}
	// And the memo does not lose matches.
	for _, path := range []string{"/x/x/y", "/a/x/b/x/c/y", "/x/x/x/x/y", "/q/x/x/r/s/y"} {
		if _, ok := p.Match("GET", "shop", path); !ok {
			t.Errorf("%s does not match /**/x/**/x/**/y", path)
		}
	}
}

func TestCovers(t *testing.T) {
	tests := map[string]struct {
		a, b string
		want bool
	}{
		"equal":                   {"/a/b", "/a/b", true},
		"star covers literal":     {"/a/*", "/a/b", true},
		"literal not star":        {"/a/b", "/a/*", false},
		"double star covers all":  {"/**", "/a/*/**", true},
		"double star covers root": {"/**", "/", true},
		"star not double star":    {"/a/*", "/a/**", false},
		"middle double star":      {"/a/**/b", "/a/x/y/b", true},
		"middle double star zero": {"/a/**/b", "/a/b", true},
		"double star vs double":   {"/a/**", "/a/**/b", true},
		"longer not covered":      {"/a", "/a/b", false},
		"shorter not covered":     {"/a/b", "/a", false},
		"root":                    {"/", "/", true},
		"root not a":              {"/", "/a", false},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			a, err1 := parsePattern(tt.a)
			b, err2 := parsePattern(tt.b)
			if err1 != nil || err2 != nil {
				t.Fatal(err1, err2)
			}
			if got := covers(a, b); got != tt.want {
				t.Errorf("covers(%s, %s) = %v, want %v", tt.a, tt.b, got, tt.want)
			}
		})
	}
}

// refRoute and refMatch are a plain reference matcher: strings.Split and
// recursion, no trie, no memo. FuzzMatch checks the trie against it.
type refRoute struct {
	methods map[string]bool // empty: any
	segs    []string
}

func refPathSegments(path string) ([]string, bool) {
	if strings.Contains(path, "#") {
		return nil, false
	}
	path, _, _ = strings.Cut(path, "?")
	if !strings.HasPrefix(path, "/") || len(path) > MaxPathBytes {
		return nil, false
	}
	rest := path[1:]
	if rest == "" {
		return nil, true
	}
	rest = strings.TrimSuffix(rest, "/")
	if rest == "" || strings.ContainsAny(rest, "\\; \x7f") {
		return nil, false
	}
	for _, c := range []byte(rest) {
		if c < 0x20 {
			return nil, false
		}
	}
	for s := rest; ; {
		i := strings.Index(s, "%")
		if i < 0 {
			break
		}
		if len(s) < i+3 {
			return nil, false
		}
		c, err := strconv.ParseUint(s[i+1:i+3], 16, 8)
		if err != nil || strings.ContainsAny(s[i+1:i+3], "+-") {
			return nil, false
		}
		if b := byte(c); 'a' <= b && b <= 'z' || 'A' <= b && b <= 'Z' || '0' <= b && b <= '9' ||
			strings.IndexByte("-._~/\\;%", b) >= 0 || b < 0x20 || b == 0x7f {
			return nil, false
		}
		s = s[i+3:]
	}
	decoded, err := url.PathUnescape(rest)
	if err != nil || !utf8.ValidString(decoded) {
		return nil, false
	}
	segs := strings.Split(decoded, "/")
	for _, s := range segs {
		if s == "" || s == "." || s == ".." {
			return nil, false
		}
	}
	return segs, true
}

func refSegmentsMatch(pat, path []string) bool {
	if len(pat) == 0 {
		return len(path) == 0
	}
	switch pat[0] {
	case "**":
		for i := 0; i <= len(path); i++ {
			if refSegmentsMatch(pat[1:], path[i:]) {
				return true
			}
		}
		return false
	case "*":
		return len(path) > 0 && refSegmentsMatch(pat[1:], path[1:])
	default:
		return len(path) > 0 && path[0] == pat[0] && refSegmentsMatch(pat[1:], path[1:])
	}
}

func refMatch(routes []refRoute, method, path string) int {
	segs, ok := refPathSegments(path)
	if !ok {
		return -1
	}
	for i, r := range routes {
		if (len(r.methods) == 0 || r.methods[method]) && refSegmentsMatch(r.segs, segs) {
			return i
		}
	}
	return -1
}

// fuzzRoutes turns fuzz text into routes: one a line, "[METHOD,...] pattern".
// It keeps the well-formed ones and bounds their number and their "**",
// which the reference matcher pays for exponentially.
func fuzzRoutes(spec string) ([]RouteSpec, []refRoute) {
	var specs []RouteSpec
	var refs []refRoute
	for _, line := range strings.Split(spec, "\n") {
		if len(specs) == 16 {
			break
		}
		var methods []string
		pattern := line
		if ms, pat, ok := strings.Cut(line, " "); ok {
			pattern = pat
			for _, m := range strings.Split(ms, ",") {
				if methodBit(m) != 0 {
					methods = append(methods, m)
				}
			}
			if len(methods) == 0 {
				continue
			}
		}
		segs, err := parsePattern(pattern)
		if err != nil || strings.Count(pattern, "**") > 3 {
			continue
		}
		ref := refRoute{methods: map[string]bool{}, segs: segs}
		for _, m := range methods {
			ref.methods[m] = true
		}
		specs = append(specs, RouteSpec{Methods: methods, Path: pattern, Scopes: []string{"s:r"}})
		refs = append(refs, ref)
	}
	return specs, refs
}

func FuzzMatch(f *testing.F) {
	f.Add("GET /a/**/b\n/x/*", "GET", "/a/x/b")
	f.Add("/**/healthz\nPOST /items/**\n/items/*", "POST", "/items/1?x")
	f.Add("/**/x/**/x/**/y", "GET", "/x/x/x/x/z")
	f.Add("/", "GET", "//")
	f.Add("/files/**", "GET", "/files/..;/x")
	f.Add("/public/**\n/secret/**", "GET", "/public/x#/../../secret/f")
	f.Add("/public/**\n/café/x y", "GET", "/caf%C3%A9/x%20y?q#f")
	f.Add("/public/**", "GET", "/public/%c0%ae%c0%ae/%252e/%00/%ff")
	f.Fuzz(func(t *testing.T, spec, method, path string) {
		if len(path) > 512 || strings.Count(path, "/") > 48 {
			t.Skip("the reference matcher is exponential in ** on long paths")
		}
		specs, refs := fuzzRoutes(spec)
		if len(specs) == 0 {
			return
		}
		p, err := compile(&Document{Services: map[string]ServiceSpec{"s": {Hosts: []string{"s"}, Routes: specs}}})
		if err != nil {
			t.Fatalf("compile of well-formed routes: %v", err)
		}
		want := refMatch(refs, method, path)
		r, ok := p.Match(method, "s", path)
		got := -1
		if ok {
			got = r.Index
		}
		if got != want {
			t.Fatalf("routes %q: Match(%q, %q) = route %d, reference says %d", spec, method, path, got, want)
		}
		// covers, behind the unreachable-route check, must be sound: if it
		// says route i takes every path of route j, j's path is i's too.
		segs, okPath := refPathSegments(path)
		for i := range refs {
			for j := range refs {
				if i != j && covers(refs[i].segs, refs[j].segs) && okPath &&
					refSegmentsMatch(refs[j].segs, segs) && !refSegmentsMatch(refs[i].segs, segs) {
					t.Fatalf("covers(%q, %q) but %q matches only the second", specs[i].Path, specs[j].Path, path)
				}
			}
		}
	})
}

// BenchmarkRouteMatch1000 matches against one service of 1,000 routes, for
// routes near the end of the list: the trie makes the cost independent of a
// route's position.
func BenchmarkRouteMatch1000(b *testing.B) {
	var specs []RouteSpec
	for i := range 1000 {
		var path string
		switch i % 4 {
		case 0:
			path = fmt.Sprintf("/api/v1/r%d/**", i)
		case 1:
			path = fmt.Sprintf("/api/v1/r%d/*", i)
		case 2:
			path = fmt.Sprintf("/api/v2/r%d/items/*/detail", i)
		case 3:
			path = fmt.Sprintf("/static/r%d/**/file", i)
		}
		specs = append(specs, RouteSpec{Methods: []string{"GET"}, Path: path, Scopes: []string{"s:r"}})
	}
	p, err := compile(&Document{Services: map[string]ServiceSpec{"big": {Hosts: []string{"big"}, Routes: specs}}})
	if err != nil {
		b.Fatal(err)
	}
	cases := map[string]struct {
		path string
		want int
	}{
		"literal then **":     {"/api/v1/r996/a/b/c", 996},
		"literal then *":      {"/api/v1/r997/x", 997},
		"deep literal":        {"/api/v2/r998/items/42/detail", 998},
		"** in the middle":    {"/static/r999/a/b/c/d/file", 999},
		"no match, long path": {"/api/v1/none/" + strings.Repeat("seg/", 30), -1},
	}
	for name, c := range cases {
		b.Run(name, func(b *testing.B) {
			r, ok := p.Match("GET", "big", c.path)
			if got := -1; ok && r.Index != c.want || !ok && c.want != -1 {
				if ok {
					got = r.Index
				}
				b.Fatalf("matched %d, want %d", got, c.want)
			}
			b.ReportAllocs()
			for b.Loop() {
				p.Match("GET", "big", c.path)
			}
		})
	}
}

func TestMatchConcurrent(t *testing.T) {
	p := mustLoad(t, strings.Replace(matchPolicy, `"/a/**/b"`, `"/**/x/**/x/**/y"`, 1))
	paths := map[string]bool{"/x/x/y": true, "/a/x/b/x/c/y": true, "/x/y": false, "/q/x/r": false}
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 500 {
				for path, want := range paths {
					if _, ok := p.Match("GET", "shop", path); ok != want {
						t.Errorf("Match(%s) = %v, want %v", path, ok, want)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
}
