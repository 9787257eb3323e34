package xds

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	extauthz "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	upstreamhttp "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"

	"github.com/tokenwarden/tokenwarden/agent/authz"
	"github.com/tokenwarden/tokenwarden/policy"
)

func loadPolicy(t testing.TB, path string) *policy.Policy {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	p, err := policy.Load(path, data)
	if err != nil {
		t.Fatalf("load %s: %v", path, err)
	}
	return p
}

// policyOf loads a policy whose service "svc" (host "svc") has routes, given
// as YAML flow mappings.
func policyOf(t testing.TB, routes ...string) *policy.Policy {
	t.Helper()
	doc := `version: 1
issuer: test
environments: { prod: { max_ttl: 1h } }
classes: { c: { scopes: [s:x], default_ttl: 1h, max_ttl: 1h, environments: [prod] } }
services:
  svc:
    hosts: [svc]
    routes:
`
	for _, r := range routes {
		doc += "      - " + r + "\n"
	}
	p, err := policy.Load("inline", []byte(doc))
	if err != nil {
		t.Fatalf("load policy with routes %v: %v", routes, err)
	}
	return p
}

func TestResourcesPassValidationAndConsistency(t *testing.T) {
	p := loadPolicy(t, "testdata/policy.yaml")
	for _, svc := range p.ServiceNames() {
		t.Run(svc, func(t *testing.T) {
			res, err := Resources(p, svc, Config{})
			if err != nil {
				t.Fatal(err)
			}
			if err := validateResources(res); err != nil {
				t.Fatal(err)
			}
			snap, err := newSnapshot(res)
			if err != nil {
				t.Fatal(err)
			}
			if err := snap.Consistent(); err != nil {
				t.Fatal(err)
			}
			for typ, want := range map[string]int{resource.ListenerType: 1, resource.RouteType: 1, resource.ClusterType: 2} {
				if got := len(snap.GetResources(typ)); got != want {
					t.Errorf("%s: %d resources, want %d", typeName(typ), got, want)
				}
			}
		})
	}
}

func TestResourcesUnknownService(t *testing.T) {
	p := loadPolicy(t, "testdata/policy.yaml")
	_, err := Resources(p, "billing", Config{})
	if !errors.Is(err, ErrUnknownService) {
		t.Fatalf("err = %v, want ErrUnknownService", err)
	}
}

func TestEnvoyRoute(t *testing.T) {
	tests := map[string]struct {
		route        string
		wantPath     string // specifier kind=value
		wantMethod   string // the :method matcher, "" for none
		wantAuthzOff bool
	}{
		"literal": {
			route:    `{ path: /healthz, public: true }`,
			wantPath: `safe_regex=/healthz/?`, wantAuthzOff: true,
		},
		"root": {
			route:    `{ path: /, public: true }`,
			wantPath: `path=/`, wantAuthzOff: true,
		},
		"everything": {
			route:    `{ path: "/**", scopes: [s:x] }`,
			wantPath: `prefix=/`,
		},
		"subtree": {
			route:    `{ methods: [GET], path: "/orders/**", scopes: [s:x] }`,
			wantPath: `path_separated_prefix=/orders`, wantMethod: `exact=GET`,
		},
		"deep subtree": {
			route:    `{ path: "/a/b.c/**", scopes: [s:x] }`,
			wantPath: `path_separated_prefix=/a/b.c`,
		},
		"one segment": {
			route:    `{ methods: [GET, HEAD], path: "/items/*", public: true }`,
			wantPath: `safe_regex=/items/[^/;%\\]+/?`, wantMethod: `safe_regex=GET|HEAD`, wantAuthzOff: true,
		},
		"public subtree": {
			route:    `{ path: "/docs/**", public: true }`,
			wantPath: `safe_regex=/docs(?:/[^/;%\\]+)*/?`, wantAuthzOff: true,
		},
		"any segments inside": {
			route:    `{ methods: [POST, PUT, DELETE], path: "/files/**/meta.json", scopes: [s:x] }`,
			wantPath: `safe_regex=/files(?:/[^/]+)*/meta\.json/?`, wantMethod: `safe_regex=POST|PUT|DELETE`,
		},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			p := policyOf(t, tt.route)
			rc, err := routeConfiguration(p, "svc")
			if err != nil {
				t.Fatal(err)
			}
			if err := rc.ValidateAll(); err != nil {
				t.Fatal(err)
			}
			vh := rc.GetVirtualHosts()[0]
			if vh.GetName() != "svc" || !slices.Equal(vh.GetDomains(), []string{"svc"}) {
				t.Errorf("virtual host %s domains %v, want svc [svc]", vh.GetName(), vh.GetDomains())
			}
			if n := len(vh.GetRoutes()); n != 2 {
				t.Fatalf("%d routes, want the policy route and the catch-all", n)
			}
			r := vh.GetRoutes()[0]
			if r.GetName() != "svc#0" {
				t.Errorf("route name %q, want svc#0", r.GetName())
			}
			if got := pathSpec(r.GetMatch()); got != tt.wantPath {
				t.Errorf("path match %s, want %s", got, tt.wantPath)
			}
			if got := methodSpec(t, r.GetMatch()); got != tt.wantMethod {
				t.Errorf("method match %q, want %q", got, tt.wantMethod)
			}
			if got := extAuthzDisabled(t, r); got != tt.wantAuthzOff {
				t.Errorf("ext_authz disabled = %v, want %v", got, tt.wantAuthzOff)
			}
			if c := r.GetRoute().GetCluster(); c != AppClusterName {
				t.Errorf("routes to %q, want %q", c, AppClusterName)
			}
		})
	}
}

