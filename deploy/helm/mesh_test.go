package helm_test

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/tokenwarden/tokenwarden/agent/authz"
	"github.com/tokenwarden/tokenwarden/agent/store/etcd/etcdtest"
)

// meshAgent is one tokenwarden process configured as the chart's
// DaemonSet configures a pod: the rendered container's args and env, its
// volume mounts under root, its pod IP a loopback address of its own.
type meshAgent struct {
	ip, root string
	env      []string // the container's environment, resolved
	cmd      *exec.Cmd
	done     chan struct{}
}

func (a *meshAgent) admin() string { return "http://" + a.ip + ":9003" }

// podFromChart renders the chart against the test's etcd and returns the
// DaemonSet's pod and the rendered ConfigMaps by name.
func podFromChart(t *testing.T, etcdEndpoint string, sets ...string) (corev1.PodSpec, map[string]*corev1.ConfigMap) {
	objs := render(t, append([]string{"etcd.deploy=false", "etcd.endpoints={" + etcdEndpoint + "}"}, sets...)...)
	pod := one[appsv1.DaemonSet](t, objs).Spec.Template.Spec
	cms := map[string]*corev1.ConfigMap{}
	for _, cm := range find[corev1.ConfigMap](t, objs) {
		cms[cm.Name] = cm
	}
	return pod, cms
}

var varRef = regexp.MustCompile(`\$\(([A-Z_][A-Z0-9_]*)\)`)

// startMeshAgent starts the agent binary as the kubelet would start the
// rendered container: volumes filled from the rendered ConfigMap and the
// shared Secret, mount paths moved under root, env resolved in order.
func startMeshAgent(t *testing.T, bin, ip string, pod corev1.PodSpec, cms map[string]*corev1.ConfigMap, secrets map[string]map[string][]byte) *meshAgent {
	t.Helper()
	c := pod.Containers[0]
	root := t.TempDir()
	volumes := map[string]corev1.Volume{}
	for _, v := range pod.Volumes {
		volumes[v.Name] = v
	}
	var mounts []string
	for _, m := range c.VolumeMounts {
		dir := filepath.Join(root, m.MountPath)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		mounts = append(mounts, m.MountPath)
		v := volumes[m.Name]
		switch {
		case v.ConfigMap != nil:
			cm := cms[v.ConfigMap.Name]
			for _, it := range v.ConfigMap.Items {
				if err := os.WriteFile(filepath.Join(dir, it.Path), []byte(cm.Data[it.Key]), 0o444); err != nil {
					t.Fatal(err)
				}
			}
		case v.Secret != nil:
			data, ok := secrets[v.Secret.SecretName]
			if !ok {
				t.Fatalf("the pod needs Secret %s", v.Secret.SecretName)
			}
			for _, it := range v.Secret.Items {
				if err := os.WriteFile(filepath.Join(dir, it.Path), data[it.Key], os.FileMode(*v.Secret.DefaultMode)); err != nil {
					t.Fatal(err)
				}
			}
		case v.EmptyDir != nil:
		default:
			t.Fatalf("volume %s: kind not handled by the mesh test", m.Name)
		}
	}
	// Longest mount first, so a path under a nested mount is moved once.
	slices.SortFunc(mounts, func(a, b string) int { return len(b) - len(a) })
	resolved := map[string]string{}
	var env []string
	for _, e := range c.Env {
		val := e.Value
		if e.ValueFrom != nil {
			switch ref := e.ValueFrom.FieldRef; {
			case ref != nil && ref.FieldPath == "status.podIP":
				val = ip
			case ref != nil && ref.FieldPath == "spec.nodeName":
				val = "node-" + ip
			default:
				t.Fatalf("env %s: source not handled by the mesh test", e.Name)
			}
		}
		val = varRef.ReplaceAllStringFunc(val, func(ref string) string { return resolved[ref[2:len(ref)-1]] })
		// Each pod has a loopback of its own; here each agent's
		// listeners on it take the agent's own loopback address.
		if strings.HasPrefix(e.Name, "TOKENWARDEN_") && !strings.HasPrefix(e.Name, "TOKENWARDEN_ETCD") {
			val = strings.ReplaceAll(val, "127.0.0.1:", ip+":")
		}
		for _, m := range mounts {
			if strings.HasPrefix(val, m+"/") || val == m {
				val = filepath.Join(root, val)
				break
			}
		}
		resolved[e.Name] = val
		env = append(env, e.Name+"="+val)
	}
	a := &meshAgent{ip: ip, root: root, env: env, done: make(chan struct{})}
	a.cmd = exec.Command(bin, c.Args...)
	a.cmd.Env = env
	logf, err := os.Create(filepath.Join(root, "agent.log"))
	if err != nil {
		t.Fatal(err)
	}
	a.cmd.Stdout, a.cmd.Stderr = logf, logf
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { a.cmd.Wait(); logf.Close(); close(a.done) }()
	t.Cleanup(func() {
		a.kill()
		if t.Failed() {
			log, _ := os.ReadFile(filepath.Join(root, "agent.log"))
			if len(log) > 4000 {
				log = log[len(log)-4000:]
			}
			t.Logf("agent %s log (end):\n%s", ip, log)
		}
	})
	// Ready when the rendered readiness probe says so, run as the kubelet
	// runs it: in the container's environment.
	probe := c.ReadinessProbe.Exec.Command
	if len(probe) == 0 || probe[0] != "/tokenwarden" {
		t.Fatalf("readiness probe %v: not the agent's binary", probe)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		p := exec.Command(bin, probe[1:]...)
		p.Env = env
		if p.Run() == nil {
			return a
		}
		select {
		case <-a.done:
			log, _ := os.ReadFile(filepath.Join(root, "agent.log"))
			t.Fatalf("agent %s exited before ready:\n%s", ip, log)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(root, "agent.log"))
			t.Fatalf("agent %s not ready within 60s:\n%s", ip, log)
		}
	}
}

