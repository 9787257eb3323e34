package agent

import (
	"crypto/ed25519"
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/agent/store"
	etcdstore "github.com/tokenwarden/tokenwarden/agent/store/etcd"
	"github.com/tokenwarden/tokenwarden/agent/store/etcd/etcdtest"
	"github.com/tokenwarden/tokenwarden/policy"
)

// writeKEK writes a fresh key-encryption key of n bytes (mode 0600).
func writeKEK(t *testing.T, n int) string {
	t.Helper()
	kek := make([]byte, n)
	rand.Read(kek)
	path := filepath.Join(t.TempDir(), "kek")
	if err := os.WriteFile(path, kek, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// An etcd as operators run it: TLS with client certificates and auth
// enabled. Every way of getting its access wrong is a start-up error that
// names the flag to fix; the right access opens the store.
func TestEtcdAccess(t *testing.T) {
	dir := t.TempDir()
	pki, err := etcdtest.NewPKI(filepath.Join(dir, "pki"))
	if err != nil {
		t.Fatal(err)
	}
	other, err := etcdtest.NewPKI(filepath.Join(dir, "other-pki"))
	if err != nil {
		t.Fatal(err)
	}
	e, endpoints, err := etcdtest.StartWith(filepath.Join(dir, "etcd"), etcdtest.Options{TLS: pki})
	if err != nil {
		t.Fatalf("start etcd: %v", err)
	}
	t.Cleanup(e.Close)
	clientTLS, err := pki.ClientTLS()
	if err != nil {
		t.Fatal(err)
	}
	const prefix = "/tokenwarden-access/"
	if err := etcdtest.EnableAuth(endpoints, clientTLS, "root-secret", "tokenwarden", "agent-secret", prefix); err != nil {
		t.Fatal(err)
	}
	secret := func(content string, mode os.FileMode) string {
		p := filepath.Join(t.TempDir(), "password")
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := secret("agent-secret\n", 0o400)
	kek := writeKEK(t, store.KEKSize)
	base := func() Config {
		return Config{
			DataDir: t.TempDir(), StoreBackend: StoreEtcd, EtcdEndpoints: endpoints, EtcdPrefix: prefix, KEKFile: kek,
			Etcd: EtcdAccess{
				CAFile: pki.CA, CertFile: pki.ClientCert, KeyFile: pki.ClientKey,
				Username: "tokenwarden", PasswordFile: good, DialTimeout: 3 * time.Second,
			},
		}
	}

	t.Run("right access", func(t *testing.T) {
		_, st, err := openState(t.Context(), base())
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		if _, err := st.Keys(t.Context()); err != nil {
			t.Fatalf("read through the opened store: %v", err)
		}
	})

	for _, tc := range []struct {
		name   string
		change func(*Config)
		want   []string // in the error
	}{
		{"wrong CA", func(c *Config) { c.Etcd.CAFile = other.CA }, []string{"Etcd.CAFile", "certificate"}},
		{"no CA: system roots do not know the test CA", func(c *Config) { c.Etcd.CAFile = "" }, []string{"Etcd.CAFile"}},
		{"client certificate of another CA", func(c *Config) { c.Etcd.CertFile, c.Etcd.KeyFile = other.ClientCert, other.ClientKey }, []string{"Etcd.CertFile"}},
		{"certificate without key", func(c *Config) { c.Etcd.KeyFile = "" }, []string{"Etcd.KeyFile", "both"}},
		{"CA file missing", func(c *Config) { c.Etcd.CAFile = "/nonexistent/ca.pem" }, []string{"Etcd.CAFile", "/nonexistent/ca.pem"}},
		{"CA file not PEM", func(c *Config) { c.Etcd.CAFile = good }, []string{"Etcd.CAFile", "no PEM certificate"}},
		{"plain http endpoint with TLS", func(c *Config) {
			c.EtcdEndpoints = []string{strings.Replace(endpoints[0], "https://", "http://", 1)}
		}, []string{"Etcd.CAFile", "not https://"}},
		{"wrong password", func(c *Config) { c.Etcd.PasswordFile = secret("guess\n", 0o600) }, []string{"Etcd.PasswordFile", "credentials"}},
		{"unknown user", func(c *Config) { c.Etcd.Username = "mallory" }, []string{"Etcd.Username", "credentials"}},
		{"no credentials on an auth cluster", func(c *Config) { c.Etcd.Username, c.Etcd.PasswordFile = "", "" }, []string{"Etcd.Username"}},
		{"username without password file", func(c *Config) { c.Etcd.PasswordFile = "" }, []string{"Etcd.PasswordFile"}},
		{"password file others may read", func(c *Config) { c.Etcd.PasswordFile = secret("agent-secret\n", 0o644) }, []string{"Etcd.PasswordFile", "chmod"}},
		{"password file of two lines", func(c *Config) { c.Etcd.PasswordFile = secret("a\nb\n", 0o600) }, []string{"Etcd.PasswordFile", "one non-empty line"}},
		{"prefix outside the user's permission", func(c *Config) { c.EtcdPrefix = "/elsewhere/" }, []string{"Etcd.Username", "credentials"}},
		{"no KEK", func(c *Config) { c.KEKFile = "" }, []string{"KEKFile", "never generated"}},
		{"KEK file missing", func(c *Config) { c.KEKFile = filepath.Join(t.TempDir(), "kek") }, []string{"KEKFile", "no such file"}},
		{"KEK of the wrong size", func(c *Config) { c.KEKFile = writeKEK(t, 16) }, []string{"KEKFile", "16 bytes, want 32"}},
		{"another KEK on the same prefix", func(c *Config) { c.KEKFile = writeKEK(t, store.KEKSize) }, []string{"KEKFile", "check value", prefix}},
		{"no endpoints", func(c *Config) { c.EtcdEndpoints = nil }, []string{"EtcdEndpoints"}},
		{"nobody listening", func(c *Config) {
			c.EtcdEndpoints = []string{"https://127.0.0.1:1"}
			c.Etcd.DialTimeout = 500 * time.Millisecond
		}, []string{"Etcd"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := base()
			tc.change(&cfg)
			_, st, err := openState(t.Context(), cfg)
			if err == nil {
				st.Close()
				t.Fatal("opened; want a start-up error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "agent-secret") {
				t.Errorf("error %q shows the password", err)
			}
		})
	}
}

// The bolt default still creates its own KEK; a given --kek-file is used
// and never created.
func TestBoltKEK(t *testing.T) {
	dir := t.TempDir()
	kek, st, err := openState(t.Context(), Config{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	onDisk, err := os.ReadFile(filepath.Join(dir, kekFile))
	if err != nil || string(onDisk) != string(kek) {
		t.Fatalf("bolt default did not create <data-dir>/kek: %v", err)
	}
	missing := filepath.Join(t.TempDir(), "kek")
	if _, _, err := openState(t.Context(), Config{DataDir: t.TempDir(), KEKFile: missing}); err == nil || !strings.Contains(err.Error(), "KEKFile") {
		t.Fatalf("missing --kek-file: err = %v", err)
	}
	if _, err := os.Stat(missing); err == nil {
		t.Fatal("a missing --kek-file was created")
	}
}

// A prefix written before check values were stored holds keys but no check
// value: an agent with the wrong KEK must not claim it (and so lock out
// the agents that can unseal the keys).
func TestWrongKEKDoesNotClaimExistingMesh(t *testing.T) {
	e, endpoints, err := etcdtest.Start(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	const prefix = "/tokenwarden-old-mesh/"
	right, wrong := writeKEK(t, store.KEKSize), writeKEK(t, store.KEKSize)
	st, err := etcdstore.Open(t.Context(), etcdstore.Config{Endpoints: endpoints, Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	kek, _ := os.ReadFile(right)
	sk, err := policy.NewSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	sealed, err := store.Seal(kek, sk.ID, sk.Private)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.PutKeys(t.Context(), store.Key{ID: sk.ID, Public: sk.Private.Public().(ed25519.PublicKey), Sealed: sealed, State: store.KeyActive, CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	st.Close()
	cfg := Config{DataDir: t.TempDir(), StoreBackend: StoreEtcd, EtcdEndpoints: endpoints, EtcdPrefix: prefix, KEKFile: wrong}
	if _, _, err := openState(t.Context(), cfg); err == nil || !strings.Contains(err.Error(), "does not unseal") {
		t.Fatalf("wrong KEK on a mesh with keys: err = %v", err)
	}
	cfg.KEKFile = right
	_, st2, err := openState(t.Context(), cfg)
	if err != nil {
		t.Fatalf("the right KEK is refused after a wrong one tried: %v", err)
	}
	st2.Close()
}
