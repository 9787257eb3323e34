package authz

import (
	"encoding/json"
	"os"
	"strings"
	"testing"

	extauthz "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/encoding/protojson"
)

// envoyHTTPSnippet returns the ext_authz filter of docs/authz.md, section
// "Envoy over HTTP", decoded strictly as Envoy's own types and validated
// (envoy is not installed here to load it; its protos are).
func envoyHTTPSnippet(t *testing.T) *extauthz.ExtAuthz {
	t.Helper()
	doc, err := os.ReadFile("../../docs/authz.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(doc), "\n## Envoy over HTTP\n")
	if !ok {
		t.Fatal(`docs/authz.md has no "## Envoy over HTTP" section`)
	}
	_, block, ok := strings.Cut(section, "```yaml\n")
	if !ok {
		t.Fatal("the Envoy HTTP section has no yaml block")
	}
	block, _, _ = strings.Cut(block, "```")
	var filters []any
	if err := yaml.Unmarshal([]byte(block), &filters); err != nil || len(filters) != 1 {
		t.Fatalf("the snippet is not a list of one filter (%v):\n%s", err, block)
	}
	js, err := json.Marshal(filters[0])
	if err != nil {
		t.Fatal(err)
	}
	var f hcm.HttpFilter
	if err := protojson.Unmarshal(js, &f); err != nil { // unknown fields are errors
		t.Fatalf("the snippet is not an Envoy HttpFilter: %v", err)
	}
	var ea extauthz.ExtAuthz
	if err := f.GetTypedConfig().UnmarshalTo(&ea); err != nil {
		t.Fatalf("typed_config is not an ExtAuthz: %v", err)
	}
	if err := f.ValidateAll(); err != nil {
		t.Fatal(err)
	}
	if err := ea.ValidateAll(); err != nil {
		t.Fatal(err)
	}
	return &ea
}

func matchesAny(ms []*matcherv3.StringMatcher, name string) bool {
	for _, m := range ms {
		switch p := m.GetMatchPattern().(type) {
		case *matcherv3.StringMatcher_Exact:
			if p.Exact == name {
				return true
			}
		case *matcherv3.StringMatcher_Prefix:
			if strings.HasPrefix(name, p.Prefix) {
				return true
			}
		}
	}
	return false
}

// TestEnvoyHTTPSnippet checks the documented Envoy HTTP-mode filter: it
// fails closed, lets the check see Authorization and every spelling of a
// forged identity header (Envoy passes names with underscores by default;
// a check that cannot see one cannot ask for its removal), and lets the
// identity headers the agent sets reach the application.
func TestEnvoyHTTPSnippet(t *testing.T) {
	ea := envoyHTTPSnippet(t)
	if ea.GetFailureModeAllow() {
		t.Error("the snippet fails open (failure_mode_allow)")
	}
	if got := ea.GetHttpService().GetPathPrefix(); !strings.HasPrefix(got, PathEnvoy+"/") {
		t.Errorf("path_prefix %q: want %s/<service>", got, PathEnvoy)
	}
	allowed := ea.GetAllowedHeaders().GetPatterns()
	identity := []string{HeaderSubject, HeaderTokenID, HeaderScopes, HeaderTenant}
	for _, h := range append([]string{"authorization", "x-tokenwarden-anything"}, identity...) {
		name := strings.ToLower(h)
		// Every spelling with _ for any - (Envoy lower-cases names).
		for _, spelling := range spellings(name) {
			if !matchesAny(allowed, spelling) {
				t.Errorf("allowed_headers does not let the check see %q", spelling)
			}
		}
	}
	upstream := ea.GetHttpService().GetAuthorizationResponse().GetAllowedUpstreamHeaders().GetPatterns()
	for _, h := range identity {
		if !matchesAny(upstream, strings.ToLower(h)) {
			t.Errorf("allowed_upstream_headers does not pass %s to the application", h)
		}
	}
	client := ea.GetHttpService().GetAuthorizationResponse().GetAllowedClientHeaders().GetPatterns()
	if !matchesAny(client, "www-authenticate") {
		t.Error("allowed_client_headers drops WWW-Authenticate from denials")
	}
}

// spellings returns name with each '-' kept or turned into '_', every
// combination (2^n for n dashes).
func spellings(name string) []string {
	out := []string{""}
	for _, c := range name {
		var next []string
		for _, p := range out {
			if c == '-' {
				next = append(next, p+"-", p+"_")
			} else {
				next = append(next, p+string(c))
			}
		}
		out = next
	}
	return out
}
