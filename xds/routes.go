package xds

import (
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strings"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	extauthz "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/tokenwarden/tokenwarden/policy"
)

const (
	catchAllRouteName    = "catch_all"
	unknownHostVHost     = "unknown_host"
	unknownHostRouteName = "unknown_host_deny"

	// Policy pattern segments and the RE2 they translate to.
	oneSegment       = "*"
	anySegments      = "**"
	oneSegmentRegex  = `/[^/]+`
	anySegmentsRegex = `(?:/[^/]+)*`

	// The same for a public route, whose requests skip ext_authz: a
	// wildcard segment matches no ';' (path parameters: Tomcat and Jetty
	// read "/pub/..;/admin" as "/admin", which Envoy's normalize_path
	// leaves alone), no '%' (what is still encoded after normalization)
	// and no '\'. Such requests fall through to a route that asks
	// ext_authz, where the policy reads them exactly (it refuses "..;").
	// Envoy has already resolved "." and ".." segments, so they need no
	// exclusion here (and RE2 has no look-ahead to exclude them cheaply:
	// Envoy refuses regexes above a program size of 100 by default).
	publicSegment          = `[^/;%\\]+`
	publicOneSegmentRegex  = `/` + publicSegment
	publicAnySegmentsRegex = `(?:/` + publicSegment + `)*`
)

// identityHeaders are the request headers ext_authz sets on an allowed
// request (authz.HeaderSubject and the rest), in every spelling with '_'
// for some of the '-', which CGI-style servers (PHP, WSGI, Rack) read as the
// same name. A public route skips ext_authz, so nothing would overwrite or
// remove a client's forgery of them: its Envoy route removes them itself.
// (Route-level removal runs in the router, after ext_authz, so it is only
// for routes without ext_authz.)
var identityHeaders = func() []string {
	var out []string
	for _, h := range []string{"x-tokenwarden-subject", "x-tokenwarden-token-id", "x-tokenwarden-scopes", "x-tokenwarden-tenant"} {
		out = append(out, underscoreSpellings(h)...)
	}
	return out
}()

// underscoreSpellings returns name with each subset of its '-' written '_',
// name itself first.
func underscoreSpellings(name string) []string {
	out := []string{name}
	for i := 0; i < len(name); i++ {
		if name[i] != '-' {
			continue
		}
		for _, s := range out[:len(out):len(out)] {
			out = append(out, s[:i]+"_"+s[i+1:])
		}
	}
	return out
}

// routeConfiguration translates the routes of service into Envoy's: one
// virtual host for the service's hosts and one for any other host. Every
// request for the service's hosts reaches the application through ext_authz
// unless a public route matches it; ext_authz denies what the policy does
// not allow. Requests for any other host are denied by Envoy. An empty
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
	// Any other host is denied by Envoy itself, with the answer ext_authz
	// gives a request no route matches. It must not reach ext_authz and
	// then the application: ext_authz judges a request by its Host, so a
	// Host of another service of the policy would have this sidecar's
	// application serve requests under that service's rules (its public
	// routes, its scopes). The same holds for the deny-all configuration.
	deny, err := unknownHostRoute()
	if err != nil {
		return nil, err
	}
	rc.VirtualHosts = append(rc.VirtualHosts, &route.VirtualHost{
		Name:    unknownHostVHost,
		Domains: []string{"*"},
		Routes:  []*route.Route{deny},
	})
	return rc, nil
}

// unknownHostRoute answers every request with the no_matching_route denial
// (status, WWW-Authenticate and JSON body as agent/authz sends them),
// without asking ext_authz.
func unknownHostRoute() (*route.Route, error) {
	r := policy.ReasonNoMatchingRoute
	body, err := json.Marshal(struct {
		Error   policy.Reason `json:"error"`
		Message string        `json:"message"`
	}{r, r.Message()})
	if err != nil {
		return nil, err
	}
	off, err := extAuthzOff()
	if err != nil {
		return nil, fmt.Errorf("route %s: %w", unknownHostRouteName, err)
	}
	header := func(k, v string) *core.HeaderValueOption {
		return &core.HeaderValueOption{
			Header:       &core.HeaderValue{Key: k, Value: v},
			AppendAction: core.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
		}
	}
	return &route.Route{
		Name:  unknownHostRouteName,
		Match: &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}},
		Action: &route.Route_DirectResponse{DirectResponse: &route.DirectResponseAction{
			Status: uint32(r.Status()),
			Body:   &core.DataSource{Specifier: &core.DataSource_InlineString{InlineString: string(body)}},
		}},
		ResponseHeadersToAdd: []*core.HeaderValueOption{
			header("content-type", "application/json"),
			header("www-authenticate", r.Challenge()),
		},
		TypedPerFilterConfig: map[string]*anypb.Any{wellknown.HTTPExternalAuthorization: off},
	}, nil
}

func extAuthzOff() (*anypb.Any, error) {
	return typed(&extauthz.ExtAuthzPerRoute{
		Override: &extauthz.ExtAuthzPerRoute_Disabled{Disabled: true},
	})
}

