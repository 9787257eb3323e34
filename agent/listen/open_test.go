package listen

import (
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A stale socket (a crashed agent's) is replaced; a live one, another
// agent's, is never stolen; anything else at the path is left alone.
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
		"host:port":           {addr: "127.0.0.1:0", network: "tcp"},
		"unix URL":            {addr: "unix://" + filepath.Join(dir, "a.sock"), network: "unix"},
		"absolute path":       {addr: filepath.Join(dir, "b.sock"), network: "unix"},
		"stale socket":        {addr: stale, network: "unix"},
		"live socket":         {addr: live, wantErr: true},
		"regular file":        {addr: regular, wantErr: true},
		"unix: path":          {addr: "unix:" + filepath.Join(dir, "c.sock"), network: "unix"},
		"relative unix path":  {addr: "unix://authz.sock", wantErr: true},
		"relative unix: path": {addr: "unix:relative.sock", wantErr: true},
		"nonsense":            {addr: "nonsense", wantErr: true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			lis, err := Open(tc.addr, 0)
			if tc.wantErr {
				if err == nil {
					lis.Close()
					t.Fatalf("Open(%q) succeeded, want an error", tc.addr)
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

func TestWarnIfExposed(t *testing.T) {
	for addr, want := range map[string]int{"127.0.0.1:9003": 0, "[::1]:9003": 0, "/run/tw.sock": 0, "": 0, "0.0.0.0:9003": 1, "10.0.0.5:9003": 1} {
		var buf strings.Builder
		WarnIfExposed(slog.New(slog.NewTextHandler(&buf, nil)), "admin", addr, true)
		if got := strings.Count(buf.String(), "level=WARN"); got != want {
			t.Errorf("%q: %d warnings, want %d", addr, got, want)
		}
	}
}
