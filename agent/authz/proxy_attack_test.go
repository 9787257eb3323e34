package authz

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/policy"
)

// attackPolicy has a service with a public and a protected part, and
// another service that is public throughout: a request judged under the
// wrong service, or under a path other than the one served, is public.
const attackPolicy = `version: 1
issuer: tokenwarden.test
environments: { prod: { max_ttl: 24h } }
classes:
  service: { scopes: [files:read], default_ttl: 1h, max_ttl: 24h, environments: [prod] }
services:
  files:
    hosts: [files, files.default.svc.cluster.local]
    routes:
      - { path: "/public/**", public: true }
      - { methods: [GET, HEAD], path: "/secret/**", scopes: [files:read] }
  other:
    hosts: [other]
    routes:
      - { path: "/**", public: true }
`

// secretContent is the protected file's content: no response without a
// valid token may carry it.
const secretContent = "SECRET-FLAG-7f3a"

// fileRoot writes the application's files: public/index.txt and the
// protected secret/flag.txt.
func fileRoot(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	for name, content := range map[string]string{
		"public/index.txt": "public file\n",
		"secret/flag.txt":  secretContent + "\n",
	} {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// nginx's workers may run as another user than the test.
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatal(err)
	}
	return root
}

// serveFiles serves root with Go's http.FileServer, a typical Go
// application, and returns its address.
func serveFiles(t *testing.T, root string) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.FileServer(http.Dir(root)), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(lis)
	t.Cleanup(func() { srv.Close() })
	return lis.Addr().String()
}

