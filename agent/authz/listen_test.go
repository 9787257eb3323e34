package authz

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

func TestListen(t *testing.T) {
	dir := t.TempDir()
	stale := filepath.Join(dir, "stale.sock")
	l, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close() // leaves the socket file behind, as a crashed agent would
	live := filepath.Join(dir, "live.sock")
	liveLis, err := net.Listen("unix", live)
	if err != nil {
		t.Fatal(err)
	}
	defer liveLis.Close()
	regular := filepath.Join(dir, "file")
	if err := os.WriteFile(regular, nil, 0o600); err != nil {
		t.Fatal(err)
	}

	tests := map[string]struct {
		addr    string
		network string
		wantErr bool
	}{
		"host:port":          {addr: "127.0.0.1:0", network: "tcp"},
		"unix URL":           {addr: "unix://" + filepath.Join(dir, "a.sock"), network: "unix"},
		"absolute path":      {addr: filepath.Join(dir, "b.sock"), network: "unix"},
		"stale socket":       {addr: stale, network: "unix"},
		"live socket":        {addr: live, wantErr: true},
		"regular file":       {addr: regular, wantErr: true},
		"relative unix path": {addr: "unix://authz.sock", wantErr: true},
		"nonsense":           {addr: "nonsense", wantErr: true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			lis, err := Listen(tc.addr)
			if tc.wantErr {
				if err == nil {
					lis.Close()
					t.Fatalf("Listen(%q) succeeded, want an error", tc.addr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer lis.Close()
			if got := lis.Addr().Network(); got != tc.network {
				t.Errorf("network %q, want %q", got, tc.network)
			}
		})
	}
}

// Envoy can reach the gRPC mode over a unix socket.
func TestCheckOverUnixSocket(t *testing.T) {
	f := newFixture(t)
	path := filepath.Join(t.TempDir(), "authz.sock")
	lis, err := Listen("unix://" + path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.server(t, Config{}).ServeGRPC(ctx, lis) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	resp, err := authv3.NewAuthorizationClient(conn).Check(context.Background(), checkRequest("GET", "orders", "/healthz", nil))
	if err != nil || resp.GetOkResponse() == nil {
		t.Fatalf("resp %v, err %v", resp, err)
	}
}