func TestRouteConfigurationEndsInAuthorizedCatchAll(t *testing.T) {
	p := loadPolicy(t, "testdata/policy.yaml")
	rc, err := routeConfiguration(p, "orders")
	if err != nil {
		t.Fatal(err)
	}
	hosts := rc.GetVirtualHosts()
	if len(hosts) != 2 {
		t.Fatalf("%d virtual hosts, want the service's and the unknown-host one", len(hosts))
	}
	if got := hosts[0].GetDomains(); !slices.Equal(got, []string{"orders", "orders.default.svc.cluster.local"}) {
		t.Errorf("service domains %v", got)
	}
	if got := hosts[1].GetDomains(); !slices.Equal(got, []string{"*"}) {
		t.Errorf("fallback domains %v, want [*]", got)
	}
	for _, vh := range hosts {
		last := vh.GetRoutes()[len(vh.GetRoutes())-1]
		if pathSpec(last.GetMatch()) != "prefix=/" || last.GetMatch().GetHeaders() != nil {
			t.Errorf("%s: last route matches %s, want every request", vh.GetName(), pathSpec(last.GetMatch()))
		}
	}
	catchAll := hosts[0].GetRoutes()[len(hosts[0].GetRoutes())-1]
	if extAuthzDisabled(t, catchAll) {
		t.Error("the service's catch-all skips ext_authz")
	}
	if catchAll.GetRoute().GetCluster() != AppClusterName {
		t.Errorf("the service's catch-all goes to %q, want the app (ext_authz decides)", catchAll.GetRoute().GetCluster())
	}
	checkDeniesEveryRequest(t, hosts[1])
	var public []string
	for _, r := range hosts[0].GetRoutes() {
		if extAuthzDisabled(t, r) {
			public = append(public, r.GetName())
		}
	}
	if !slices.Equal(public, []string{"orders#2"}) {
		t.Errorf("routes without ext_authz %v, want only the public orders#2", public)
	}
}

// TestPathMatchAgreesWithPolicy checks the translation against the policy's
// own matcher on normalized paths (what Envoy matches after normalize_path
// and merge_slashes): a public route must not match more than its rule, a
// protected one not less.
func TestPathMatchAgreesWithPolicy(t *testing.T) {
	patterns := []string{"/", "/**", "/a", "/a/b", "/a/**", "/a/*", "/a/*/c", "/a/**/c", "/**/c", "/*/b/**", "/a.b/*", "/a+/**"}
	paths := []string{
		"/", "/a", "/a/", "/ab", "/a/b", "/a/b/", "/a/bc", "/a/b/c", "/a/b/c/", "/a/x/c", "/a/x/y/c",
		"/a/c", "/c", "/x/c", "/x/b", "/x/b/y", "/axb/z", "/a.b/z", "/a.b/z/y", "/a+/q", "/aa/q", "/b?x=/a",
	}
	for _, pattern := range patterns {
		p := policyOf(t, fmt.Sprintf("{ path: %q, scopes: [s:x] }", pattern))
		m := pathMatch(pattern)
		for _, path := range paths {
			_, want := p.Match("GET", "svc", path)
			if got := envoyMatches(t, m, path); got != want {
				t.Errorf("pattern %s, path %s: envoy matches %v, policy %v (%s)", pattern, path, got, want, pathSpec(m))
			}
		}
	}
}

