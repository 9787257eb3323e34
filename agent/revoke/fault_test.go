package revoke_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tokenwarden/tokenwarden/agent/admin"
	"github.com/tokenwarden/tokenwarden/agent/audit"
	"github.com/tokenwarden/tokenwarden/agent/issuer"
	"github.com/tokenwarden/tokenwarden/agent/replica"
	"github.com/tokenwarden/tokenwarden/agent/revoke"
	"github.com/tokenwarden/tokenwarden/agent/store"
	"github.com/tokenwarden/tokenwarden/agent/store/etcd"
	"github.com/tokenwarden/tokenwarden/agent/store/etcd/etcdtest"
	"github.com/tokenwarden/tokenwarden/policy"
)

// proxy is a TCP link to etcd the test can cut: while it is cut, bytes in
// either direction are held (a partition, or a SIGSTOPped etcd: no RST, no
// FIN, nothing answers), and new connections wait.
type proxy struct {
	l      net.Listener
	target string
	mu     sync.Mutex
	cond   *sync.Cond
	cut    bool
}

func newProxy(t *testing.T, target string) *proxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{l: l, target: strings.TrimPrefix(target, "http://")}
	p.cond = sync.NewCond(&p.mu)
	go p.serve()
	t.Cleanup(func() { p.heal(); l.Close() })
	return p
}

func (p *proxy) endpoint() string { return "http://" + p.l.Addr().String() }

func (p *proxy) setCut(cut bool) {
	p.mu.Lock()
	p.cut = cut
	p.mu.Unlock()
	p.cond.Broadcast()
}

func (p *proxy) heal() { p.setCut(false) }

func (p *proxy) wait() {
	p.mu.Lock()
	for p.cut {
		p.cond.Wait()
	}
	p.mu.Unlock()
}

func (p *proxy) serve() {
	for {
		c, err := p.l.Accept()
		if err != nil {
			return
		}
		go func() {
			p.wait()
			u, err := net.Dial("tcp", p.target)
			if err != nil {
				c.Close()
				return
			}
			go p.pipe(u, c)
			p.pipe(c, u)
		}()
	}
}

