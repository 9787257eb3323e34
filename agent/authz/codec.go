package authz

import (
	"context"
	"errors"
	"fmt"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	_ "google.golang.org/grpc/encoding/proto" // registers the "proto" codec answerCodec wraps
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
)

// answer is a CheckResponse and, for the answers shared by many checks (a
// token's allowed answer, each denial, the public answer), its encoding,
// made once when the answer is built. Encoding a CheckResponse with
// protobuf-go's reflection costs a few microseconds (BenchmarkCodecMarshal),
// about as much as the decision it carries; a shared answer is never
// encoded again. An answer built for one check (forged headers to remove)
// has no encoding and is encoded as usual.
//
// A token's cached answer keeps only its bytes (msg is nil): a thousand
// cached tokens are then a thousand byte slices the garbage collector does
// not look into, not some twenty thousand small protobuf objects it marks
// on every cycle. The in-process Check decodes them (Message).
//
// Shared answers are handed to grpc-go by pointer, with the BufferSlice the
// codec returns built once too: sending one allocates nothing.
type answer struct {
	msg  *authv3.CheckResponse
	wire []byte
	bufs mem.BufferSlice // wire as grpc-go's codec returns it; read-only
}

// empty reports whether a has nothing to send: an empty CheckResponse has
// status 0, OK, so it must never go out.
func (a *answer) empty() bool { return a == nil || (a.msg == nil && len(a.wire) == 0) }

// Message is the answer's CheckResponse, decoded from its bytes when only
// those are kept.
func (a *answer) Message() *authv3.CheckResponse {
	if a.msg != nil {
		return a.msg
	}
	msg := new(authv3.CheckResponse)
	if err := proto.Unmarshal(a.wire, msg); err != nil {
		panic("authz: decode a check answer we encoded: " + err.Error())
	}
	return msg
}

// encoded returns msg with its encoding. Deterministic, so the bytes are
// the same from run to run; msg must not change afterwards.
//
// Answers cached per token keep only the bytes: see bytesOnly.
func encoded(msg *authv3.CheckResponse) answer {
	wire, err := proto.MarshalOptions{Deterministic: true}.Marshal(msg)
	if err != nil {
		panic("authz: encode a check answer: " + err.Error()) // a well-formed message cannot fail
	}
	return answer{msg: msg, wire: wire, bufs: mem.BufferSlice{mem.SliceBuffer(wire)}}
}

// bytesOnly is a without its message.
func (a answer) bytesOnly() answer { return answer{wire: a.wire, bufs: a.bufs} }

// answerCodec is grpc-go's "proto" codec that also sends an answer: its
// encoding when it has one, else its message encoded as usual. Everything
// else, and every request, goes through the proto codec unchanged.
type answerCodec struct{ proto encoding.CodecV2 }

func newAnswerCodec() answerCodec { return answerCodec{proto: encoding.GetCodecV2("proto")} }

func (answerCodec) Name() string { return "proto" }

func (c answerCodec) Marshal(v any) (mem.BufferSlice, error) {
	a, ok := v.(*answer)
	switch {
	case !ok:
		return c.proto.Marshal(v)
	case a.empty():
		// checkEncoded answers a denial instead, so this is unreachable.
		return nil, errEmptyAnswer
	case a.bufs != nil:
		// Shared and read-only: a SliceBuffer's Ref and Free do nothing,
		// so grpc-go never returns it to a pool, and it only reads it.
		return a.bufs, nil
	}
	return c.proto.Marshal(a.msg)
}

func (c answerCodec) Unmarshal(data mem.BufferSlice, v any) error { return c.proto.Unmarshal(data, v) }

// errEmptyAnswer is answerCodec's refusal to send an answer with neither a
// message nor bytes.
var errEmptyAnswer = errors.New("authz: an empty check answer would read as OK; refusing to send it")

// encodedChecker is what checkService's handler calls: Server.checkEncoded.
// grpc.Server.RegisterService refuses a server that does not implement it.
type encodedChecker interface {
	checkEncoded(*authv3.CheckRequest) *answer
}

// checkService is envoy.service.auth.v3.Authorization with a Check
// handler that answers with an answer (encoded by answerCodec) instead of
// the bare message: the service name, method and wire format are those of
// authv3.Authorization_ServiceDesc. An interceptor, were one configured,
// would see the request as a *authv3.CheckRequest and the reply as an
// answer.
var checkService = grpc.ServiceDesc{
	ServiceName: authv3.Authorization_ServiceDesc.ServiceName,
	HandlerType: (*encodedChecker)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "Check",
		Handler:    checkHandler,
	}},
	Metadata: authv3.Authorization_ServiceDesc.Metadata,
}

func checkHandler(srv any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
	in := new(authv3.CheckRequest)
	if err := dec(in); err != nil {
		return nil, err
	}
	s := srv.(encodedChecker) // RegisterService checked it
	if interceptor == nil {
		return s.checkEncoded(in), nil
	}
	info := &grpc.UnaryServerInfo{Server: srv, FullMethod: authv3.Authorization_Check_FullMethodName}
	return interceptor(ctx, in, info, func(_ context.Context, req any) (any, error) {
		r, ok := req.(*authv3.CheckRequest)
		if !ok {
			return nil, fmt.Errorf("authz: an interceptor passed %T to Check", req)
		}
		return s.checkEncoded(r), nil
	})
}
