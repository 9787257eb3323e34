package policy_test

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/policy"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/check")

func TestLoadExample(t *testing.T) {
	const name = "../deploy/policy.example.yaml"
	data, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	p, err := policy.Load(name, data)
	if err != nil {
		t.Fatalf("the example policy must load:\n%v", err)
	}
	if len(p.Warnings) != 0 {
		t.Errorf("the example policy has warnings: %v", p.Warnings)
	}
	if got := policy.Check(name, data); len(got) != 0 {
		t.Errorf("Check found problems in the example: %v", got)
	}
	// The lifetime limit is the smaller of the class and environment
	// max_ttl, and zero where the class may not be issued.
	for _, env := range []string{"dev", "staging", "prod", "qa"} {
		for _, class := range []string{"ci-deploy", "service", "admin", "nobody"} {
			var want time.Duration
			e, okEnv := p.Environment(env)
			c, okClass := p.Class(class)
			if okEnv && okClass && c.AllowsEnvironment(env) {
				want = min(e.MaxTTL.D(), c.MaxTTL.D())
			}
			if got := p.Lifetime(env, class); got != want {
				t.Errorf("Lifetime(%s, %s) = %s, want %s", env, class, got, want)
			}
		}
	}
	if got, want := p.Lifetime("prod", "ci-deploy"), 12*time.Hour; got != want {
		t.Errorf("Lifetime(prod, ci-deploy) = %s, want %s", got, want)
	}
	if got, want := p.MaxLifetime(), 720*time.Hour; got != want {
		t.Errorf("MaxLifetime = %s, want %s", got, want)
	}
	if got, want := p.ServiceNames(), []string{"deployer", "inventory", "orders", "tokenwarden"}; !slices.Equal(got, want) {
		t.Errorf("ServiceNames = %v, want %v", got, want)
	}
	if got := len(p.Routes("orders")); got != 3 {
		t.Errorf("orders has %d routes, want 3", got)
	}
	if p.Doc.Anomaly.Action != "revoke" || p.Doc.Audit.Allows != "summary" {
		t.Errorf("anomaly/audit not decoded: %+v %+v", p.Doc.Anomaly, p.Doc.Audit)
	}
}