// TestPublicPathMatchIsWithinPolicy checks the match of public routes, whose
// requests skip ext_authz: on normalized paths it matches nothing the policy
// does not, and nothing with a path parameter (";"), an escape or a
// backslash in a wildcard segment, which some applications read as another
// path ("/docs/..;/admin" is "/admin" to Tomcat). Without those it matches
// exactly what the policy does.
func TestPublicPathMatchIsWithinPolicy(t *testing.T) {
	patterns := []string{"/", "/**", "/a", "/a/b", "/a/**", "/a/*", "/a/*/c", "/a/**/c", "/**/c", "/*/b/**"}
	paths := []string{
		"/", "/a", "/a/", "/ab", "/a/b", "/a/b/", "/a/b/c", "/a/x/c", "/a/x/y/c", "/a/c", "/c", "/x/c", "/x/b", "/x/b/y",
		"/a/..;/admin", "/a/..;/c", "/a/x;y/c", "/a/%2e%2e;/c", "/a/x%20y/c", `/a/x\y/c`, "/a/b;v=1", "/a/;/c", "/..;/b/c",
	}
	for _, pattern := range patterns {
		p := policyOf(t, fmt.Sprintf("{ path: %q, public: true }", pattern))
		m := publicPathMatch(pattern)
		for _, path := range paths {
			_, policyMatches := p.Match("GET", "svc", path)
			got := envoyMatches(t, m, path)
			if got && !policyMatches {
				t.Errorf("pattern %s, path %s: the public route matches what the policy does not (%s)", pattern, path, pathSpec(m))
			}
			if strings.ContainsAny(path, ";%\\") {
				if got && (strings.Contains(pattern, "*")) {
					t.Errorf("pattern %s, path %s: a public wildcard matches an ambiguous segment (%s)", pattern, path, pathSpec(m))
				}
			} else if got != policyMatches {
				t.Errorf("pattern %s, path %s: envoy matches %v, policy %v (%s)", pattern, path, got, policyMatches, pathSpec(m))
			}
		}
	}
}

// TestPublicRouteRemovesForgedIdentity checks that a public route, which
// skips ext_authz, drops the identity headers a client may forge, in every
// spelling an application may read as theirs.
func TestPublicRouteRemovesForgedIdentity(t *testing.T) {
	p := loadPolicy(t, "testdata/policy.yaml")
	rc, err := routeConfiguration(p, "inventory")
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rc.GetVirtualHosts()[0].GetRoutes() {
		rm := r.GetRequestHeadersToRemove()
		if !extAuthzDisabled(t, r) {
			// Route-level removal runs after ext_authz: it would drop the
			// identity ext_authz sets.
			if len(rm) != 0 {
				t.Errorf("route %s asks ext_authz yet removes %v", r.GetName(), rm)
			}
			continue
		}
		for _, h := range []string{authz.HeaderSubject, authz.HeaderTokenID, authz.HeaderScopes, authz.HeaderTenant,
			"x_tokenwarden_subject", "x_tokenwarden_token_id", "x-tokenwarden_token-id", "x_tokenwarden-tenant"} {
			if !slices.Contains(rm, h) {
				t.Errorf("public route %s does not remove %s (removes %v)", r.GetName(), h, rm)
			}
		}
		if len(rm) != 20 {
			t.Errorf("public route %s removes %d headers, want the 20 spellings of the four", r.GetName(), len(rm))
		}
	}
}

