package rotation

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/policy"
)

const fakeToken = "tw_eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJjaSJ9.c2ln"

func TestFileSinkReplacesAtomically(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "ci.token")
	// An existing, too-open file is replaced, not rewritten in place.
	if err := os.WriteFile(path, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	s := &FileSink{Path: path}
	for _, tok := range []string{fakeToken + "1", fakeToken + "2"} {
		if err := s.Deliver(t.Context(), Delivery{TokenID: "jti", Token: tok}); err != nil {
			t.Fatalf("Deliver: %v", err)
		}
		got, _ := os.ReadFile(path)
		if string(got) != tok {
			t.Fatalf("file holds %q, want %q", got, tok)
		}
		fi, _ := os.Stat(path)
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("mode %v, want 0600", fi.Mode().Perm())
		}
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("directory holds %d entries, want only the token file (no temp files left)", len(entries))
	}
}

func TestFileSinkErrors(t *testing.T) {
	tests := map[string]string{
		"missing directory": filepath.Join(t.TempDir(), "no", "such", "dir", "ci.token"),
		"no path":           "",
	}
	for name, path := range tests {
		t.Run(name, func(t *testing.T) {
			err := (&FileSink{Path: path}).Deliver(t.Context(), Delivery{Token: fakeToken})
			if err == nil {
				t.Fatal("Deliver succeeded")
			}
			if strings.Contains(err.Error(), fakeToken) {
				t.Errorf("error %q holds the token", err)
			}
		})
	}
}

// TestSignMatchesRecipe pins the signature to the value the receiver
// recipes in docs/operations.md (openssl, Python) compute.
func TestSignMatchesRecipe(t *testing.T) {
	const want = "sha256=85128c36295df35834ae8931e27e9d4d3648ad13223c437042412475208b5758"
	if got := Sign([]byte("s3cret"), "1700000000", []byte(`{"token_id":"abc"}`)); got != want {
		t.Fatalf("Sign = %s, want %s", got, want)
	}
}

func TestVerify(t *testing.T) {
	secret := []byte("s3cret")
	body := []byte(`{"token_id":"abc"}`)
	good := Sign(secret, "1700000000", body)
	tests := map[string]struct {
		secret    []byte
		timestamp string
		body      []byte
		header    string
		want      bool
	}{
		"valid":                {secret, "1700000000", body, good, true},
		"wrong secret":         {[]byte("other"), "1700000000", body, good, false},
		"body changed":         {secret, "1700000000", []byte(`{"token_id":"abd"}`), good, false},
		"timestamp changed":    {secret, "1700000001", body, good, false},
		"no prefix":            {secret, "1700000000", body, strings.TrimPrefix(good, "sha256="), false},
		"not hex":              {secret, "1700000000", body, "sha256=zz", false},
		"truncated":            {secret, "1700000000", body, good[:len(good)-2], false},
		"empty secret":         {nil, "1700000000", body, Sign(nil, "1700000000", body), false},
		"upper-case hex works": {secret, "1700000000", body, "sha256=" + strings.ToUpper(strings.TrimPrefix(good, "sha256=")), true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := Verify(tc.secret, tc.timestamp, tc.body, tc.header); got != tc.want {
				t.Errorf("Verify = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestNewWebhookSinkSecret(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := map[string]struct {
		spec       policy.WebhookSpec
		wantSecret string // "" means an error is expected
	}{
		"trailing newline trimmed": {policy.WebhookSpec{URL: "https://r.example/hook", SecretFile: write("nl", "abc\n")}, "abc"},
		"empty file refused":       {policy.WebhookSpec{URL: "https://r.example/hook", SecretFile: write("empty", "")}, ""},
		"blank file refused":       {policy.WebhookSpec{URL: "https://r.example/hook", SecretFile: write("blank", " \n\t\n")}, ""},
		"missing file refused":     {policy.WebhookSpec{URL: "https://r.example/hook", SecretFile: filepath.Join(dir, "nope")}, ""},
		"no secret_file refused":   {policy.WebhookSpec{URL: "https://r.example/hook"}, ""},
		"no url refused":           {policy.WebhookSpec{SecretFile: write("ok", "abc")}, ""},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			w, err := NewWebhookSink(tc.spec)
			if tc.wantSecret == "" {
				if err == nil {
					t.Fatal("accepted")
				}
				return
			}
			if err != nil || string(w.Secret) != tc.wantSecret {
				t.Fatalf("secret %q err %v, want %q", w.Secret, err, tc.wantSecret)
			}
		})
	}
}

func TestBuildSinks(t *testing.T) {
	secret := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secret, []byte("abc"), 0o600); err != nil {
		t.Fatal(err)
	}
	sinks := buildSinks(&policy.DeliverySpec{File: "/run/ci.token", Webhook: &policy.WebhookSpec{URL: "https://r.example/hook", SecretFile: secret}})
	if len(sinks) != 2 || sinks[0].err != nil || sinks[1].err != nil {
		t.Fatalf("buildSinks = %+v; want a file and a webhook sink", sinks)
	}
	if _, ok := sinks[0].sink.(*FileSink); !ok || sinks[0].kind != KindFile {
		t.Errorf("first sink is %s %T", sinks[0].kind, sinks[0].sink)
	}
	if _, ok := sinks[1].sink.(*WebhookSink); !ok || sinks[1].kind != KindWebhook {
		t.Errorf("second sink is %s %T", sinks[1].kind, sinks[1].sink)
	}
	if sinks := buildSinks(nil); len(sinks) != 0 {
		t.Errorf("buildSinks(nil) = %+v", sinks)
	}
	if sinks := buildSinks(&policy.DeliverySpec{Webhook: &policy.WebhookSpec{URL: "https://r.example/hook"}}); len(sinks) != 1 || sinks[0].err == nil || sinks[0].sink != nil {
		t.Error("a webhook without a secret was accepted")
	}
}

