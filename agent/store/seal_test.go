package store_test

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tokenwarden/tokenwarden/agent/store"
)

func TestLoadOrCreateKEK(t *testing.T) {
	tests := map[string]struct {
		setup   func(t *testing.T, path string) // prepares path before the load
		wantErr string                          // "" means success
	}{
		"creates a missing key": {
			setup: func(*testing.T, string) {},
		},
		"loads an existing key": {
			setup: func(t *testing.T, path string) { writeFile(t, path, bytes.Repeat([]byte{7}, store.KEKSize), 0o600) },
		},
		"refuses a key readable by others": {
			setup:   func(t *testing.T, path string) { writeFile(t, path, make([]byte, store.KEKSize), 0o644) },
			wantErr: "chmod 600",
		},
		"refuses a key readable by another group": {
			setup: func(t *testing.T, path string) {
				writeFile(t, path, make([]byte, store.KEKSize), 0o640)
				if err := os.Chown(path, -1, os.Getegid()+4242); err != nil {
					t.Skipf("chown to another group needs root: %v", err)
				}
			},
			wantErr: "chmod 600",
		},
		"loads a key readable by its own group (Secret volume under fsGroup)": {
			setup: func(t *testing.T, path string) { writeFile(t, path, bytes.Repeat([]byte{7}, store.KEKSize), 0o440) },
		},
		"refuses a short key": {
			setup:   func(t *testing.T, path string) { writeFile(t, path, make([]byte, 16), 0o600) },
			wantErr: "is 16 bytes, want 32",
		},
		"refuses a long key": {
			setup:   func(t *testing.T, path string) { writeFile(t, path, make([]byte, 64), 0o600) },
			wantErr: "is 64 bytes, want 32",
		},
		"reports a missing directory": {
			setup:   func(t *testing.T, path string) { os.RemoveAll(filepath.Dir(path)) },
			wantErr: "create key-encryption key",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "kek")
			tc.setup(t, path)
			kek, err := store.LoadOrCreateKEK(path)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error = %v, want one saying %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(kek) != store.KEKSize {
				t.Fatalf("key is %d bytes, want %d", len(kek), store.KEKSize)
			}
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if perm := fi.Mode().Perm(); perm != 0o600 && perm != 0o440 {
				t.Errorf("key file mode = %v, want 0600 (or the 0440 it was given)", perm)
			}
			// The file is the key: loading again must give the same bytes.
			again, err := store.LoadOrCreateKEK(path)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(again, kek) {
				t.Error("second load returned a different key")
			}
		})
	}
}

func TestCreatedKEKsDiffer(t *testing.T) {
	dir := t.TempDir()
	a, err := store.LoadOrCreateKEK(filepath.Join(dir, "a"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := store.LoadOrCreateKEK(filepath.Join(dir, "b"))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(a, b) {
		t.Error("two created keys are equal")
	}
}

func TestSealUnseal(t *testing.T) {
	kek := randomBytes(t, store.KEKSize)
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sealed, err := store.Seal(kek, "k1", priv)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(sealed, priv.Seed()) {
		t.Fatal("sealed key contains the plaintext seed")
	}

	flip := func(i int) []byte {
		b := bytes.Clone(sealed)
		b[i] ^= 0x01
		return b
	}
	tests := map[string]struct {
		kek     []byte
		kid     string
		sealed  []byte
		wantErr string // "" means the key comes back
	}{
		"round trip":       {kek, "k1", sealed, ""},
		"wrong kek":        {randomBytes(t, store.KEKSize), "k1", sealed, "wrong key-encryption key or tampered"},
		"wrong kid":        {kek, "k2", sealed, "wrong key-encryption key or tampered"},
		"tampered nonce":   {kek, "k1", flip(0), "wrong key-encryption key or tampered"},
		"tampered body":    {kek, "k1", flip(len(sealed) / 2), "wrong key-encryption key or tampered"},
		"tampered tag":     {kek, "k1", flip(len(sealed) - 1), "wrong key-encryption key or tampered"},
		"truncated tag":    {kek, "k1", sealed[:len(sealed)-1], "wrong key-encryption key or tampered"},
		"truncated nonce":  {kek, "k1", sealed[:5], "truncated"},
		"empty":            {kek, "k1", nil, "truncated"},
		"short kek":        {kek[:16], "k1", sealed, "must be 32 bytes"},
		"trailing garbage": {kek, "k1", append(bytes.Clone(sealed), 0), "wrong key-encryption key or tampered"},
		"kid with suffix":  {kek, "k1 ", sealed, "wrong key-encryption key or tampered"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := store.Unseal(tc.kek, tc.kid, tc.sealed)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error = %v, want one saying %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !got.Equal(priv) {
				t.Error("unsealed key differs from the sealed one")
			}
		})
	}
}

func TestSealUsesFreshNonces(t *testing.T) {
	kek := randomBytes(t, store.KEKSize)
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	a, err := store.Seal(kek, "k1", priv)
	if err != nil {
		t.Fatal(err)
	}
	b, err := store.Seal(kek, "k1", priv)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(a, b) {
		t.Error("sealing the same key twice gave the same bytes: nonce reuse")
	}
}

func TestSealRejectsBadKEK(t *testing.T) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	for _, size := range []int{0, 16, 24, 31, 33} {
		if _, err := store.Seal(make([]byte, size), "k1", priv); err == nil {
			t.Errorf("Seal with a %d-byte key-encryption key succeeded", size)
		}
	}
}

func writeFile(t *testing.T, path string, b []byte, perm os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, b, perm); err != nil {
		t.Fatal(err)
	}
	// WriteFile's mode is filtered by the umask; set it exactly.
	if err := os.Chmod(path, perm); err != nil {
		t.Fatal(err)
	}
}

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestSecretMode: a secret file others may read, or its group may write,
// is refused; group read only for the process's own group (a Secret volume
// mounted under fsGroup is 0440, owned by that group).
func TestSecretMode(t *testing.T) {
	other := os.Getegid() + 4242
	tests := map[string]struct {
		mode    os.FileMode
		gid     int // -1: the process's own group
		wantErr bool
	}{
		"0600":                     {0o600, -1, false},
		"0400":                     {0o400, -1, false},
		"0440 own group (fsGroup)": {0o440, -1, false},
		"0440 another group":       {0o440, other, true},
		"0460 group may write":     {0o460, -1, true},
		"0604 others may read":     {0o604, -1, true},
		"0644":                     {0o644, -1, true},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "secret")
			if err := os.WriteFile(path, []byte("x"), 0o600); err != nil {
				t.Fatal(err)
			}
			if tt.gid >= 0 {
				if err := os.Chown(path, -1, tt.gid); err != nil {
					t.Skipf("chown to another group needs root: %v", err)
				}
			}
			if err := os.Chmod(path, tt.mode); err != nil {
				t.Fatal(err)
			}
			st, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if err := store.SecretMode(st); (err != nil) != tt.wantErr {
				t.Errorf("SecretMode(%v) = %v, want error %v", tt.mode, err, tt.wantErr)
			}
		})
	}
}
