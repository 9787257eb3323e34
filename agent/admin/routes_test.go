package admin_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/agent/admin"
	"github.com/tokenwarden/tokenwarden/agent/audit"
	"github.com/tokenwarden/tokenwarden/policy"
)

// TestUnroutedAnswersJSON: a path no route serves, or a method a path does
// not serve, is a JSON error like every other (405 with Allow), whoever
// asks.
func TestUnroutedAnswersJSON(t *testing.T) {
	s := newServer(t)
	tests := []struct {
		method, path string
		wantStatus   int
		wantCode     string
		wantAllow    []string
	}{
		{http.MethodGet, "/", http.StatusNotFound, "not_found", nil},
		{http.MethodGet, "/v1/token", http.StatusNotFound, "not_found", nil},
		{http.MethodGet, "/v2/tokens", http.StatusNotFound, "not_found", nil},
		{http.MethodGet, "/v1/tokens/a/b/c", http.StatusNotFound, "not_found", nil},
		{http.MethodPost, "/v1/nothing-here", http.StatusNotFound, "not_found", nil},
		{http.MethodDelete, "/v1/tokens", http.StatusMethodNotAllowed, "method_not_allowed", []string{"GET", "POST"}},
		{http.MethodPut, "/v1/tokens/abc", http.StatusMethodNotAllowed, "method_not_allowed", []string{"GET"}},
		{http.MethodGet, "/v1/tokens/abc/revoke", http.StatusMethodNotAllowed, "method_not_allowed", []string{"POST"}},
		{http.MethodGet, "/v1/keys/rotate", http.StatusMethodNotAllowed, "method_not_allowed", []string{"POST"}},
		{http.MethodPost, "/healthz", http.StatusMethodNotAllowed, "method_not_allowed", []string{"GET"}},
		{http.MethodPatch, "/v1/admin/tokens", http.StatusMethodNotAllowed, "method_not_allowed", []string{"POST"}},
	}
	for _, tc := range tests {
		for _, who := range []string{"anonymous", "admin"} {
			t.Run(who+" "+tc.method+" "+tc.path, func(t *testing.T) {
				token := ""
				if who == "admin" {
					token = s.admin
				}
				r := s.call(tc.method, tc.path, token, nil)
				if r.status != tc.wantStatus {
					t.Fatalf("status %d, want %d: %s", r.status, tc.wantStatus, r.body)
				}
				if code := r.errorCode(t); code != tc.wantCode {
					t.Errorf("error %q, want %q", code, tc.wantCode)
				}
				allow := r.header.Get("Allow")
				for _, m := range tc.wantAllow {
					if !strings.Contains(allow, m) {
						t.Errorf("Allow %q lacks %s", allow, m)
					}
				}
				if tc.wantAllow == nil && allow != "" {
					t.Errorf("Allow %q on a %d", allow, r.status)
				}
			})
		}
	}
}

// TestHostileBodies: every route that reads a body refuses one that is too
// large, is not JSON, is not one object, or has fields the route does not
// take, with a JSON error, before acting.
func TestHostileBodies(t *testing.T) {
	s := newServer(t)
	bodied := []string{"/v1/tokens", "/v1/tokens/abc/revoke", "/v1/revocations", "/v1/leaks", "/v1/admin/tokens"}
	bodies := map[string]struct {
		body       string
		wantStatus int
		wantCode   string
	}{
		"over 64 KiB":       {`{"subject":"` + strings.Repeat("a", 64<<10) + `"}`, http.StatusRequestEntityTooLarge, "body_too_large"},
		"not JSON":          {`subject=alice`, http.StatusBadRequest, "bad_request"},
		"truncated":         {`{"subject":`, http.StatusBadRequest, "bad_request"},
		"empty":             {``, http.StatusBadRequest, "bad_request"},
		"two objects":       {`{} {}`, http.StatusBadRequest, "bad_request"},
		"an array":          {`[]`, http.StatusBadRequest, "bad_request"},
		"unknown field":     {`{"subject":"alice","admin":true}`, http.StatusBadRequest, "bad_request"},
		"wrong type":        {`{"subject":1}`, http.StatusBadRequest, "bad_request"},
		"deep nesting":      {strings.Repeat("[", 10000), http.StatusBadRequest, "bad_request"},
		"invalid utf-8 key": {"{\"\xff\":1}", http.StatusBadRequest, "bad_request"},
	}
	before := len(s.audited(audit.Filter{Action: "token."})) + len(s.audited(audit.Filter{Action: "revocation."}))
	for _, path := range bodied {
		for name, tc := range bodies {
			t.Run(path+" "+name, func(t *testing.T) {
				r := s.as(http.MethodPost, path, tc.body)
				if r.status != tc.wantStatus {
					t.Fatalf("status %d, want %d: %.200s", r.status, tc.wantStatus, r.body)
				}
				if code := r.errorCode(t); code != tc.wantCode {
					t.Errorf("error %q, want %q", code, tc.wantCode)
				}
			})
		}
	}
	if after := len(s.audited(audit.Filter{Action: "token."})) + len(s.audited(audit.Filter{Action: "revocation."})); after != before {
		t.Errorf("hostile bodies changed something: %d token or revocation records, want %d", after, before)
	}
}