// rawExchange sends request bytes as they are (a client of its own making:
// fragments, NUL, duplicated headers) and returns the status and body, or
// status 0 when the proxy closed the connection without an answer.
func rawExchange(t *testing.T, addr, request string) (int, string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.WriteString(c, request); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return 0, ""
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// attack is one request sent by a client without a token.
type attack struct {
	target string // request target, as sent
	head   string // header lines after the request line, each ending \r\n
	proto  string // "HTTP/1.1" unless set
}

func (a attack) request(authorization string) string {
	proto := a.proto
	if proto == "" {
		proto = "HTTP/1.1"
	}
	head := a.head
	if head == "" {
		head = "Host: files\r\n"
	}
	if authorization != "" {
		head += "Authorization: " + authorization + "\r\n"
	}
	return "GET " + a.target + " " + proto + "\r\n" + head + "Connection: close\r\n\r\n"
}

// hostAttacks name another service, no service or a spelling of a host
// that is not the protected service's. Behind a proxy that let the
// request's host choose the service, each was judged under "other", whose
// every path is public.
var hostAttacks = map[string]attack{
	"other service's host":               {target: "/secret/flag.txt", head: "Host: other\r\n"},
	"other service's host, port":         {target: "/secret/flag.txt", head: "Host: other:80\r\n"},
	"other service's host, upper case":   {target: "/secret/flag.txt", head: "Host: OTHER\r\n"},
	"other service's host, trailing dot": {target: "/secret/flag.txt", head: "Host: other.\r\n"},
	"host absent, HTTP/1.0":              {target: "/secret/flag.txt", head: "X-No-Host: 1\r\n", proto: "HTTP/1.0"},
	"host absent, HTTP/1.1":              {target: "/secret/flag.txt", head: "X-No-Host: 1\r\n"},
	"host empty":                         {target: "/secret/flag.txt", head: "Host: \r\n"},
	"host duplicated, other first":       {target: "/secret/flag.txt", head: "Host: other\r\nHost: files\r\n"},
	"host duplicated, other second":      {target: "/secret/flag.txt", head: "Host: files\r\nHost: other\r\n"},
	"host list":                          {target: "/secret/flag.txt", head: "Host: files, other\r\n"},
	"host with userinfo":                 {target: "/secret/flag.txt", head: "Host: files@other\r\n"},
	"absolute form, other authority":     {target: "http://other/secret/flag.txt", head: "Host: files\r\n"},
	"absolute form, other with port":     {target: "http://other:80/secret/flag.txt", head: "Host: files\r\n"},
	"absolute form, no Host":             {target: "http://other/secret/flag.txt", head: "X-No-Host: 1\r\n"},
	"forged X-Original-Host":             {target: "/secret/flag.txt", head: "Host: files\r\nX-Original-Host: other\r\n"},
	"forged X-Forwarded-Host":            {target: "/secret/flag.txt", head: "Host: files\r\nX-Forwarded-Host: other\r\n"},
	"forged X-Forwarded-Uri":             {target: "/secret/flag.txt", head: "Host: files\r\nX-Forwarded-Uri: /public/index.txt\r\nX-Original-Uri: /public/index.txt\r\n"},
}

// pathAttacks spell the protected path so that a reader that differs from
// the application's could judge it as the public one (docs/authz.md, the
// table of path forms).
var pathAttacks = map[string]attack{
	"fragment then dot dot":          {target: "/public/#/../secret/flag.txt"},
	"fragment then dot dot, twice":   {target: "/public/x#/../../secret/flag.txt"},
	"encoded fragment":               {target: "/public/%23/../secret/flag.txt"},
	"fragment in the query":          {target: "/public/index.txt?x#/../../secret/flag.txt"},
	"dot dot":                        {target: "/public/../secret/flag.txt"},
	"dot then dot dot":               {target: "/public/./../secret/flag.txt"},
	"encoded dot dot":                {target: "/public/%2e%2e/secret/flag.txt"},
	"half-encoded dot dot":           {target: "/public/.%2E/secret/flag.txt"},
	"double-encoded dot dot":         {target: "/public/%252e%252e/secret/flag.txt"},
	"overlong UTF-8 dot dot":         {target: "/public/%c0%ae%c0%ae/secret/flag.txt"},
	"encoded slash":                  {target: "/public/..%2fsecret/flag.txt"},
	"encoded slash in the name":      {target: "/secret%2Fflag.txt"},
	"backslash":                      {target: "/public/..\\secret/flag.txt"},
	"encoded backslash":              {target: "/public/..%5csecret/flag.txt"},
	"parameter on dot dot":           {target: "/public/..;/secret/flag.txt"},
	"parameter on a segment":         {target: "/public;x/../secret/flag.txt"},
	"encoded semicolon":              {target: "/public/..%3b/secret/flag.txt"},
	"empty segment":                  {target: "/public//../secret/flag.txt"},
	"leading double slash":           {target: "//secret/flag.txt"},
	"encoded NUL":                    {target: "/public/%00/../secret/flag.txt"},
	"raw NUL":                        {target: "/public/\x00/../secret/flag.txt"},
	"not UTF-8":                      {target: "/public/%ff/../secret/flag.txt"},
	"raw byte not UTF-8":             {target: "/public/\xff/../secret/flag.txt"},
	"encoded question mark":          {target: "/public/%3f/../secret/flag.txt"},
	"query hides dot dot":            {target: "/public/?/../secret/flag.txt"},
	"encoded unreserved":             {target: "/%73ecret/flag.txt"},
	"encoded unreserved dot":         {target: "/secret/flag%2etxt"},
	"raw tab":                        {target: "/public/\t/../secret/flag.txt"},
	"upper case":                     {target: "/SECRET/flag.txt"},
	"long path":                      {target: "/public/" + strings.Repeat("a/", 5000) + strings.Repeat("../", 5001) + "secret/flag.txt"},
	"asterisk form":                  {target: "*"},
	"no leading slash":               {target: "secret/flag.txt"},
	"protected path, no token":       {target: "/secret/flag.txt"},
	"protected path, trailing slash": {target: "/secret/flag.txt/"},
}

// proxyFront is a real proxy in front of the HTTP mode and a real
// file-serving application.
type proxyFront struct {
	name string
	addr string
}

// TestProxyAttacks sends every host and path attack through real proxies
// configured as docs/authz.md says, to real file servers, and requires
// that the protected file is never served without a valid token, while a
// valid token gets it and the public file needs none.
func TestProxyAttacks(t *testing.T) {
	f := newFixtureFor(t, []byte(attackPolicy))
	tok, _ := f.mint(t, policy.IssueRequest{Subject: "reader", Scopes: []string{"files:read"}}, time.Now())
	authz := serveHTTP(t, f.server(t, Config{Now: time.Now}))[len("http://"):]
	root := fileRoot(t)
	goFiles := serveFiles(t, root)

	fronts := []proxyFront{
		{"nginx to Go file server", startNginx(t, nginxSite{Authz: authz, App: goFiles, Service: "files", ServerName: "files files.default.svc.cluster.local"})},
		{"nginx to nginx static root", startNginx(t, nginxSite{Authz: authz, Service: "files", ServerName: "files files.default.svc.cluster.local", StaticRoot: root})},
	}
	if caddy := caddyPath(t); caddy != "" {
		fronts = append(fronts, proxyFront{"caddy to Go file server", startCaddy(t, caddy, caddySite{Authz: authz, App: goFiles, Service: "files"})})
	}
	for _, front := range fronts {
		t.Run(front.name, func(t *testing.T) {
			controls := map[string]struct {
				attack
				authorization, want string
			}{
				"public file, no token":         {attack{target: "/public/index.txt"}, "", "public file"},
				"secret, valid token":           {attack{target: "/secret/flag.txt"}, "Bearer " + tok, secretContent},
				"secret, valid token, own host": {attack{target: "/secret/flag.txt", head: "Host: Files.Default.Svc.Cluster.Local:8080\r\n"}, "Bearer " + tok, secretContent},
			}
			for name, c := range controls {
				t.Run("control/"+name, func(t *testing.T) {
					status, body := rawExchange(t, front.addr, c.request(c.authorization))
					if status != 200 || !strings.Contains(body, c.want) {
						t.Fatalf("status %d body %q, want 200 with %q", status, body, c.want)
					}
				})
			}
			for kind, attacks := range map[string]map[string]attack{"host": hostAttacks, "path": pathAttacks} {
				for name, a := range attacks {
					t.Run(kind+"/"+name, func(t *testing.T) {
						status, body := rawExchange(t, front.addr, a.request(""))
						t.Logf("%s: status %d", front.name, status)
						if strings.Contains(body, secretContent) {
							t.Fatalf("the protected file was served without a token (status %d)", status)
						}
						if kind == "host" && status == 200 {
							t.Errorf("status 200 (body %q), want a refusal", body)
						}
					})
				}
			}
		})
	}
}