// TestOtherHostsDoNotReachTheApplication: a request to this sidecar with the
// Host of another policy service must not be judged by that service's rules
// and then served by this sidecar's application. Envoy denies it itself.
func TestOtherHostsDoNotReachTheApplication(t *testing.T) {
	p := loadPolicy(t, "testdata/policy.yaml")
	for _, svc := range append(p.ServiceNames(), "") {
		var rc *route.RouteConfiguration
		var err error
		if svc == "" {
			cfg, derr := Config{}.withDefaults()
			if derr != nil {
				t.Fatal(derr)
			}
			res, derr := denyAllResources(cfg)
			if derr != nil {
				t.Fatal(derr)
			}
			rc = res[resource.RouteType][0].(*route.RouteConfiguration)
		} else {
			rc, err = routeConfiguration(p, svc)
			if err != nil {
				t.Fatal(err)
			}
		}
		if err := validate(rc); err != nil {
			t.Fatalf("%s: %v", svc, err)
		}
		vhs := rc.GetVirtualHosts()
		fallback := vhs[len(vhs)-1]
		if !slices.Equal(fallback.GetDomains(), []string{"*"}) {
			t.Fatalf("%s: the last virtual host serves %v, want *", svc, fallback.GetDomains())
		}
		checkDeniesEveryRequest(t, fallback)
		for _, vh := range vhs[:len(vhs)-1] {
			for _, d := range vh.GetDomains() {
				if s, ok := hostService(p, d); !ok || s != svc {
					t.Errorf("sidecar of %q serves host %s of service %q", svc, d, s)
				}
			}
		}
	}
}

func hostService(p *policy.Policy, host string) (string, bool) {
	for _, s := range p.ServiceNames() {
		if slices.Contains(p.Doc.Services[s].Hosts, host) {
			return s, true
		}
	}
	return "", false
}

// checkDeniesEveryRequest checks that vh answers every request with the
// no_matching_route denial, without ext_authz or the application.
func checkDeniesEveryRequest(t *testing.T, vh *route.VirtualHost) {
	t.Helper()
	if len(vh.GetRoutes()) != 1 {
		t.Fatalf("%s: %d routes, want one that denies", vh.GetName(), len(vh.GetRoutes()))
	}
	r := vh.GetRoutes()[0]
	if pathSpec(r.GetMatch()) != "prefix=/" || r.GetMatch().GetHeaders() != nil {
		t.Errorf("%s: the route matches %s, want every request", vh.GetName(), pathSpec(r.GetMatch()))
	}
	if r.GetRoute() != nil {
		t.Errorf("%s: requests go to cluster %q, want a direct denial", vh.GetName(), r.GetRoute().GetCluster())
	}
	dr := r.GetDirectResponse()
	if dr.GetStatus() != 403 {
		t.Errorf("%s: direct response status %d, want 403", vh.GetName(), dr.GetStatus())
	}
	if want := `{"error":"no_matching_route","message":"` + policy.ReasonNoMatchingRoute.Message() + `"}`; dr.GetBody().GetInlineString() != want {
		t.Errorf("%s: body %s, want %s", vh.GetName(), dr.GetBody().GetInlineString(), want)
	}
	headers := map[string]string{}
	for _, h := range r.GetResponseHeadersToAdd() {
		headers[h.GetHeader().GetKey()] = h.GetHeader().GetValue()
	}
	if headers["content-type"] != "application/json" || headers["www-authenticate"] != policy.ReasonNoMatchingRoute.Challenge() {
		t.Errorf("%s: response headers %v", vh.GetName(), headers)
	}
	if !extAuthzDisabled(t, r) {
		t.Errorf("%s: the denial asks ext_authz, which judges by Host and could allow", vh.GetName())
	}
}

// envoyMatches emulates Envoy's path matching, which ignores the query.
func envoyMatches(t *testing.T, m *route.RouteMatch, path string) bool {
	t.Helper()
	path, _, _ = strings.Cut(path, "?")
	switch ps := m.GetPathSpecifier().(type) {
	case *route.RouteMatch_Path:
		return path == ps.Path
	case *route.RouteMatch_Prefix:
		return strings.HasPrefix(path, ps.Prefix)
	case *route.RouteMatch_PathSeparatedPrefix:
		return path == ps.PathSeparatedPrefix || strings.HasPrefix(path, ps.PathSeparatedPrefix+"/")
	case *route.RouteMatch_SafeRegex:
		// Envoy's regex must match the whole path.
		return regexp.MustCompile(`^(?:` + ps.SafeRegex.GetRegex() + `)$`).MatchString(path)
	default:
		t.Fatalf("unexpected path specifier %T", ps)
		return false
	}
}