// TestCheck loads each policy under testdata/check and compares every
// problem it reports with the golden file beside it (go test -update
// rewrites them). Each case also names a substring its problems must hold,
// so that the table says what it is about.
func TestCheck(t *testing.T) {
	tests := map[string]struct {
		loads bool   // Load succeeds (warnings only)
		want  string // a substring of the problems
	}{
		"ok_minimal":             {loads: true},
		"unknown_field_top":      {want: `2:1: error: policy: unknown field "isuer": remove it or correct its spelling`},
		"unknown_field_nested":   {want: `10:5: error: classes.service: unknown field "max_tll"`},
		"bad_duration":           {want: `4:20: error: environments.prod.max_ttl: bad duration "1d": write a positive Go duration`},
		"malformed_scope":        {want: `7:27: error: classes.service.scopes[1]: malformed scope "orders read": use letters`},
		"class_ttl_above_env":    {want: `10:14: error: classes.service.max_ttl 48h0m0s is above environment prod's max_ttl 24h0m0s: lower the class max_ttl or drop prod from its environments`},
		"unknown_environment":    {want: `11:26: error: classes.service.environments[1]: unknown environment "qa" (defined: dev, prod): define it under environments or remove it here`},
		"default_above_max":      {want: `8:18: error: classes.service.default_ttl 13h0m0s is above its max_ttl 12h0m0s: lower default_ttl or raise max_ttl`},
		"unreachable_route":      {want: `19:9: error: services.orders.routes[2] (/orders/*/admin) is unreachable: route 0 (/orders/**) above it`},
		"bad_path_pattern":       {want: `15:17: error: services.orders.routes[0].path: bad path pattern "/a*b": segment 1 mixes * with text`},
		"duplicate_host":         {want: `17:23: error: services.payments.hosts[1]: host "orders.default.svc" already belongs to service orders`},
		"syntax_error":           {want: `7:5: error: YAML syntax: did not find expected ',' or ']': check the indentation`},
		"tab_indent":             {want: `4:1: error: YAML syntax: found character that cannot start any token`},
		"empty":                  {want: `1:1: error: policy file is empty: start from deploy/policy.example.yaml`},
		"comments_only":          {want: `1:1: error: policy file is empty`},
		"two_documents":          {want: `16:1: error: a second YAML document starts here`},
		"unused_scope":           {loads: true, want: `7:27: warning: scope "orders:export" is granted by a class but no route requires it`},
		"many_problems":          {want: `1:10: error: version: want 1, got 2`},
		"bad_clock_skew":         {want: `16:13: error: clock_skew: 2m0s is above the 1m0s limit`},
		"clock_skew_not_seconds": {want: `16:13: error: clock_skew: 1.5s is not a whole number of seconds`},
		"ok_clock_skew":          {loads: true},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			file := filepath.Join("testdata", "check", name+".yaml")
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			got := policy.Check(file, data)
			checkProblems(t, file, got)
			var text strings.Builder
			for _, p := range got {
				fmt.Fprintln(&text, p)
			}
			golden := strings.TrimSuffix(file, ".yaml") + ".golden"
			if *update {
				if err := os.WriteFile(golden, []byte(text.String()), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if text.String() != string(want) {
				t.Errorf("Check(%s) =\n%s\nwant (%s):\n%s", file, text.String(), golden, want)
			}
			if tt.want != "" && !strings.Contains(text.String(), tt.want) {
				t.Errorf("problems do not hold %q:\n%s", tt.want, text.String())
			}

			p, err := policy.Load(file, data)
			if tt.loads {
				if err != nil {
					t.Fatalf("Load: %v", err)
				}
				if !reflect.DeepEqual(p.Warnings, got) {
					t.Errorf("Load warnings %v differ from Check %v", p.Warnings, got)
				}
				return
			}
			var le *policy.LoadError
			if !errors.As(err, &le) {
				t.Fatalf("Load error = %v, want a *LoadError", err)
			}
			if !reflect.DeepEqual(le.Problems, got) {
				t.Errorf("LoadError problems differ from Check")
			}
			for _, p := range got {
				in := strings.Contains(le.Error(), p.String())
				if p.Severity == policy.SeverityError && !in || p.Severity == policy.SeverityWarning && in {
					t.Errorf("LoadError.Error() should list errors only; %v listed = %v", p, in)
				}
			}
		})
	}
}

// checkProblems asserts what holds for every problem list: each names the
// file, a line and a column, and the list is in file order.
func checkProblems(t *testing.T, file string, got []policy.Problem) {
	t.Helper()
	for i, p := range got {
		if p.File != file || p.Line < 1 || p.Column < 1 || p.Message == "" {
			t.Errorf("problem %d lacks a position or message: %+v", i, p)
		}
		if p.Severity != policy.SeverityError && p.Severity != policy.SeverityWarning {
			t.Errorf("problem %d has severity %q", i, p.Severity)
		}
		if i > 0 && (p.Line < got[i-1].Line || p.Line == got[i-1].Line && p.Column < got[i-1].Column) {
			t.Errorf("problem %d (%d:%d) is before problem %d (%d:%d)", i, p.Line, p.Column, i-1, got[i-1].Line, got[i-1].Column)
		}
	}
}

func TestCheckManyProblems(t *testing.T) {
	const file = "testdata/check/many_problems.yaml"
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	first := policy.Check(file, data)
	// Every mistake in the file is reported, not just the first.
	for _, want := range []string{
		"version: want 1", `unknown field "min_ttl"`, "environments.Staging: names are lower-case",
		"classes.service.max_ttl 36h0m0s is above environment prod's", "rotation_grace needs rotate_after",
		`unknown environment "qa"`, "classes.batch.scopes: want a list", "default_ttl 2h0m0s is above its max_ttl",
		`"Orders:8080" is not a lower-case host name`, `unknown method "get"`,
		"routes[2] (/orders/*) is unreachable", "public route needs no token",
		"anomaly.action: want revoke or alert", "spike_factor must be above 1", "audit.allows: want every or summary",
		`warning: scope "orders:export" is granted`,
	} {
		found := 0
		for _, p := range first {
			if strings.Contains(p.String(), want) {
				found++
			}
		}
		if found != 1 {
			t.Errorf("%d problems hold %q, want 1", found, want)
		}
	}
	// A mistake is reported once: batch.scopes is not also "required".
	for _, p := range first {
		if strings.Contains(p.Message, "classes.batch.scopes: list the scopes") {
			t.Errorf("cascading problem reported: %v", p)
		}
	}
	// The order is the same on every run, though maps are involved.
	for range 20 {
		if again := policy.Check(file, data); !reflect.DeepEqual(again, first) {
			t.Fatalf("Check is not stable:\n%v\n%v", first, again)
		}
	}
}

