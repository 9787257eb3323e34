package policy_test

import (
	"strings"
	"testing"

	"github.com/tokenwarden/tokenwarden/policy"
)

// TestIssuerForms checks the two forms an issuer may take and refuses the
// ones a verifier could misread: discovery documents must name the issuer
// byte for byte, so anything that normalises differently is refused.
func TestIssuerForms(t *testing.T) {
	tests := []struct {
		iss       string
		url, name bool
	}{
		{"tokenwarden.example", false, true},
		{"tw", false, true},
		{"https://tokens.example.com", true, false},
		{"https://tokens.example.com:8443/tw", true, false},
		{"http://tokens.example.com", false, false},           // discovery requires https
		{"https://tokens.example.com/", false, false},         // trailing slash doubles in /.well-known
		{"https://tokens.example.com?x=1", false, false},      // query
		{"https://tokens.example.com#f", false, false},        // fragment
		{"https://user@tokens.example.com", false, false},     // userinfo
		{"https://", false, false},                            // no host
		{"https://:443", false, false},                        // no host name
		{"https://tokens.example.com/a%2Fb", false, false},    // escaped path
		{"https://tokens.example.com/a b", false, false},      // space
		{"HTTPS://tokens.example.com", false, false},          // not canonical
		{"Tokenwarden.Example", false, false},                 // upper case
		{"-tw.example", false, false},                         // bad label
		{"tw..example", false, false},                         // empty label
		{"tw example", false, false},                          //
		{strings.Repeat("a", 63) + ".example", false, true},   //
		{strings.Repeat("a", 64) + ".example", false, false},  // label too long
		{strings.Repeat("a.", 130) + "a", false, false},       // name too long
		{"https://" + strings.Repeat("a", 260), false, false}, // URL too long
	}
	for _, tt := range tests {
		if got := policy.IssuerIsURL(tt.iss); got != tt.url {
			t.Errorf("IssuerIsURL(%q) = %v, want %v", tt.iss, got, tt.url)
		}
		if got := policy.IssuerIsName(tt.iss); got != tt.name {
			t.Errorf("IssuerIsName(%q) = %v, want %v", tt.iss, got, tt.name)
		}
	}
}

// TestCheckRefusesBadIssuer: policy check reports an issuer of neither form
// at its line.
func TestCheckRefusesBadIssuer(t *testing.T) {
	for _, iss := range []string{"http://tokens.example.com", "https://tokens.example.com/", "Token Warden"} {
		doc := "version: 1\nissuer: \"" + iss + "\"\nenvironments:\n  prod: { max_ttl: 24h }\n"
		got := policy.Check("p.yaml", []byte(doc))
		found := false
		for _, p := range got {
			if p.Line == 2 && strings.Contains(p.Message, "neither an https URL") {
				found = true
			}
		}
		if !found {
			t.Errorf("issuer %q: problems %v, want one at line 2 about the issuer form", iss, got)
		}
	}
	ok := "version: 1\nissuer: https://tokens.example.com\nenvironments:\n  prod: { max_ttl: 24h }\n"
	for _, p := range policy.Check("p.yaml", []byte(ok)) {
		if strings.Contains(p.Message, "issuer") {
			t.Errorf("https issuer refused: %v", p)
		}
	}
}
