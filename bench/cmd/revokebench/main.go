// Command revokebench measures revoke -> denied on every agent of a mesh:
// a real etcd process (Debian's etcd-server), N agent processes (the
// tokenwarden binary, built from this module unless -bin names one) sharing
// it, revocations alternating by token id and by subject, each made on one
// agent (in turn) through the admin API, while every agent is asked about
// the token over ext_authz HTTP mode until it denies. It prints a markdown
// table (p50, p99, max per kind) for each number of token records stored
// beforehand (the records by-subject revocation used to list).
package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/tokenwarden/tokenwarden/agent/store"
	etcdstore "github.com/tokenwarden/tokenwarden/agent/store/etcd"
	"github.com/tokenwarden/tokenwarden/agent/store/etcd/etcdtest"
)

func main() {
	agents := flag.Int("agents", 5, "agents sharing the store")
	revocations := flag.Int("revocations", 200, "revocations per round (half by id, half by subject)")
	recordsFlag := flag.String("records", "0,20000", "token records stored before each round (comma-separated rounds)")
	policyPath := flag.String("policy", "deploy/policy.example.yaml", "policy file")
	binFlag := flag.String("bin", "", "tokenwarden binary (default: go build . into a temporary directory; run from the repository root)")
	flag.Parse()
	var rounds []int
	for f := range strings.SplitSeq(*recordsFlag, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil {
			log.Fatalf("-records: %v", err)
		}
		rounds = append(rounds, n)
	}
	dir, err := os.MkdirTemp("", "revokebench-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	bin := *binFlag
	if bin == "" {
		bin = filepath.Join(dir, "tokenwarden")
		if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
			log.Fatalf("go build: %v\n%s", err, out)
		}
	}
	e, err := etcdtest.StartProcess(dir)
	if err != nil {
		log.Fatal(err)
	}
	defer e.Kill()
	kek := filepath.Join(dir, "kek")
	if err := os.WriteFile(kek, []byte(strings.Repeat(rand.Text(), 2)[:store.KEKSize]), 0o600); err != nil {
		log.Fatal(err)
	}

	fmt.Printf("revoke -> denied on every one of %d agents, real etcd, %d revocations per round\n\n", *agents, *revocations)
	fmt.Println("| records stored | kind | revocations | p50 | p99 | max |")
	fmt.Println("|---:|---|---:|---:|---:|---:|")
	for i, n := range rounds {
		b := &bench{bin: bin, dir: filepath.Join(dir, fmt.Sprint(i)), endpoint: e.Endpoint, prefix: fmt.Sprintf("/revokebench/%d/", i), kek: kek, policy: *policyPath}
		res, err := b.run(*agents, *revocations, n)
		if err != nil {
			log.Fatal(err)
		}
		for _, kind := range []string{"id", "subject"} {
			d := res[kind]
			slices.Sort(d)
			fmt.Printf("| %d | by %s | %d | %s | %s | %s |\n", n, kind, len(d), ms(pct(d, 50)), ms(pct(d, 99)), ms(d[len(d)-1]))
		}
	}
}

type bench struct {
	bin, dir, endpoint, prefix, kek, policy string
	nodes                                   []node
	client                                  *http.Client
}

// node is one agent process.
type node struct {
	admin, authz, tokenFile string
}

func (b *bench) run(agents, revocations, records int) (map[string][]time.Duration, error) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := b.storeRecords(ctx, records); err != nil {
		return nil, err
	}
	for i := range agents {
		n, stop, err := b.start(filepath.Join(b.dir, fmt.Sprint(i)))
		if err != nil {
			return nil, err
		}
		defer stop()
		b.nodes = append(b.nodes, n)
	}
	b.client = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}

	res := map[string][]time.Duration{}
	for i := range revocations {
		kind := []string{"id", "subject"}[i%2]
		subject := fmt.Sprintf("svc-bench-%d", i)
		token, id, err := b.issue(b.nodes[i%len(b.nodes)], subject)
		if err != nil {
			return nil, err
		}
		for _, n := range b.nodes { // allowed everywhere first (and cached)
			if st, err := b.check(n, token); err != nil || st != http.StatusOK {
				return nil, fmt.Errorf("fresh token on %s: %d %v", n.admin, st, err)
			}
		}
		on := b.nodes[(i+1)%len(b.nodes)]
		path, body := "/v1/tokens/"+id+"/revoke", `{"reason":"bench"}`
		if kind == "subject" {
			path, body = "/v1/revocations", fmt.Sprintf(`{"kind":"subject","target":%q,"reason":"bench"}`, subject)
		}
		start := time.Now()
		var done sync.WaitGroup
		var mu sync.Mutex
		var last time.Duration
		for _, n := range b.nodes {
			done.Go(func() {
				for {
					if st, err := b.check(n, token); err == nil && st == http.StatusUnauthorized {
						break
					}
					time.Sleep(500 * time.Microsecond)
				}
				mu.Lock()
				last = max(last, time.Since(start))
				mu.Unlock()
			})
		}
		if st, err := b.admin(on, path, body, nil); err != nil || (st != http.StatusCreated && st != http.StatusAccepted) {
			return nil, fmt.Errorf("revoke by %s: %d %v", kind, st, err)
		}
		done.Wait()
		res[kind] = append(res[kind], last)
	}
	return res, nil
}

