package admin_test

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/tokenwarden/tokenwarden/agent/admin"
	"github.com/tokenwarden/tokenwarden/agent/store"
	"github.com/tokenwarden/tokenwarden/policy"
)

type safeResponse struct {
	Revocation policy.Revocation `json:"revocation"`
	Covered    *int              `json:"covered"`
	Existed    bool              `json:"existed"`
	DryRun     bool              `json:"dry_run"`
	Sample     []string          `json:"sample"`
}

func (s *server) rules() int {
	s.t.Helper()
	rules, err := s.st.Revocations(context.Background())
	if err != nil {
		s.t.Fatal(err)
	}
	return len(rules)
}

// TestRevokeSafeMutations attacks each safety rail of a revocation: a dry
// run must store and enforce nothing; a second identical rule must not be
// added; a target covering nothing is refused unless allow_empty; the key
// of the caller's own admin token is refused unless force.
func TestRevokeSafeMutations(t *testing.T) {
	t.Run("dry run stores and enforces nothing", func(t *testing.T) {
		s := newServer(t)
		a := s.issue(policy.IssueRequest{Subject: "alice", Class: "service"})
		s.issue(policy.IssueRequest{Subject: "alice", Class: "service"})
		before := s.rules()
		for _, path := range []string{"/v1/revocations", "/v1/revocations?dry_run=true"} {
			body := map[string]any{"kind": "subject", "target": "alice", "reason": "left", "dry_run": path == "/v1/revocations"}
			r := s.as(http.MethodPost, path, body)
			wantStatus(t, r, http.StatusOK)
			var out safeResponse
			r.decode(t, &out)
			if !out.DryRun || out.Covered == nil || *out.Covered != 2 || len(out.Sample) != 2 || out.Revocation.ID != "" {
				t.Errorf("%s: dry run = %+v, want 2 covered, 2 sampled, no rule id", path, out)
			}
		}
		s.sync()
		if s.rules() != before || s.set.Revoked(s.verify(a.Token), s.clock.Now()) {
			t.Error("a dry run stored or enforced a rule")
		}
		r := s.as(http.MethodPost, "/v1/leaks?dry_run=true", map[string]string{"sha256": leakHex(a.Token), "source": "x"})
		wantStatus(t, r, http.StatusOK)
		s.sync()
		if s.rules() != before || s.set.Revoked(s.verify(a.Token), s.clock.Now()) {
			t.Error("a dry-run leak report revoked the token")
		}
	})
	t.Run("idempotent", func(t *testing.T) {
		s := newServer(t)
		s.issue(policy.IssueRequest{Subject: "alice", Class: "service"})
		body := map[string]string{"kind": "subject", "target": "alice", "reason": "left"}
		wantStatus(t, s.as(http.MethodPost, "/v1/revocations", body), http.StatusCreated)
		s.sync()
		n := s.rules()
		r := s.as(http.MethodPost, "/v1/revocations", body)
		wantStatus(t, r, http.StatusOK)
		var out safeResponse
		r.decode(t, &out)
		if !out.Existed || out.Revocation.ID != "" {
			t.Errorf("second identical rule = %+v, want existed and no new id", out)
		}
		s.sync()
		if s.rules() != n {
			t.Errorf("%d rules after the repeat, want %d", s.rules(), n)
		}
	})
	t.Run("covers nothing", func(t *testing.T) {
		s := newServer(t)
		before := s.rules()
		r := s.as(http.MethodPost, "/v1/revocations", map[string]string{"kind": "subject", "target": "nobody", "reason": "typo"})
		wantStatus(t, r, http.StatusConflict)
		if code := r.errorCode(t); code != "covers_nothing" {
			t.Errorf("error %q, want covers_nothing", code)
		}
		s.sync()
		if s.rules() != before {
			t.Error("a refused empty rule was stored")
		}
		r = s.as(http.MethodPost, "/v1/revocations", map[string]any{"kind": "subject", "target": "nobody", "reason": "pre-emptive", "allow_empty": true})
		wantStatus(t, r, http.StatusCreated)
	})
	t.Run("own admin key", func(t *testing.T) {
		s := newServer(t)
		if _, err := s.iss.RotateKeysNow(context.Background(), s.adminID); err != nil {
			t.Fatal(err)
		}
		kid := s.record(s.adminID).KeyID
		r := s.as(http.MethodPost, "/v1/revocations", map[string]string{"kind": "key", "target": kid, "reason": "compromised"})
		wantStatus(t, r, http.StatusConflict)
		if code := r.errorCode(t); code != "own_admin_key" {
			t.Errorf("error %q, want own_admin_key", code)
		}
		s.sync()
		if s.set.Revoked(s.verify(s.admin), s.clock.Now()) {
			t.Error("the refused key revocation locked the caller out")
		}
		r = s.as(http.MethodPost, "/v1/revocations", map[string]any{"kind": "key", "target": kid, "reason": "compromised", "force": true})
		wantStatus(t, r, http.StatusCreated)
		s.sync()
		if !s.set.Revoked(s.verify(s.admin), s.clock.Now()) {
			t.Error("forced key revocation did not revoke the caller's token")
		}
	})
}

// TestMutationDryRuns: ?dry_run=true on issue, rotate and keys rotate
// signs, stores and audits nothing, and a dry run of a refused issuance is
// refused the same way.
func TestMutationDryRuns(t *testing.T) {
	s := newServer(t)
	tok := s.issue(policy.IssueRequest{Subject: "alice", Class: "service"})
	tokens, _ := s.st.Tokens(context.Background(), store.TokenFilter{})
	keys := s.iss.Keys()
	for _, c := range []struct {
		path string
		body any
		want string
	}{
		{"/v1/tokens?dry_run=true", map[string]any{"subject": "bob", "class": "service"}, "issue a service token to bob"},
		{"/v1/tokens/" + tok.Record.ID + "/rotate?dry_run=true", nil, "issue a successor of " + tok.Record.ID},
		{"/v1/keys/rotate?dry_run=true", nil, "make a new signing key"},
		{"/v1/keys/rotate?now=true&dry_run=true", nil, "make a new signing key"},
	} {
		r := s.as(http.MethodPost, c.path, c.body)
		wantStatus(t, r, http.StatusOK)
		var out admin.DryRunResponse
		r.decode(t, &out)
		if !out.DryRun || !strings.Contains(out.Would, c.want) {
			t.Errorf("%s: %+v, want a dry run saying %q", c.path, out, c.want)
		}
	}
	r := s.as(http.MethodPost, "/v1/tokens?dry_run=true", map[string]any{"subject": "bob", "class": "nosuchclass"})
	wantStatus(t, r, http.StatusBadRequest)
	s.sync()
	if after, _ := s.st.Tokens(context.Background(), store.TokenFilter{}); len(after) != len(tokens) {
		t.Errorf("dry runs stored %d token records", len(after)-len(tokens))
	}
	if len(s.iss.Keys()) != len(keys) {
		t.Error("a dry-run key rotation made a key")
	}
}

func leakHex(token string) string {
	h := policy.LeakHash(token)
	const digits = "0123456789abcdef"
	out := make([]byte, 0, 64)
	for _, b := range h {
		out = append(out, digits[b>>4], digits[b&15])
	}
	return string(out)
}
