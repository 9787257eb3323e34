package authz

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"text/template"
	"time"

	"github.com/tokenwarden/tokenwarden/policy"
)

// nginxConf protects every location with auth_request to the HTTP mode's
// endpoint for one service and proxies allowed requests to a real upstream
// (a `return` would skip auth). It is the snippet docs/authz.md documents,
// plus test-local paths. With StaticRoot, it also serves that directory on
// StaticListen, as a file-serving application behind the front server.
var nginxConf = template.Must(template.New("nginx.conf").Parse(`{{if .Root}}user root;{{end}}
daemon off;
master_process on;
worker_processes 1;
pid {{.Dir}}/nginx.pid;
error_log {{.Dir}}/error.log info;
events { worker_connections 128; }
http {
    access_log off;
    client_body_temp_path {{.Dir}}/client_body;
    proxy_temp_path {{.Dir}}/proxy;
    fastcgi_temp_path {{.Dir}}/fastcgi;
    uwsgi_temp_path {{.Dir}}/uwsgi;
    scgi_temp_path {{.Dir}}/scgi;

    upstream tokenwarden_authz { server {{.Authz}}; keepalive 16; }
    upstream app { server {{.App}}; keepalive 16; }

    # Authorization goes upstream unless tokenwarden lists it for removal.
    map $tw_remove $tw_authorization {
        "~*(^|[ ,])authorization([ ,]|$)" "";
        default $http_authorization;
    }

    server {
        listen {{.Listen}};
        server_name {{.ServerName}};

        location / {
            auth_request /_tokenwarden;
            auth_request_set $tw_subject  $upstream_http_x_tokenwarden_subject;
            auth_request_set $tw_token_id $upstream_http_x_tokenwarden_token_id;
            auth_request_set $tw_scopes   $upstream_http_x_tokenwarden_scopes;
            auth_request_set $tw_tenant   $upstream_http_x_tokenwarden_tenant;
            auth_request_set $tw_remove   $upstream_http_x_envoy_auth_headers_to_remove;
            # Set even when empty: an empty value drops a client's forgery.
            proxy_set_header X-Tokenwarden-Subject  $tw_subject;
            proxy_set_header X-Tokenwarden-Token-Id $tw_token_id;
            proxy_set_header X-Tokenwarden-Scopes   $tw_scopes;
            proxy_set_header X-Tokenwarden-Tenant   $tw_tenant;
            proxy_set_header Authorization $tw_authorization;
            proxy_set_header Host $host;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://app;
        }

        location = /_tokenwarden {
            internal;
            proxy_pass http://tokenwarden_authz/nginx/{{.Service}};
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Original-Method $request_method;
            proxy_set_header X-Original-URI $request_uri;
            proxy_set_header X-Original-Host $host;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
{{if .StaticRoot}}
    server {
        listen {{.StaticListen}};
        root {{.StaticRoot}};
    }
{{end}}
}
`))

// nginxPath finds nginx, skipping the test without it unless peers are
// required (requirePeers).
func nginxPath(t *testing.T) string {
	t.Helper()
	for _, p := range []string{"nginx", "/usr/sbin/nginx"} {
		if path, err := exec.LookPath(p); err == nil {
			return path
		}
	}
	if requirePeers() {
		t.Fatal("nginx not found (apt-get install -y --no-install-recommends nginx); required in CI")
	}
	t.Skip("nginx not found (apt-get install -y --no-install-recommends nginx); skipping the end-to-end test")
	return ""
}

// app is the upstream behind nginx: it records the headers of every
// request that reaches it.
type app struct {
	mu   sync.Mutex
	seen []http.Header
}

func (a *app) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	a.seen = append(a.seen, r.Header.Clone())
	a.mu.Unlock()
	io.WriteString(w, "app\n")
}

func (a *app) count() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.seen)
}

