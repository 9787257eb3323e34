package admin_test

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/tokenwarden/tokenwarden/agent/admin"
	"github.com/tokenwarden/tokenwarden/policy"
)

// page is the JSON of one list answer.
type page struct {
	Items         []json.RawMessage `json:"items"`
	NextPageToken string            `json:"next_page_token"`
}

// followPages lists path with limit and follows next_page_token to the
// end, returning each item's id.
func followPages(t *testing.T, s *server, path string, limit int) (ids []string, pages int) {
	t.Helper()
	token := ""
	for {
		q := "limit=" + fmt.Sprint(limit)
		if token != "" {
			q += "&page_token=" + url.QueryEscape(token)
		}
		sep := "?"
		if strings.Contains(path, "?") {
			sep = "&"
		}
		r := s.as(http.MethodGet, path+sep+q, nil)
		wantStatus(t, r, http.StatusOK)
		var p page
		r.decode(t, &p)
		if p.Items == nil {
			t.Fatalf("%s: items is %s, want a list", path, r.body)
		}
		if len(p.Items) > limit {
			t.Fatalf("%s: %d items on a page of limit %d", path, len(p.Items), limit)
		}
		pages++
		for _, raw := range p.Items {
			var v struct {
				ID  string `json:"id"`
				Seq uint64 `json:"seq"`
			}
			json.Unmarshal(raw, &v)
			ids = append(ids, v.ID+fmt.Sprint(v.Seq))
		}
		if p.NextPageToken == "" {
			return ids, pages
		}
		if pages > 1000 {
			t.Fatal("pages never end")
		}
		token = p.NextPageToken
	}
}

// TestListPagination: every list endpoint answers {items, next_page_token};
// following pages of any size yields each item once, the same items as one
// large page.
func TestListPagination(t *testing.T) {
	s := newServer(t)
	for i := range 7 {
		tok := s.issue(policy.IssueRequest{Subject: fmt.Sprintf("svc-%d", i), Class: "service", Tenant: "acme"})
		if i%2 == 0 {
			wantStatus(t, s.as(http.MethodPost, "/v1/tokens/"+tok.Record.ID+"/revoke", map[string]string{"reason": "test"}), http.StatusCreated)
		}
	}
	wantStatus(t, s.as(http.MethodPost, "/v1/keys/rotate", nil), http.StatusCreated)
	wantStatus(t, s.as(http.MethodPost, "/v1/keys/rotate?now=true", nil), http.StatusCreated)
	for _, path := range []string{"/v1/tokens", "/v1/tokens?tenant=acme", "/v1/revocations", "/v1/keys", "/v1/audit", "/v1/audit?action=token."} {
		t.Run(path, func(t *testing.T) {
			all, pages := followPages(t, s, path, admin.MaxPageLimit)
			if pages != 1 || len(all) < 3 {
				t.Fatalf("one large page: %d pages, %d items", pages, len(all))
			}
			for _, limit := range []int{1, 2, 3} {
				got, _ := followPages(t, s, path, limit)
				if strings.HasPrefix(path, "/v1/audit") {
					// Audit pages go back in time; each page is in order.
					slices.Sort(got)
					want := slices.Clone(all)
					slices.Sort(want)
					all = want
				}
				if !slices.Equal(got, all) {
					t.Errorf("limit %d: %v, want %v", limit, got, all)
				}
			}
		})
	}
	// The default page is admin.DefaultPageLimit items.
	for range admin.DefaultPageLimit {
		s.issue(policy.IssueRequest{Subject: "bulk", Class: "service"})
	}
	r := s.as(http.MethodGet, "/v1/tokens?subject=bulk", nil)
	var p page
	r.decode(t, &p)
	if len(p.Items) != admin.DefaultPageLimit || p.NextPageToken != "" {
		t.Errorf("default page: %d items, next %q; want %d and the last page", len(p.Items), p.NextPageToken, admin.DefaultPageLimit)
	}
	r = s.as(http.MethodGet, "/v1/tokens", nil)
	r.decode(t, &p)
	if len(p.Items) != admin.DefaultPageLimit || p.NextPageToken == "" {
		t.Errorf("default page of more: %d items, next %q", len(p.Items), p.NextPageToken)
	}
}

