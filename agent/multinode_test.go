package agent

import (
	"net/http"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/agent/issuer"
	"github.com/tokenwarden/tokenwarden/agent/store"
	"github.com/tokenwarden/tokenwarden/agent/store/etcd/etcdtest"
	"github.com/tokenwarden/tokenwarden/agent/testclock"
	"github.com/tokenwarden/tokenwarden/policy"
)

// TestRevocationReachesEveryNode runs two agents on one real etcd: a token
// issued on node A is accepted on node B, and revoking it on A is enforced
// on B through the store's Watch.
func TestRevocationReachesEveryNode(t *testing.T) {
	e, endpoints, err := etcdtest.Start(t.TempDir())
	if err != nil {
		t.Fatalf("start etcd: %v", err)
	}
	t.Cleanup(e.Close)
	prefix := "/tokenwarden-multinode/"
	// Every node is given the same key-encryption key, as a DaemonSet's
	// pods are through one Secret.
	kek := writeKEK(t, store.KEKSize)
	a := startAgentWith(t, Config{StoreBackend: StoreEtcd, EtcdEndpoints: endpoints, EtcdPrefix: prefix, KEKFile: kek})
	b := startAgentWith(t, Config{StoreBackend: StoreEtcd, EtcdEndpoints: endpoints, EtcdPrefix: prefix, KEKFile: kek})

	token, id := issue(t, a, `{"subject":"svc","class":"service","scopes":["orders:read"]}`)
	req := policy.Request{Token: token, Method: "GET", Host: "orders", Path: "/orders/1"}
	if dec := b.agent.Decider().Decide(req, time.Now()); !dec.Allow {
		t.Fatalf("node B refuses a token issued on node A: %s", dec.Reason)
	}
	if st, out := call(t, "POST", "http://"+a.AdminAddr+"/v1/tokens/"+id+"/revoke", readToken(t, a.AdminTokenFile), `{"reason":"test"}`); st != 201 {
		t.Fatalf("revoke on A: %d %v", st, out)
	}
	start := time.Now()
	for b.agent.Decider().Decide(req, time.Now()).Reason != policy.ReasonRevoked {
		if time.Since(start) > 2*time.Second {
			t.Fatal("revocation made on node A never reached node B")
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("revocation on A enforced on B after %s", time.Since(start))

	// Exactly one node runs the rotation schedule; when it stops, the
	// other takes over.
	leaders := func() (bool, bool) { return a.agent.leadership.Leading(), b.agent.leadership.Leading() }
	deadline := time.Now().Add(5 * time.Second)
	for {
		la, lb := leaders()
		if la != lb {
			break
		}
		if la && lb {
			t.Fatal("both nodes run the rotation schedule")
		}
		if time.Now().After(deadline) {
			t.Fatal("no node runs the rotation schedule")
		}
		time.Sleep(10 * time.Millisecond)
	}
	leader, follower := a, b
	if lb := b.agent.leadership.Leading(); lb {
		leader, follower = b, a
	}
	leader.stop()
	deadline = time.Now().Add(5 * time.Second)
	for !follower.agent.leadership.Leading() {
		if time.Now().After(deadline) {
			t.Fatal("rotation leadership did not move when the leader stopped")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestKeyRotationPublishedAheadOnEveryNode attacks the window a key
// rotation opens in a mesh: a node signing with a key that another node,
// or a verifier holding the JWK Set for its max-age, does not know yet. A
// rotation made on node A is in B's JWK Set at once, neither node signs
// with it within the lead time, and both sign with it after, with no
// store write at the activation; each node accepts the other's tokens.
func TestKeyRotationPublishedAheadOnEveryNode(t *testing.T) {
	e, endpoints, err := etcdtest.Start(t.TempDir())
	if err != nil {
		t.Fatalf("start etcd: %v", err)
	}
	t.Cleanup(e.Close)
	prefix := "/tokenwarden-keyahead/"
	kek := writeKEK(t, store.KEKSize)
	clk := testclock.New(time.Now())
	a := startAgentWith(t, Config{StoreBackend: StoreEtcd, EtcdEndpoints: endpoints, EtcdPrefix: prefix, KEKFile: kek, Now: clk.Now})
	b := startAgentWith(t, Config{StoreBackend: StoreEtcd, EtcdEndpoints: endpoints, EtcdPrefix: prefix, KEKFile: kek, Now: clk.Now})

	body := `{"subject":"svc","class":"service","scopes":["orders:read"]}`
	signedBy := func(r runningAgent) (token, kid string) {
		t.Helper()
		status, out := call(t, "POST", "http://"+r.AdminAddr+"/v1/tokens", readToken(t, r.AdminTokenFile), body)
		if status != http.StatusCreated {
			t.Fatalf("issue: %d %v", status, out)
		}
		return out["token"].(string), out["kid"].(string)
	}
	allowedBy := func(r runningAgent, token string) {
		t.Helper()
		req := policy.Request{Token: token, Method: "GET", Host: "orders", Path: "/orders/1"}
		if dec := r.agent.Decider().Decide(req, clk.Now()); !dec.Allow {
			t.Errorf("node %s refuses a token: %s", r.AdminAddr, dec.Reason)
		}
	}
	inJWKS := func(r runningAgent, kid string) bool {
		set, _ := fetchJWKS(t, r.AdminAddr)
		return len(set.Key(kid)) == 1
	}
	_, old := signedBy(a)

	status, out := call(t, "POST", "http://"+a.AdminAddr+"/v1/keys/rotate", readToken(t, a.AdminTokenFile), "")
	if status != http.StatusCreated || out["state"] != string(store.KeyPending) {
		t.Fatalf("rotate keys on A: %d %v, want a pending key", status, out)
	}
	next := out["id"].(string)
	if !inJWKS(a, next) {
		t.Error("A's JWK Set lacks the key it just rotated in")
	}
	deadline := time.Now().Add(10 * time.Second)
	for !inJWKS(b, next) {
		if time.Now().After(deadline) {
			t.Fatal("B's JWK Set never published the key rotated in on A")
		}
		time.Sleep(10 * time.Millisecond)
	}
	clk.Add(issuer.KeyLead - time.Second)
	for _, r := range []runningAgent{a, b} {
		tok, kid := signedBy(r)
		if kid != old {
			t.Errorf("node %s signs with %s within the lead time, want %s", r.AdminAddr, kid, old)
		}
		allowedBy(a, tok)
		allowedBy(b, tok)
	}
	clk.Add(time.Second)
	for _, r := range []runningAgent{a, b} {
		tok, kid := signedBy(r)
		if kid != next {
			t.Errorf("node %s signs with %s after the lead time, want %s", r.AdminAddr, kid, next)
		}
		allowedBy(a, tok)
		allowedBy(b, tok)
		if !inJWKS(r, old) {
			t.Errorf("node %s dropped the previous key while its tokens live", r.AdminAddr)
		}
	}
}
