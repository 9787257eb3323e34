package agent

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/agent/secretscan"
	"github.com/tokenwarden/tokenwarden/agent/store"
	"github.com/tokenwarden/tokenwarden/agent/store/etcd/etcdtest"
	"github.com/tokenwarden/tokenwarden/policy"
)

// TestGitHubLeakDeniedOnEveryNode acts as GitHub against three agents on
// a real etcd: a signed alert carrying a live token, posted to one node,
// is denied on every node within a second of its arrival; a replay adds
// no rule.
func TestGitHubLeakDeniedOnEveryNode(t *testing.T) {
	gh, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKIXPublicKey(&gh.PublicKey)
	doc, _ := json.Marshal(map[string]any{"public_keys": []map[string]any{{
		"key_identifier": "gh-1", "key": string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})), "is_current": true,
	}}})
	keysFile := filepath.Join(t.TempDir(), "github-keys.json")
	if err := os.WriteFile(keysFile, doc, 0o600); err != nil {
		t.Fatal(err)
	}

	e, endpoints, err := etcdtest.Start(t.TempDir())
	if err != nil {
		t.Fatalf("start etcd: %v", err)
	}
	t.Cleanup(e.Close)
	const prefix = "/tokenwarden-leak/"
	// Every node is given the same key-encryption key, as a DaemonSet's
	// pods are through one Secret.
	kek := writeKEK(t, store.KEKSize)
	first := startAgentWith(t, Config{StoreBackend: StoreEtcd, EtcdEndpoints: endpoints, EtcdPrefix: prefix, KEKFile: kek, SecretScanningKeys: keysFile})
	nodes := []runningAgent{first}
	for range 2 {
		nodes = append(nodes, startAgentWith(t, Config{StoreBackend: StoreEtcd, EtcdEndpoints: endpoints, EtcdPrefix: prefix, KEKFile: kek}))
	}

	token, _ := issue(t, first, `{"subject":"svc","class":"service","scopes":["orders:read"]}`)
	req := policy.Request{Token: token, Method: "GET", Host: "orders", Path: "/orders/1"}
	for n, node := range nodes {
		if d := node.agent.Decider().Decide(req, time.Now()); !d.Allow {
			t.Fatalf("node %d refuses the token before the leak: %s", n, d.Reason)
		}
	}

	body, _ := json.Marshal([]secretscan.Alert{
		{Token: token, Type: "tokenwarden_token", URL: "https://github.com/o/r/blob/abc/.env", Source: "content"},
		{Token: "tw_eyJhbGciOiJFZERTQSJ9.e30.c2ln", Type: "tokenwarden_token", URL: "https://github.com/o/r/blob/abc/x", Source: "content"},
	})
	post := func() []secretscan.Feedback {
		digest := sha256.Sum256(body)
		sig, _ := ecdsa.SignASN1(rand.Reader, gh, digest[:])
		r, _ := http.NewRequest("POST", "http://"+first.AdminAddr+secretscan.Path, strings.NewReader(string(body)))
		r.Header.Set("Content-Type", "application/json")
		r.Header.Set(secretscan.KeyIDHeader, "gh-1")
		r.Header.Set(secretscan.SignatureHeader, base64.StdEncoding.EncodeToString(sig))
		resp, err := http.DefaultClient.Do(r)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var fb []secretscan.Feedback
		if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&fb) != nil || len(fb) != 2 {
			t.Fatalf("alert: %d %v", resp.StatusCode, fb)
		}
		if fb[0].Label != secretscan.TruePositive || fb[1].Label != secretscan.FalsePositive {
			t.Errorf("feedback %+v", fb)
		}
		return fb
	}

	arrived := time.Now()
	post()
	for n, node := range nodes {
		for node.agent.Decider().Decide(req, time.Now()).Reason != policy.ReasonRevoked {
			if time.Since(arrived) > 5*time.Second {
				t.Fatalf("node %d still allows the leaked token 5s after the alert", n)
			}
			time.Sleep(time.Millisecond)
		}
	}
	took := time.Since(arrived)
	t.Logf("leak alert to denial on all %d nodes: %s", len(nodes), took)
	if took > time.Second {
		t.Errorf("leak reached every node after %s, want under 1s", took)
	}

	rules := func() int {
		st, out := call(t, "GET", "http://"+first.AdminAddr+"/v1/revocations", readToken(t, first.AdminTokenFile), "")
		if st != http.StatusOK {
			t.Fatalf("list revocations: %d %v", st, out)
		}
		n := 0
		if rs, ok := out["items"].([]any); ok {
			n = len(rs)
		}
		return n
	}
	before := rules()
	if before == 0 {
		t.Fatal("the leak made no revocation rule")
	}
	post() // GitHub retries and replays: same answer, no new rule
	if after := rules(); after != before {
		t.Errorf("replay added rules: %d -> %d", before, after)
	}
}