func (a *app) last() http.Header {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.seen[len(a.seen)-1]
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// nginxSite is what the front server protects: the service the policy
// names, the server_name that serves it, and the application.
type nginxSite struct {
	Authz      string // host:port of the HTTP mode
	App        string // host:port of the application; "" for the static root
	Service    string
	ServerName string
	StaticRoot string // a directory nginx serves as the application when App is ""
}

// startNginx runs nginx in front of the HTTP mode and the application, and
// returns its address. It stops with the test.
func startNginx(t *testing.T, site nginxSite) string {
	t.Helper()
	bin := nginxPath(t)
	dir := t.TempDir()
	listen := freePort(t)
	params := map[string]any{
		"Root": os.Geteuid() == 0, "Dir": dir, "Authz": site.Authz, "App": site.App, "Listen": listen,
		"Service": site.Service, "ServerName": site.ServerName,
	}
	if site.App == "" {
		static := freePort(t)
		params["App"], params["StaticListen"], params["StaticRoot"] = static, static, site.StaticRoot
	}
	var conf bytes.Buffer
	if err := nginxConf.Execute(&conf, params); err != nil {
		t.Fatal(err)
	}
	confPath := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(confPath, conf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd := exec.Command(bin, "-p", dir, "-c", confPath)
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGQUIT) // graceful shutdown
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			errLog, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			t.Logf("nginx output:\n%s\nerror.log:\n%s", stderr.String(), errLog)
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case err := <-exited:
			errLog, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			t.Fatalf("nginx exited: %v\n%s\n%s", err, stderr.String(), errLog)
		default:
		}
		if c, err := net.Dial("tcp", listen); err == nil {
			c.Close()
			return listen
		}
		if time.Now().After(deadline) {
			t.Fatal("nginx did not start listening within 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func serveApp(t *testing.T) (*app, string) {
	t.Helper()
	a := &app{}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: a, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(lis)
	t.Cleanup(func() { srv.Close() })
	return a, lis.Addr().String()
}

func TestNginxAuthRequest(t *testing.T) {
	nginxPath(t)
	f := newFixture(t)
	now := time.Now()
	token := func(req policy.IssueRequest, at time.Time) string {
		tok, _ := f.mint(t, req, at)
		return tok
	}
	reader := token(policy.IssueRequest{Subject: "svc-reader", Scopes: []string{"orders:read"}, Tenant: "acme"}, now)
	revoked, rc := f.mint(t, policy.IssueRequest{Subject: "leaker", Scopes: []string{"orders:read"}}, now)
	f.revoke(rc.ID, now.Add(-time.Second))
	expired := token(policy.IssueRequest{Subject: "old", Scopes: []string{"orders:read"}}, now.Add(-3*time.Hour))
	staging := token(policy.IssueRequest{Subject: "stager", Env: "staging", Scopes: []string{"orders:read"}}, now)

	for _, strip := range []bool{false, true} {
		t.Run(fmt.Sprintf("strip=%v", strip), func(t *testing.T) {
			upstream, upstreamAddr := serveApp(t)
			base := serveHTTP(t, f.server(t, Config{Now: time.Now, StripAuthorization: strip}))
			nginx := "http://" + startNginx(t, nginxSite{
				Authz: base[len("http://"):], App: upstreamAddr, Service: "orders", ServerName: "orders orders.default.svc.cluster.local",
			})

			tests := map[string]struct {
				method, path, token string
				forged              map[string]string
				wantStatus          int
				wantSubject         string // at the upstream, when allowed
			}{
				"valid token":        {method: "GET", path: "/orders/1?x=1", token: reader, wantStatus: 200, wantSubject: "svc-reader"},
				"forged identity":    {method: "GET", path: "/orders/1", token: reader, forged: map[string]string{"X-Tokenwarden-Subject": "admin", "X-Tokenwarden-Tenant": "evil"}, wantStatus: 200, wantSubject: "svc-reader"},
				"public route":       {method: "GET", path: "/healthz", forged: map[string]string{"X-Tokenwarden-Subject": "admin"}, wantStatus: 200},
				"missing token":      {method: "GET", path: "/orders/1", wantStatus: 401},
				"expired token":      {method: "GET", path: "/orders/1", token: expired, wantStatus: 401},
				"revoked token":      {method: "GET", path: "/orders/1", token: revoked, wantStatus: 401},
				"wrong scope":        {method: "POST", path: "/orders/1", token: reader, wantStatus: 403},
				"wrong environment":  {method: "GET", path: "/orders/1", token: staging, wantStatus: 403},
				"no matching route":  {method: "GET", path: "/admin", token: reader, wantStatus: 403},
				"dot segments":       {method: "GET", path: "/orders/../admin", token: reader, wantStatus: 403},
				"malformed garbage":  {method: "GET", path: "/orders/1", token: "tw_x", wantStatus: 401},
				"valid token, again": {method: "GET", path: "/orders/2", token: reader, wantStatus: 200, wantSubject: "svc-reader"},
			}
			for name, tc := range tests {
				t.Run(name, func(t *testing.T) {
					req, err := http.NewRequest(tc.method, nginx+tc.path, nil)
					if err != nil {
						t.Fatal(err)
					}
					req.Host = "orders"
					if tc.token != "" {
						req.Header.Set("Authorization", "Bearer "+tc.token)
					}
					for k, v := range tc.forged {
						req.Header.Set(k, v)
					}
					before := upstream.count()
					resp, err := http.DefaultClient.Do(req)
					if err != nil {
						t.Fatal(err)
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != tc.wantStatus {
						t.Fatalf("status %d, want %d", resp.StatusCode, tc.wantStatus)
					}
					if tc.wantStatus != 200 {
						if n := upstream.count(); n != before {
							t.Fatalf("a denied request reached the upstream (%d -> %d)", before, n)
						}
						if tc.wantStatus == 401 && resp.Header.Get("WWW-Authenticate") == "" {
							t.Error("401 without WWW-Authenticate")
						}
						return
					}
					if n := upstream.count(); n != before+1 {
						t.Fatalf("upstream saw %d requests, want %d", n, before+1)
					}
					seen := upstream.last()
					if got := seen.Get("X-Tokenwarden-Subject"); got != tc.wantSubject {
						t.Errorf("upstream subject = %q, want %q", got, tc.wantSubject)
					}
					if got := seen.Get("X-Tokenwarden-Tenant"); tc.wantSubject != "" && got != "acme" || tc.wantSubject == "" && got != "" {
						t.Errorf("upstream tenant = %q", got)
					}
					if tc.wantSubject != "" && len(seen.Get("X-Tokenwarden-Token-Id")) != 26 {
						t.Errorf("upstream token id = %q", seen.Get("X-Tokenwarden-Token-Id"))
					}
					if got := seen.Get("Authorization"); tc.token != "" && (got == "") != strip {
						t.Errorf("upstream Authorization present = %v, want %v", got != "", !strip)
					}
				})
			}
		})
	}
}