func (p *proxy) pipe(dst, src net.Conn) {
	defer dst.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.wait()
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func loadPolicy(t testing.TB) *policy.Policy {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", "deploy", "policy.example.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	p, err := policy.Load("policy.example.yaml", data)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestRevokeWhileEtcdUnreachable is the partition attack on a revocation:
// with the only etcd cut off, a revoke must still be answered within the
// deadline (202, replicating), deny the token on the agent asked at once,
// survive that agent's restart while etcd is still down (journal replay),
// and land in etcd once the link heals.
func TestRevokeWhileEtcdUnreachable(t *testing.T) {
	e, endpoints, err := etcdtest.Start(t.TempDir())
	if err != nil {
		t.Fatalf("start etcd: %v", err)
	}
	defer e.Close()
	link := newProxy(t, endpoints[0])
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err := etcd.Open(ctx, etcd.Config{Endpoints: []string{link.endpoint()}, RequestTimeout: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	pol := loadPolicy(t)
	dataDir := t.TempDir()
	log, err := audit.Open(audit.Config{Dir: filepath.Join(dataDir, "audit")})
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	rep := replica.New(replica.Config{Logger: quiet})
	kek := make([]byte, store.KEKSize)
	rand.Read(kek)
	iss, err := issuer.New(ctx, issuer.Config{
		Store: rep.Writer(st), KEK: kek, Env: "staging", Audit: log, Logger: quiet,
		Policy: func() *policy.Policy { return pol },
	})
	if err != nil {
		t.Fatal(err)
	}
	repCtx, repStop := context.WithCancel(ctx)
	repDone := make(chan struct{})
	go func() { rep.Run(repCtx, st); close(repDone) }()
	defer func() { repStop(); <-repDone }()
	<-rep.Synced()
	journalPath := filepath.Join(dataDir, revoke.JournalFile)
	journal, err := revoke.OpenJournal(journalPath)
	if err != nil {
		t.Fatal(err)
	}
	rev, err := revoke.New(revoke.Config{Store: iss, Enforce: rep, Revocations: rep.Revocations(), Journal: journal, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	decider := policy.NewDecider(policy.DeciderConfig{Env: "staging", Policy: pol, Keys: iss.KeySet(), Revocations: rep.Revocations()})
	api, err := admin.New(admin.Config{
		Issuer: iss, Revoker: rev, Store: rep.Writer(st), Audit: log, AuditDir: filepath.Join(dataDir, "audit"),
		Decider: decider, Revocations: rep.Revocations(), Logger: quiet,
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(api)
	defer srv.Close()
	adminTok, err := iss.Issue(ctx, policy.IssueRequest{Subject: "tokenwarden-admin", Class: "admin", Scopes: []string{admin.AdminScope}}, audit.ActorSystem)
	if err != nil {
		t.Fatal(err)
	}
	victim, err := iss.Issue(ctx, policy.IssueRequest{Subject: "alice", Class: "service"}, adminTok.Record.ID)
	if err != nil {
		t.Fatal(err)
	}
	denied := func(rep *replica.Replica) bool {
		v := policy.Verifier{Keys: decider.Keys(), Policy: pol, Env: "staging"}
		tok, verr := v.Verify(victim.Token, time.Now())
		if verr != nil {
			t.Fatal(verr)
		}
		return rep.Revocations().Revoked(tok, time.Now())
	}

	link.setCut(true)
	body, _ := json.Marshal(admin.RevokeRequest{Reason: "leaked during an etcd outage"})
	req, _ := http.NewRequest(http.MethodPost, srv.URL+"/v1/tokens/"+victim.Record.ID+"/revoke", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+adminTok.Token)
	start := time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	var out admin.RevokeResponse
	json.NewDecoder(resp.Body).Decode(&out)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted || !out.Replicating || out.Revocation.ID == "" {
		t.Fatalf("revoke with etcd cut off: status %d, %+v; want 202 replicating with a rule id", resp.StatusCode, out)
	}
	if took > revoke.DefaultDeadline+time.Second {
		t.Errorf("revoke with etcd cut off answered in %v, want within the %v deadline", took, revoke.DefaultDeadline)
	}
	if !denied(rep) {
		t.Fatal("the agent that answered 202 does not deny the token")
	}

	// A read the store must answer: a clear 503, never a hung connection.
	req, _ = http.NewRequest(http.MethodGet, srv.URL+"/v1/revocations", nil)
	req.Header.Set("Authorization", "Bearer "+adminTok.Token)
	start = time.Now()
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var apiErr struct{ Error string }
	json.NewDecoder(resp.Body).Decode(&apiErr)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || apiErr.Error != "store_unavailable" || resp.Header.Get("Content-Type") != "application/json" {
		t.Errorf("list with etcd cut off: %d %q, want 503 store_unavailable in JSON", resp.StatusCode, apiErr.Error)
	}
	if took := time.Since(start); took > admin.HandlerDeadline+time.Second {
		t.Errorf("list with etcd cut off answered in %v, past the %v handler deadline", took, admin.HandlerDeadline)
	}

	// Restart while etcd is still cut off: the journal brings the rule back.
	journal.Close()
	rep2 := replica.New(replica.Config{Logger: quiet})
	journal2, err := revoke.OpenJournal(journalPath)
	if err != nil {
		t.Fatal(err)
	}
	defer journal2.Close()
	rev2, err := revoke.New(revoke.Config{Store: iss, Enforce: rep2, Revocations: rep2.Revocations(), Journal: journal2, RetryFirst: 100 * time.Millisecond, RetryMax: time.Second, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	if !denied(rep2) || rev2.Pending() != 1 {
		t.Fatalf("restarted with etcd cut off: denied %v, %d pending; want the journaled rule enforced", denied(rep2), rev2.Pending())
	}
	runCtx, runStop := context.WithCancel(ctx)
	runDone := make(chan struct{})
	go func() { rev2.Run(runCtx); close(runDone) }()
	defer func() { runStop(); <-runDone }()

	link.heal()
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: nil})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	deadline := time.Now().Add(60 * time.Second)
	for {
		g, err := cli.Get(ctx, etcd.DefaultPrefix+"revocations/"+out.Revocation.ID)
		if err == nil && len(g.Kvs) == 1 && journal2.Len() == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("rule %s not in etcd (or still journaled: %d) 60s after the link healed", out.Revocation.ID, journal2.Len())
		}
		time.Sleep(50 * time.Millisecond) // a positive wait
	}
}
