package cli

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tokenwarden/tokenwarden/agent"
	"github.com/tokenwarden/tokenwarden/agent/admin"
)

// adminFlags are the flags every admin API command shares.
type adminFlags struct {
	server    string
	tokenFile string
	context   string
	// An agent serving TLS (serve --tls-cert-file): the CA its certificate
	// chains to, and a client certificate where it requires one.
	serverCA, clientCert, clientKey string
}

// target is the agent a command talks to and how.
type target struct {
	server, tokenFile, caFile string
	clientCert, clientKey     string
}

// resolve picks each setting from, in order: its flag; the context named
// by --context or $TOKENWARDEN_CONTEXT; its environment variable
// (TOKENWARDEN_SERVER, TOKENWARDEN_ADMIN_TOKEN_FILE); the configuration
// file's current-context; the default (the local agent, and the admin
// token in the default data directory: absolute, so the CLI works from any
// directory).
func (f *adminFlags) resolve() (target, error) {
	cfg, err := loadConfig(configPath())
	if err != nil {
		return target{}, err
	}
	ctx, ctxName, err := cfg.selected(f.context)
	if err != nil {
		return target{}, err
	}
	explicit := f.context != "" || os.Getenv(envContext) != ""
	var named, current cliContext
	if ctx != nil && explicit {
		named = *ctx
	} else if ctx != nil {
		current = *ctx
	}
	server, serverFrom := first(f.server, named.Server, os.Getenv(envServer), current.Server, defaultServer)
	tokenFile, tokenFrom := first(f.tokenFile, named.AdminTokenFile, os.Getenv(envAdminTokenFile), current.AdminTokenFile, defaultAdminTokenFile())
	// A context's admin token goes only to that context's server: a
	// leftover TOKENWARDEN_SERVER or a mistyped --server must not receive
	// it. Positions 1 and 3 are the named and the current context.
	if (tokenFrom == 1 || tokenFrom == 3) && serverFrom != tokenFrom {
		return target{}, usageErrorf("the admin token file comes from context %q but the server (%s) does not: pass --admin-token-file too to send that token there, or drop --server / %s", ctxName, server, envServer)
	}
	t := target{
		server:     server,
		tokenFile:  tokenFile,
		caFile:     firstOf(f.serverCA, named.CAFile, os.Getenv(envServerCA), current.CAFile),
		clientCert: firstOf(f.clientCert, os.Getenv(envClientCert)),
		clientKey:  firstOf(f.clientKey, os.Getenv(envClientKey)),
	}
	return t, nil
}

// first is the first of vs that is set, and its position.
func first(vs ...string) (string, int) {
	for i, v := range vs {
		if v != "" {
			return v, i
		}
	}
	return "", -1
}

// firstOf is the first of vs that is set.
func firstOf(vs ...string) string {
	for _, v := range vs {
		if v != "" {
			return v
		}
	}
	return ""
}

// adminClient calls the agent's admin API.
type adminClient struct {
	base      string
	token     string
	tokenFile string
	http      *http.Client
}

// maxAdminTokenFileBytes bounds what is read of the admin token file: a
// token is at most 8 KiB.
const maxAdminTokenFileBytes = 16 << 10

// Bounds on what is read of the admin API's answers.
const (
	maxAnswerBytes      = 64 << 20
	maxErrorAnswerBytes = 1 << 20
)

// client reads the admin token and checks the server address. Warnings
// (a token file others may read, a token about to cross the network in
// clear text) go to warn.
func (f *adminFlags) client(warn io.Writer) (*adminClient, error) {
	t, err := f.resolve()
	if err != nil {
		return nil, err
	}
	base, err := serverURL(t.server)
	if err != nil {
		return nil, err
	}
	tok, err := readAdminToken(t.tokenFile, warn)
	if err != nil {
		return nil, err
	}
	if u, _ := url.Parse(base); u.Scheme == "http" && !isLoopbackHost(u.Hostname()) {
		fmt.Fprintf(warn, "warning: --server %s is plain http:// beyond this host: the admin token crosses the network unencrypted and anyone on the path can act as admin; use https:// (a TLS proxy in front of the agent) or an SSH tunnel to 127.0.0.1\n", base)
	}
	transport, err := t.transport(base)
	if err != nil {
		return nil, err
	}
	return &adminClient{base: base, token: tok, tokenFile: t.tokenFile, http: &http.Client{
		Transport: transport,
		// The admin API never redirects; following one would send the
		// admin token wherever the redirect points.
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			return &redirectError{fmt.Errorf("the admin API at %s answered with a redirect to %s; refusing to follow it with the admin token (is --server the agent's admin address?)", base, req.URL.Redacted())}
		},
	}}, nil
}

