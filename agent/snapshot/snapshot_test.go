package snapshot

import (
	"bytes"
	"crypto/ed25519"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/agent/store"
	"github.com/tokenwarden/tokenwarden/policy"
)

var testKEK = bytes.Repeat([]byte{7}, store.KEKSize)

func sample() *Snapshot {
	pub, _, _ := ed25519.GenerateKey(nil)
	at := time.Date(2026, 12, 4, 20, 0, 0, 0, time.UTC)
	return &Snapshot{
		Revision: 42, Prefix: "/tokenwarden/", TakenAt: at,
		Rules: []policy.Revocation{
			{ID: "r1", Kind: policy.RevokeToken, Target: "tok-1", EffectiveAt: at, Reason: "leak", Actor: "op", CreatedAt: at},
			{ID: "r2", Kind: policy.RevokeSubject, Target: "svc", EffectiveAt: at, IssuedBefore: at, Reason: "role change", Actor: "op", CreatedAt: at},
		},
		Keys:  []store.Key{{ID: "k1", Public: pub, Sealed: []byte("sealed-seed"), State: store.KeyActive, CreatedAt: at}},
		Audit: &store.AuditKey{ID: "ak-1", Sealed: []byte("sealed"), CreatedAt: at},
	}
}

func encode(t testing.TB, s *Snapshot) []byte {
	t.Helper()
	b, err := Encode(s, testKEK)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// reseal recomputes the MAC of a modified file: what an attacker who holds
// the KEK could do, to reach the checks behind it.
func reseal(b []byte) []byte {
	signed := b[:len(b)-macLen]
	return append(append([]byte{}, signed...), mac(testKEK, signed)...)
}

func TestRoundTrip(t *testing.T) {
	s := sample()
	got, err := Decode(encode(t, s), testKEK)
	if err != nil {
		t.Fatal(err)
	}
	if got.Revision != s.Revision || len(got.Rules) != 2 || got.Rules[1].Target != "svc" || !bytes.Equal(got.Keys[0].Sealed, s.Keys[0].Sealed) || got.Audit.ID != "ak-1" {
		t.Errorf("round trip changed the snapshot: %+v", got)
	}
}

// Every way a file can be cut, grown, swapped or forged is refused.
func TestDecodeRefuses(t *testing.T) {
	good := encode(t, sample())
	withBody := func(body string) []byte {
		b := []byte(magic)
		b = binary.BigEndian.AppendUint16(b, Version)
		b = binary.BigEndian.AppendUint32(b, uint32(len(body)))
		b = append(b, body...)
		return append(b, mac(testKEK, b)...)
	}
	otherKEK := bytes.Repeat([]byte{8}, store.KEKSize)
	cases := []struct {
		name string
		b    []byte
		kek  []byte
		want string
	}{
		{"empty", nil, testKEK, "truncated"},
		{"truncated header", good[:5], testKEK, "truncated"},
		{"truncated body", good[:len(good)-40], testKEK, "header says"},
		{"truncated mac", good[:len(good)-1], testKEK, "header says"},
		{"extended", append(append([]byte{}, good...), 0), testKEK, "header says"},
		{"oversize", make([]byte, MaxSize+1), testKEK, "bound"},
		{"bad magic", append([]byte("XXSNAP"), good[6:]...), testKEK, "bad header"},
		{"wrong version", reseal(append(append([]byte{}, good[:6]...), append([]byte{0, 2}, good[8:]...)...)), testKEK, "version 2"},
		{"bad checksum", append(append([]byte{}, good[:len(good)-1]...), good[len(good)-1]^1), testKEK, "checksum"},
		{"flipped body byte", func() []byte { b := bytes.Clone(good); b[headerLen+3] ^= 1; return b }(), testKEK, "checksum"},
		{"another KEK", good, otherKEK, "checksum"},
		{"short KEK", good, testKEK[:16], "key-encryption key"},
		{"not json", withBody("{"), testKEK, "snapshot"},
		{"unknown field", withBody(`{"revision":1,"prefix":"/p/","taken_at":"2026-01-01T00:00:00Z","rules":[],"keys":[],"extra":1}`), testKEK, "unknown field"},
		{"trailing data", withBody(`{"revision":1,"prefix":"/p/","taken_at":"2026-01-01T00:00:00Z"} {}`), testKEK, "after the body"},
		{"no time", withBody(`{"revision":1,"prefix":"/p/"}`), testKEK, "taken_at"},
		{"no prefix", withBody(`{"revision":1,"taken_at":"2026-01-01T00:00:00Z"}`), testKEK, "prefix"},
		{"negative revision", withBody(`{"revision":-1,"prefix":"/p/","taken_at":"2026-01-01T00:00:00Z"}`), testKEK, "negative"},
		{"rule without id", withBody(`{"prefix":"/p/","taken_at":"2026-01-01T00:00:00Z","rules":[{"kind":"token","target":"t","reason":"r"}]}`), testKEK, "id"},
		{"repeated rule", withBody(`{"prefix":"/p/","taken_at":"2026-01-01T00:00:00Z","rules":[{"id":"a","kind":"token","target":"t","reason":"r","effective_at":"2026-01-01T00:00:00Z"},{"id":"a","kind":"token","target":"t","reason":"r","effective_at":"2026-01-01T00:00:00Z"}]}`), testKEK, "repeated"},
		{"bad rule kind", withBody(`{"prefix":"/p/","taken_at":"2026-01-01T00:00:00Z","rules":[{"id":"a","kind":"all","target":"t","reason":"r"}]}`), testKEK, "kind"},
		{"short public key", withBody(`{"prefix":"/p/","taken_at":"2026-01-01T00:00:00Z","keys":[{"id":"k","public":"AAAA","state":"active"}]}`), testKEK, "public key"},
		{"bad key state", withBody(`{"prefix":"/p/","taken_at":"2026-01-01T00:00:00Z","keys":[{"id":"k","public":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","state":"boss"}]}`), testKEK, "state"},
		{"empty audit key", withBody(`{"prefix":"/p/","taken_at":"2026-01-01T00:00:00Z","audit_key":{"id":"","sealed":""}}`), testKEK, "audit key"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Decode(tc.b, tc.kek)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Decode: %v, want an error saying %q", err, tc.want)
			}
		})
	}
}