// envoyRoute translates one policy route. A public route (ext_authz off)
// must never match more than its rule, or requests would skip the check; a
// protected route must never match less, or a later public route could
// catch its requests. Both match exactly where they can. A public route
// leaves out segments an application may read as another path (see
// publicSegment), and a public pattern too long for a regex (see
// regexBudget) asks ext_authz like a protected route: what a public route
// leaves goes on to a later route, and every other route asks ext_authz,
// which judges it exactly. A protected pattern too long for a regex
// matches its literal prefix, more than its rule.
func envoyRoute(r policy.Route) (*route.Route, error) {
	public := r.Public
	m := publicPathMatch(r.Pattern)
	if m == nil {
		// No exact enough match fits in a regex Envoy takes: the route
		// asks ext_authz like a protected one, which allows it as public.
		public = false
	}
	if !public {
		m = pathMatch(r.Pattern)
	}
	if h := methodMatcher(r.Methods); h != nil {
		m.Headers = []*route.HeaderMatcher{h}
	}
	er := &route.Route{Name: r.ID, Match: m, Action: toApp()}
	if public {
		off, err := extAuthzOff()
		if err != nil {
			return nil, fmt.Errorf("route %s: %w", r.ID, err)
		}
		er.TypedPerFilterConfig = map[string]*anypb.Any{wellknown.HTTPExternalAuthorization: off}
		er.RequestHeadersToRemove = slices.Clone(identityHeaders)
	}
	return er, nil
}

// publicPathMatch is the match of a public route: "/" exactly, else a
// safe_regex whose wildcard segments exclude what publicSegment excludes.
// It is nil when that regex could be over Envoy's size limit.
func publicPathMatch(pattern string) *route.RouteMatch {
	if pattern == "/" {
		return &route.RouteMatch{PathSpecifier: &route.RouteMatch_Path{Path: "/"}}
	}
	segs := strings.Split(strings.TrimSuffix(pattern[1:], "/"), "/")
	if regexCost(segs) > regexBudget {
		return nil
	}
	return &route.RouteMatch{PathSpecifier: &route.RouteMatch_SafeRegex{
		SafeRegex: &matcher.RegexMatcher{Regex: segmentsRegex(segs, publicOneSegmentRegex, publicAnySegmentsRegex)},
	}}
}

// regexBudget bounds regexCost of every regex the routes carry. Envoy
// refuses a regex whose RE2 program is larger than the runtime value
// re2.max_program_size.error_level, 100 by default, and with it the whole
// route configuration: the sidecar would NACK it and keep its previous
// routes (perhaps a public route the policy has since closed). Under 100,
// with room for RE2 versions to differ.
const regexBudget = 90

// regexCost is an upper bound of the RE2 program size of segmentsRegex for
// segs, public or not. Measured with RE2 (UTF-8, as Envoy compiles): about
// 6 for the anchors and "/?", 1 per literal byte, 10 for "/[^/]+", 12 for
// "(?:/[^/]+)*", 13 and 15 for their public forms.
func regexCost(segs []string) int {
	n := 8
	for _, s := range segs {
		switch s {
		case oneSegment, anySegments:
			n += 16
		default:
			n += 1 + len(s)
		}
	}
	return n
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
//
// A regex over regexBudget becomes the path_separated_prefix of the literal
// segments before the first wildcard (prefix "/" when there are none): it
// matches more than the rule, which is safe for a route that asks
// ext_authz (it only sends more requests to ext_authz, which decides
// exactly), and keeps the configuration one Envoy accepts.
func pathMatch(pattern string) *route.RouteMatch {
	if pattern == "/" {
		return &route.RouteMatch{PathSpecifier: &route.RouteMatch_Path{Path: "/"}}
	}
	segs := strings.Split(strings.TrimSuffix(pattern[1:], "/"), "/")
	last := len(segs) - 1
	if segs[last] == anySegments && literal(segs[:last]) {
		return literalPrefixMatch(segs[:last])
	}
	if regexCost(segs) > regexBudget {
		n := 0
		for n < len(segs) && segs[n] != oneSegment && segs[n] != anySegments {
			n++
		}
		return literalPrefixMatch(segs[:n])
	}
	return &route.RouteMatch{PathSpecifier: &route.RouteMatch_SafeRegex{
		SafeRegex: &matcher.RegexMatcher{Regex: patternRegex(segs)},
	}}
}

// literalPrefixMatch matches the path made of segs and every path below it.
func literalPrefixMatch(segs []string) *route.RouteMatch {
	if len(segs) == 0 {
		return &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}}
	}
	return &route.RouteMatch{PathSpecifier: &route.RouteMatch_PathSeparatedPrefix{
		PathSeparatedPrefix: "/" + strings.Join(segs, "/"),
	}}
}

// patternRegex is the RE2 expression Envoy fully matches against the path
// (without its query) for the pattern segments segs.
func patternRegex(segs []string) string {
	return segmentsRegex(segs, oneSegmentRegex, anySegmentsRegex)
}

func segmentsRegex(segs []string, one, anyRegex string) string {
	var b strings.Builder
	for _, s := range segs {
		switch s {
		case oneSegment:
			b.WriteString(one)
		case anySegments:
			b.WriteString(anyRegex)
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
