package authz

import (
	"context"
	"path/filepath"
	"testing"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tokenwarden/tokenwarden/agent/listen"
)

// Envoy can reach the gRPC mode over a unix socket.
func TestCheckOverUnixSocket(t *testing.T) {
	f := newFixture(t)
	path := filepath.Join(t.TempDir(), "authz.sock")
	lis, err := listen.Open("unix://"+path, 0)
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