func TestInboundListenerAsksExtAuthzFirst(t *testing.T) {
	p := loadPolicy(t, "testdata/policy.yaml")
	res, err := Resources(p, "orders", Config{InboundPort: 15100, AuthzTimeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	lis := res[resource.ListenerType][0].(*listener.Listener)
	if got := lis.GetAddress().GetSocketAddress().GetPortValue(); got != 15100 {
		t.Errorf("listener port %d, want 15100", got)
	}
	m := resource.GetHTTPConnectionManager(lis.GetFilterChains()[0].GetFilters()[0])
	if m == nil {
		t.Fatal("no HTTP connection manager on the inbound listener")
	}
	if got := m.GetRds().GetRouteConfigName(); got != RouteConfigName || m.GetRds().GetConfigSource().GetAds() == nil {
		t.Errorf("routes from %q over %v, want %q over ADS", got, m.GetRds().GetConfigSource(), RouteConfigName)
	}
	if !m.GetNormalizePath().GetValue() || !m.GetMergeSlashes() || m.GetPathWithEscapedSlashesAction() != hcm.HttpConnectionManager_REJECT_REQUEST {
		t.Error("paths are not normalized before routing and ext_authz")
	}
	var names []string
	for _, f := range m.GetHttpFilters() {
		names = append(names, f.GetName())
	}
	if !slices.Equal(names, []string{wellknown.HTTPExternalAuthorization, wellknown.Router}) {
		t.Fatalf("http filters %v, want ext_authz then router", names)
	}
	var ea extauthz.ExtAuthz
	if err := m.GetHttpFilters()[0].GetTypedConfig().UnmarshalTo(&ea); err != nil {
		t.Fatal(err)
	}
	g := ea.GetGrpcService()
	switch {
	case g.GetEnvoyGrpc().GetClusterName() != AuthzClusterName:
		t.Errorf("ext_authz cluster %q", g.GetEnvoyGrpc().GetClusterName())
	case g.GetTimeout().AsDuration() != 300*time.Millisecond:
		t.Errorf("ext_authz timeout %v", g.GetTimeout().AsDuration())
	case ea.GetFailureModeAllow():
		t.Error("ext_authz fails open")
	case ea.GetStatusOnError().GetCode() != 503:
		t.Errorf("status on error %d, want 503", ea.GetStatusOnError().GetCode())
	case ea.GetTransportApiVersion().String() != "V3":
		t.Errorf("transport API %s", ea.GetTransportApiVersion())
	case !ea.GetIncludePeerCertificate():
		t.Error("peer certificate not included")
	}
}

func TestClusters(t *testing.T) {
	tests := map[string]struct {
		cfg       Config
		wantApp   string
		wantAuthz string
	}{
		"defaults": {Config{}, "127.0.0.1:8080", "127.0.0.1:9001"},
		"unix socket": {
			Config{AppAddress: "127.0.0.1:3000", AuthzAddress: "unix:///run/tokenwarden/authz.sock"},
			"127.0.0.1:3000", "unix:/run/tokenwarden/authz.sock",
		},
		"ipv6": {Config{AppAddress: "[::1]:8080", AuthzAddress: "unix:/tmp/a.sock"}, "::1:8080", "unix:/tmp/a.sock"},
	}
	p := loadPolicy(t, "testdata/policy.yaml")
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			res, err := Resources(p, "orders", tt.cfg)
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]*cluster.Cluster{}
			for _, r := range res[resource.ClusterType] {
				c := r.(*cluster.Cluster)
				got[c.GetName()] = c
			}
			if a := clusterAddress(got[AppClusterName]); a != tt.wantApp {
				t.Errorf("app at %s, want %s", a, tt.wantApp)
			}
			if a := clusterAddress(got[AuthzClusterName]); a != tt.wantAuthz {
				t.Errorf("authz at %s, want %s", a, tt.wantAuthz)
			}
			var opts upstreamhttp.HttpProtocolOptions
			if err := got[AuthzClusterName].GetTypedExtensionProtocolOptions()[httpProtocolOptionsName].UnmarshalTo(&opts); err != nil {
				t.Fatalf("authz cluster protocol options: %v", err)
			}
			if opts.GetExplicitHttpConfig().GetHttp2ProtocolOptions() == nil {
				t.Error("authz cluster does not speak HTTP/2")
			}
		})
	}
}