// scopedToken issues a token in the admin class holding scopes.
func (s *server) scopedToken(subject string, scopes ...string) string {
	s.t.Helper()
	return s.issue(policy.IssueRequest{Subject: subject, Class: "admin", Scopes: scopes}).Token
}

// TestRouteScopes: each route of the table × each scope. A token reaches a
// route's handler only holding the route's scope or tokenwarden:admin;
// every other is refused 403 before the handler runs (nothing happens, the
// refusal is audited with the caller's subject). Public routes need no
// token.
func TestRouteScopes(t *testing.T) {
	s := newServer(t)
	callers := map[string]string{ // name: token
		"none":            "",
		"orders:read":     s.issue(policy.IssueRequest{Subject: "orders-api", Class: "service", Scopes: []string{"orders:read"}}).Token,
		admin.ReadScope:   s.scopedToken("reader", admin.ReadScope),
		admin.RevokeScope: s.scopedToken("pager-bot", admin.RevokeScope),
		admin.IssueScope:  s.scopedToken("deployer", admin.IssueScope),
		admin.AdminScope:  s.scopedToken("alice", admin.AdminScope),
		"read+revoke":     s.scopedToken("oncall", admin.ReadScope, admin.RevokeScope),
	}
	scopesOf := map[string][]string{
		"none": nil, "orders:read": {"orders:read"}, admin.ReadScope: {admin.ReadScope}, admin.RevokeScope: {admin.RevokeScope},
		admin.IssueScope: {admin.IssueScope}, admin.AdminScope: {admin.AdminScope}, "read+revoke": {admin.ReadScope, admin.RevokeScope},
	}
	routes := s.api.Routes()
	if len(routes) < 17 {
		t.Fatalf("route table has %d routes", len(routes))
	}
	for _, rt := range routes {
		for name, token := range callers {
			t.Run(fmt.Sprintf("%s %s as %s", rt.Method, rt.Pattern, name), func(t *testing.T) {
				path := strings.ReplaceAll(rt.Pattern, "{id}", "no-such-token")
				// A body the handler refuses (400): reaching the handler
				// is what is tested, not acting.
				var body any
				if rt.Method == http.MethodPost {
					body = "{"
				}
				status, code := s.statusOf(rt.Method, path, token, body)
				granted := rt.Scope == admin.Public || token != "" && admin.Grants(scopesOf[name], rt.Scope)
				switch {
				case granted && (status == http.StatusUnauthorized || status == http.StatusForbidden):
					t.Errorf("refused %d %s, want the handler to run", status, code)
				case !granted && token == "" && status != http.StatusUnauthorized:
					t.Errorf("status %d %s without a token, want 401", status, code)
				case !granted && token != "" && (status != http.StatusForbidden || code != string(policy.ReasonInsufficientScope)):
					t.Errorf("status %d %s, want 403 insufficient_scope", status, code)
				}
			})
		}
	}
	// The refusals are audited with the subject of the refused caller.
	var refused []audit.Record
	for _, rec := range s.audited(audit.Filter{Action: admin.ActionRequest, Subject: "pager-bot"}) {
		if strings.Contains(string(rec.Details), `"status":403`) {
			refused = append(refused, rec)
		}
	}
	if len(refused) == 0 || refused[0].TokenID == "" || refused[0].Route == "" {
		t.Errorf("the pager bot's refused calls are not audited: %+v", refused)
	}
}

