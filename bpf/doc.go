// Package bpf is the kernel side of tokenwarden: eBPF programs that count
// plaintext HTTP/1.x requests per bearer token and drop those whose token is
// revoked, and the loader that attaches them (TCX, cgroup_skb), keeps the
// kernel's revoked set, and reads per-token counters and drop events.
//
// Tokens are named by HashToken (policy.WireHash), their wire identity: the
// first 64 bits of the token's signature, decoded from the 11 characters
// that start 86 bytes before its end. The kernel never sees or stores
// anything else about a token. ParseRequest is the exact Go statement of what the programs look
// for in a packet.
//
// Loading needs CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN (or root), and TCX
// needs Linux 6.6 or newer. Without them Load fails with an error for which IsPermission or
// errors.Is(err, ErrUnsupported) is true, so the agent can run without the
// kernel side. See docs/kernel.md.
package bpf

//go:generate bash generate.sh