// transport is the HTTP transport to base: for an https:// server with a
// CA (--server-ca or the context's ca-file) or a client certificate
// (--client-cert), TLS that trusts that CA and presents that certificate.
func (t target) transport(base string) (http.RoundTripper, error) {
	if t.caFile == "" && t.clientCert == "" && t.clientKey == "" {
		return nil, nil // http.DefaultTransport: https:// trusts the system's CAs
	}
	if !strings.HasPrefix(base, "https://") {
		return nil, usageErrorf("--server-ca (or a context's ca-file), --client-cert and --client-key need an https:// --server")
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if t.caFile != "" {
		b, err := readBounded(t.caFile, 1<<20)
		if err != nil {
			return nil, fmt.Errorf("server CA: %w", err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(b) {
			return nil, usageErrorf("server CA %s holds no PEM certificate", t.caFile)
		}
	}
	if t.clientCert != "" || t.clientKey != "" {
		if t.clientCert == "" || t.clientKey == "" {
			return nil, usageErrorf("--client-cert and --client-key go together")
		}
		cert, err := tls.LoadX509KeyPair(t.clientCert, t.clientKey)
		if err != nil {
			return nil, fmt.Errorf("--client-cert: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = cfg
	return tr, nil
}

// redirectError is a redirect the client refused to follow.
type redirectError struct{ error }

func (e *redirectError) Unwrap() error { return e.error }

// defaultServer is the admin API of an agent started with its defaults.
const defaultServer = "http://" + agent.DefaultAdminAddr

// serverURL normalises --server: a bare host:port means http://host:port.
func serverURL(server string) (string, error) {
	base := strings.TrimRight(strings.TrimSpace(server), "/")
	if base == "" {
		return "", usageErrorf("--server is empty: give the agent's admin address, e.g. %s", defaultServer)
	}
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return "", usageErrorf("--server %q: want http://HOST:PORT or https://HOST:PORT (the agent's admin address, default %s)", server, defaultServer)
	}
	return base, nil
}

func isLoopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") || strings.HasSuffix(strings.ToLower(host), ".localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

// readAdminToken reads the admin token file: a regular file of bounded
// size, holding one token. A file group or others may read is used, with a
// warning.
func readAdminToken(path string, warn io.Writer) (string, error) {
	hint := "is the agent running? it writes <data-dir>/admin.token; pass --admin-token-file (env " + envAdminTokenFile + "), or name it in a context: `tokenwarden config set-context`"
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("read admin token: %w (%s)", err, hint)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("read admin token %s: %w", path, err)
	}
	if !st.Mode().IsRegular() {
		return "", fmt.Errorf("admin token file %s is not a regular file (%s)", path, hint)
	}
	if st.Size() > maxAdminTokenFileBytes {
		return "", fmt.Errorf("admin token file %s is %d bytes; it should hold one token (%s)", path, st.Size(), hint)
	}
	if st.Mode().Perm()&0o077 != 0 {
		fmt.Fprintf(warn, "warning: admin token file %s has mode %04o: others on this host can read it; run `chmod 600 %s`\n", path, st.Mode().Perm(), path)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxAdminTokenFileBytes))
	if err != nil {
		return "", fmt.Errorf("read admin token %s: %w", path, err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("admin token file %s is empty (%s)", path, hint)
	}
	if strings.ContainsAny(tok, " \t\r\n") {
		return "", fmt.Errorf("admin token file %s holds more than one line; it should hold one token (%s)", path, hint)
	}
	return tok, nil
}

// apiError is an error answer of the admin API.
type apiError struct {
	Status  int
	Code    string `json:"error"`
	Message string `json:"message"`
	hint    string
}

func (e *apiError) Error() string {
	msg := e.Message
	if msg == "" {
		msg = fmt.Sprintf("admin API answered %d %s", e.Status, e.Code)
		if e.Code == "" {
			msg = fmt.Sprintf("admin API answered %d %s", e.Status, http.StatusText(e.Status))
		}
	}
	if e.hint != "" {
		msg += " (" + e.hint + ")"
	}
	return msg
}

// do sends a JSON request and decodes a JSON answer into out.
func (c *adminClient) do(ctx context.Context, method, path string, in, out any) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	resp, err := c.send(ctx, method, path, in)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxAnswerBytes)).Decode(out); err != nil {
		return fmt.Errorf("decode the admin API's answer (is %s a tokenwarden agent's admin address?): %w", c.base, err)
	}
	return nil
}

func (c *adminClient) send(ctx context.Context, method, path string, in any) (*http.Response, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		var op interface{ Timeout() bool }
		if errors.As(err, &op) && op.Timeout() {
			return nil, fmt.Errorf("admin API at %s did not answer in time", c.base)
		}
		var re *redirectError
		if errors.As(err, &re) {
			return nil, re
		}
		return nil, fmt.Errorf("cannot reach the agent's admin API at %s: %w (start it with `make run` or pass --server)", c.base, err)
	}
	if resp.StatusCode >= 300 {
		defer resp.Body.Close()
		e := &apiError{Status: resp.StatusCode}
		json.NewDecoder(io.LimitReader(resp.Body, maxErrorAnswerBytes)).Decode(e)
		switch resp.StatusCode {
		case http.StatusUnauthorized:
			e.hint = "the admin token in " + c.tokenFile + " was refused; the agent rewrites <data-dir>/admin.token when it lapses: point --admin-token-file at the current one"
		case http.StatusForbidden:
			if e.Code == "insufficient_scope" {
				e.hint = "the token in " + c.tokenFile + " is not an admin token; use <data-dir>/admin.token"
			}
		case http.StatusNotFound:
			if e.Code == "" {
				e.hint = "is " + c.base + " a tokenwarden agent's admin address?"
			}
		}
		return nil, e
	}
	return resp, nil
}

