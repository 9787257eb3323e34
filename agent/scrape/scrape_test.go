package scrape

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

const (
	secret  = "0123456789abcdef0123456789abcdef"
	rotated = "fedcba9876543210fedcba9876543210"
)

type clock struct{ ns atomic.Int64 }

func (c *clock) now() time.Time      { return time.Unix(0, c.ns.Load()) }
func (c *clock) add(d time.Duration) { c.ns.Add(int64(d)) }
func newClock() *clock {
	c := &clock{}
	c.ns.Store(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	return c
}
func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
func writeToken(t *testing.T, path, s string) {
	t.Helper()
	// As kubelet and cert-manager do: a new file renamed over the old.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// serve runs the guarded handler on a real listener.
func serve(t *testing.T, b *Bearer) string {
	t.Helper()
	srv := httptest.NewServer(b.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "# metrics\n")
	})))
	t.Cleanup(srv.Close)
	return srv.URL
}

func get(t *testing.T, url string, auth ...string) (int, string, http.Header) {
	t.Helper()
	req, err := http.NewRequest("GET", url+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range auth {
		req.Header.Add("Authorization", a)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), resp.Header
}

// TestBearerRefusesWhatIsNotTheToken attacks the guard with what a scraper
// on the node's network could send: nothing, another scheme, a prefix or
// an extension of the token, the token twice, the token in a second header.
func TestBearerRefusesWhatIsNotTheToken(t *testing.T) {
	path := filepath.Join(t.TempDir(), "token")
	writeToken(t, path, secret+"\n")
	b, err := NewBearer(path, quiet(), nil)
	if err != nil {
		t.Fatal(err)
	}
	url := serve(t, b)
	tests := map[string]struct {
		auth []string
		want int
	}{
		"no header":               {nil, 401},
		"basic scheme":            {[]string{"Basic " + secret}, 401},
		"token without scheme":    {[]string{secret}, 401},
		"empty bearer":            {[]string{"Bearer "}, 401},
		"prefix of the token":     {[]string{"Bearer " + secret[:len(secret)-1]}, 401},
		"token and more":          {[]string{"Bearer " + secret + "0"}, 401},
		"token split by a space":  {[]string{"Bearer " + secret[:5] + " " + secret[5:]}, 401},
		"two headers, one right":  {[]string{"Bearer wrong", "Bearer " + secret}, 401},
		"the token twice":         {[]string{"Bearer " + secret, "Bearer " + secret}, 401},
		"oversized":               {[]string{"Bearer " + strings.Repeat("a", MaxTokenBytes+1)}, 401},
		"control: the token":      {[]string{"Bearer " + secret}, 200},
		"control: scheme in case": {[]string{"bearer " + secret}, 200},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			status, body, h := get(t, url, tc.auth...)
			if status != tc.want {
				t.Fatalf("status %d, want %d (body %s)", status, tc.want, body)
			}
			if status != 401 {
				return
			}
			var e struct{ Error, Message string }
			if err := json.Unmarshal([]byte(body), &e); err != nil || e.Error != "unauthorized" {
				t.Errorf("body %q (%v): want JSON with error unauthorized", body, err)
			}
			if h.Get("Content-Type") != "application/json" || !strings.HasPrefix(h.Get("WWW-Authenticate"), "Bearer ") {
				t.Errorf("headers %v", h)
			}
			if strings.Contains(body, "metrics\n#") || strings.Contains(body, secret) {
				t.Errorf("a refused request got %q", body)
			}
		})
	}
}

// TestBearerReloads rotates the token file under a serving guard: the new
// token works and the old one stops within CheckEvery, with no restart; a
// file that disappears (a Secret mid-rotation) keeps the token in force
// rather than opening or closing the endpoint.
func TestBearerReloads(t *testing.T) {
	path := filepath.Join(t.TempDir(), "token")
	writeToken(t, path, secret)
	c := newClock()
	b, err := NewBearer(path, quiet(), c.now)
	if err != nil {
		t.Fatal(err)
	}
	url := serve(t, b)
	if st, _, _ := get(t, url, "Bearer "+secret); st != 200 {
		t.Fatalf("before rotation: %d", st)
	}
	writeToken(t, path, rotated)
	c.add(CheckEvery)
	if st, _, _ := get(t, url, "Bearer "+rotated); st != 200 {
		t.Fatalf("rotated token: %d, want 200", st)
	}
	if st, _, _ := get(t, url, "Bearer "+secret); st != 401 {
		t.Fatalf("old token after rotation: %d, want 401", st)
	}

	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	c.add(CheckEvery)
	if st, _, _ := get(t, url, "Bearer "+rotated); st != 200 {
		t.Fatalf("token in force with the file gone: %d, want 200", st)
	}
	if st, _, _ := get(t, url); st != 401 {
		t.Fatalf("no token with the file gone: %d, want 401", st)
	}
	// A file rewritten with something too short to be a token is refused:
	// the token in force stays.
	writeToken(t, path, "short")
	c.add(CheckEvery)
	if st, _, _ := get(t, url, "Bearer short"); st != 401 {
		t.Fatalf("a short token was taken: %d", st)
	}
	if st, _, _ := get(t, url, "Bearer "+rotated); st != 200 {
		t.Fatalf("token in force after a bad rewrite: %d, want 200", st)
	}
}

func TestNewBearerRefusesBadFiles(t *testing.T) {
	dir := t.TempDir()
	tests := map[string]string{
		"empty":        "",
		"white space":  " \n\t",
		"short":        "0123456789abcde",
		"two tokens":   secret + " " + rotated,
		"oversized":    strings.Repeat("a", MaxTokenBytes+1),
		"not a secret": "",
	}
	for name, content := range tests {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(name, " ", "_"))
			if name != "not a secret" {
				writeToken(t, path, content)
			} else if err := os.Mkdir(path, 0o700); err != nil {
				t.Fatal(err)
			}
			if _, err := NewBearer(path, quiet(), nil); err == nil {
				t.Fatal("accepted")
			}
		})
	}
	if _, err := NewBearer(filepath.Join(dir, "missing"), quiet(), nil); err == nil {
		t.Fatal("a missing file was accepted")
	}
}

// FuzzBearerAllowed feeds arbitrary Authorization values to the guard: it
// lets in exactly "Bearer <the token>" (the scheme in any case) and never
// panics.
func FuzzBearerAllowed(f *testing.F) {
	path := filepath.Join(f.TempDir(), "token")
	if err := os.WriteFile(path, []byte(secret), 0o600); err != nil {
		f.Fatal(err)
	}
	b, err := NewBearer(path, quiet(), newClock().now)
	if err != nil {
		f.Fatal(err)
	}
	for _, seed := range []string{"", "Bearer " + secret, "bearer " + secret, "BEARER " + secret, "Bearer  " + secret,
		"Bearer " + secret + " ", "Basic " + secret, secret, "Bearer", "Bearer ", "Bearer\t" + secret, "Bearer " + rotated} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, value string) {
		r := httptest.NewRequest("GET", "/metrics", nil)
		r.Header["Authorization"] = []string{value}
		scheme, token, _ := strings.Cut(value, " ")
		want := strings.EqualFold(scheme, "Bearer") && token == secret
		if got := b.Allowed(r); got != want {
			t.Fatalf("Allowed(%q) = %v, want %v", value, got, want)
		}
	})
}
