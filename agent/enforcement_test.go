package agent

import (
	"context"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/agent/audit"
)

// issue mints a token through the admin API of a running agent.
func issue(t *testing.T, r runningAgent, body string) (token, id string) {
	t.Helper()
	status, out := call(t, "POST", "http://"+r.AdminAddr+"/v1/tokens", readToken(t, r.AdminTokenFile), body)
	if status != http.StatusCreated {
		t.Fatalf("issue: %d %v", status, out)
	}
	return out["token"].(string), out["id"].(string)
}

// check asks the agent's ext_authz HTTP mode, as Envoy's HTTP filter does,
// and returns the status.
func check(client *http.Client, authzAddr, token string) (int, error) {
	req, _ := http.NewRequest("GET", "http://"+authzAddr+"/envoy/orders/orders/42", nil)
	req.Host = "orders"
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// TestRevocationIsImmediate revokes a token through the admin API while
// checks run, and asserts no check started after the revoke returned is
// allowed: the store's Watch reaches the revocation set before the API
// answers... or at the latest before the next check.
func TestRevocationIsImmediate(t *testing.T) {
	r := startAgentWith(t, Config{AuthzHTTPAddr: "127.0.0.1:0"})
	authzAddr := r.Listeners["authz-http"]
	token, id := issue(t, r, `{"subject":"svc","class":"service","scopes":["orders:read"]}`)
	client := &http.Client{}
	if st, err := check(client, authzAddr, token); err != nil || st != 200 {
		t.Fatalf("before revoke: %d %v", st, err)
	}
	var revokedAt atomic.Int64              // unix nanos when the revoke call returned
	var wrong, done, doneAfter atomic.Int64 // checks answered, and those started after the revoke
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				started := time.Now().UnixNano()
				st, err := check(client, authzAddr, token)
				if err != nil {
					continue
				}
				done.Add(1)
				if ra := revokedAt.Load(); ra != 0 && started > ra {
					doneAfter.Add(1)
					if st == 200 {
						wrong.Add(1)
					}
				}
			}
		}()
	}
	// Events, not sleeps: enough checks before the revoke, and enough
	// started after it, for the assertion to mean something.
	waitChecks := func(n *atomic.Int64, want int64) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for n.Load() < want {
			if time.Now().After(deadline) {
				t.Fatalf("only %d checks answered, want %d", n.Load(), want)
			}
			time.Sleep(time.Millisecond)
		}
	}
	waitChecks(&done, 50)
	if st, out := call(t, "POST", "http://"+r.AdminAddr+"/v1/tokens/"+id+"/revoke", readToken(t, r.AdminTokenFile), `{"reason":"test"}`); st != 201 {
		t.Fatalf("revoke: %d %v", st, out)
	}
	revokedAt.Store(time.Now().UnixNano())
	waitChecks(&doneAfter, 200)
	cancel()
	wg.Wait()
	if n := wrong.Load(); n > 0 {
		t.Fatalf("%d checks started after the revoke call returned were allowed", n)
	}
}

// TestAnomalyRevokesABurst drives real load through ext_authz: steady traffic
// for a while, then a burst far above max_rps. The first denied request must
// come within two anomaly windows of the burst's start.
func TestAnomalyRevokesABurst(t *testing.T) {
	if testing.Short() {
		t.Skip("drives load for seconds")
	}
	r := startAgentWith(t, Config{PolicyPath: "testdata/fast-anomaly.yaml", AuthzHTTPAddr: "127.0.0.1:0"})
	const window = 500 * time.Millisecond // testdata/fast-anomaly.yaml
	authzAddr := r.Listeners["authz-http"]
	token, id := issue(t, r, `{"subject":"batch","class":"service","scopes":["orders:read"]}`)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}

	// Steady: 20 rps for 4 windows, well under max_rps 100.
	for i := 0; i < 40; i++ {
		if st, err := check(client, authzAddr, token); err != nil || st != 200 {
			t.Fatalf("steady request %d: %d %v", i, st, err)
		}
		time.Sleep(50 * time.Millisecond)
	}

	start := time.Now()
	var firstDeny atomic.Int64
	ctx, cancel := context.WithTimeout(context.Background(), 5*window)
	defer cancel()
	var wg sync.WaitGroup
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil && firstDeny.Load() == 0 {
				st, err := check(client, authzAddr, token)
				if err == nil && st == http.StatusUnauthorized {
					firstDeny.CompareAndSwap(0, int64(time.Since(start)))
					cancel()
				}
			}
		}()
	}
	wg.Wait()
	took := time.Duration(firstDeny.Load())
	if took == 0 {
		t.Fatalf("burst never denied within %s", 5*window)
	}
	t.Logf("burst start to first denial: %s (%.2f windows)", took, float64(took)/float64(window))
	if took > 2*window {
		t.Errorf("first denial after %s, want within 2 windows (%s)", took, 2*window)
	}
	// The rule is enforced as soon as it is stored; its audit record is
	// appended right after, and the evidence goes through the use queue:
	// give both a moment.
	var sawAnomaly, sawRevoke bool
	for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		recs, err := audit.Tail(r.agent.cfg.DataDir+"/audit", 5000, audit.Filter{TokenID: id})
		if err != nil {
			t.Fatal(err)
		}
		for _, rec := range recs {
			sawAnomaly = sawAnomaly || rec.Action == audit.ActionAnomaly && strings.HasPrefix(rec.Reason, "anomaly:max_rps")
			sawRevoke = sawRevoke || rec.Action == audit.ActionTokenRevoke && rec.Reason == "anomaly:max_rps"
		}
		if sawAnomaly && sawRevoke || time.Now().After(deadline) {
			break
		}
	}
	if !sawAnomaly || !sawRevoke {
		t.Errorf("audit lacks the anomaly evidence (%v) or the revocation (%v)", sawAnomaly, sawRevoke)
	}
}

// TestSteadyNoisyTrafficIsNeverRevoked sends noisy but steady traffic for
// many windows: no anomaly may fire.
func TestSteadyNoisyTrafficIsNeverRevoked(t *testing.T) {
	if testing.Short() {
		t.Skip("drives load for seconds")
	}
	r := startAgentWith(t, Config{PolicyPath: "testdata/fast-anomaly.yaml", AuthzHTTPAddr: "127.0.0.1:0"})
	authzAddr := r.Listeners["authz-http"]
	token, id := issue(t, r, `{"subject":"steady","class":"service","scopes":["orders:read"]}`)
	client := &http.Client{}
	rng := rand.New(rand.NewPCG(1, 2))
	deadline := time.Now().Add(8 * time.Second) // 16 windows
	n := 0
	for time.Now().Before(deadline) {
		// 40 rps on average, each gap between 10 ms and 40 ms.
		time.Sleep(time.Duration(10+rng.IntN(31)) * time.Millisecond)
		st, err := check(client, authzAddr, token)
		if err != nil {
			t.Fatal(err)
		}
		if st != 200 {
			t.Fatalf("request %d of steady traffic denied (%d)", n, st)
		}
		n++
	}
	recs, _ := audit.Tail(r.agent.cfg.DataDir+"/audit", 100, audit.Filter{TokenID: id, Action: audit.ActionAnomaly})
	if len(recs) > 0 {
		t.Fatalf("anomaly fired on steady traffic: %+v", recs[0])
	}
	t.Logf("%d requests over 16 windows, none flagged", n)
}