func TestCheckOversized(t *testing.T) {
	tests := map[string]struct {
		size    int
		problem string
	}{
		"at the limit":   {size: policy.MaxDocumentBytes, problem: "policy file is empty"},
		"over the limit": {size: policy.MaxDocumentBytes + 1, problem: "policy file is 4194305 bytes, over the 4194304-byte limit"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			// Comments only: at the limit it is read (and empty), over it
			// it is refused unread.
			data := []byte(strings.Repeat("#", tt.size))
			got := policy.Check("big.yaml", data)
			checkProblems(t, "big.yaml", got)
			if len(got) != 1 || !strings.Contains(got[0].String(), "big.yaml:1:1: error: "+tt.problem) {
				t.Errorf("Check = %v, want one problem holding %q", got, tt.problem)
			}
		})
	}
}

// policyWithRoutes is a valid policy whose orders service has these routes
// (YAML flow mappings, one a line).
func policyWithRoutes(routes ...string) []byte {
	var b strings.Builder
	b.WriteString(`version: 1
issuer: tokenwarden.test
environments: { prod: { max_ttl: 24h } }
classes:
  service: { scopes: [orders:read], default_ttl: 1h, max_ttl: 12h, environments: [prod] }
services:
  orders:
    hosts: [orders]
    routes:
`)
	for _, r := range routes {
		b.WriteString("      - " + r + "\n")
	}
	return []byte(b.String())
}

