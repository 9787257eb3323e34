package store

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"syscall"

	"github.com/tokenwarden/tokenwarden/agent/atomicfile"
)

// KEKSize is the size of a key-encryption key (AES-256).
const KEKSize = 32

// LoadOrCreateKEK reads the key-encryption key at path, creating it (mode
// 0600, 32 random bytes) when missing. A KEK file readable by group or others
// is refused: it guards every signing key.
func LoadOrCreateKEK(path string) ([]byte, error) {
	kek, err := LoadKEK(path)
	if errors.Is(err, fs.ErrNotExist) {
		return createKEK(path)
	}
	return kek, err
}

// LoadKEK reads the key-encryption key at path: exactly KEKSize bytes in a
// regular file (a symlink to one, as in a Kubernetes Secret volume, is
// followed) that group and others cannot read. A missing file is an error
// that wraps fs.ErrNotExist.
func LoadKEK(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read key-encryption key: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("key-encryption key %s is not a regular file", path)
	}
	if err := SecretMode(st); err != nil {
		return nil, fmt.Errorf("key-encryption key %s %w: run chmod 600 %s", path, err, path)
	}
	if st.Size() != KEKSize {
		return nil, fmt.Errorf("key-encryption key %s is %d bytes, want %d", path, st.Size(), KEKSize)
	}
	b, err := io.ReadAll(io.LimitReader(f, KEKSize+1))
	if err != nil {
		return nil, fmt.Errorf("read key-encryption key %s: %w", path, err)
	}
	if len(b) != KEKSize {
		return nil, fmt.Errorf("key-encryption key %s changed while read", path)
	}
	return b, nil
}

// createKEK writes a fresh key in place atomically: a crash never leaves a
// short key file behind, and of two agents racing on a new data dir the
// second adopts the first one's key rather than replacing it.
func createKEK(path string) ([]byte, error) {
	kek := make([]byte, KEKSize)
	if _, err := rand.Read(kek); err != nil {
		return nil, err
	}
	if err := atomicfile.Create(path, kek); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return LoadOrCreateKEK(path)
		}
		return nil, fmt.Errorf("create key-encryption key %s: %w", path, err)
	}
	return kek, nil
}

// KEKGuard is implemented by backends many agents share (etcd). The first
// agent stores its KEK's check value (KEKCheck) with the shared state;
// ClaimKEKCheck returns the one stored, so an agent given another KEK can
// refuse to start instead of minting tokens nobody else accepts.
type KEKGuard interface {
	ClaimKEKCheck(ctx context.Context, check []byte) ([]byte, error)
}

// KEKCheck is a check value of kek: HMAC-SHA256 keyed by it over a fixed
// label. It identifies the KEK without revealing it, and is safe to store
// next to the sealed keys.
func KEKCheck(kek []byte) []byte {
	m := hmac.New(sha256.New, kek)
	m.Write([]byte("tokenwarden key-encryption key check v1"))
	return m.Sum(nil)
}

// VerifyKEK refuses kek when st is shared (KEKGuard) and the agents on it
// already use another key-encryption key. where names the shared state in
// the message (e.g. the etcd prefix).
func VerifyKEK(ctx context.Context, st Store, kek []byte, where string) error {
	g, ok := st.(KEKGuard)
	if !ok {
		return nil
	}
	if len(kek) != KEKSize {
		return fmt.Errorf("key-encryption key is %d bytes, want %d", len(kek), KEKSize)
	}
	// Before the first claim on state that has keys (written before check
	// values were stored), prove the KEK on them: a wrong KEK must not
	// become the one every other agent is measured against.
	keys, err := st.Keys(ctx)
	if err != nil {
		return err
	}
	for _, k := range keys {
		if len(k.Sealed) == 0 {
			continue
		}
		if _, err := Unseal(kek, k.ID, k.Sealed); err != nil {
			return fmt.Errorf("this agent's key-encryption key does not unseal the signing keys on %s: mount the same KEK Secret on every agent of a mesh, or use another prefix", where)
		}
		break
	}
	stored, err := g.ClaimKEKCheck(ctx, KEKCheck(kek))
	if err != nil {
		return err
	}
	if !hmac.Equal(stored, KEKCheck(kek)) {
		return fmt.Errorf("this agent's key-encryption key is not the one the agents on %s use (its check value differs from the one stored there): mount the same KEK Secret on every agent of a mesh, or use another prefix", where)
	}
	return nil
}

// Seal encrypts a private key with AES-256-GCM under kek. The key id is
// bound as additional data, so a sealed key cannot be swapped onto another
// record.
func Seal(kek []byte, kid string, priv ed25519.PrivateKey) ([]byte, error) {
	return seal(kek, []byte(kid), priv.Seed())
}

// Unseal reverses Seal.
func Unseal(kek []byte, kid string, sealed []byte) (ed25519.PrivateKey, error) {
	seed, err := unseal(kek, []byte(kid), sealed)
	if err != nil {
		return nil, fmt.Errorf("unseal key %s: %w", kid, err)
	}
	if len(seed) != ed25519.SeedSize {
		return nil, fmt.Errorf("unseal key %s: bad seed length", kid)
	}
	return ed25519.NewKeyFromSeed(seed), nil
}

// auditKeyAD binds a sealed audit key to its id, apart from signing keys.
func auditKeyAD(id string) []byte { return []byte("tokenwarden audit key\x00" + id) }

// SealAuditSecret seals an audit key's secret under kek, bound to its id.
func SealAuditSecret(kek []byte, id string, secret []byte) ([]byte, error) {
	return seal(kek, auditKeyAD(id), secret)
}

// UnsealAuditSecret reverses SealAuditSecret.
func UnsealAuditSecret(kek []byte, k AuditKey) ([]byte, error) {
	secret, err := unseal(kek, auditKeyAD(k.ID), k.Sealed)
	if err != nil {
		return nil, fmt.Errorf("unseal audit key %s: %w", k.ID, err)
	}
	return secret, nil
}

func seal(kek, ad, plaintext []byte) ([]byte, error) {
	aead, err := newAEAD(kek)
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return aead.Seal(nonce, nonce, plaintext, ad), nil
}

func unseal(kek, ad, sealed []byte) ([]byte, error) {
	aead, err := newAEAD(kek)
	if err != nil {
		return nil, err
	}
	if len(sealed) < aead.NonceSize() {
		return nil, errors.New("sealed value is truncated")
	}
	out, err := aead.Open(nil, sealed[:aead.NonceSize()], sealed[aead.NonceSize():], ad)
	if err != nil {
		return nil, errors.New("wrong key-encryption key or tampered record")
	}
	return out, nil
}

func newAEAD(kek []byte) (cipher.AEAD, error) {
	if len(kek) != KEKSize {
		return nil, fmt.Errorf("key-encryption key must be %d bytes", KEKSize)
	}
	block, err := aes.NewCipher(kek)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

// SecretMode refuses a secret file (a KEK, a password) that others may
// read, or that its group may write or execute. Group read is accepted
// only for the process's own group: Kubernetes mounts a Secret volume
// under fsGroup as 0440 owned by that group, whatever its defaultMode
// (kubernetes#57923), and the agent runs as that group.
func SecretMode(st os.FileInfo) error {
	perm := st.Mode().Perm()
	if perm&0o037 != 0 {
		return fmt.Errorf("has mode %v (group may write, or others may read)", perm)
	}
	if perm&0o040 != 0 {
		if sys, ok := st.Sys().(*syscall.Stat_t); !ok || int(sys.Gid) != os.Getegid() {
			return fmt.Errorf("has mode %v and its group is not this process's", perm)
		}
	}
	return nil
}