// kill ends the process at once (SIGKILL): nothing is flushed or closed.
func (a *meshAgent) kill() {
	if a.cmd.Process != nil {
		a.cmd.Process.Signal(syscall.SIGKILL)
		<-a.done
	}
}

func (a *meshAgent) adminToken(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(a.root, "/var/lib/tokenwarden/admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func adminCall(t *testing.T, method, url, token, body string, want int) map[string]any {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	json.NewDecoder(resp.Body).Decode(&out)
	if resp.StatusCode != want {
		t.Fatalf("%s %s: %d %v, want %d", method, url, resp.StatusCode, out, want)
	}
	return out
}

// issue issues a service token through a and returns it and its id.
func (a *meshAgent) issue(t *testing.T, admin string) (token, id string) {
	out := adminCall(t, "POST", a.admin()+"/v1/tokens", admin, `{"subject":"svc","class":"service","scopes":["orders:read"]}`, http.StatusCreated)
	return out["token"].(string), out["id"].(string)
}

var checkClient = &http.Client{Timeout: 5 * time.Second}

// allowed asks a's ext_authz (HTTP mode, as nginx auth_request does)
// whether token may GET /orders/1 on orders.
func (a *meshAgent) allowed(t *testing.T, token string) bool {
	req, _ := http.NewRequest("GET", "http://"+a.ip+":9002"+authz.PathNginx+"/orders", nil)
	req.Header.Set("X-Original-Method", "GET")
	req.Header.Set("X-Original-URI", "/orders/1")
	req.Header.Set("X-Original-Host", "orders")
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := checkClient.Do(req)
	if err != nil {
		t.Errorf("check on %s: %v", a.ip, err)
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// waitAllowed waits (generously: a positive wait) until a's answer for
// token is want.
func (a *meshAgent) waitAllowed(t *testing.T, token string, want bool, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for a.allowed(t, token) != want {
		if time.Since(start) > within {
			t.Fatalf("agent %s: allowed=%v after %v, want %v", a.ip, !want, within, want)
		}
	}
	return time.Since(start)
}

func buildAgent(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "tokenwarden")
	cmd := exec.Command("go", "build", "-o", bin, "github.com/tokenwarden/tokenwarden")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// TestMeshInABox runs a real etcd and three agents configured from the
// chart's rendered DaemonSet, and checks that they act as one system.
func TestMeshInABox(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the agent and runs four of them")
	}
	bin := buildAgent(t)
	e, endpoints, err := etcdtest.Start(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	pod, cms := podFromChart(t, endpoints[0])
	kek := make([]byte, 32)
	rand.Read(kek)
	secrets := map[string]map[string][]byte{"tokenwarden-kek": {"kek": kek}}

	agents := []*meshAgent{
		startMeshAgent(t, bin, "127.0.0.2", pod, cms, secrets),
		startMeshAgent(t, bin, "127.0.0.3", pod, cms, secrets),
		startMeshAgent(t, bin, "127.0.0.4", pod, cms, secrets),
	}
	admins := make([]string, len(agents))
	for i, a := range agents {
		admins[i] = a.adminToken(t)
	}

	// A token issued through one is allowed by all three, at once.
	token, _ := agents[0].issue(t, admins[0])
	for _, a := range agents {
		if !a.allowed(t, token) {
			t.Fatalf("agent %s refuses a token issued through %s", a.ip, agents[0].ip)
		}
	}
	// One node's admin token works on every node's admin API.
	adminCall(t, "GET", agents[2].admin()+"/v1/tokens", admins[0], "", http.StatusOK)

	// Revocations made on any agent are denied by all: measured.
	const n = 100
	toks, lat := propagation(t, agents, admins, n)
	p50, p99 := lat[len(lat)/2], lat[len(lat)*99/100]
	t.Logf("revocation made on one agent, denied by all three: p50 %v, p99 %v, max %v over %d revocations", p50, p99, lat[len(lat)-1], n)
	printPropagation(len(agents), lat)
	// The median is held to the 100 ms target; the tail is reported, not
	// asserted: on a loaded 2-core CI machine a scheduling stall of the
	// four processes lands in it (each revocation must still arrive within
	// the 10 s bound above).
	if p50 > 100*time.Millisecond {
		t.Errorf("p50 %v: a revocation must be enforced everywhere within 100 ms", p50)
	}

	// A key rotation on one agent is honoured by all: a token signed with
	// the new key is allowed everywhere, and the old key's tokens still are.
	// (The emergency rotation, so that the new key signs at once; the
	// published-ahead rotation is tested in package agent with a clock.)
	adminCall(t, "POST", agents[1].admin()+"/v1/keys/rotate?now=true", admins[1], "", http.StatusCreated)
	fresh, freshID := agents[1].issue(t, admins[1])
	for _, a := range agents {
		a.waitAllowed(t, fresh, true, 10*time.Second)
		if !a.allowed(t, token) {
			t.Errorf("agent %s refuses a token of the previous key after rotation", a.ip)
		}
	}

	// The CLI in the pod (kubectl exec ds/tokenwarden -- /tokenwarden ...,
	// docs/kubernetes.md) finds the agent and its admin token through the
	// container's environment alone.
	cli := exec.Command(bin, "token", "issue", "--subject", "ci", "--class", "service", "--scope", "orders:read")
	cli.Env = agents[2].env
	out, err := cli.Output()
	if err != nil {
		t.Fatalf("tokenwarden token issue in the pod's environment: %v", err)
	}
	if viaCLI := strings.TrimSpace(string(out)); !agents[0].allowed(t, viaCLI) {
		t.Error("a token issued with the CLI through one agent is refused by another")
	}

	// An agent started after all this is a full member on its first check.
	late := startMeshAgent(t, bin, "127.0.0.5", pod, cms, secrets)
	if !late.allowed(t, fresh) || !late.allowed(t, token) {
		t.Error("the late agent refuses live tokens on its first check")
	}
	for _, tk := range toks {
		if late.allowed(t, tk.token) {
			t.Fatalf("the late agent allows revoked token %s", tk.id)
		}
	}

	// Killing one agent loses nothing: the others (and it, restarted on
	// its node) still know every token and every revocation.
	agents[0].kill()
	survivors := append(agents[1:], late)
	for _, a := range survivors {
		for _, tk := range toks {
			if a.allowed(t, tk.token) {
				t.Fatalf("after a kill, %s allows revoked token %s", a.ip, tk.id)
			}
		}
		if !a.allowed(t, fresh) || !a.allowed(t, token) {
			t.Fatalf("after a kill, %s refuses a live token", a.ip)
		}
	}
	list := adminCall(t, "GET", agents[2].admin()+"/v1/tokens?limit=1000", admins[2], "", http.StatusOK) // one page of all
	b, _ := json.Marshal(list)
	for _, id := range append([]string{freshID}, toks[0].id, toks[n-1].id) {
		if !strings.Contains(string(b), id) {
			t.Errorf("token %s is missing from the list after a kill", id)
		}
	}
}

// issued is a token issued through the mesh, and its id.
type issued struct{ token, id string }

// propagation issues n tokens round-robin through agents, checks each is
// allowed everywhere, revokes each through the next agent, and measures
// from the revocation's answer until every agent denies it (polling its
// HTTP ext_authz). It returns the tokens, all revoked, and the times,
// sorted.
func propagation(t *testing.T, agents []*meshAgent, admins []string, n int) ([]issued, []time.Duration) {
	t.Helper()
	toks := make([]issued, n)
	for i := range toks {
		toks[i].token, toks[i].id = agents[i%len(agents)].issue(t, admins[i%len(agents)])
	}
	lat := make([]time.Duration, 0, n)
	for i, tk := range toks {
		for _, a := range agents {
			if !a.allowed(t, tk.token) {
				t.Fatalf("token %s refused by %s before its revocation", tk.id, a.ip)
			}
		}
		j := (i + 1) % len(agents)
		by := agents[j]
		adminCall(t, "POST", by.admin()+"/v1/tokens/"+tk.id+"/revoke", admins[j], `{"reason":"mesh test"}`, http.StatusCreated)
		made := time.Now()
		var wg sync.WaitGroup
		var mu sync.Mutex
		worst := time.Duration(0)
		for _, a := range agents {
			wg.Add(1)
			go func() {
				defer wg.Done()
				deadline := made.Add(10 * time.Second)
				for a.allowed(t, tk.token) {
					if time.Now().After(deadline) {
						t.Errorf("revocation of %s made on %s not enforced by %s within 10s", tk.id, by.ip, a.ip)
						return
					}
				}
				mu.Lock()
				worst = max(worst, time.Since(made))
				mu.Unlock()
			}()
		}
		wg.Wait()
		lat = append(lat, worst)
	}
	slices.Sort(lat)
	return toks, lat
}

// printPropagation prints the line make bench-report reads
// (bench/cmd/benchreport's meshLine).
func printPropagation(agents int, lat []time.Duration) {
	p50, p99 := lat[len(lat)/2], lat[len(lat)*99/100]
	r := func(d time.Duration) time.Duration { return d.Round(100 * time.Microsecond) }
	fmt.Printf("mesh: revocation propagation to all %d agents over %d revocations: p50 %v p99 %v max %v\n", agents, len(lat), r(p50), r(p99), r(lat[len(lat)-1]))
}

// TestRevocationPropagationByAgents measures revoke -> denied everywhere
// with 2, 4 and 8 agents on one real etcd, each configured from the
// chart's DaemonSet: the same 100 ms target at every size (the median; the
// tail on this 2-core machine is scheduling, as in TestMeshInABox).
func TestRevocationPropagationByAgents(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the agent and runs up to nine processes")
	}
	bin := buildAgent(t)
	for _, size := range []int{2, 4, 8} {
		t.Run(fmt.Sprintf("agents=%d", size), func(t *testing.T) {
			e, endpoints, err := etcdtest.Start(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(e.Close)
			pod, cms := podFromChart(t, endpoints[0])
			kek := make([]byte, 32)
			rand.Read(kek)
			secrets := map[string]map[string][]byte{"tokenwarden-kek": {"kek": kek}}
			agents := make([]*meshAgent, size)
			admins := make([]string, size)
			for i := range agents {
				agents[i] = startMeshAgent(t, bin, fmt.Sprintf("127.0.0.%d", 10+i), pod, cms, secrets)
				admins[i] = agents[i].adminToken(t)
			}
			_, lat := propagation(t, agents, admins, 50)
			printPropagation(size, lat)
			if p50 := lat[len(lat)/2]; p50 > 100*time.Millisecond {
				t.Errorf("%d agents: p50 %v; a revocation must be enforced everywhere within 100 ms", size, p50)
			}
		})
	}
}
