package rotation

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/tokenwarden/tokenwarden/policy"
)

// Webhook headers. The signature covers the timestamp and the body, so a
// receiver that rejects old timestamps also rejects replayed deliveries.
const (
	HeaderSignature = "X-Tokenwarden-Signature" // "sha256=" + hex HMAC-SHA256(secret, timestamp + "." + body)
	HeaderTimestamp = "X-Tokenwarden-Timestamp" // Unix seconds when the attempt was signed
	signaturePrefix = "sha256="
)

// Webhook defaults.
const (
	DefaultMaxAttempts = 5
	DefaultBackoff     = 500 * time.Millisecond
	// maxBackoff caps the doubling (and a receiver's Retry-After), so a
	// delivery gives up within a minute or so instead of stalling rotation.
	maxBackoff = 30 * time.Second
	// webhookTimeout bounds one attempt of the default client.
	webhookTimeout = 10 * time.Second
	// maxResponseDrain is how much of a response body is read (and
	// discarded) so the connection can be reused.
	maxResponseDrain = 64 << 10
)

// WebhookSink POSTs each delivery as JSON to URL, signed with Secret (see
// Sign). It retries network errors, 429 and 5xx with doubling backoff, and
// gives up at once on any other status outside 2xx; a redirect is a failure,
// since following it would send the token to a host nobody configured.
type WebhookSink struct {
	URL    string
	Secret []byte
	// Client sends the requests; nil means a client with a 10s timeout
	// that does not follow redirects.
	Client *http.Client
	// MaxAttempts is the number of tries (DefaultMaxAttempts when zero).
	MaxAttempts int
	// Backoff is the wait after the first failed try, doubled after each
	// (DefaultBackoff when zero), capped at 30s.
	Backoff time.Duration
	// Now stamps attempts; nil means time.Now.
	Now func() time.Time
}

// NewWebhookSink builds a sink from policy, reading the secret file. A
// missing or empty secret is refused: an unsigned token delivery could be
// forged by anyone who can reach the receiver.
func NewWebhookSink(spec policy.WebhookSpec) (*WebhookSink, error) {
	if spec.URL == "" {
		return nil, errors.New("webhook sink: no url")
	}
	where := redactURL(spec.URL)
	if spec.SecretFile == "" {
		return nil, fmt.Errorf("webhook sink %s: no secret_file: set one so the receiver can verify deliveries", where)
	}
	raw, err := os.ReadFile(spec.SecretFile)
	if err != nil {
		return nil, fmt.Errorf("webhook sink %s: read secret: %w", where, err)
	}
	// Files written by editors and `echo` end in a newline that is not part
	// of the secret.
	secret := bytes.TrimSpace(raw)
	if len(secret) == 0 {
		return nil, fmt.Errorf("webhook sink %s: secret file %s is empty: write a random secret (e.g. `openssl rand -hex 32`) into it", where, spec.SecretFile)
	}
	return &WebhookSink{URL: spec.URL, Secret: secret}, nil
}

// defaultClient refuses redirects: see WebhookSink.
var defaultClient = &http.Client{
	Timeout: webhookTimeout,
	CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	},
}

// Deliver posts d, retrying as described on WebhookSink. Errors name the URL
// (see redactURL) and the status, never the body sent or received.
func (s *WebhookSink) Deliver(ctx context.Context, d Delivery) error {
	where := redactURL(s.URL)
	if len(s.Secret) == 0 {
		return fmt.Errorf("webhook sink %s: no secret: refusing to send an unsigned delivery", where)
	}
	body, err := json.Marshal(d)
	if err != nil {
		return fmt.Errorf("webhook sink %s: encode: %w", where, err)
	}
	attempts := s.MaxAttempts
	if attempts <= 0 {
		attempts = DefaultMaxAttempts
	}
	wait := s.Backoff
	if wait <= 0 {
		wait = DefaultBackoff
	}
	var last error
	for attempt := 1; ; attempt++ {
		retryAfter, err := s.post(ctx, body)
		if err == nil {
			return nil
		}
		last = err
		var perm *permanentError
		if errors.As(err, &perm) || attempt >= attempts || ctx.Err() != nil {
			return fmt.Errorf("webhook sink %s: gave up after %d attempt(s): %w", where, attempt, last)
		}
		pause := min(max(wait, retryAfter), maxBackoff)
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("webhook sink %s: gave up after %d attempt(s): %w (then %w)", where, attempt, last, ctx.Err())
		case <-t.C:
		}
		wait = min(2*wait, maxBackoff)
	}
}

// permanentError is a response that retrying will not change.
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// post makes one attempt. It returns the receiver's Retry-After (zero when
// absent) so a 429 or 503 is honoured.
func (s *WebhookSink) post(ctx context.Context, body []byte) (time.Duration, error) {
	now := time.Now
	if s.Now != nil {
		now = s.Now
	}
	ts := strconv.FormatInt(now().Unix(), 10)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.URL, bytes.NewReader(body))
	if err != nil {
		// A malformed URL will not fix itself. The error quotes the URL,
		// which Deliver's message already names, redacted.
		return 0, &permanentError{errors.New("invalid url")}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "tokenwarden-rotation")
	req.Header.Set(HeaderTimestamp, ts)
	req.Header.Set(HeaderSignature, Sign(s.Secret, ts, body))
	client := s.Client
	if client == nil {
		client = defaultClient
	}
	resp, err := client.Do(req)
	if err != nil {
		// *url.Error quotes the URL with its query; Deliver names it redacted.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = fmt.Errorf("%s: %w", ue.Op, ue.Err)
		}
		return 0, err
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, maxResponseDrain))
	resp.Body.Close()
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		return 0, nil
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		return retryAfter(resp.Header.Get("Retry-After")), fmt.Errorf("receiver answered %d", resp.StatusCode)
	default:
		return 0, &permanentError{fmt.Errorf("receiver answered %d", resp.StatusCode)}
	}
}

// redactURL is a webhook URL fit for errors, logs and audit records: its
// password, query and fragment, any of which may hold a credential, are
// left out.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable url)"
	}
	u.RawQuery, u.ForceQuery, u.Fragment, u.RawFragment = "", false, "", ""
	return u.Redacted()
}

// retryAfter reads a Retry-After given in seconds (the HTTP-date form is
// rare from webhooks and ignored).
func retryAfter(v string) time.Duration {
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil || n <= 0 {
		return 0
	}
	return time.Duration(n) * time.Second
}

// Sign returns the X-Tokenwarden-Signature value for a delivery:
// "sha256=" + hex(HMAC-SHA256(secret, timestamp + "." + body)).
func Sign(secret []byte, timestamp string, body []byte) string {
	return signaturePrefix + hex.EncodeToString(mac(secret, timestamp, body))
}

func mac(secret []byte, timestamp string, body []byte) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(timestamp))
	m.Write([]byte{'.'})
	m.Write(body)
	return m.Sum(nil)
}

// Verify reports whether signatureHeader is a valid signature of timestamp
// and body under secret, comparing in constant time. Receivers should also
// reject timestamps more than a few minutes old, which Verify leaves to them
// because only they know their clock and replay window.
func Verify(secret []byte, timestamp string, body []byte, signatureHeader string) bool {
	hexSig, ok := strings.CutPrefix(signatureHeader, signaturePrefix)
	if !ok || len(secret) == 0 {
		return false
	}
	got, err := hex.DecodeString(hexSig)
	if err != nil {
		return false
	}
	return hmac.Equal(got, mac(secret, timestamp, body))
}