func TestCheckUnreachableRoutes(t *testing.T) {
	tests := map[string]struct {
		routes      []string
		unreachable []int // indexes of routes flagged
	}{
		"same pattern twice":           {[]string{`{ path: "/a", scopes: [orders:read] }`, `{ path: "/a", scopes: [orders:read] }`}, []int{1}},
		"double star takes everything": {[]string{`{ path: "/**", scopes: [orders:read] }`, `{ path: "/a/b", scopes: [orders:read] }`}, []int{1}},
		"star takes a literal":         {[]string{`{ path: "/a/*", scopes: [orders:read] }`, `{ path: "/a/b", scopes: [orders:read] }`}, []int{1}},
		"middle double star":           {[]string{`{ path: "/a/**/b", scopes: [orders:read] }`, `{ path: "/a/x/y/b", scopes: [orders:read] }`}, []int{1}},
		"star-star covers star":        {[]string{`{ path: "/a/**", scopes: [orders:read] }`, `{ path: "/a/*/c", scopes: [orders:read] }`}, []int{1}},
		"any method covers GET":        {[]string{`{ path: "/a/**", scopes: [orders:read] }`, `{ methods: [GET], path: "/a/b", scopes: [orders:read] }`}, []int{1}},
		"methods a superset":           {[]string{`{ methods: [GET, POST], path: "/a", scopes: [orders:read] }`, `{ methods: [POST], path: "/a", scopes: [orders:read] }`}, []int{1}},
		"public route shadows":         {[]string{`{ path: "/a", public: true }`, `{ path: "/a", scopes: [orders:read] }`}, []int{1}},
		"trailing slash is the same":   {[]string{`{ path: "/a/", scopes: [orders:read] }`, `{ path: "/a", scopes: [orders:read] }`}, []int{1}},
		"methods differ":               {[]string{`{ methods: [GET], path: "/a/**", scopes: [orders:read] }`, `{ methods: [POST], path: "/a/b", scopes: [orders:read] }`}, nil},
		"methods overlap only":         {[]string{`{ methods: [GET], path: "/a", scopes: [orders:read] }`, `{ methods: [GET, POST], path: "/a", scopes: [orders:read] }`}, nil},
		"any method after GET":         {[]string{`{ methods: [GET], path: "/a", scopes: [orders:read] }`, `{ path: "/a", scopes: [orders:read] }`}, nil},
		"narrower first":               {[]string{`{ path: "/a/b", scopes: [orders:read] }`, `{ path: "/a/*", scopes: [orders:read] }`}, nil},
		"narrower first with **":       {[]string{`{ path: "/a/b/**", scopes: [orders:read] }`, `{ path: "/a/**", scopes: [orders:read] }`}, nil},
		"star does not cover empty":    {[]string{`{ path: "/a/*", scopes: [orders:read] }`, `{ path: "/a/**", scopes: [orders:read] }`}, nil},
		"different literals":           {[]string{`{ path: "/a/b", scopes: [orders:read] }`, `{ path: "/a/c", scopes: [orders:read] }`}, nil},
		"longer is not covered":        {[]string{`{ path: "/a", scopes: [orders:read] }`, `{ path: "/a/b", scopes: [orders:read] }`}, nil},
		"each flagged once":            {[]string{`{ path: "/**", scopes: [orders:read] }`, `{ path: "/**", scopes: [orders:read] }`, `{ path: "/x", scopes: [orders:read] }`}, []int{1, 2}},
		"bad route shadows nothing": {[]string{`{ methods: [FETCH], path: "/a", scopes: [orders:read] }`, `{ path: "/bad*", scopes: [orders:read] }`,
			`{ methods: [GET], path: "/**", scopes: [orders:read] }`, `{ methods: [GET], path: "/a", scopes: [orders:read] }`}, []int{3}},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			got := policy.Check("routes.yaml", policyWithRoutes(tt.routes...))
			checkProblems(t, "routes.yaml", got)
			var flagged []int
			for _, p := range got {
				var i int
				if _, err := fmt.Sscanf(p.Message, "services.orders.routes[%d] (", &i); err == nil && strings.Contains(p.Message, "is unreachable") {
					flagged = append(flagged, i)
					// The message names the route that shadows it by its index.
					if !strings.Contains(p.Message, "reorder them or narrow route") {
						t.Errorf("no fix in %q", p.Message)
					}
					if wantLine := 10 + i; p.Line != wantLine {
						t.Errorf("route %d flagged at line %d, want %d", i, p.Line, wantLine)
					}
				}
			}
			if !slices.Equal(flagged, tt.unreachable) {
				t.Errorf("unreachable routes = %v, want %v; problems:\n%v", flagged, tt.unreachable, got)
			}
		})
	}
}

func TestCheckShadowNamesTheRightRoute(t *testing.T) {
	// A malformed route before the shadowing one must not shift the index
	// named in the message.
	got := policy.Check("routes.yaml", policyWithRoutes(
		`{ path: "no-slash", scopes: [orders:read] }`,
		`{ path: "/a/**", scopes: [orders:read] }`,
		`{ path: "/a/b", scopes: [orders:read] }`,
	))
	want := "routes.yaml:12:9: error: services.orders.routes[2] (/a/b) is unreachable: route 1 (/a/**) above it"
	for _, p := range got {
		if strings.HasPrefix(p.String(), want) {
			return
		}
	}
	t.Errorf("problems %v lack %q", got, want)
}

