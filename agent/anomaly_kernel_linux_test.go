package agent

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/agent/audit"
)

// kernelMaxRPS is max_rps of the policy TestKernelSide's agent runs (the
// fast anomaly policy, 500 ms windows); the hidden-token attack runs at 3x.
const kernelMaxRPS = 20

// testAnomalyCountsTokensHiddenFromTheKernel is the attack on the kernel
// side's blind spots: a token placed where the kernel's parser does not
// look (after 130 header lines, after 8.5 KiB of headers, or split across
// two TCP segments) runs at 3x max_rps through a sidecar that asks ext_authz
// and forwards the request over a veth with the real BPF programs attached.
// The kernel sees the requests but never hashes the token; the anomaly
// detector must still revoke it (it counts ext_authz checks too and takes
// the larger count).
func testAnomalyCountsTokensHiddenFromTheKernel(t *testing.T, r runningAgent, upstream string) {
	const maxRPS, attackRPS = kernelMaxRPS, 3 * kernelMaxRPS
	authzAddr := r.Listeners["authz-http"]
	checks := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}}

	filler130 := func() string {
		var b strings.Builder
		for i := range 130 {
			fmt.Fprintf(&b, "X-Filler-%03d: v\r\n", i)
		}
		return b.String()
	}()
	pad := "X-Pad: " + strings.Repeat("a", 8704) + "\r\n" // 8.5 KiB
	head := "GET /orders/42 HTTP/1.1\r\nHost: orders\r\n"
	attacks := map[string]func(token string) []string{
		"after 130 header lines": func(token string) []string {
			return []string{head + filler130 + "Authorization: Bearer " + token + "\r\n\r\n"}
		},
		"after 8.5 KiB of headers": func(token string) []string {
			return []string{head + pad + "Authorization: Bearer " + token + "\r\n\r\n"}
		},
		"split across segments": func(token string) []string {
			return []string{head + "Authorization: Bearer " + token[:24], token[24:] + "\r\n\r\n"}
		},
	}
	for name, segments := range attacks {
		t.Run(name, func(t *testing.T) {
			token, id := issue(t, r, `{"subject":"hider","class":"service","scopes":["orders:read"]}`)
			// What a sidecar does per request: ask ext_authz (Envoy's HTTP
			// filter sends the Authorization header), then forward the
			// request as the client wrote it.
			sidecar := func() (int, error) {
				st, err := check(checks, authzAddr, token)
				if err != nil || st != http.StatusOK {
					return st, err
				}
				return http.StatusOK, forward(upstream, segments(token))
			}
			statsBefore, err := r.agent.kernel.Stats()
			if err != nil {
				t.Fatal(err)
			}
			if st, err := sidecar(); err != nil || st != http.StatusOK {
				t.Fatalf("first request: %d %v", st, err)
			}

			// 60 rps from 4 paced workers until the check is refused.
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			var wg sync.WaitGroup
			var mu sync.Mutex
			denied, forwarded := 0, 0
			var fault error
			const workers = 4
			for w := range workers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					tick := time.NewTicker(workers * time.Second / attackRPS)
					defer tick.Stop()
					time.Sleep(time.Duration(w) * time.Second / attackRPS)
					for {
						select {
						case <-ctx.Done():
							return
						case <-tick.C:
						}
						st, err := sidecar()
						mu.Lock()
						switch {
						case err != nil && ctx.Err() == nil:
							fault = err
							cancel()
						case st == http.StatusUnauthorized:
							denied++
							cancel()
						case st == http.StatusOK:
							forwarded++
						}
						mu.Unlock()
					}
				}()
			}
			wg.Wait()
			if fault != nil {
				t.Fatalf("sidecar: %v", fault)
			}
			if denied == 0 {
				t.Fatalf("a token at %d rps (max_rps %d) hidden from the kernel was never revoked (%d requests forwarded)", attackRPS, maxRPS, forwarded)
			}
			statsAfter, err := r.agent.kernel.Stats()
			if err != nil {
				t.Fatal(err)
			}
			// The premise: the kernel saw the requests but hashed no
			// token (nothing else talks over this veth).
			if got := statsAfter.Requests - statsBefore.Requests; got < uint64(forwarded) {
				t.Errorf("kernel saw %d requests, want at least the %d forwarded", got, forwarded)
			}
			if got := statsAfter.Tokens - statsBefore.Tokens; got != 0 {
				t.Errorf("kernel hashed %d tokens: the attack did not hide the token", got)
			}
			var sawAnomaly bool
			for deadline := time.Now().Add(5 * time.Second); !sawAnomaly && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
				recs, err := audit.Tail(r.agent.cfg.DataDir+"/audit", 5000, audit.Filter{TokenID: id, Action: audit.ActionAnomaly})
				if err != nil {
					t.Fatal(err)
				}
				for _, rec := range recs {
					sawAnomaly = sawAnomaly || rec.Reason == "anomaly:max_rps"
				}
			}
			if !sawAnomaly {
				t.Error("no anomaly:max_rps audit record for the hidden token")
			}
			t.Logf("revoked after %d forwarded requests", forwarded)
		})
	}
}

// forward sends a request to addr as the given segments, one write each
// with a pause between (TCP_NODELAY is Go's default, so each write leaves
// as its own segment), and reads the response.
func forward(addr string, segments []string) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	for i, s := range segments {
		if i > 0 {
			time.Sleep(5 * time.Millisecond)
		}
		if _, err := io.WriteString(c, s); err != nil {
			return err
		}
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("upstream answered %d", resp.StatusCode)
	}
	return nil
}
