// Package snapshot keeps this node's local copy of what it knew of a shared
// store (etcd): the revocation rules, the signing key records (private
// halves sealed, exactly as stored), the sealed audit key and the store
// revision they were read at. An agent started while the store is
// unreachable enforces from it, under the stale action, until the store
// answers again.
//
// The file is written atomically (agent/atomicfile, mode 0600) and
// authenticated with a MAC keyed from the key-encryption key: a copy
// edited by someone who can write the data directory but not read the KEK
// (a Kubernetes Secret, mounted apart from the host path) is refused, as
// is one written under another KEK. The decoder is a parser of untrusted
// bytes: bounded, versioned and strict.
package snapshot

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/tokenwarden/tokenwarden/agent/atomicfile"
	"github.com/tokenwarden/tokenwarden/agent/store"
	"github.com/tokenwarden/tokenwarden/policy"
)

// FileName is the snapshot's name in the data directory.
const FileName = "store-snapshot"

const (
	// Version is the format written; Decode refuses any other.
	Version = 1
	// MaxSize bounds a snapshot file: room for about 200,000 rules.
	MaxSize = 64 << 20
	// maxSealed bounds one sealed secret (a sealed Ed25519 seed is 60 bytes).
	maxSealed = 1024

	magic     = "TWSNAP"
	headerLen = len(magic) + 2 + 4 // magic, version (uint16), body length (uint32)
	macLen    = sha256.Size
)

// Snapshot is what a node knew of the store at Revision.
type Snapshot struct {
	// Revision is the store revision every change up to which the
	// snapshot holds (0 when unknown).
	Revision int64 `json:"revision"`
	// Prefix is where the store lives (the etcd key prefix): a snapshot
	// of another deployment's store is not used.
	Prefix string `json:"prefix"`
	// TakenAt is when the store was read: the view is current as of then.
	TakenAt time.Time           `json:"taken_at"`
	Rules   []policy.Revocation `json:"rules"`
	Keys    []store.Key         `json:"keys"`
	Audit   *store.AuditKey     `json:"audit_key,omitempty"`
}

// ErrUnreachable is what the snapshot answers for a write: it stands in for
// a store that cannot take one.
var ErrUnreachable = errors.New("the store is unreachable: serving from the local snapshot")

// AuditKey returns the sealed audit key the snapshot holds (audit.KeyStore).
func (s *Snapshot) AuditKey(context.Context) (store.AuditKey, error) {
	if s.Audit == nil {
		return store.AuditKey{}, fmt.Errorf("the local snapshot holds no audit key: %w", ErrUnreachable)
	}
	return *s.Audit, nil
}

// CreateAuditKey fails: a node cannot create the mesh's audit key offline.
func (s *Snapshot) CreateAuditKey(context.Context, store.AuditKey) (store.AuditKey, error) {
	return store.AuditKey{}, ErrUnreachable
}

// macKey derives the snapshot's MAC key from the KEK, so that the KEK
// itself keys nothing but sealing.
func macKey(kek []byte) []byte {
	m := hmac.New(sha256.New, kek)
	m.Write([]byte("tokenwarden store snapshot v1"))
	return m.Sum(nil)
}

func mac(kek, b []byte) []byte {
	m := hmac.New(sha256.New, macKey(kek))
	m.Write(b)
	return m.Sum(nil)
}

// Encode validates s and encodes it: header, JSON body, MAC over both.
func Encode(s *Snapshot, kek []byte) ([]byte, error) {
	if len(kek) != store.KEKSize {
		return nil, fmt.Errorf("snapshot: key-encryption key is %d bytes, want %d", len(kek), store.KEKSize)
	}
	if err := s.validate(); err != nil {
		return nil, err
	}
	body, err := json.Marshal(s)
	if err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	if headerLen+len(body)+macLen > MaxSize {
		return nil, fmt.Errorf("snapshot: %d bytes, over the %d byte bound", headerLen+len(body)+macLen, MaxSize)
	}
	out := make([]byte, 0, headerLen+len(body)+macLen)
	out = append(out, magic...)
	out = binary.BigEndian.AppendUint16(out, Version)
	out = binary.BigEndian.AppendUint32(out, uint32(len(body)))
	out = append(out, body...)
	return append(out, mac(kek, out)...), nil
}