func TestConfigRejectsBadValues(t *testing.T) {
	tests := map[string]Config{
		"name for app":       {AppAddress: "localhost:8080"},
		"no port":            {AuthzAddress: "127.0.0.1"},
		"relative socket":    {AuthzAddress: "unix:run/authz.sock"},
		"port out of range":  {InboundPort: 70000},
		"negative timeout":   {AuthzTimeout: -time.Second},
		"inbound not an IP":  {InboundAddress: "any"},
		"port zero for app":  {AppAddress: "127.0.0.1:0"},
		"port not a number":  {AppAddress: "127.0.0.1:http"},
		"unix without slash": {AppAddress: "unix:"},
	}
	for name, cfg := range tests {
		t.Run(name, func(t *testing.T) {
			if _, err := New(cfg); err == nil {
				t.Fatal("New accepted a bad config")
			}
		})
	}
}

func pathSpec(m *route.RouteMatch) string {
	switch ps := m.GetPathSpecifier().(type) {
	case *route.RouteMatch_Path:
		return "path=" + ps.Path
	case *route.RouteMatch_Prefix:
		return "prefix=" + ps.Prefix
	case *route.RouteMatch_PathSeparatedPrefix:
		return "path_separated_prefix=" + ps.PathSeparatedPrefix
	case *route.RouteMatch_SafeRegex:
		return "safe_regex=" + ps.SafeRegex.GetRegex()
	default:
		return fmt.Sprintf("%T", ps)
	}
}

func methodSpec(t *testing.T, m *route.RouteMatch) string {
	t.Helper()
	switch len(m.GetHeaders()) {
	case 0:
		return ""
	case 1:
	default:
		t.Fatalf("%d header matchers, want one", len(m.GetHeaders()))
	}
	h := m.GetHeaders()[0]
	if h.GetName() != ":method" {
		t.Fatalf("header matcher on %q, want :method", h.GetName())
	}
	sm := h.GetStringMatch()
	if re := sm.GetSafeRegex(); re != nil {
		return "safe_regex=" + re.GetRegex()
	}
	return "exact=" + sm.GetExact()
}

func extAuthzDisabled(t *testing.T, r *route.Route) bool {
	t.Helper()
	cfg, ok := r.GetTypedPerFilterConfig()[wellknown.HTTPExternalAuthorization]
	if !ok {
		return false
	}
	var per extauthz.ExtAuthzPerRoute
	if err := cfg.UnmarshalTo(&per); err != nil {
		t.Fatalf("route %s: %v", r.GetName(), err)
	}
	return per.GetDisabled()
}

func clusterAddress(c *cluster.Cluster) string {
	a := c.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress()
	if p := a.GetPipe(); p != nil {
		return "unix:" + p.GetPath()
	}
	sa := a.GetSocketAddress()
	return fmt.Sprintf("%s:%d", sa.GetAddress(), sa.GetPortValue())
}

