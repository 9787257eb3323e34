package etcd

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/agent/store"
)

// closedAddr is a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// An unreachable cluster fails Open unless AllowUnreachable; allowed, Open
// returns at its dial timeout, says why, and every call fails within the
// request timeout, retries included, as store.ErrUnavailable (never a hang
// of the client's hundred retries).
func TestOpenUnreachable(t *testing.T) {
	addr := closedAddr(t)
	for _, tc := range []struct {
		name     string
		endpoint string
		tls      *tls.Config
	}{
		{"plain", "http://" + addr, nil},
		{"tls", "https://" + addr, &tls.Config{MinVersion: tls.VersionTLS13}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{Endpoints: []string{tc.endpoint}, DialTimeout: 300 * time.Millisecond, RequestTimeout: 300 * time.Millisecond, TLS: tc.tls}
			if s, err := Open(t.Context(), cfg); err == nil {
				s.Close()
				t.Fatal("Open succeeded with nothing listening")
			}
			cfg.AllowUnreachable = true
			began := time.Now()
			s, err := Open(t.Context(), cfg)
			if err != nil {
				t.Fatalf("Open with AllowUnreachable: %v", err)
			}
			defer s.Close()
			if s.Unreached() == nil {
				t.Error("Unreached is nil with nothing listening")
			}
			if d := time.Since(began); d > 3*time.Second {
				t.Errorf("Open took %v", d)
			}
			began = time.Now()
			err = s.PutToken(context.Background(), store.TokenRecord{ID: "t1", Subject: "s", Status: store.TokenActive})
			if !errors.Is(err, store.ErrUnavailable) {
				t.Errorf("PutToken on an unreachable cluster: %v, want ErrUnavailable", err)
			}
			if d := time.Since(began); d > 3*time.Second {
				t.Errorf("PutToken took %v, want about the request timeout", d)
			}
		})
	}
}
