package admin

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// FuzzRouting: whatever the method and path, the API answers without a
// panic, and every answer that is not a success is one JSON error ({error,
// message}), with Allow on a 405. Anonymous: no handler is reached but the
// public ones.
func FuzzRouting(f *testing.F) {
	for _, seed := range [][2]string{
		{"GET", "/"}, {"GET", "/v1/tokens"}, {"DELETE", "/v1/tokens"}, {"GET", "/v1//keys"},
		{"POST", "/v1/tokens/x/rotate"}, {"GET", "/v1/tokens/../../etc/passwd"}, {"PUT", "/healthz"},
		{"GET", "/v1/openapi.json"}, {"OPTIONS", "*"}, {"CONNECT", "/v1/keys"}, {"GET", "/v1/tokens/%2e%2e/keys"},
		{"BREW", "/v1/audit/stream"}, {"GET", "/v1/admin/tokens/"}, {"HEAD", "/readyz"},
	} {
		f.Add(seed[0], seed[1])
	}
	a := &API{cfg: Config{Ready: func() error { return nil }}, mux: http.NewServeMux()}
	if err := a.register(a.routes()); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, method, target string) {
		if len(target) > 4096 {
			return
		}
		req, err := http.NewRequest("GET", "http://admin.invalid/", nil)
		if err != nil {
			t.Fatal(err)
		}
		// Set what a server would parse from a request line, unchecked.
		req.Method = method
		req.RequestURI = target
		if req.URL, err = req.URL.Parse(target); err != nil || req.URL.Path == "" || !strings.HasPrefix(req.URL.Path, "/") || req.URL.Host != "" {
			return
		}
		w := httptest.NewRecorder()
		a.ServeHTTP(w, req)
		if w.Code < 300 {
			return
		}
		if ct := w.Header().Get("Content-Type"); ct != "application/json" {
			t.Fatalf("%s %q: %d with Content-Type %q: %s", method, target, w.Code, ct, w.Body)
		}
		var e map[string]string
		if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || e["error"] == "" || e["message"] == "" || len(e) != 2 {
			t.Fatalf("%s %q: %d body %s: %v", method, target, w.Code, w.Body, err)
		}
		if w.Code == http.StatusMethodNotAllowed && w.Header().Get("Allow") == "" {
			t.Fatalf("%s %q: 405 without Allow", method, target)
		}
	})
}
