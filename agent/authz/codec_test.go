package authz

import (
	"context"
	"testing"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/tokenwarden/tokenwarden/policy"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
)

// codecAnswers are the answers a check gives: allowed with identity
// headers (shared), allowed with forged headers to remove (built for that
// check), denied (shared).
func codecAnswers(tb testing.TB) map[string]*answer {
	f := newFixture(tb)
	s := f.server(tb, Config{})
	tok, _ := f.mint(tb, policy.IssueRequest{Subject: "svc", Tenant: "acme", Scopes: []string{"orders:read", "orders:write"}}, fixedNow)
	out := map[string]*answer{}
	for name, req := range map[string]*authv3.CheckRequest{
		"allowed": checkRequest("GET", "orders", "/orders/1", map[string]string{"authorization": "Bearer " + tok}),
		"forged":  checkRequest("GET", "orders", "/orders/1", map[string]string{"authorization": "Bearer " + tok, "x-tokenwarden-subject": "root"}),
		"denied":  checkRequest("GET", "orders", "/orders/1", nil),
	} {
		out[name] = s.checkEncoded(req)
	}
	return out
}

// TestCodecMatchesProto: what answerCodec sends for an answer decodes to
// its message, whether the answer carries its encoding or not; Check (the
// in-process API) returns the same message; anything else goes through
// grpc-go's proto codec.
func TestCodecMatchesProto(t *testing.T) {
	c, std := newAnswerCodec(), encoding.GetCodecV2("proto")
	if c.Name() != std.Name() {
		t.Fatalf("codec name %q, want %q (the content-subtype Envoy sends)", c.Name(), std.Name())
	}
	answers := codecAnswers(t)
	for name, shared := range map[string]bool{"allowed": true, "forged": false, "denied": true} {
		t.Run(name, func(t *testing.T) {
			a := answers[name]
			if got := a.wire != nil; got != shared {
				t.Fatalf("carries its encoding: %v, want %v", got, shared)
			}
			data, err := c.Marshal(a)
			if err != nil {
				t.Fatal(err)
			}
			var back authv3.CheckResponse
			if err := std.Unmarshal(data, &back); err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(&back, a.Message()) {
				t.Errorf("decoded %v, want %v", &back, a.Message())
			}
		})
	}
	req := checkRequest("GET", "orders", "/", nil)
	data, err := c.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	var back authv3.CheckRequest
	if err := c.Unmarshal(data, &back); err != nil || !proto.Equal(&back, req) {
		t.Fatalf("round trip of a CheckRequest: %v, equal %v", err, proto.Equal(&back, req))
	}
	if _, err := c.Marshal("not a message"); err == nil {
		t.Fatal("marshalled a string")
	}
}

// TestCheckReturnsTheEncodedMessage: the in-process Check and the gRPC
// handler give the same message, and a token's cached answer is kept as
// bytes only.
func TestCheckReturnsTheEncodedMessage(t *testing.T) {
	f := newFixture(t)
	s := f.server(t, Config{})
	tok, _ := f.mint(t, policy.IssueRequest{Subject: "svc", Scopes: []string{"orders:read"}}, fixedNow)
	req := checkRequest("GET", "orders", "/orders/1", map[string]string{"authorization": "Bearer " + tok})
	resp, err := s.Check(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	a := s.checkEncoded(req)
	if a.msg != nil || a.wire == nil {
		t.Fatalf("a token's cached answer keeps its message (%v) or lacks its bytes (%v)", a.msg != nil, a.wire == nil)
	}
	if !proto.Equal(a.Message(), resp) {
		t.Fatalf("gRPC answer %v, Check answered %v", a.Message(), resp)
	}
}

// BenchmarkCodecMarshal sends a token's allowed answer: encoded by grpc-go's
// proto codec each time, and by answerCodec from its encoding.
func BenchmarkCodecMarshal(b *testing.B) {
	a := codecAnswers(b)["allowed"]
	std, c := encoding.GetCodecV2("proto"), newAnswerCodec()
	msg := a.Message() // decoded once: a token's cached answer keeps only bytes
	for _, bc := range []struct {
		name string
		send func() (mem.BufferSlice, error)
	}{
		{"proto", func() (mem.BufferSlice, error) { return std.Marshal(msg) }},
		{"encoded", func() (mem.BufferSlice, error) { return c.Marshal(a) }},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				data, err := bc.send()
				if err != nil {
					b.Fatal(err)
				}
				data.Free()
			}
		})
	}
}