// statusOf sends a request and returns the status and the error code,
// without reading a stream's body to its end.
func (s *server) statusOf(method, path, token string, body any) (int, string) {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var rd *strings.Reader
	if b, ok := body.(string); ok {
		rd = strings.NewReader(b)
	}
	var req *http.Request
	var err error
	if rd != nil {
		req, err = http.NewRequestWithContext(ctx, method, s.srv.URL+path, rd)
	} else {
		req, err = http.NewRequestWithContext(ctx, method, s.srv.URL+path, nil)
	}
	if err != nil {
		s.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := s.srv.Client().Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.Header.Get("Content-Type") != "application/json" {
		return resp.StatusCode, ""
	}
	var e struct{ Error string }
	_ = json.NewDecoder(resp.Body).Decode(&e)
	return resp.StatusCode, e.Error
}

// TestPagerBotRevokesButCannotIssue: a tokenwarden:revoke token revokes;
// it issues nothing, rotates nothing and mints no admin token.
func TestPagerBotRevokesButCannotIssue(t *testing.T) {
	s := newServer(t)
	bot := s.scopedToken("pager-bot", admin.RevokeScope)
	victim := s.issue(policy.IssueRequest{Subject: "orders-api", Class: "service"}).Record.ID
	wantStatus(t, s.call(http.MethodPost, "/v1/tokens/"+victim+"/revoke", bot, map[string]string{"reason": "paged: leaked"}), http.StatusCreated)
	for _, c := range []struct {
		method, path string
		body         any
	}{
		{http.MethodPost, "/v1/tokens", map[string]any{"subject": "x", "class": "service"}},
		{http.MethodPost, "/v1/tokens/" + victim + "/rotate", nil},
		{http.MethodPost, "/v1/admin/tokens", map[string]any{"subject": "mallory"}},
		{http.MethodPost, "/v1/keys/rotate", nil},
		{http.MethodGet, "/v1/tokens", nil},
	} {
		r := s.call(c.method, c.path, bot, c.body)
		if r.status != http.StatusForbidden || r.errorCode(t) != string(policy.ReasonInsufficientScope) {
			t.Errorf("pager bot %s %s: %d %s, want 403 insufficient_scope", c.method, c.path, r.status, r.body)
		}
	}
}

// TestNoEscalation: no caller obtains a token with more of tokenwarden's
// own scopes than it holds: not by minting an admin token, not by issuing
// a token of the admin class through POST /v1/tokens, not by rotating an
// admin token.
func TestNoEscalation(t *testing.T) {
	s := newServer(t)
	reader := s.scopedToken("reader", admin.ReadScope)
	issuer := s.scopedToken("deployer", admin.IssueScope)
	aliceOut := s.issue(policy.IssueRequest{Subject: "alice", Class: "admin", Scopes: []string{admin.AdminScope}})
	service := s.issue(policy.IssueRequest{Subject: "orders-api", Class: "service"}).Record.ID
	tests := map[string]struct {
		token        string
		method, path string
		body         any
		wantStatus   int
		wantCode     string
	}{
		"reader mints an admin token": {reader, http.MethodPost, "/v1/admin/tokens", map[string]any{"subject": "mallory"}, 403, "insufficient_scope"},
		"reader mints a read token":   {reader, http.MethodPost, "/v1/admin/tokens", map[string]any{"subject": "mallory", "scopes": []string{admin.ReadScope}}, 403, "insufficient_scope"},
		"reader issues":               {reader, http.MethodPost, "/v1/tokens", map[string]any{"subject": "x", "class": "service"}, 403, "insufficient_scope"},
		"issuer mints an admin token": {issuer, http.MethodPost, "/v1/admin/tokens", map[string]any{"subject": "mallory", "scopes": []string{admin.IssueScope}}, 403, "insufficient_scope"},
		"issuer issues the admin class's defaults": {issuer, http.MethodPost, "/v1/tokens",
			map[string]any{"subject": "mallory", "class": "admin"}, 403, "insufficient_scope"},
		"issuer issues tokenwarden:admin": {issuer, http.MethodPost, "/v1/tokens",
			map[string]any{"subject": "mallory", "class": "admin", "scopes": []string{admin.AdminScope}}, 403, "insufficient_scope"},
		"issuer issues tokenwarden:read": {issuer, http.MethodPost, "/v1/tokens",
			map[string]any{"subject": "mallory", "class": "admin", "scopes": []string{admin.ReadScope}}, 403, "insufficient_scope"},
		"issuer rotates alice's admin token": {issuer, http.MethodPost, "/v1/tokens/" + aliceOut.Record.ID + "/rotate", nil, 403, "insufficient_scope"},
		"admin mints a foreign scope": {s.admin, http.MethodPost, "/v1/admin/tokens",
			map[string]any{"subject": "mallory", "scopes": []string{"orders:write"}}, 400, "bad_request"},
		"admin mints an unknown tokenwarden scope": {s.admin, http.MethodPost, "/v1/admin/tokens",
			map[string]any{"subject": "mallory", "scopes": []string{"tokenwarden:root"}}, 400, "bad_request"},
		"admin mints the bootstrap subject": {s.admin, http.MethodPost, "/v1/admin/tokens",
			map[string]any{"subject": admin.BootstrapSubject}, 400, "bad_request"},
		"admin issues the bootstrap subject": {s.admin, http.MethodPost, "/v1/tokens",
			map[string]any{"subject": admin.BootstrapSubject, "class": "admin", "scopes": []string{admin.AdminScope}}, 400, "bad_request"},
		"admin mints beyond the class's max_ttl": {s.admin, http.MethodPost, "/v1/admin/tokens",
			map[string]any{"subject": "mallory", "ttl": "720h"}, 400, "refused_by_policy"},
		// What an issuer may do, it still does.
		"issuer issues a service token":  {issuer, http.MethodPost, "/v1/tokens", map[string]any{"subject": "x", "class": "service"}, 201, ""},
		"issuer rotates a service token": {issuer, http.MethodPost, "/v1/tokens/" + service + "/rotate", nil, 201, ""},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			r := s.call(tc.method, tc.path, tc.token, tc.body)
			if r.status != tc.wantStatus {
				t.Fatalf("status %d, want %d: %s", r.status, tc.wantStatus, r.body)
			}
			if tc.wantCode != "" {
				if code := r.errorCode(t); code != tc.wantCode {
					t.Errorf("error %q, want %q", code, tc.wantCode)
				}
			}
		})
	}
	if recs := s.audited(audit.Filter{Action: audit.ActionTokenIssue, Subject: "mallory"}); len(recs) != 0 {
		t.Errorf("a refused escalation issued %d tokens", len(recs))
	}
}

