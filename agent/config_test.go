package agent

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/agent/kernel"
	"github.com/tokenwarden/tokenwarden/agent/listen"
)

// TestBadConfigTouchesNothingOnDisk attacks the old order of New: a bad
// store backend was refused only after the key-encryption key was written,
// and a bad kernel mode only after the store and the audit log were open.
// Every setting is checked first: the data directory is never created.
func TestBadConfigTouchesNothingOnDisk(t *testing.T) {
	good := func(dir string) Config {
		return Config{DataDir: dir, PolicyPath: "../deploy/policy.example.yaml", Env: "dev", BPF: kernel.ModeOff}
	}
	tests := map[string]struct {
		edit  func(*Config)
		field string
	}{
		"unknown store":          {func(c *Config) { c.StoreBackend = "postgres" }, "StoreBackend"},
		"etcd without endpoints": {func(c *Config) { c.StoreBackend, c.KEKFile = StoreEtcd, "/run/kek" }, "EtcdEndpoints"},
		"etcd endpoint not a URL": {func(c *Config) {
			c.StoreBackend, c.EtcdEndpoints, c.KEKFile = StoreEtcd, []string{"10.0.0.5:2379"}, "/run/kek"
		}, "EtcdEndpoints"},
		"etcd without a shared KEK":   {func(c *Config) { c.StoreBackend, c.EtcdEndpoints = StoreEtcd, []string{"http://10.0.0.5:2379"} }, "KEKFile"},
		"unknown kernel mode":         {func(c *Config) { c.BPF = "yes" }, "BPF"},
		"kernel required, no hook":    {func(c *Config) { c.BPF = kernel.ModeRequired }, "BPF"},
		"relative cgroup":             {func(c *Config) { c.BPFCgroup = "sys/fs/cgroup" }, "BPFCgroup"},
		"admin address":               {func(c *Config) { c.AdminAddr = "9003" }, "AdminAddr"},
		"metrics on a socket":         {func(c *Config) { c.MetricsAddr = "/run/metrics.sock" }, "MetricsAddr"},
		"relative authz socket":       {func(c *Config) { c.AuthzGRPCAddr = "unix://run/authz.sock" }, "AuthzGRPCAddr"},
		"xds address":                 {func(c *Config) { c.XDSAddr = "localhost" }, "XDSAddr"},
		"negative cache":              {func(c *Config) { c.CacheSize = -1 }, "CacheSize"},
		"no environment":              {func(c *Config) { c.Env = "" }, "Env"},
		"tls certificate without key": {func(c *Config) { c.TLS.CertFile = "/run/tls.crt" }, "TLS.CertFile"},
		"tls key without certificate": {func(c *Config) { c.TLS.KeyFile = "/run/tls.key" }, "TLS.CertFile"},
		"tls 1.1":                     {func(c *Config) { c.TLS = listen.TLSFiles{CertFile: "/c", KeyFile: "/k", MinVersion: "1.1"} }, "TLS.MinVersion"},
		// mTLS asked for where it cannot be served must not start as a
		// listener that admits anyone.
		"client CA without TLS": {func(c *Config) { c.AuthzGRPCAddr, c.TLS.ClientCAs.AuthzGRPC = "127.0.0.1:9001", "/ca" }, "TLS.ClientCAs.AuthzGRPC"},
		"client CA on a unix socket": {func(c *Config) {
			c.AuthzGRPCAddr = "unix:///run/authz.sock"
			c.TLS = listen.TLSFiles{CertFile: "/c", KeyFile: "/k", ClientCAs: listen.ClientCAs{AuthzGRPC: "/ca"}}
		}, "TLS.ClientCAs.AuthzGRPC"},
		"negative staleness":   {func(c *Config) { c.MaxStaleness = -time.Second }, "MaxStaleness"},
		"unknown stale action": {func(c *Config) { c.StaleAction = "allow" }, "StaleAction"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "data")
			cfg := good(dir)
			tc.edit(&cfg)
			_, err := New(context.Background(), cfg)
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Field != tc.field {
				t.Fatalf("New: %v, want a FieldError on %s", err, tc.field)
			}
			if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("the data dir exists after a refused config (%v): something was written first", err)
			}
		})
	}
}

func TestValidateAcceptsTheDefaults(t *testing.T) {
	cfg := Config{
		DataDir: "x", PolicyPath: "p", Env: "dev",
		AdminAddr: DefaultAdminAddr, MetricsAddr: DefaultMetricsAddr, AuthzGRPCAddr: DefaultAuthzGRPC,
		AuthzHTTPAddr: DefaultAuthzHTTP, XDSAddr: DefaultXDSAddr,
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, addr := range []string{"unix:///run/tw/authz.sock", "/run/tw/authz.sock", "unix:/run/tw/authz.sock", ""} {
		cfg.AuthzGRPCAddr, cfg.XDSAddr = addr, addr
		if err := cfg.Validate(); err != nil {
			t.Errorf("%q: %v", addr, err)
		}
	}
}

// TestLibraryErrorsNameNoFlags: the agent is a library; its errors name
// Config fields, and the CLI names its flags.
func TestLibraryErrorsNameNoFlags(t *testing.T) {
	err := Config{StoreBackend: "x", BPF: "y"}.Validate()
	if err == nil || strings.Contains(err.Error(), "--") {
		t.Fatalf("Validate: %v", err)
	}
}