// Decode parses and authenticates a snapshot written by Encode under kek.
func Decode(b, kek []byte) (*Snapshot, error) {
	if len(kek) != store.KEKSize {
		return nil, fmt.Errorf("snapshot: key-encryption key is %d bytes, want %d", len(kek), store.KEKSize)
	}
	if len(b) > MaxSize {
		return nil, fmt.Errorf("snapshot: %d bytes, over the %d byte bound", len(b), MaxSize)
	}
	if len(b) < headerLen+macLen || string(b[:len(magic)]) != magic {
		return nil, errors.New("snapshot: not a snapshot file (truncated or bad header)")
	}
	if v := binary.BigEndian.Uint16(b[len(magic):]); v != Version {
		return nil, fmt.Errorf("snapshot: format version %d, want %d", v, Version)
	}
	n := binary.BigEndian.Uint32(b[len(magic)+2:])
	if uint64(len(b)) != uint64(headerLen)+uint64(n)+macLen {
		return nil, fmt.Errorf("snapshot: %d bytes, the header says %d (truncated or extended)", len(b), uint64(headerLen)+uint64(n)+macLen)
	}
	signed, sum := b[:len(b)-macLen], b[len(b)-macLen:]
	if !hmac.Equal(sum, mac(kek, signed)) {
		return nil, errors.New("snapshot: checksum mismatch (corrupt, edited, or written under another key-encryption key)")
	}
	dec := json.NewDecoder(bytes.NewReader(signed[headerLen:]))
	dec.DisallowUnknownFields()
	var s Snapshot
	if err := dec.Decode(&s); err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("snapshot: data after the body")
	}
	if err := s.validate(); err != nil {
		return nil, err
	}
	return &s, nil
}

// validate checks every record as the store would have it.
func (s *Snapshot) validate() error {
	if s.Revision < 0 {
		return fmt.Errorf("snapshot: negative revision %d", s.Revision)
	}
	if s.Prefix == "" || len(s.Prefix) > 1024 {
		return errors.New("snapshot: empty or oversize prefix")
	}
	if s.TakenAt.IsZero() {
		return errors.New("snapshot: no taken_at time")
	}
	ids := map[string]bool{}
	for i := range s.Rules {
		r := &s.Rules[i]
		if r.ID == "" || ids[r.ID] {
			return fmt.Errorf("snapshot: rule %d: empty or repeated id %q", i, r.ID)
		}
		ids[r.ID] = true
		if err := r.Validate(); err != nil {
			return fmt.Errorf("snapshot: rule %s: %w", r.ID, err)
		}
	}
	kids := map[string]bool{}
	for _, k := range s.Keys {
		if k.ID == "" || kids[k.ID] {
			return fmt.Errorf("snapshot: key: empty or repeated id %q", k.ID)
		}
		kids[k.ID] = true
		if len(k.Public) != ed25519.PublicKeySize {
			return fmt.Errorf("snapshot: key %s: public key is %d bytes, want %d", k.ID, len(k.Public), ed25519.PublicKeySize)
		}
		if len(k.Sealed) > maxSealed {
			return fmt.Errorf("snapshot: key %s: sealed key is %d bytes, over %d", k.ID, len(k.Sealed), maxSealed)
		}
		switch k.State {
		case store.KeyPending, store.KeyActive, store.KeyVerifying, store.KeyRetired:
		default:
			return fmt.Errorf("snapshot: key %s: unknown state %q", k.ID, k.State)
		}
	}
	if a := s.Audit; a != nil && (a.ID == "" || len(a.Sealed) == 0 || len(a.Sealed) > maxSealed) {
		return errors.New("snapshot: audit key: empty id, or empty or oversize secret")
	}
	return nil
}

// Load reads and decodes the snapshot at path; a missing file is an error
// satisfying errors.Is(err, fs.ErrNotExist).
func Load(path string, kek []byte) (*Snapshot, error) {
	b, _, err := atomicfile.Read(path, MaxSize)
	if err != nil {
		return nil, err
	}
	return Decode(b, kek)
}

// Save encodes s and replaces the file at path with it, atomically.
func Save(path string, kek []byte, s *Snapshot) error {
	b, err := Encode(s, kek)
	if err != nil {
		return err
	}
	return atomicfile.Write(path, b)
}