// TestOperatorAdminTokens: two operators get their own admin tokens; the
// issuance names the owner and the admin who minted it; each action is
// audited with the acting operator; revoking one (by subject or by id)
// leaves the other working.
func TestOperatorAdminTokens(t *testing.T) {
	s := newServer(t)
	mint := func(body map[string]any) (token, id string) {
		t.Helper()
		r := s.as(http.MethodPost, "/v1/admin/tokens", body)
		wantStatus(t, r, http.StatusCreated)
		var out struct {
			Token  string
			ID     string
			Record struct{ ID string }
		}
		if err := json.Unmarshal(r.body, &out); err != nil {
			t.Fatal(err)
		}
		if out.ID == "" {
			out.ID = out.Record.ID // the answer's shape before TokenView
		}
		return out.Token, out.ID
	}
	alice, aliceID := mint(map[string]any{"subject": "alice", "ttl": "8h"})
	bob, bobID := mint(map[string]any{"subject": "bob"})
	carol, carolID := mint(map[string]any{"subject": "carol", "scopes": []string{admin.ReadScope}})

	pt := s.verify(alice)
	if pt.Subject != "alice" || !slices.Equal(pt.Scopes, []string{admin.AdminScope}) || pt.Expires-pt.IssuedAt != 8*3600 {
		t.Errorf("alice's token: subject %s scopes %v life %ds", pt.Subject, pt.Scopes, pt.Expires-pt.IssuedAt)
	}
	if pt := s.verify(carol); !slices.Equal(pt.Scopes, []string{admin.ReadScope}) {
		t.Errorf("carol's token scopes %v, want only %s", pt.Scopes, admin.ReadScope)
	}
	issued := s.audited(audit.Filter{Action: audit.ActionTokenIssue, TokenID: aliceID})
	if len(issued) != 1 || issued[0].Subject != "alice" || issued[0].Actor != s.adminID {
		t.Fatalf("alice's token's issuance: %+v, want subject alice by %s", issued, s.adminID)
	}

	// Alice acts: her request is audited as hers.
	wantStatus(t, s.call(http.MethodPost, "/v1/tokens", alice, map[string]any{"subject": "orders-api", "class": "service"}), http.StatusCreated)
	var acted *audit.Record
	for _, rec := range s.audited(audit.Filter{Action: admin.ActionRequest, TokenID: aliceID}) {
		if rec.Route == "POST /v1/tokens" {
			acted = &rec
		}
	}
	if acted == nil || acted.Subject != "alice" || acted.Actor != aliceID || !strings.Contains(string(acted.Details), `"status":201`) {
		t.Fatalf("alice's issuance is not audited as hers: %+v", acted)
	}
	if recs := s.audited(audit.Filter{Action: audit.ActionTokenIssue, Subject: "orders-api"}); len(recs) != 1 || recs[0].Actor != aliceID {
		t.Errorf("the token alice issued: %+v, want actor %s", recs, aliceID)
	}

	// Bob revokes alice by subject: alice is out, bob and carol are not.
	wantStatus(t, s.call(http.MethodPost, "/v1/revocations", bob, map[string]any{"kind": "subject", "target": "alice", "reason": "left the team"}), http.StatusCreated)
	if r := s.call(http.MethodGet, "/v1/keys", alice, nil); r.status != http.StatusUnauthorized || r.errorCode(t) != string(policy.ReasonRevoked) {
		t.Errorf("alice after her revocation: %d %s", r.status, r.body)
	}
	wantStatus(t, s.call(http.MethodGet, "/v1/keys", bob, nil), http.StatusOK)
	wantStatus(t, s.call(http.MethodGet, "/v1/keys", carol, nil), http.StatusOK)

	// Carol's by id: bob and the agent's own keep working.
	wantStatus(t, s.as(http.MethodPost, "/v1/tokens/"+carolID+"/revoke", map[string]string{"reason": "rotated off call"}), http.StatusCreated)
	if r := s.call(http.MethodGet, "/v1/keys", carol, nil); r.status != http.StatusUnauthorized {
		t.Errorf("carol after her revocation: %d", r.status)
	}
	wantStatus(t, s.call(http.MethodGet, "/v1/keys", bob, nil), http.StatusOK)
	wantStatus(t, s.as(http.MethodGet, "/v1/keys", nil), http.StatusOK)
	_ = bobID
}