// TestPageTokenAttacks: a limit out of range, a page token altered, made
// up, replayed against another filter or endpoint, or from another agent is
// a 400 naming the parameter; never a 500, and never a page of another
// query's items.
func TestPageTokenAttacks(t *testing.T) {
	s := newServer(t)
	for i := range 3 {
		s.issue(policy.IssueRequest{Subject: "alice", Class: "service", Tenant: fmt.Sprint("t", i)})
		s.issue(policy.IssueRequest{Subject: "bob", Class: "service"})
	}
	r := s.as(http.MethodGet, "/v1/tokens?subject=alice&limit=1", nil)
	var p page
	r.decode(t, &p)
	tok := p.NextPageToken
	if tok == "" {
		t.Fatal("no next page")
	}
	raw, _ := base64.RawURLEncoding.DecodeString(tok)
	flip := func(i int) string {
		b := slices.Clone(raw)
		b[i] ^= 1
		return base64.RawURLEncoding.EncodeToString(b)
	}
	// The same query's token from another agent (or this one before a
	// restart).
	s2 := newServer(t)
	for range 2 {
		s2.issue(policy.IssueRequest{Subject: "alice", Class: "service"})
	}
	var p2 page
	s2.as(http.MethodGet, "/v1/tokens?subject=alice&limit=1", nil).decode(t, &p2)
	other := p2.NextPageToken
	tests := map[string]string{
		"limit zero":         "/v1/tokens?limit=0",
		"limit negative":     "/v1/tokens?limit=-1",
		"limit too large":    "/v1/tokens?limit=1001",
		"limit empty":        "/v1/tokens?limit=",
		"limit twice":        "/v1/tokens?limit=1&limit=2",
		"limit not a number": "/v1/tokens?limit=1e3",
		"position altered":   "/v1/tokens?subject=alice&page_token=" + flip(3),
		"mac altered":        "/v1/tokens?subject=alice&page_token=" + flip(len(raw)-1),
		"version altered":    "/v1/tokens?subject=alice&page_token=" + flip(0),
		"other filter":       "/v1/tokens?subject=bob&page_token=" + tok,
		"filter dropped":     "/v1/tokens?page_token=" + tok,
		"other endpoint":     "/v1/revocations?subject=alice&page_token=" + tok,
		"another agent's":    "/v1/tokens?subject=alice&page_token=" + other,
		"not base64":         "/v1/tokens?subject=alice&page_token=%25%25%25",
		"made up":            "/v1/tokens?subject=alice&page_token=" + base64.RawURLEncoding.EncodeToString([]byte("\x01zzzz0123456789abcdef")),
		"too long":           "/v1/tokens?subject=alice&page_token=" + strings.Repeat("A", 4096),
		"page token twice":   "/v1/tokens?subject=alice&page_token=" + tok + "&page_token=" + tok,
	}
	for name, path := range tests {
		t.Run(name, func(t *testing.T) {
			r := s.as(http.MethodGet, path, nil)
			wantStatus(t, r, http.StatusBadRequest)
			if code := r.errorCode(t); code != "bad_request" {
				t.Errorf("error %q", code)
			}
		})
	}
	// The genuine token still works, with its own filter.
	r = s.as(http.MethodGet, "/v1/tokens?subject=alice&limit=1&page_token="+url.QueryEscape(tok), nil)
	wantStatus(t, r, http.StatusOK)
	var next struct {
		Items         []tokenView `json:"items"`
		NextPageToken string      `json:"next_page_token"`
	}
	r.decode(t, &next)
	if len(next.Items) != 1 || next.Items[0].Subject != "alice" {
		t.Errorf("second page %+v", next.Items)
	}
}

// TestTokenShapes: the issue answer carries the id, expiry and state
// beside the token; every token view has one lifecycle field, state, and
// no stored status or bookkeeping flags; times are UTC.
func TestTokenShapes(t *testing.T) {
	s := newServer(t)
	r := s.as(http.MethodPost, "/v1/tokens", map[string]any{"subject": "ci", "class": "service"})
	wantStatus(t, r, http.StatusCreated)
	var issued map[string]any
	json.Unmarshal(r.body, &issued)
	for _, k := range []string{"token", "id", "expires_at", "issued_at", "state", "subject", "class", "scopes", "kid"} {
		if issued[k] == nil {
			t.Errorf("issue answer lacks %q: %s", k, r.body)
		}
	}
	id, _ := issued["id"].(string)
	for _, path := range []string{"/v1/tokens/" + id, "/v1/tokens"} {
		r := s.as(http.MethodGet, path, nil)
		wantStatus(t, r, http.StatusOK)
		for _, gone := range []string{`"status"`, `"expiry_warned"`, `"expiry_recorded"`, `"wire_id"`, `"token": "tw_`} {
			if strings.Contains(string(r.body), gone) {
				t.Errorf("%s shows %s: %s", path, gone, r.body)
			}
		}
		if !strings.Contains(string(r.body), `"state": "active"`) || !strings.Contains(string(r.body), `Z"`) {
			t.Errorf("%s: %s", path, r.body)
		}
	}
}
