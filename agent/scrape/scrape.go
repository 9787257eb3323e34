// Package scrape guards the agent's /metrics listener: with a bearer token
// file configured (--metrics-bearer-file), every request must carry
// "Authorization: Bearer <the file's token>" or is answered 401 with a JSON
// body. The token is compared in constant time and re-read when the file
// changes (a rotated Kubernetes Secret), without a restart.
package scrape

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/tokenwarden/tokenwarden/agent/atomicfile"
)

const (
	// MinTokenBytes is the shortest bearer token the file may hold: a
	// token a scraper of the node's network could guess is no guard.
	MinTokenBytes = 16
	// MaxTokenBytes bounds the file and the token.
	MaxTokenBytes = 4 << 10
	// CheckEvery is how often at most a request re-reads the file (a few
	// bytes; a stamp such as the modification time can miss a rewrite
	// within the file system's clock tick).
	CheckEvery = time.Second
)

// Bearer checks the bearer token of /metrics requests against a file.
type Bearer struct {
	path string
	log  *slog.Logger
	now  func() time.Time

	mu      sync.Mutex
	digest  [sha256.Size]byte // of the token in force
	checked time.Time         // when the file was last read
}

// NewBearer reads the token file: a missing, empty, short or oversized
// file is an error, so the agent does not start with a guard that lets
// everyone in or no one. now is time.Now when nil.
func NewBearer(path string, log *slog.Logger, now func() time.Time) (*Bearer, error) {
	if now == nil {
		now = time.Now
	}
	b := &Bearer{path: path, log: log, now: now}
	digest, exposed, err := b.read()
	if err != nil {
		return nil, fmt.Errorf("metrics bearer file %s: %w", path, err)
	}
	if exposed {
		log.Warn("metrics bearer file is readable by group or others; chmod 600 it (in Kubernetes: defaultMode 0400)", "path", path)
	}
	b.digest, b.checked = digest, now()
	return b, nil
}

// read reads the file's token and returns its digest, and whether group or
// others may read the file.
func (b *Bearer) read() (digest [sha256.Size]byte, exposed bool, err error) {
	data, exposed, err := atomicfile.Read(b.path, MaxTokenBytes)
	if err != nil {
		return digest, false, err
	}
	token := bytes.TrimSpace(data)
	switch {
	case len(token) < MinTokenBytes:
		return digest, false, fmt.Errorf("the token is %d bytes; want at least %d (e.g. openssl rand -hex 32)", len(token), MinTokenBytes)
	case bytes.ContainsAny(token, " \t\r\n"):
		return digest, false, errors.New("the token holds white space; write one token on one line")
	}
	return sha256.Sum256(token), exposed, nil
}

// current returns the digest of the token in force, re-reading the file at
// most every CheckEvery.
// A file that cannot be read keeps the token in force, with a warning: a
// Secret being rotated is briefly absent, and the previous token is still
// a secret.
func (b *Bearer) current() [sha256.Size]byte {
	now := b.now()
	b.mu.Lock()
	defer b.mu.Unlock()
	if now.Sub(b.checked) < CheckEvery {
		return b.digest
	}
	b.checked = now
	digest, _, err := b.read()
	if err != nil {
		b.log.Warn("metrics bearer file cannot be read; the token read before stays in force", "path", b.path, "err", err)
		return b.digest
	}
	if digest != b.digest {
		b.log.Info("metrics bearer token reloaded", "path", b.path)
	}
	b.digest = digest
	return b.digest
}

// Allowed reports whether r carries the token: exactly one Authorization
// header, scheme Bearer (any case), and the token, compared in constant
// time (as SHA-256 digests, so the token's length does not leak either).
func (b *Bearer) Allowed(r *http.Request) bool {
	h := r.Header.Values("Authorization")
	if len(h) != 1 {
		return false
	}
	scheme, token, ok := strings.Cut(h[0], " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || token == "" || len(token) > MaxTokenBytes {
		return false
	}
	got := sha256.Sum256([]byte(token))
	want := b.current()
	return subtle.ConstantTimeCompare(got[:], want[:]) == 1
}

// unauthorized is the answer without the token.
const unauthorized = `{"error":"unauthorized","message":"this endpoint needs the bearer token of the agent's --metrics-bearer-file"}` + "\n"

// Wrap guards next: a request without the token is answered 401 with a
// JSON body and never reaches it.
func (b *Bearer) Wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !b.Allowed(r) {
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("WWW-Authenticate", `Bearer realm="tokenwarden-metrics"`)
			w.Header().Set("Cache-Control", "no-store")
			w.WriteHeader(http.StatusUnauthorized)
			w.Write([]byte(unauthorized))
			return
		}
		next.ServeHTTP(w, r)
	})
}
