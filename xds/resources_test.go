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
			wantPath: `safe_regex=/items/[^/]+/?`, wantMethod: `safe_regex=GET|HEAD`, wantAuthzOff: true,
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
		if extAuthzDisabled(t, last) {
			t.Errorf("%s: the catch-all skips ext_authz", vh.GetName())
		}
		if last.GetRoute().GetCluster() != AppClusterName {
			t.Errorf("%s: the catch-all goes to %q, want the app (ext_authz decides)", vh.GetName(), last.GetRoute().GetCluster())
		}
	}
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
