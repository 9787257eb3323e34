package xds

import (
	"fmt"
	"regexp"
	"slices"
	"strings"

	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	extauthz "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/tokenwarden/tokenwarden/policy"
)

const (
	catchAllRouteName = "catch_all"
	unknownHostVHost  = "unknown_host"

	// Policy pattern segments and the RE2 they translate to.
	oneSegment       = "*"
	anySegments      = "**"
	oneSegmentRegex  = `/[^/]+`
	anySegmentsRegex = `(?:/[^/]+)*`
)

// routeConfiguration translates the routes of service into Envoy's: one
// virtual host for the service's hosts and one for any other host. Every
// request reaches the application through ext_authz unless a public route
// matches it; ext_authz denies what the policy does not allow. An empty
// service gives only the any-host virtual host: the deny-all configuration of
// a sidecar whose service the policy does not know.
func routeConfiguration(p *policy.Policy, service string) (*route.RouteConfiguration, error) {
	rc := &route.RouteConfiguration{Name: RouteConfigName}
	if service != "" {
		var routes []*route.Route
		for _, r := range p.Routes(service) {
			er, err := envoyRoute(r)
			if err != nil {
				return nil, err
			}
			routes = append(routes, er)
		}
		rc.VirtualHosts = append(rc.VirtualHosts, &route.VirtualHost{
			Name:    service,
			Domains: slices.Clone(p.Doc.Services[service].Hosts),
			Routes:  append(routes, catchAllRoute()),
		})
	}
	// Requests for a host the policy does not name still go through
	// ext_authz, which denies them with a reason, rather than Envoy's bare 404.
	rc.VirtualHosts = append(rc.VirtualHosts, &route.VirtualHost{
		Name:    unknownHostVHost,
		Domains: []string{"*"},
		Routes:  []*route.Route{catchAllRoute()},
	})
	return rc, nil
}

// envoyRoute translates one policy route. Its match must be exactly the
// policy's: a public route (ext_authz off) that matched more than its rule
// would let requests skip the check, and a protected route that matched less
// would let a later public route catch them.
func envoyRoute(r policy.Route) (*route.Route, error) {
	m := pathMatch(r.Pattern)
	if h := methodMatcher(r.Methods); h != nil {
		m.Headers = []*route.HeaderMatcher{h}
	}
	er := &route.Route{Name: r.ID, Match: m, Action: toApp()}
	if r.Public {
		off, err := typed(&extauthz.ExtAuthzPerRoute{
			Override: &extauthz.ExtAuthzPerRoute_Disabled{Disabled: true},
		})
		if err != nil {
			return nil, fmt.Errorf("route %s: %w", r.ID, err)
		}
		er.TypedPerFilterConfig = map[string]*anypb.Any{wellknown.HTTPExternalAuthorization: off}
	}
	return er, nil
}

// pathMatch translates a policy path pattern ("*" one segment, "**" any
// number, a trailing slash ignored) into Envoy's path match. The sidecar
// normalizes paths (dot segments, merged slashes) before matching, so
// segments are never empty, "." or "..".
//
//	/                → path "/"
//	/**              → prefix "/"
//	/a/b/**          → path_separated_prefix "/a/b" (/a/b, /a/b/, /a/b/...)
//	anything else    → safe_regex, e.g. /a/*/b → /a/[^/]+/b/?
func pathMatch(pattern string) *route.RouteMatch {
	if pattern == "/" {
		return &route.RouteMatch{PathSpecifier: &route.RouteMatch_Path{Path: "/"}}
	}
	segs := strings.Split(strings.TrimSuffix(pattern[1:], "/"), "/")
	last := len(segs) - 1
	if segs[last] == anySegments && literal(segs[:last]) {
		if last == 0 {
			return &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}}
		}
		return &route.RouteMatch{PathSpecifier: &route.RouteMatch_PathSeparatedPrefix{
			PathSeparatedPrefix: "/" + strings.Join(segs[:last], "/"),
		}}
	}
	return &route.RouteMatch{PathSpecifier: &route.RouteMatch_SafeRegex{
		SafeRegex: &matcher.RegexMatcher{Regex: patternRegex(segs)},
	}}
}

// patternRegex is the RE2 expression Envoy fully matches against the path
// (without its query) for the pattern segments segs.
func patternRegex(segs []string) string {
	var b strings.Builder
	for _, s := range segs {
		switch s {
		case oneSegment:
			b.WriteString(oneSegmentRegex)
		case anySegments:
			b.WriteString(anySegmentsRegex)
		default:
			b.WriteString("/" + regexp.QuoteMeta(s))
		}
	}
	b.WriteString("/?") // the policy ignores one trailing slash
	return b.String()
}

func literal(segs []string) bool {
	for _, s := range segs {
		if s == oneSegment || s == anySegments {
			return false
		}
	}
	return true
}

// methodMatcher matches the :method pseudo-header against a route's methods;
// nil when the route takes any method.
func methodMatcher(methods []string) *route.HeaderMatcher {
	var sm *matcher.StringMatcher
	switch len(methods) {
	case 0:
		return nil
	case 1:
		sm = &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Exact{Exact: methods[0]}}
	default:
		quoted := make([]string, len(methods))
		for i, m := range methods {
			quoted[i] = regexp.QuoteMeta(m)
		}
		sm = &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_SafeRegex{
			SafeRegex: &matcher.RegexMatcher{Regex: strings.Join(quoted, "|")},
		}}
	}
	return &route.HeaderMatcher{
		Name:                 ":method",
		HeaderMatchSpecifier: &route.HeaderMatcher_StringMatch{StringMatch: sm},
	}
}

// catchAllRoute sends whatever no policy route matched to the application
// through ext_authz, which decides (and denies by default).
func catchAllRoute() *route.Route {
	return &route.Route{
		Name:   catchAllRouteName,
		Match:  &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}},
		Action: toApp(),
	}
}

func toApp() *route.Route_Route {
	return &route.Route_Route{Route: &route.RouteAction{
		ClusterSpecifier: &route.RouteAction_Cluster{Cluster: AppClusterName},
		// The application owns its deadlines; the sidecar adds none
		// (Envoy's default would cut every request at 15 s).
		Timeout: durationpb.New(0),
	}}
}