// maxListItems bounds what one listing gathers across pages.
const maxListItems = 1 << 20

// listPages reads a list endpoint page after page ({"items": [...],
// "next_page_token": "..."}) until the last page or until max items (0: no
// cap), asking for at most admin.MaxPageLimit at a time.
func listPages[T any](ctx context.Context, c *adminClient, path string, q url.Values, max int) ([][]T, error) {
	q = maps.Clone(q)
	if q == nil {
		q = url.Values{}
	}
	var pages [][]T
	n := 0
	for {
		limit := admin.MaxPageLimit
		if max > 0 {
			limit = min(limit, max-n)
		}
		q.Set("limit", strconv.Itoa(limit))
		var page admin.Page[T]
		if err := c.do(ctx, "GET", path+"?"+q.Encode(), nil, &page); err != nil {
			return nil, err
		}
		pages = append(pages, page.Items)
		n += len(page.Items)
		if page.NextPageToken == "" || (max > 0 && n >= max) {
			return pages, nil
		}
		if len(page.Items) == 0 || n > maxListItems || page.NextPageToken == q.Get("page_token") {
			return nil, fmt.Errorf("the admin API at %s keeps answering pages (%d items so far); narrow the query or pass --limit", c.base, n)
		}
		q.Set("page_token", page.NextPageToken)
	}
}

// listAll is every item of listPages, in the API's order.
func listAll[T any](ctx context.Context, c *adminClient, path string, q url.Values, max int) ([]T, error) {
	pages, err := listPages[T](ctx, c, path, q, max)
	return slices.Concat(pages...), err
}