// TestRedirectsAnswerJSON: a path ServeMux would clean (// or ..) is
// redirected to its canonical form with a JSON body, never served as is.
func TestRedirectsAnswerJSON(t *testing.T) {
	s := newServer(t)
	client := *s.srv.Client()
	client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	for _, path := range []string{"/v1//keys", "/v1/tokens/../keys", "/v1/./audit"} {
		req, _ := http.NewRequest(http.MethodGet, s.srv.URL+path, nil)
		req.URL.Opaque = path // as sent, not cleaned by the client
		req.Header.Set("Authorization", "Bearer "+s.admin)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var e struct{ Error, Message string }
		derr := json.NewDecoder(resp.Body).Decode(&e)
		resp.Body.Close()
		if resp.StatusCode/100 != 3 || resp.Header.Get("Content-Type") != "application/json" || derr != nil || e.Error != "moved" || resp.Header.Get("Location") == "" {
			t.Errorf("%s: %d %s %q %v %+v", path, resp.StatusCode, resp.Header.Get("Content-Type"), resp.Header.Get("Location"), derr, e)
		}
	}
}

// TestFailedRequestsCannotFloodTheAudit: a token hammering a route it may
// not call gets a burst of admin.request records, then one every few
// seconds, the next saying how many were not recorded; its successes and
// other tokens' records are unaffected.
func TestFailedRequestsCannotFloodTheAudit(t *testing.T) {
	s := newServer(t)
	reader := s.scopedToken("reader", admin.ReadScope)
	count := func(subject string) int {
		return len(s.audited(audit.Filter{Action: admin.ActionRequest, Subject: subject}))
	}
	for range 200 {
		if r := s.call(http.MethodPost, "/v1/tokens", reader, map[string]any{"subject": "x", "class": "service"}); r.status != http.StatusForbidden {
			t.Fatalf("status %d", r.status)
		}
	}
	if n := count("reader"); n < 1 || n > 10 {
		t.Fatalf("200 refusals wrote %d records, want 1 to 10", n)
	}
	// Others are recorded as ever.
	before := count("tokenwarden-admin")
	for range 3 {
		wantStatus(t, s.as(http.MethodPost, "/v1/tokens", map[string]any{"subject": "x", "class": "nope"}), http.StatusBadRequest)
	}
	if n := count("tokenwarden-admin"); n != before+3 {
		t.Errorf("the admin's failures: %d records, want %d", n, before+3)
	}
	// Later, the next refusal is recorded with the count of the others.
	s.clock.Add(time.Minute)
	s.call(http.MethodPost, "/v1/tokens", reader, map[string]any{"subject": "x", "class": "service"})
	recs := s.audited(audit.Filter{Action: admin.ActionRequest, Subject: "reader"})
	last := recs[len(recs)-1]
	var d struct {
		Status     int `json:"status"`
		NotRecords int `json:"failures_not_recorded"`
	}
	if err := json.Unmarshal(last.Details, &d); err != nil || d.Status != http.StatusForbidden || d.NotRecords+len(recs)-1 != 200 {
		t.Errorf("the next record %s: want status 403 and the %d refusals not recorded", last.Details, 200-(len(recs)-1))
	}
}