// start runs one agent process and waits until it is ready.
func (b *bench) start(dir string) (node, func(), error) {
	n := node{admin: freeAddr(), authz: freeAddr(), tokenFile: filepath.Join(dir, "admin.token")}
	cmd := exec.Command(b.bin, "serve", "--data-dir", dir, "--policy", b.policy, "--env", "dev",
		"--store", "etcd", "--etcd-endpoints", b.endpoint, "--etcd-prefix", b.prefix, "--kek-file", b.kek,
		"--admin", n.admin, "--metrics", "127.0.0.1:0", "--authz-grpc", "", "--authz-http", n.authz, "--xds", "",
		"--bpf", "off", "--log-level", "error")
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	if err := cmd.Start(); err != nil {
		return n, nil, err
	}
	stop := func() { cmd.Process.Kill(); cmd.Wait() }
	client := &http.Client{Timeout: time.Second}
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		resp, err := client.Get("http://" + n.admin + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return n, stop, nil
			}
		}
	}
	stop()
	return n, nil, fmt.Errorf("agent in %s not ready after 60s", dir)
}

func freeAddr() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// storeRecords writes n token records straight into the store, as weeks of
// issuing would leave them (kept 7 days past expiry).
func (b *bench) storeRecords(ctx context.Context, n int) error {
	if n == 0 {
		return nil
	}
	st, err := etcdstore.Open(ctx, etcdstore.Config{Endpoints: []string{b.endpoint}, Prefix: b.prefix})
	if err != nil {
		return err
	}
	defer st.Close()
	now := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for w := range 32 {
		wg.Go(func() {
			for i := w; i < n; i += 32 {
				id := fmt.Sprintf("rec%07d", i)
				rec := store.TokenRecord{
					ID: id, Subject: fmt.Sprintf("svc-old-%d", i%500), Class: "service", Env: "dev", Scopes: []string{"orders:read"},
					KeyID: "old", IssuedAt: now.Add(-time.Hour), ExpiresAt: now.Add(-time.Minute),
					LeakHash: sha256.Sum256([]byte(id)), WireHash: uint64(i + 1), Status: store.TokenActive, Actor: "system",
				}
				if err := st.PutToken(ctx, rec); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	return <-errs
}

func (b *bench) issue(n node, subject string) (token, id string, err error) {
	var out struct {
		Token string `json:"token"`
		ID    string `json:"id"`
	}
	st, err := b.admin(n, "/v1/tokens", fmt.Sprintf(`{"subject":%q,"class":"service","scopes":["orders:read"]}`, subject), &out)
	if err == nil && st != http.StatusCreated {
		err = fmt.Errorf("issue: %d", st)
	}
	return out.Token, out.ID, err
}

func (b *bench) admin(n node, path, body string, out any) (int, error) {
	tok, err := os.ReadFile(n.tokenFile)
	if err != nil {
		return 0, err
	}
	req, _ := http.NewRequest("POST", "http://"+n.admin+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
	resp, err := b.client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if out != nil {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			return resp.StatusCode, err
		}
	}
	io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, nil
}

// check asks node n's ext_authz HTTP mode about token, as Envoy would.
func (b *bench) check(n node, token string) (int, error) {
	req, _ := http.NewRequest("GET", "http://"+n.authz+"/envoy/orders/orders/42", nil)
	req.Host = "orders"
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := b.client.Do(req)
	if err != nil {
		return 0, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}

func pct(d []time.Duration, p int) time.Duration { return d[(len(d)-1)*p/100] }

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) }
