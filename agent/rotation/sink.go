package rotation

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/tokenwarden/tokenwarden/agent/atomicfile"
	"github.com/tokenwarden/tokenwarden/policy"
)

// Delivery is a successor token on its way to the service that uses it.
// Token exists only in memory here and at the sink's destination: String,
// GoString and LogValue leave it out, so a Delivery that reaches a log or an error
// message does not leak it.
type Delivery struct {
	TokenID     string    `json:"token_id"`
	Predecessor string    `json:"predecessor"`
	Subject     string    `json:"subject"`
	Class       string    `json:"class"`
	Tenant      string    `json:"tenant,omitempty"`
	ExpiresAt   time.Time `json:"expires_at"`
	Token       string    `json:"token"`
}

// String describes the delivery without its token.
func (d Delivery) String() string {
	return fmt.Sprintf("delivery of %s (successor of %s, subject %s)", d.TokenID, d.Predecessor, d.Subject)
}

// GoString describes the delivery for %#v, without its token.
func (d Delivery) GoString() string { return d.String() }

// LogValue logs the delivery without its token.
func (d Delivery) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("token_id", d.TokenID), slog.String("predecessor", d.Predecessor),
		slog.String("subject", d.Subject), slog.String("class", d.Class),
	)
}

// Sink delivers successor tokens somewhere their users pick them up.
type Sink interface {
	Deliver(ctx context.Context, d Delivery) error
}

// Sink kinds, the sink label of tokenwarden_rotation_deliveries_total.
const (
	KindFile    = "file"
	KindWebhook = "webhook"
)

// builtSink is a sink of a delivery spec, or why it could not be built;
// the scheduler delivers to the sinks that could, and reports the rest.
// Sinks are built per delivery, so the webhook secret is read afresh and a
// reload picks up a new one.
type builtSink struct {
	kind string
	sink Sink
	err  error
}

func buildSinks(spec *policy.DeliverySpec) []builtSink {
	if spec == nil {
		return nil
	}
	var out []builtSink
	if spec.File != "" {
		out = append(out, builtSink{kind: KindFile, sink: &FileSink{Path: spec.File}})
	}
	if spec.Webhook != nil {
		w, err := NewWebhookSink(*spec.Webhook)
		b := builtSink{kind: KindWebhook, err: err}
		if err == nil {
			b.sink = w
		}
		out = append(out, b)
	}
	return out
}

// FileSink writes the token, and nothing else, to Path (mode 0600). The file
// is replaced atomically, so a reader sees the old token or the new one,
// never a torn write, and the new one survives a crash once Deliver returns.
type FileSink struct {
	Path string
}

// Deliver replaces the file with d.Token.
func (s *FileSink) Deliver(ctx context.Context, d Delivery) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if s.Path == "" {
		return errors.New("file sink: no path")
	}
	if err := atomicfile.Write(s.Path, []byte(d.Token)); err != nil {
		return fmt.Errorf("file sink %s: %w", s.Path, err)
	}
	return nil
}
