package store

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// KEKSize is the size of a key-encryption key (AES-256).
const KEKSize = 32

// LoadOrCreateKEK reads the key-encryption key at path, creating it (mode
// 0600, 32 random bytes) when missing. A KEK file readable by group or others
// is refused: it guards every signing key.
func LoadOrCreateKEK(path string) ([]byte, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return createKEK(path)
	}
	if err != nil {
		return nil, fmt.Errorf("read key-encryption key %s: %w", path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("key-encryption key %s is not a regular file", path)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("key-encryption key %s has mode %v: run chmod 600 %s", path, st.Mode().Perm(), path)
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

// createKEK writes a fresh key to a temporary file and renames it into
// place, so a crash never leaves a short key file behind.
func createKEK(path string) ([]byte, error) {
	kek := make([]byte, KEKSize)
	if _, err := rand.Read(kek); err != nil {
		return nil, err
	}
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, ".kek-*")
	if err != nil {
		return nil, fmt.Errorf("create key-encryption key in %s: %w", dir, err)
	}
	defer os.Remove(tmp.Name())
	// One err for every step: a failed chmod, write or sync must not be
	// lost, or a short or unsynced key file would be linked into place.
	err = tmp.Chmod(0o600)
	if err == nil {
		_, err = tmp.Write(kek)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("write key-encryption key %s: %w", path, err)
	}
	// Link, not rename: two agents racing on a new data dir must not
	// replace each other's key.
	if err := os.Link(tmp.Name(), path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return LoadOrCreateKEK(path)
		}
		return nil, fmt.Errorf("install key-encryption key %s: %w", path, err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return kek, nil
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