func TestCheckPathPatterns(t *testing.T) {
	tests := map[string]struct {
		pattern string
		problem string // "" when the pattern is good
	}{
		"root":                 {"/", ""},
		"literal":              {"/orders", ""},
		"star":                 {"/orders/*", ""},
		"double star":          {"/**", ""},
		"double star middle":   {"/a/**/b", ""},
		"trailing slash":       {"/a/b/", ""},
		"encoded slash":        {"/a%2Fb", "can never match"},
		"encoded backslash":    {"/a%5cb", "can never match"},
		"star in text":         {"/a*b", "mixes * with text"},
		"triple star":          {"/***", "mixes * with text"},
		"no slash":             {"no-slash", "a pattern starts with /"},
		"empty":                {"", "a pattern starts with /"},
		"empty segment":        {"/a//b", "empty segment (//): remove the extra /"},
		"leading double slash": {"//a", "empty segment"},
		"dot":                  {"/a/./b", "dot segments"},
		"dot dot":              {"/a/..", "dot segments"},
		"query":                {"/a?b=1", "drop the ? or # part"},
		"fragment":             {"/a#top", "drop the ? or # part"},
		"encoded unreserved":   {"/%61dmin", "can never match"},
		"encoded dot":          {"/a/%2e%2e/b", "can never match"},
		"backslash":            {`/a\\b`, "can never match"},
		"dot with parameter":   {"/a/..;x", "can never match"},
		"too long":             {"/" + strings.Repeat("a", policy.MaxPathBytes), "longer than 8192 bytes"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			got := policy.Check("p.yaml", policyWithRoutes(fmt.Sprintf(`{ path: %q, scopes: [orders:read] }`, tt.pattern)))
			checkProblems(t, "p.yaml", got)
			if tt.problem == "" {
				if len(got) != 0 {
					t.Errorf("pattern %q: unexpected problems %v", tt.pattern, got)
				}
				return
			}
			if len(got) != 1 || !strings.Contains(got[0].Message, tt.problem) || got[0].Line != 10 || got[0].Column != 17 {
				t.Errorf("pattern %q: problems %v, want one at 10:17 holding %q", tt.pattern, got, tt.problem)
			}
		})
	}
}

// FuzzLoad feeds the loader arbitrary bytes: it never panics, every problem
// has a position, and Load and Check agree: a file loads exactly when Check
// finds no error, with the same problems either way.
func FuzzLoad(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/check/*.yaml")
	seeds = append(seeds, "testdata/policy.yaml", "../deploy/policy.example.yaml")
	for _, name := range seeds {
		data, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte("a: &x [*x]"))
	f.Add([]byte("---\n---\n"))
	f.Add([]byte("[[[[[[[[[[]]]]]]]]]]"))
	f.Fuzz(func(t *testing.T, data []byte) {
		const file = "fuzz.yaml"
		p, err := policy.Load(file, data)
		got := policy.Check(file, data)
		checkProblems(t, file, got)
		errs := 0
		for _, pr := range got {
			if pr.Severity == policy.SeverityError {
				errs++
			}
		}
		if err == nil {
			if errs != 0 {
				t.Fatalf("Load succeeded but Check reports errors: %v", got)
			}
			if !reflect.DeepEqual(p.Warnings, got) {
				t.Fatalf("Load warnings %v, Check %v", p.Warnings, got)
			}
			// A loaded policy is usable.
			for _, svc := range p.ServiceNames() {
				if len(p.Routes(svc)) == 0 {
					t.Fatalf("service %s loaded without routes", svc)
				}
				for _, r := range p.Routes(svc) {
					p.Match("GET", svc, r.Pattern)
				}
			}
			for _, w := range []time.Duration{p.ClockSkew(), p.ExpLeeway()} {
				if w < 0 || w > policy.MaxClockSkew || w%time.Second != 0 {
					t.Fatalf("clock_skew %s / exp_leeway %s: want whole seconds in 0..%s", p.ClockSkew(), p.ExpLeeway(), policy.MaxClockSkew)
				}
			}
			for name := range p.Doc.Classes {
				for env := range p.Doc.Environments {
					if l := p.Lifetime(env, name); l < 0 || l > p.MaxLifetime() {
						t.Fatalf("Lifetime(%s, %s) = %s outside 0..%s", env, name, l, p.MaxLifetime())
					}
				}
			}
			return
		}
		var le *policy.LoadError
		if !errors.As(err, &le) {
			t.Fatalf("Load error %T %v is not a *LoadError", err, err)
		}
		if errs == 0 || !reflect.DeepEqual(le.Problems, got) {
			t.Fatalf("Load failed with %v but Check reports %v", le.Problems, got)
		}
		if le.Error() == "" {
			t.Fatal("empty LoadError text")
		}
	})
}