func TestWebhookRefusesEmptySecret(t *testing.T) {
	called := false
	srv := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { called = true }))
	defer srv.Close()
	if err := (&WebhookSink{URL: srv.URL}).Deliver(t.Context(), Delivery{Token: fakeToken}); err == nil || called {
		t.Fatalf("unsigned delivery: err %v, receiver called %v", err, called)
	}
}

func TestWebhookHonoursContext(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	defer srv.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	s := &WebhookSink{URL: srv.URL, Secret: []byte("k"), MaxAttempts: 100, Backoff: 20 * time.Millisecond}
	err := s.Deliver(ctx, Delivery{Token: fakeToken})
	if err == nil || time.Since(start) > 5*time.Second {
		t.Fatalf("Deliver = %v after %v; want a prompt error", err, time.Since(start))
	}
	if strings.Contains(err.Error(), fakeToken) {
		t.Errorf("error %q holds the token", err)
	}
}

func TestDeliveryNeverPrintsToken(t *testing.T) {
	d := Delivery{TokenID: "jti-1", Predecessor: "jti-0", Subject: "ci", Class: "ci-deploy", Token: fakeToken}
	var buf bytes.Buffer
	slog.New(slog.NewJSONHandler(&buf, nil)).Info("delivering", "delivery", d)
	for _, s := range []string{buf.String(), fmt.Sprint(d), fmt.Sprintf("%v %+v %s %#v", d, d, d, d)} {
		if strings.Contains(s, fakeToken) {
			t.Errorf("token printed: %s", s)
		}
		if !strings.Contains(s, "jti-1") {
			t.Errorf("token id missing: %s", s)
		}
	}
}

// A credential in the webhook URL (a password, a query key) stays out of
// errors, which reach the log and the audit record.
func TestWebhookErrorsRedactURL(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusBadRequest)
	}))
	defer srv.Close()
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()
	for _, base := range []string{srv.URL, closed.URL} {
		u := strings.Replace(base, "://", "://user:pa55word@", 1) + "/hook?code=qu3rykey#frag"
		s := &WebhookSink{URL: u, Secret: []byte("k"), MaxAttempts: 1}
		err := s.Deliver(t.Context(), Delivery{Token: fakeToken})
		if err == nil {
			t.Fatalf("%s: delivered", base)
		}
		for _, secret := range []string{"pa55word", "qu3rykey", fakeToken} {
			if strings.Contains(err.Error(), secret) {
				t.Errorf("error %q holds %q", err, secret)
			}
		}
		if !strings.Contains(err.Error(), "/hook") {
			t.Errorf("error %q does not name the receiver", err)
		}
	}
	if _, err := NewWebhookSink(policy.WebhookSpec{URL: "https://u:pa55word@r.example/hook?code=qu3rykey"}); err == nil || strings.Contains(err.Error(), "pa55word") || strings.Contains(err.Error(), "qu3rykey") {
		t.Errorf("NewWebhookSink error %v", err)
	}
}
