package admin

import (
	"context"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/agent/graceful"
)

// TestServeEndsStreams: an open audit stream does not hold the drain open
// until its timeout; it ends with the server's context.
func TestServeEndsStreams(t *testing.T) {
	streaming := make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(200)
		http.NewResponseController(w).Flush()
		close(streaming)
		<-r.Context().Done()
	})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- graceful.HTTP(ctx, &http.Server{Handler: endStreamsOn(ctx, h)}, lis, time.Hour) }()
	resp, err := http.Get("http://" + lis.Addr().String() + "/v1/audit/stream")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	<-streaming
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second): // the drain's grace is an hour
		t.Fatal("an open stream held the drain")
	}
}