func TestSaveLoad(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	if err := Save(path, testKEK, sample()); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", st.Mode().Perm())
	}
	if _, err := Load(path, testKEK); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(filepath.Join(t.TempDir(), FileName), testKEK); !os.IsNotExist(err) {
		t.Errorf("absent snapshot: %v, want not exist", err)
	}
}

// FuzzDecode feeds the decoder arbitrary files, sealed with the right key so
// that the fuzzer reaches the parser behind the MAC. Whatever it accepts
// must encode again and decode to the same.
func FuzzDecode(f *testing.F) {
	f.Add(encode(f, sample())[headerLen : len(encode(f, sample()))-macLen])
	f.Add([]byte(`{"revision":1,"prefix":"/p/","taken_at":"2026-01-01T00:00:00Z","rules":[],"keys":[]}`))
	f.Add([]byte(`{"prefix":"/p/","taken_at":"2026-01-01T00:00:00Z","rules":[{"id":"a","kind":"tenant","target":"t","reason":"r"}]}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		b := []byte(magic)
		b = binary.BigEndian.AppendUint16(b, Version)
		b = binary.BigEndian.AppendUint32(b, uint32(len(body)))
		b = append(b, body...)
		b = append(b, mac(testKEK, b)...)
		s, err := Decode(b, testKEK)
		if err != nil {
			return
		}
		again, err := Encode(s, testKEK)
		if err != nil {
			t.Fatalf("decoded snapshot does not encode: %v", err)
		}
		if _, err := Decode(again, testKEK); err != nil {
			t.Fatalf("re-encoded snapshot does not decode: %v", err)
		}
	})
}
