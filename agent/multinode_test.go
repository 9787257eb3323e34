package agent

import (
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/agent/store"
	"github.com/tokenwarden/tokenwarden/agent/store/etcd/etcdtest"
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
