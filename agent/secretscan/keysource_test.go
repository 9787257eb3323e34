package secretscan_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"github.com/tokenwarden/tokenwarden/agent/secretscan"
)

// TestKeySourceFetchesRotatedKeys: a key GitHub published at the URL after
// the file was written is fetched when a request names it; forged key
// identifiers trigger at most one fetch per RefetchEvery; only https URLs
// are taken.
func TestKeySourceFetchesRotatedKeys(t *testing.T) {
	old, rotated := newGitHub(t, "gh-old"), newGitHub(t, "gh-new")
	var hits atomic.Int64
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.Write(rotated.keyDoc(t))
	}))
	defer srv.Close()
	fileKeys, err := secretscan.ParseKeys(old.keyDoc(t))
	if err != nil {
		t.Fatal(err)
	}
	src, err := secretscan.NewKeySource(fileKeys, srv.URL+"/meta/public_keys/secret_scanning", srv.Client())
	if err != nil {
		t.Fatal(err)
	}
	body := []byte(`[]`)
	ctx := context.Background()
	if err := src.Verify(ctx, "gh-old", old.sign(t, body), body); err != nil || hits.Load() != 0 {
		t.Fatalf("file key: %v, %d fetches", err, hits.Load())
	}
	if err := src.Verify(ctx, "gh-new", rotated.sign(t, body), body); err != nil || hits.Load() != 1 {
		t.Fatalf("rotated key: %v, %d fetches", err, hits.Load())
	}
	for range 5 {
		if err := src.Verify(ctx, "forged", old.sign(t, body), body); !errors.Is(err, secretscan.ErrUnknownKey) {
			t.Fatalf("forged key id: %v", err)
		}
	}
	if hits.Load() != 1 {
		t.Errorf("%d fetches after forged key ids, want 1 (rate-limited)", hits.Load())
	}
	// A key fetched under an identifier does not replace the file's key of
	// the same identifier, and an impostor's signature does not verify.
	if err := src.Verify(ctx, "gh-new", old.sign(t, body), body); err == nil {
		t.Error("the old key's signature verified under the new identifier")
	}
	for _, u := range []string{"http://api.github.com/x", "https://user@api.github.com/x", "ftp://x", "https://"} {
		if _, err := secretscan.NewKeySource(fileKeys, u, nil); err == nil {
			t.Errorf("key URL %q accepted", u)
		}
	}
}