func TestValidateOpensTypedConfigs(t *testing.T) {
	// ValidateAll stops at an Any: a listener whose connection manager lacks
	// its required stat_prefix passes it, and must not pass validate.
	m, err := typed(&hcm.HttpConnectionManager{
		RouteSpecifier: &hcm.HttpConnectionManager_Rds{Rds: &hcm.Rds{ConfigSource: adsConfigSource(), RouteConfigName: "r"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	lis := &listener.Listener{
		Name:    "l",
		Address: socketAddress("127.0.0.1", 1),
		FilterChains: []*listener.FilterChain{{Filters: []*listener.Filter{{
			Name: wellknown.HTTPConnectionManager, ConfigType: &listener.Filter_TypedConfig{TypedConfig: m},
		}}}},
	}
	if err := lis.ValidateAll(); err != nil {
		t.Fatalf("ValidateAll: %v", err)
	}
	if err := validate(lis); err == nil || !strings.Contains(err.Error(), "StatPrefix") {
		t.Errorf("validate = %v, want the missing stat_prefix", err)
	}
	m.TypeUrl = "type.googleapis.com/tokenwarden.NoSuchFilter"
	if err := validate(lis); err == nil {
		t.Error("validate accepted a typed config of an unknown type")
	}
}

// TestRegexCostBoundsRE2 checks regexCost against RE2 program sizes measured
// (libre2, UTF-8, as Envoy compiles) for the regexes of these patterns, the
// protected form and the public one: the estimate must never be below them,
// or a route could carry a regex Envoy refuses.
func TestRegexCostBoundsRE2(t *testing.T) {
	measured := map[string][2]int{ // pattern: protected, public
		"/healthz":                           {14, 14},
		"/items/*":                           {22, 25},
		"/docs/**":                           {22, 25},
		"/a/*/b/**":                          {31, 37},
		"/**":                                {17, 20},
		"/a/*/*/*/*":                         {48, 60},
		"/a/**/b/**/c":                       {34, 40},
		"/files/**/meta.json":                {33, 36},
		"/api/v1/organizations/*/projects/*": {56, 62},
		"/api/v1/orgs/*/projects/*/envs/*":   {62, 71},
		"/" + strings.Repeat("x", 60):        {67, 67},
		"/*/*/*/*/*":                         {56, 71},
	}
	for pattern, sizes := range measured {
		segs := strings.Split(pattern[1:], "/")
		if c := regexCost(segs); c < max(sizes[0], sizes[1]) {
			t.Errorf("%s: regexCost %d, below the measured program sizes %v", pattern, c, sizes)
		}
	}
}

// TestLongPatternsFitEnvoy: a pattern whose regex could exceed Envoy's RE2
// program size limit (100 by default; over it Envoy NACKs the whole route
// configuration and keeps the previous one) gets no regex. A protected route
// matches its literal prefix instead (more than its rule: safe, ext_authz
// decides), a public one asks ext_authz like a protected one.
func TestLongPatternsFitEnvoy(t *testing.T) {
	const long = "/api/v1/organizations/*/projects/*/environments/*/deployments/**"
	p := policyOf(t,
		fmt.Sprintf("{ methods: [GET], path: %q, scopes: [s:x] }", long),
		fmt.Sprintf("{ methods: [POST], path: %q, public: true }", long),
		fmt.Sprintf("{ path: %q, scopes: [s:x] }", "/"+strings.Repeat("abcdefghij/", 10)+"end"),
	)
	rc, err := routeConfiguration(p, "svc")
	if err != nil {
		t.Fatal(err)
	}
	routes := rc.GetVirtualHosts()[0].GetRoutes()
	for i, r := range routes[:3] {
		if re := r.GetMatch().GetSafeRegex().GetRegex(); re != "" {
			t.Errorf("route %d: regex %s for a pattern over the budget", i, re)
		}
		if extAuthzDisabled(t, r) {
			t.Errorf("route %d skips ext_authz", i)
		}
		if len(r.GetRequestHeadersToRemove()) != 0 {
			t.Errorf("route %d removes headers though it asks ext_authz", i)
		}
	}
	if got := pathSpec(routes[0].GetMatch()); got != "path_separated_prefix=/api/v1/organizations" {
		t.Errorf("long protected route matches %s", got)
	}
	// A protected route may match more than its rule, never less.
	for _, path := range []string{
		"/api/v1/organizations/o/projects/p/environments/e/deployments",
		"/api/v1/organizations/o/projects/p/environments/e/deployments/d/x",
		"/api/v1/organizations/o",
	} {
		_, want := p.Match("GET", "svc", path)
		if want && !envoyMatches(t, routes[0].GetMatch(), path) {
			t.Errorf("path %s: the policy route matches, its Envoy route does not", path)
		}
	}
	for _, r := range routes {
		if err := r.ValidateAll(); err != nil {
			t.Errorf("route %s: %v", r.GetName(), err)
		}
	}
	// Every regex that remains is within the budget.
	for _, pattern := range []string{"/a/*/b/**", "/files/**/meta.json", "/*/*/*/*/*"} {
		segs := strings.Split(pattern[1:], "/")
		if re := pathMatch(pattern).GetSafeRegex(); re != nil && regexCost(segs) > regexBudget {
			t.Errorf("%s: regex %s over the budget", pattern, re.GetRegex())
		}
	}
}
