package policy

import (
	"fmt"
	"net/url"
	"regexp"
	"sort"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Policy is a loaded, validated and compiled policy document. It is
// immutable: a reload builds a new one.
type Policy struct {
	Doc      Document
	Warnings []Problem

	classes     map[string]*Class
	hosts       map[string]*service
	byName      map[string]*service
	services    []*service
	maxLifetime time.Duration
	clockSkew   time.Duration // nbf and iat (Document.ClockSkew)
	expLeeway   time.Duration // exp (Document.ExpLeeway)
}

// Class is a compiled ClassSpec.
type Class struct {
	Name string
	ClassSpec
	scopes    map[string]bool
	envs      map[string]bool
	workloads []workloadPattern
}

// AllowsScope reports whether a token of this class may hold scope.
func (c *Class) AllowsScope(scope string) bool { return c.scopes[scope] }

// AllowsEnvironment reports whether tokens of this class may be issued for env.
func (c *Class) AllowsEnvironment(env string) bool { return c.envs[env] }

var (
	scopePattern  = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*(:[A-Za-z0-9_.*-]+)*$`)
	namePattern   = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]*[a-z0-9])?$`)
	hostPattern   = regexp.MustCompile(`^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$`)
	methodPattern = regexp.MustCompile(`^[A-Z]+$`)
	// issuerNamePattern is an issuer that is a name: dot-separated
	// lower-case DNS labels.
	issuerNamePattern = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$`)
)

// maxIssuerLen bounds the issuer: it is in every token.
const maxIssuerLen = 253

// IssuerIsName reports whether iss is an issuer in name form: lower-case
// DNS labels, such as tokenwarden.example. Such an issuer has no discovery
// document (there is no URL to publish it under).
func IssuerIsName(iss string) bool {
	return len(iss) <= maxIssuerLen && issuerNamePattern.MatchString(iss)
}

// IssuerIsURL reports whether iss is an issuer in URL form, the form OpenID
// Connect Discovery and RFC 8414 require: https, a host, an optional
// port and path, and no user, query, fragment or trailing slash (the
// discovery document is at iss + "/.well-known/openid-configuration", and
// iss must equal the "issuer" it names, byte for byte).
func IssuerIsURL(iss string) bool {
	if len(iss) > maxIssuerLen || !strings.HasPrefix(iss, "https://") {
		return false
	}
	u, err := url.Parse(iss)
	if err != nil || u.Scheme != "https" || u.Host == "" || u.Hostname() == "" || u.User != nil ||
		u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || u.Opaque != "" || u.RawPath != "" ||
		strings.HasSuffix(iss, "/") || strings.ContainsAny(iss, " \t\r\n#?@\\") {
		return false
	}
	return u.String() == iss
}

// Load decodes, validates and compiles a policy file. name is used in
// problem positions only. On errors it returns a *LoadError listing every
// problem; warnings are kept in Policy.Warnings.
func Load(name string, data []byte) (*Policy, error) {
	f := &findings{file: name}
	doc, root := f.parseDocument(data)
	if root != nil {
		f.validate(doc, root)
	}
	f.sortProblems()
	if f.hasErrors() {
		return nil, &LoadError{Problems: f.problems}
	}
	p, err := compile(doc)
	if err != nil {
		return nil, err
	}
	p.Warnings = f.problems
	return p, nil
}

// Check loads a policy file and returns every problem, errors and warnings,
// in file order. It is what `tokenwarden policy check` prints.
func Check(name string, data []byte) []Problem {
	p, err := Load(name, data)
	if le, ok := err.(*LoadError); ok {
		return le.Problems
	}
	if err != nil {
		return []Problem{{File: name, Line: 1, Column: 1, Severity: SeverityError, Message: err.Error()}}
	}
	return p.Warnings
}

func (f *findings) validate(d *Document, root *yaml.Node) {
	if d.Version != 1 && f.decoded("version") {
		f.errorf(fieldNode(root, "version"), "version: want 1, got %d", d.Version)
	}
	if d.Issuer == "" && f.decoded("issuer") {
		f.errorf(fieldNode(root, "issuer"), "issuer: required (the iss claim of every token, e.g. tokenwarden.example)")
	} else if d.Issuer != "" && !IssuerIsURL(d.Issuer) && !IssuerIsName(d.Issuer) {
		f.errorf(fieldNode(root, "issuer"), "issuer: %q is neither an https URL (https://host[:port][/path], no query, fragment, user or trailing slash) nor a name (lower-case DNS labels, e.g. tokenwarden.example)", d.Issuer)
	}
	if len(d.Environments) == 0 && f.decoded("environments") {
		f.errorf(fieldNode(root, "environments"), "environments: define at least one, e.g. prod: { max_ttl: 24h }")
	}
	envNode := fieldNode(root, "environments")
	for _, name := range sortedKeys(d.Environments) {
		e := d.Environments[name]
		if !namePattern.MatchString(name) {
			f.errorf(keyNode(envNode, name), "environments.%s: names are lower-case letters, digits and dashes; rename it", name)
		}
		if e.MaxTTL <= 0 && f.decoded("environments."+name+".max_ttl") {
			f.errorf(fieldNode(envNode, name), "environments.%s.max_ttl: required, e.g. 24h", name)
		}
	}

	classNode := fieldNode(root, "classes")
	granted := map[string]*yaml.Node{}
	for _, name := range sortedKeys(d.Classes) {
		c := d.Classes[name]
		cn := fieldNode(classNode, name)
		where := "classes." + name
		if !f.decoded(where) {
			continue
		}
		if !namePattern.MatchString(name) {
			f.errorf(keyNode(classNode, name), "%s: names are lower-case letters, digits and dashes; rename it", where)
		}
		if len(c.Scopes) == 0 && f.decoded(where+".scopes") {
			f.errorf(cn, "%s.scopes: list the scopes a token of this class may hold", where)
		}
		for i, s := range c.Scopes {
			n := seqItem(fieldNode(cn, "scopes"), i)
			if !f.decoded(fmt.Sprintf("%s.scopes[%d]", where, i)) {
				continue
			}
			if !scopePattern.MatchString(s) {
				f.errorf(n, "%s.scopes[%d]: malformed scope %q: use letters, digits, _ . - separated by colons, e.g. orders:read", where, i, s)
				continue
			}
			if _, ok := granted[s]; !ok {
				granted[s] = n
			}
		}
		if c.MaxTTL <= 0 && f.decoded(where+".max_ttl") {
			f.errorf(cn, "%s.max_ttl: required, e.g. 12h", where)
		}
		if c.DefaultTTL <= 0 {
			if f.decoded(where + ".default_ttl") {
				f.errorf(cn, "%s.default_ttl: required, e.g. 1h", where)
			}
		} else if c.MaxTTL > 0 && c.DefaultTTL > c.MaxTTL {
			f.errorf(fieldNode(cn, "default_ttl"), "%s.default_ttl %s is above its max_ttl %s: lower default_ttl or raise max_ttl", where, c.DefaultTTL.D(), c.MaxTTL.D())
		}
		if c.RotateAfter > 0 && c.MaxTTL > 0 && c.RotateAfter >= c.MaxTTL {
			f.errorf(fieldNode(cn, "rotate_after"), "%s.rotate_after %s must be below max_ttl %s, or tokens expire before their successor is issued", where, c.RotateAfter.D(), c.MaxTTL.D())
		}
		if c.RotationGrace > 0 && c.RotateAfter == 0 && f.decoded(where+".rotate_after") {
			f.errorf(fieldNode(cn, "rotation_grace"), "%s.rotation_grace needs rotate_after: set rotate_after or drop rotation_grace", where)
		}
		if c.Delivery != nil && c.Delivery.Webhook != nil && c.Delivery.Webhook.URL == "" && f.decoded(where+".delivery.webhook.url") {
			f.errorf(fieldNode(cn, "delivery", "webhook"), "%s.delivery.webhook.url: required", where)
		}
		switch c.Binding {
		case "", BindingWorkload, BindingDPoP:
		default:
			f.errorf(fieldNode(cn, "binding"), "%s.binding: want workload or dpop, got %q", where, c.Binding)
		}
		if len(c.Workloads) > 0 && c.Binding != BindingWorkload && f.decoded(where+".binding") {
			f.errorf(fieldNode(cn, "workloads"), "%s.workloads needs binding: workload: set it or drop workloads", where)
		}
		for i, w := range c.Workloads {
			if !f.decoded(fmt.Sprintf("%s.workloads[%d]", where, i)) {
				continue
			}
			if _, err := parseWorkloadPattern(w); err != nil {
				f.errorf(seqItem(fieldNode(cn, "workloads"), i), "%s.workloads[%d]: %v", where, i, err)
			}
		}
		if len(c.Environments) == 0 && f.decoded(where+".environments") {
			f.errorf(cn, "%s.environments: list the environments this class may be issued in", where)
		}
		for i, env := range c.Environments {
			n := seqItem(fieldNode(cn, "environments"), i)
			if !f.decoded(fmt.Sprintf("%s.environments[%d]", where, i)) {
				continue
			}
			e, ok := d.Environments[env]
			if !ok {
				f.errorf(n, "%s.environments[%d]: unknown environment %q (defined: %s): define it under environments or remove it here", where, i, env, strings.Join(sortedKeys(d.Environments), ", "))
				continue
			}
			if c.MaxTTL > 0 && e.MaxTTL > 0 && c.MaxTTL > e.MaxTTL {
				f.errorf(fieldNode(cn, "max_ttl"), "%s.max_ttl %s is above environment %s's max_ttl %s: lower the class max_ttl or drop %s from its environments", where, c.MaxTTL.D(), env, e.MaxTTL.D(), env)
			}
		}
	}

	required := map[string]bool{}
	svcNode := fieldNode(root, "services")
	hostOwner := map[string]string{}
	for _, name := range sortedKeys(d.Services) {
		s := d.Services[name]
		sn := fieldNode(svcNode, name)
		where := "services." + name
		if !f.decoded(where) {
			continue
		}
		if !namePattern.MatchString(name) {
			f.errorf(keyNode(svcNode, name), "%s: names are lower-case letters, digits and dashes; rename it", where)
		}
		if len(s.Hosts) == 0 && f.decoded(where+".hosts") {
			f.errorf(sn, "%s.hosts: list the host names requests for this service carry", where)
		}
		for i, h := range s.Hosts {
			n := seqItem(fieldNode(sn, "hosts"), i)
			if !f.decoded(fmt.Sprintf("%s.hosts[%d]", where, i)) {
				continue
			}
			if !hostPattern.MatchString(h) {
				f.errorf(n, "%s.hosts[%d]: %q is not a lower-case host name: write it in lower case, without port or scheme", where, i, h)
				continue
			}
			if other, ok := hostOwner[h]; ok {
				if other == name {
					f.errorf(n, "%s.hosts[%d]: host %q is listed twice: remove one", where, i, h)
				} else {
					f.errorf(n, "%s.hosts[%d]: host %q already belongs to service %s: a host routes to one service; remove it from one of them", where, i, h, other)
				}
				continue
			}
			hostOwner[h] = name
		}
		routesNode := fieldNode(sn, "routes")
		if len(s.Routes) == 0 && f.decoded(where+".routes") {
			f.errorf(sn, "%s.routes: list at least one route; requests are denied by default", where)
		}
		type seenRoute struct {
			usable  bool
			segs    []string
			methods map[string]bool
		}
		var earlier []seenRoute
		for i, r := range s.Routes {
			rn := seqItem(routesNode, i)
			rw := fmt.Sprintf("%s.routes[%d]", where, i)
			if !f.decoded(rw) {
				earlier = append(earlier, seenRoute{})
				continue
			}
			usable := true // well-formed enough to check for shadowing
			segs, err := parsePattern(r.Path)
			if err != nil {
				if f.decoded(rw + ".path") {
					f.errorf(fieldNode(rn, "path"), "%s.path: %v", rw, err)
				}
				usable = false
			}
			methods := map[string]bool{}
			for j, m := range r.Methods {
				if !methodPattern.MatchString(m) || methodBit(m) == 0 {
					if f.decoded(fmt.Sprintf("%s.methods[%d]", rw, j)) {
						f.errorf(seqItem(fieldNode(rn, "methods"), j), "%s.methods[%d]: unknown method %q (use upper case: %s)", rw, j, m, strings.Join(knownMethods[:], ", "))
					}
					usable = false
					continue
				}
				methods[m] = true
			}
			if r.Public && len(r.Scopes) > 0 {
				f.errorf(fieldNode(rn, "scopes"), "%s: a public route needs no token, so it cannot require scopes; drop one of the two", rw)
			}
			for j, sc := range r.Scopes {
				if !scopePattern.MatchString(sc) {
					if f.decoded(fmt.Sprintf("%s.scopes[%d]", rw, j)) {
						f.errorf(seqItem(fieldNode(rn, "scopes"), j), "%s.scopes[%d]: malformed scope %q: use letters, digits, _ . - separated by colons, e.g. orders:read", rw, j, sc)
					}
					continue
				}
				required[sc] = true
			}
			earlier = append(earlier, seenRoute{usable: usable, segs: segs, methods: methods})
			if !usable {
				continue
			}
			for k, e := range earlier[:i] {
				if !e.usable {
					continue
				}
				methodsCovered := len(e.methods) == 0
				if !methodsCovered && len(methods) > 0 {
					methodsCovered = true
					for m := range methods {
						if !e.methods[m] {
							methodsCovered = false
						}
					}
				}
				if methodsCovered && covers(e.segs, segs) {
					f.errorf(rn, "%s (%s) is unreachable: route %d (%s) above it matches every request it would; reorder them or narrow route %d", rw, r.Path, k, s.Routes[k].Path, k)
					break
				}
			}
		}
	}
	for _, s := range sortedKeys(granted) {
		if !required[s] && !AgentScope(s) {
			f.warnf(granted[s], "scope %q is granted by a class but no route requires it: add a route that requires it, or drop it from the class", s)
		}
	}

	an := fieldNode(root, "anomaly")
	switch d.Anomaly.Action {
	case "", "revoke", "alert":
	default:
		f.errorf(fieldNode(an, "action"), "anomaly.action: want revoke or alert, got %q", d.Anomaly.Action)
	}
	if d.Anomaly.MaxRPS < 0 || d.Anomaly.SpikeFactor < 0 || d.Anomaly.MaxSourceIPs < 0 {
		f.errorf(an, "anomaly: limits cannot be negative; write 0 to turn a check off")
	}
	if d.Anomaly.SpikeFactor > 0 && d.Anomaly.SpikeFactor <= 1 {
		f.errorf(fieldNode(an, "spike_factor"), "anomaly.spike_factor must be above 1 (a multiple of the token's baseline rate)")
	}
	switch d.Audit.Allows {
	case "", "every", "summary":
	default:
		f.errorf(fieldNode(root, "audit", "allows"), "audit.allows: want every or summary, got %q", d.Audit.Allows)
	}
}

// compile builds the look-up structures of a validated document and fills
// defaults.
func compile(d *Document) (*Policy, error) {
	if d.Anomaly.Window == 0 {
		d.Anomaly.Window = Duration(10 * time.Second)
	}
	if d.Anomaly.Action == "" {
		d.Anomaly.Action = "alert"
	}
	if d.Audit.Allows == "" {
		d.Audit.Allows = "summary"
	}
	if d.Audit.SummaryInterval == 0 {
		d.Audit.SummaryInterval = Duration(10 * time.Second)
	}
	p := &Policy{Doc: *d, classes: map[string]*Class{}, hosts: map[string]*service{}, byName: map[string]*service{}}
	for _, e := range d.Environments {
		p.maxLifetime = max(p.maxLifetime, e.MaxTTL.D())
	}
	p.clockSkew = DefaultClockSkew
	if d.ClockSkew != nil {
		p.clockSkew = d.ClockSkew.D()
	}
	if d.ExpLeeway != nil {
		p.expLeeway = d.ExpLeeway.D()
	}
	for name, c := range d.Classes {
		cl := &Class{Name: name, ClassSpec: c, scopes: map[string]bool{}, envs: map[string]bool{}}
		for _, s := range c.Scopes {
			cl.scopes[s] = true
		}
		for _, e := range c.Environments {
			cl.envs[e] = true
		}
		for _, w := range c.Workloads {
			wp, err := parseWorkloadPattern(w)
			if err != nil {
				return nil, fmt.Errorf("class %s: workloads: %w", name, err)
			}
			cl.workloads = append(cl.workloads, wp)
		}
		p.classes[name] = cl
	}
	for _, name := range sortedKeys(d.Services) {
		spec := d.Services[name]
		svc := &service{name: name}
		for i, r := range spec.Routes {
			segs, err := parsePattern(r.Path)
			if err != nil {
				return nil, fmt.Errorf("service %s route %d: %w", name, i, err)
			}
			rt := Route{
				ID: fmt.Sprintf("%s#%d", name, i), Service: name, Index: i, Pattern: r.Path,
				Methods: r.Methods, Scopes: r.Scopes, Public: r.Public, segments: segs,
			}
			for _, m := range r.Methods {
				rt.methodMask |= methodBit(m)
			}
			svc.routes = append(svc.routes, rt)
		}
		svc.build()
		for _, h := range spec.Hosts {
			p.hosts[h] = svc
		}
		p.services = append(p.services, svc)
		p.byName[name] = svc
	}
	return p, nil
}

// Issuer is the iss claim of every token under this policy.
func (p *Policy) Issuer() string { return p.Doc.Issuer }

// Class returns a class by name.
func (p *Policy) Class(name string) (*Class, bool) {
	c, ok := p.classes[name]
	return c, ok
}

// Environment returns an environment by name.
func (p *Policy) Environment(name string) (EnvironmentSpec, bool) {
	e, ok := p.Doc.Environments[name]
	return e, ok
}

// Lifetime is the longest a token of class may live in env: the smaller of
// the two max_ttl. It is zero when either is unknown or the class is not
// allowed in env.
func (p *Policy) Lifetime(env, class string) time.Duration {
	e, ok := p.Doc.Environments[env]
	if !ok {
		return 0
	}
	c, ok := p.classes[class]
	if !ok || !c.envs[env] {
		return 0
	}
	return min(e.MaxTTL.D(), c.MaxTTL.D())
}

// MaxLifetime is the longest any token can live under this policy: after it,
// no token issued before a given time can still be valid.
func (p *Policy) MaxLifetime() time.Duration { return p.maxLifetime }

// ClockSkew is how far ahead of now a token's nbf and iat may be.
func (p *Policy) ClockSkew() time.Duration { return p.clockSkew }

// ExpLeeway is how long after its exp a token is still accepted.
func (p *Policy) ExpLeeway() time.Duration { return p.expLeeway }

// Match finds the first route of the service owning host that matches method
// and path. It does not allocate for lower-case hosts. Only an enforcement
// point whose proxy has already bound the host to one service (the sidecar
// Envoy of docs/xds.md, whose virtual hosts are the policy's) may let the
// host choose the service; others use MatchService.
func (p *Policy) Match(method, host, path string) (*Route, bool) {
	svc := p.hosts[normalizeHost(host)]
	if svc == nil {
		return nil, false
	}
	r := svc.match(method, path)
	return r, r != nil
}

// MatchService is Match for a service named by the proxy's configuration,
// not by the request: host must be one of that service's hosts, so a client
// cannot have its request judged under another service's routes by naming
// another host, nor reach the service under a host the policy does not give
// it.
func (p *Policy) MatchService(service, method, host, path string) (*Route, bool) {
	svc := p.byName[service]
	if svc == nil || p.hosts[normalizeHost(host)] != svc {
		return nil, false
	}
	r := svc.match(method, path)
	return r, r != nil
}

// ServiceNames lists the services in name order.
func (p *Policy) ServiceNames() []string {
	names := make([]string, 0, len(p.services))
	for _, s := range p.services {
		names = append(names, s.name)
	}
	sort.Strings(names)
	return names
}

// Routes returns the compiled routes of a service in rule order.
func (p *Policy) Routes(service string) []Route {
	if s := p.byName[service]; s != nil {
		return s.routes
	}
	return nil
}

// ClassNames lists the classes in name order.
func (p *Policy) ClassNames() []string { return sortedKeys(p.classes) }

// AgentScope reports whether the agent's own endpoints require scope (the
// admin API's route table, introspection) rather than a route of the
// policy: a class granting it grants something that is used.
func AgentScope(scope string) bool {
	switch scope {
	case "tokenwarden:admin", "tokenwarden:read", "tokenwarden:revoke", "tokenwarden:issue", "tokenwarden:introspect":
		return true
	}
	return false
}
