package secretscan

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"sync"
	"time"
)

// RefetchEvery bounds how often the key URL is fetched: a request naming an
// unknown key identifier triggers a fetch at most this often, so forged
// identifiers cannot make the agent hammer the URL.
const RefetchEvery = 5 * time.Minute

// fetchTimeout bounds one fetch of the key URL.
const fetchTimeout = 10 * time.Second

// ErrUnknownKey is a signature by a key identifier no key document names.
var ErrUnknownKey = fmt.Errorf("%w: unknown key identifier", ErrSignature)

// KeySource holds GitHub's public keys: those of the operator's file and,
// when a URL is configured, those fetched from it. The URL is fetched again
// when a request names a key identifier not known yet (GitHub rotated), at
// most once per RefetchEvery.
type KeySource struct {
	file   Keys
	url    string
	client *http.Client
	now    func() time.Time

	mu        sync.Mutex
	fetched   Keys
	lastFetch time.Time
}

// NewKeySource serves the keys of file and, when keysURL is not empty, of
// that https URL (client nil: http.DefaultClient with a timeout).
func NewKeySource(file Keys, keysURL string, client *http.Client) (*KeySource, error) {
	if len(file) == 0 {
		return nil, errors.New("secretscan: the key file holds no keys")
	}
	if keysURL != "" {
		u, err := url.Parse(keysURL)
		if err != nil || u.Scheme != "https" || u.Host == "" || u.User != nil {
			return nil, fmt.Errorf("secretscan: key URL %q: want an https URL", keysURL)
		}
	}
	if client == nil {
		client = &http.Client{Timeout: fetchTimeout, CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if req.URL.Scheme != "https" || len(via) > 3 {
				return errors.New("redirect refused: want at most 3, to https")
			}
			return nil
		}}
	}
	return &KeySource{file: file, url: keysURL, client: client, now: time.Now}, nil
}

func (s *KeySource) keys() Keys {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.fetched) == 0 {
		return s.file
	}
	all := maps.Clone(s.fetched)
	maps.Copy(all, s.file) // the operator's file wins
	return all
}

// Verify checks GitHub's signature of body (see Keys.Verify), fetching the
// key URL first when keyID is unknown and the last fetch is old enough.
func (s *KeySource) Verify(ctx context.Context, keyID, sig string, body []byte) error {
	err := s.keys().Verify(keyID, sig, body)
	if !errors.Is(err, ErrUnknownKey) || s.url == "" || keyID == "" || !s.refetch(ctx) {
		return err
	}
	return s.keys().Verify(keyID, sig, body)
}

// refetch fetches the key URL unless it was fetched less than RefetchEvery
// ago; it reports whether new keys were adopted.
func (s *KeySource) refetch(ctx context.Context) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	if !s.lastFetch.IsZero() && now.Sub(s.lastFetch) < RefetchEvery {
		return false
	}
	s.lastFetch = now
	keys, err := s.fetch(ctx)
	if err != nil {
		return false
	}
	s.fetched = keys
	return true
}

func (s *KeySource) fetch(ctx context.Context) (Keys, error) {
	ctx, cancel := context.WithTimeout(ctx, fetchTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetch GitHub's keys: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("fetch GitHub's keys: %s", resp.Status)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxKeysBytes+1))
	if err != nil {
		return nil, fmt.Errorf("fetch GitHub's keys: %w", err)
	}
	return ParseKeys(data)
}
