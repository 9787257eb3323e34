//go:build ignore

// tokenmeter: per-token request metering and revocation enforcement for
// plaintext HTTP/1.x.
//
// For every packet whose TCP payload starts like a request line (a method
// token, a space, and the start of a request target), the programs find
// every "Authorization: Bearer <token>" header in the header block of that
// packet and take each token's wire identity: 64 bits of its signature, the
// base64url decoding of the 11 characters that start 86 bytes before its end
// (policy.WireHash; a minted token's last 86 characters are its
// signature). The request is counted under the identity of
// the first token, and dropped if the identity of any of them is in the
// revoked set.
//
// The rules are mirrored exactly by ParseRequest in parse.go; the two are
// checked against each other by FuzzParseAgreement. Change both together.
//
// Layout of the work per request, cheapest reject first:
//   1. IP/TCP headers by direct packet access (pulled into the linear area on
//      TCX if needed; cgroup_skb sees them linear already).
//   2. The first 18 payload bytes: a method token of 1..16 tchar bytes, a
//      space, then '/', '*', a letter, a digit or '['. TLS, binary data and
//      responses ("HTTP/1.1 200") fail within the first few bytes.
//   3. The payload, up to MAX_SCAN_LEN bytes, copied in chunks into
//      a per-CPU scratch buffer (on veth and lo the payload is not linear).
//   4. A bpf_loop that looks for '\n' 8 bytes at a time and, at each of the
//      first MAX_HEADER_LINES line starts, compares "authorization:" 8 bytes
//      at a time with ASCII case folding. The line limit bounds the work a
//      packet of short lines can cause.
//      The same loop finds each token's end 8 bytes at a time (128 per
//      iteration, one branch per 64; the first 128 in the iteration that
//      found its header line, so a token under 128 bytes takes no
//      iteration of its own and a minted one, 250 bytes or more, one or
//      two), decodes the 11 characters
//      that start 86 bytes before that end, looks the identity up in the
//      revoked set, and goes on to the next line. No byte of the token is
//      hashed and no '.' is searched for: beyond the search for its end,
//      the cost does not grow with the token.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

char __license[] SEC("license") = "Dual MIT/GPL";

/* Keep in sync with parse.go. */
#define MAX_TOKEN_LEN 8192  /* policy.MaxTokenBytes; longer tokens are "truncated" */
#define MAX_SCAN_LEN 16384 /* TCP payload bytes considered per packet */
#define MAX_HEADER_LINES 128 /* lines after the request line examined */

/* Payload bytes copied per bpf_skb_load_bytes: a first chunk that holds a
 * typical request's headers, then bigger ones for long header blocks. */
#define FIRST_CHUNK_LEN 512
#define CHUNK_LEN 2048
#define LOOKAHEAD 128 /* bytes one scan step may read past its start */
#define PAD_LEN 64    /* zeroed bytes after the loaded data */
/* Offsets into the scratch buffer are masked with SCRATCH_MASK: the
 * verifier then knows every access is in bounds whatever clang does to the
 * arithmetic. Real offsets stay below MAX_SCAN_LEN + PAD_LEN, so the mask
 * never changes one. */
#define SCRATCH_MASK (2 * MAX_SCAN_LEN - 1)
#define SCRATCH_LEN (SCRATCH_MASK + 1 + LOOKAHEAD)

/* Every scan step finds a line (at most MAX_HEADER_LINES + 1), moves 64
 * bytes or more on (at most MAX_SCAN_LEN / 64 + 1 in all), or leaves the
 * OWS, SPACES or TOKEN state (at most three times per line): 2048 steps are
 * never used up. */
#define SCAN_STEPS 2048
/* Bytes a token step looks at: it only looks for the token's end. The
 * window reads at most LOOKAHEAD bytes, and the first byte past the data
 * is a zero, so the first end found is never in stale scratch bytes. */
#define TOKEN_STEP_BYTES 128
_Static_assert(TOKEN_STEP_BYTES <= LOOKAHEAD, "a token step reads TOKEN_STEP_BYTES from one window");
/* A tokenwarden token's signature segment: 64 bytes in base64url. The
 * identity is read this many bytes before the token's end
 * (policy.SignatureChars). */
#define SIG_CHARS 86
/* Characters of the signature segment decoded into the identity: 11
 * base64url characters carry 66 bits, the first 64 are kept. */
#define ID_CHARS 11
/* Request line: a method of at most MAX_METHOD_LEN tchar bytes, SP, and the
 * first byte of the request target. */
#define MAX_METHOD_LEN 16
#define REQ_PEEK_LEN 24

#define PROTO_TCP 6
#define NEXTHDR_HOP 0
#define NEXTHDR_ROUTING 43
#define NEXTHDR_FRAGMENT 44
#define NEXTHDR_DEST 60
#define MAX_IPV6_EXT 4
/* Header bytes made linear with bpf_skb_pull_data when they are not. */
#define PULL_LEN 256

#define FAMILY_INET 2
#define FAMILY_INET6 10

enum hook {
	HOOK_TCX_INGRESS = 1,
	HOOK_TCX_EGRESS = 2,
	HOOK_CGROUP_INGRESS = 3,
};

enum action {
	ACTION_DROP = 1,
};

/* Value of token_counts. Updated atomically: the map is shared by all CPUs. */
struct token_stats {
	__u64 requests;
	__u64 bytes;         /* IP packet length of the counted packets */
	__u64 last_seen_ns;  /* bpf_ktime_get_coarse_ns (CLOCK_MONOTONIC_COARSE) */
	__u64 drops;
	__u64 first_seen_ns; /* set once: tells user space an evicted and
			      * recreated entry from the one it read before */
};

/* Per-CPU counters. Plain increments: the programs run with bottom halves
 * disabled, so they never interleave on one CPU. */
struct global_stats {
	__u64 packets;     /* packets seen by any program */
	__u64 requests;    /* packets whose TCP payload starts like a request line */
	__u64 tokens;      /* requests whose first bearer token was counted */
	__u64 truncated;   /* tokens longer than MAX_TOKEN_LEN (not counted) */
	__u64 incomplete;  /* tokens that run to the end of the scanned bytes */
	__u64 drops;       /* requests dropped because any token is revoked */
	__u64 events_lost; /* drop events the ring buffer had no room for */
	__u64 unparsed;    /* IP/TCP headers that could not be read */
};

/* Ring buffer record. Explicit layout, no implicit padding: 64 bytes. */
struct drop_event {
	__u64 hash; /* wire identity of the revoked token */
	__u64 ktime_ns; /* bpf_ktime_get_ns (CLOCK_MONOTONIC) */
	__u8 saddr[16]; /* IPv4 in the first 4 bytes, rest zero */
	__u8 daddr[16];
	__u32 ifindex;
	__u16 sport; /* host byte order */
	__u16 dport;
	__u16 family; /* AF_INET or AF_INET6 */
	__u8 action;
	__u8 hook;
	__u8 _pad[4];
};

struct scratch {
	/* Line starts seen by the scan. Kept here, not on the stack, so the
	 * verifier does not track its value: a known counter would make it
	 * walk the scan callback once per possible count. */
	__u32 lines;
	/* The scan's state, position and current token start (struct scan
	 * has the rest): unknown to the verifier, so it checks one step from
	 * any state once instead of once per state it can reach. */
	__u32 state;
	__u32 pos;
	__u32 tok;
	/* After the counters, so that a load or store of one is a single
	 * instruction: BPF memory offsets are 16-bit, and every counter is
	 * within reach of the map value's start. */
	__u8 buf[SCRATCH_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct token_stats);
} token_counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64);
	__type(value, __u8);
} revoked SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct global_stats);
} stats SEC(".maps");

/* One scratch buffer per CPU, indexed by CPU number: the buffer is over the
 * 32 KiB a per-CPU array value may hold. Load sets max_entries to the number
 * of possible CPUs. The programs never interleave on one CPU (see stats). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch);
} scratch SEC(".maps");

/* bpf2go -type needs the type in BTF. */
const struct drop_event *unused_drop_event __attribute__((unused));

/* Value of a base64url character; every other byte counts as 0. */
static const __u8 b64val[256] = {
	['A'] = 0,  ['B'] = 1,  ['C'] = 2,  ['D'] = 3,  ['E'] = 4,  ['F'] = 5,  ['G'] = 6,
	['H'] = 7,  ['I'] = 8,  ['J'] = 9,  ['K'] = 10, ['L'] = 11, ['M'] = 12, ['N'] = 13,
	['O'] = 14, ['P'] = 15, ['Q'] = 16, ['R'] = 17, ['S'] = 18, ['T'] = 19, ['U'] = 20,
	['V'] = 21, ['W'] = 22, ['X'] = 23, ['Y'] = 24, ['Z'] = 25, ['a'] = 26, ['b'] = 27,
	['c'] = 28, ['d'] = 29, ['e'] = 30, ['f'] = 31, ['g'] = 32, ['h'] = 33, ['i'] = 34,
	['j'] = 35, ['k'] = 36, ['l'] = 37, ['m'] = 38, ['n'] = 39, ['o'] = 40, ['p'] = 41,
	['q'] = 42, ['r'] = 43, ['s'] = 44, ['t'] = 45, ['u'] = 46, ['v'] = 47, ['w'] = 48,
	['x'] = 49, ['y'] = 50, ['z'] = 51, ['0'] = 52, ['1'] = 53, ['2'] = 54, ['3'] = 55,
	['4'] = 56, ['5'] = 57, ['6'] = 58, ['7'] = 59, ['8'] = 60, ['9'] = 61, ['-'] = 62,
	['_'] = 63,
};

/* A token is a run of visible ASCII bytes (0x21..0x7e): it ends at SP,
 * HTAB, CR, LF, any other control byte, DEL or a byte >= 0x80. */
static __always_inline int is_tokbyte(__u8 c)
{
	return (__u8)(c - 0x21) < 0x5e;
}

/* RFC 9110 tchar: "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." /
 * "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA. Value 2 marks the bytes a
 * request target may start with: '/' (origin-form), '*' (asterisk-form), a
 * letter (absolute-form scheme), a digit or '[' (CONNECT authority-form). */
static const __u8 reqchar[256] = {
	['A' ... 'Z'] = 3, ['a' ... 'z'] = 3, ['0' ... '9'] = 3,
	['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1, ['*'] = 3,
	['+'] = 1, ['-'] = 1, ['.'] = 1, ['^'] = 1, ['_'] = 1, ['`'] = 1, ['|'] = 1,
	['~'] = 1, ['/'] = 2, ['['] = 2,
};

/* Little-endian 64-bit word of up to eight characters. */
#define W4(a, b, c, d) ((__u64)(a) | (__u64)(b) << 8 | (__u64)(c) << 16 | (__u64)(d) << 24)
#define W8(a, b, c, d, e, f, g, h) (W4(a, b, c, d) | W4(e, f, g, h) << 32)

#define BYTES_01 0x0101010101010101ULL
#define BYTES_80 0x8080808080808080ULL
#define BYTES_LF 0x0a0a0a0a0a0a0a0aULL
#define FOLD8 0x2020202020202020ULL /* ASCII letters to lower case */

#define MASK4 0x00000000ffffffffULL
#define MASK5 0x000000ffffffffffULL
#define MASK6 0x0000ffffffffffffULL
#define MASK7 0x00ffffffffffffffULL

enum verdict {
	VERDICT_PASS,
	VERDICT_DROP,
};

enum scan_state {
	ST_SEEK,   /* looking for the next '\n' from pos */
	ST_OWS,    /* after "authorization:", skipping SP / HTAB */
	ST_SPACES, /* after "bearer" and SP / HTAB, skipping SP / HTAB */
	ST_TOKEN,  /* finding the end of the token that starts at tok */
	ST_END,    /* end of headers or of data */
};

/* What the first bearer token of a request was. */
enum tok_result {
	TOK_NONE,
	TOK_FOUND,
	TOK_TRUNCATED,  /* longer than MAX_TOKEN_LEN: no token the agent issues */
	TOK_INCOMPLETE, /* runs into the end of the scanned bytes */
};

struct scan {
	struct __sk_buff *skb;
	struct scratch *scr;
	__u8 *buf;        /* scr->buf: payload[0:n], then PAD_LEN zeros */
	__u32 payload_off; /* offset of the TCP payload from skb->data */
	__u32 plen;        /* payload bytes in scope, at most MAX_SCAN_LEN */
	__u32 n;           /* payload bytes copied into buf */
	__u32 first;       /* enum tok_result of the first token */
	__u64 first_id;    /* its identity if TOK_FOUND */
	__u64 revoked_id;
	__u32 revoked;     /* some token's identity is in the revoked set */
};

struct pkt {
	__u32 ip_len;      /* IP header to the end of the IP payload */
	__u32 l4_off;      /* TCP header */
	__u32 payload_off; /* TCP payload */
	__u32 plen;        /* TCP payload length */
	__u32 family;
};

enum parse_result {
	PARSE_OK,
	PARSE_SKIP,      /* not TCP with payload, or not the first fragment */
	PARSE_NONLINEAR, /* headers beyond the linear area */
};

static __always_inline __u64 load64(const __u8 *buf, __u32 off)
{
	return *(const __u64 *)(buf + (off & SCRATCH_MASK));
}

/* The LOOKAHEAD bytes from off, read as words at constant offsets from one
 * masked pointer (SCRATCH_LEN leaves LOOKAHEAD bytes after the mask's
 * range). */
static __always_inline const __u64 *window(const __u8 *buf, __u32 off)
{
	return (const __u64 *)(buf + (off & SCRATCH_MASK));
}

static __always_inline __u8 load8(const __u8 *buf, __u32 off)
{
	return buf[off & SCRATCH_MASK];
}

#define BYTES(c) ((__u64)(c) * BYTES_01)

/* High bit of each byte of w set iff that byte is not c. Exact per byte,
 * unlike the borrow trick below. */
static __always_inline __u64 bytes_not(__u64 w, __u8 c)
{
	__u64 z = w ^ BYTES(c);
	return (((z & BYTES(0x7f)) + BYTES(0x7f)) | z) & BYTES_80;
}

/* Nonzero iff w holds a '\n'; the lowest set bit marks the first one. */
static __always_inline __u64 newline_bits(__u64 w)
{
	__u64 x = w ^ BYTES_LF;
	return (x - BYTES_01) & ~x & BYTES_80;
}

/* Index of the byte marked by the lowest set bit of m (m != 0). BPF has no
 * count-trailing-zeros: isolate the bit and let a multiply pick the index. */
static __always_inline __u32 first_marked_byte(__u64 m)
{
	return (((m & -m) >> 7) * 0x0001020304050607ULL) >> 56;
}

/* High bit of each byte of w set iff that byte ends a token: below 0x21 or
 * above 0x7e. Exact per byte: no sum carries into the next byte. */
static __always_inline __u64 token_end_bits(__u64 w)
{
	__u64 a = w & BYTES(0x7f);
	__u64 ge21 = a + BYTES(0x80 - 0x21);
	__u64 ge7f = a + BYTES(0x01);
	return (~ge21 | ge7f | w) & BYTES_80;
}

/* The high bit of some byte set iff a byte of w ends a token. Four
 * operations, against token_end_bits' six, for the words that hold none:
 * a byte below 0x21 borrows (sets its high bit), 0x7f carries into it,
 * 0x80 and above have it. A borrow or carry only leaves a byte that ends a
 * token, so it only marks bytes above one that does: right for "any", not
 * for "where". */
static __always_inline __u64 token_end_any(__u64 w)
{
	return (w - BYTES(0x21)) | (w + BYTES(0x01)) | w;
}

/* The wire identity of a token that ends at end, read from s (SIG_CHARS
 * before the end, or the token's start if it is shorter): the first 64 bits
 * of the base64url decoding of the ID_CHARS characters from s, big-endian,
 * characters past the end counting as 0. For a tokenwarden token, the
 * first 8 bytes of its Ed25519 signature. */
static __always_inline __u64 wire_id(const __u8 *buf, __u32 s, __u32 end)
{
	__u32 len = end - s;
	__u64 id = 0;

#pragma unroll
	for (int i = 0; i < ID_CHARS - 1; i++) {
		__u64 v = b64val[load8(buf, s + i)];
		if (i >= len)
			v = 0;
		id = id << 6 | v;
	}
	if (len >= ID_CHARS)
		id = id << 4 | b64val[load8(buf, s + ID_CHARS - 1)] >> 2;
	else
		id <<= 4;
	return id;
}

static __always_inline void zero_pad(__u8 *buf, __u32 n)
{
	if (n > MAX_SCAN_LEN)
		return;
#pragma unroll
	for (int i = 0; i < PAD_LEN; i += 8)
		*(__u64 *)(buf + n + i) = 0;
}

/* Copy the next chunk of payload into the scratch buffer. On failure the
 * data in scope ends at what was copied. */
static __always_inline void load_more(struct scan *sc)
{
	__u32 n = sc->n;
	__u32 len = sc->plen - n;
	__u32 max = n ? CHUNK_LEN : FIRST_CHUNK_LEN;

	if (len > max)
		len = max;
	if (n >= MAX_SCAN_LEN || len == 0) {
		sc->plen = n;
		return;
	}
	if (bpf_skb_load_bytes(sc->skb, sc->payload_off + n, sc->buf + n, len) < 0) {
		sc->plen = n;
		return;
	}
	n += len;
	sc->n = n;
	zero_pad(sc->buf, n);
}

static __always_inline int is_bearer_sp(const __u8 *buf, __u32 pos)
{
	/* "bearer" in any case, then SP or HTAB (not folded: 0x00 | 0x20
	 * would pass for SP). */
	__u64 w = load64(buf, pos);
	__u8 c = w >> 48;

	return ((w | W8(32, 32, 32, 32, 32, 32, 0, 0)) & MASK6) ==
		       W8('b', 'e', 'a', 'r', 'e', 'r', 0, 0) &&
	       (c == ' ' || c == '\t');
}

/* pos, through the scratch area: the verifier reads back a value it knows
 * nothing about, so the paths that reach one point with different known
 * ranges for pos become one state there instead of one each. */
static __always_inline __u32 unknown_pos(struct scan *sc, __u32 pos)
{
	sc->scr->pos = pos;
	return *(volatile __u32 *)&sc->scr->pos;
}

/* Where the token that is at least at win ends: 1 with *pos moved to its
 * first byte that is not a token byte, if that is within TOKEN_STEP_BYTES;
 * else 0. Eight bytes at a time, one branch per 64 bytes, then which word. */
static __always_inline int find_token_end(const __u64 *win, __u32 *pos)
{
#pragma unroll
	for (int h = 0; h < TOKEN_STEP_BYTES / 64; h++) {
		__u64 any = 0;
#pragma unroll
		for (int k = 0; k < 8; k++)
			any |= token_end_any(win[8 * h + k]);
		if (!(any & BYTES_80))
			continue;
#pragma unroll
		for (int k = 0; k < 8; k++) {
			__u64 e = token_end_bits(win[8 * h + k]);
			if (e) {
				*pos += 64 * h + 8 * k + first_marked_byte(e);
				return 1;
			}
		}
	}
	return 0;
}

/* The token that started at sc->scr->tok ended before pos (the first byte that
 * is not a token byte). Record it, look its identity up in the revoked set,
 * and go on with the next line. The identity is decoded from the
 * SIG_CHARS-character tail of the token, where a tokenwarden token keeps its
 * signature segment (the whole token if it is shorter): no search for the
 * last '.', and the same for every token length. */
static __always_inline void token_done(struct scan *sc, __u32 pos)
{
	__u64 id = 0;
	__u32 res;

	if (pos >= sc->n)
		res = TOK_INCOMPLETE; /* the rest is in a later segment */
	else if (pos - sc->scr->tok > MAX_TOKEN_LEN)
		res = TOK_TRUNCATED;
	else
		res = TOK_FOUND;

	if (res == TOK_FOUND) {
		__u32 tok = sc->scr->tok;
		id = wire_id(sc->buf, pos - tok >= SIG_CHARS ? pos - SIG_CHARS : tok, pos);
	}
	if (sc->first == TOK_NONE) {
		sc->first = res;
		sc->first_id = id;
	}
	if (res == TOK_FOUND && !sc->revoked) {
		if (bpf_map_lookup_elem(&revoked, &id)) {
			sc->revoked = 1;
			sc->revoked_id = id;
		}
	}
	sc->scr->pos = pos;
	sc->scr->state = res == TOK_INCOMPLETE ? ST_END : ST_SEEK;
}

/* One step of the header scan; returns 1 to stop the loop.
 *
 * Each step does one phase and returns, so the verifier sees every phase
 * start from the same unknown state instead of walking every combination of
 * the unrolled exits:
 *
 *   ST_SEEK    find the next '\n' within 64 bytes, then check the line:
 *              end of headers, "authorization:" or neither. The usual
 *              "Authorization: Bearer <token>" finishes here.
 *   ST_OWS     skip SP/HTAB after the colon, 64 bytes per step, then
 *              expect "bearer ".
 *   ST_SPACES  skip SP/HTAB after "bearer", 64 bytes per step, then
 *              expect a token byte.
 *   ST_TOKEN   look for the token's end in the next TOKEN_STEP_BYTES
 *              bytes, 8 at a time; at the end, record the token and go
 *              back to ST_SEEK: every Authorization line is looked at.
 *              ST_SEEK and ST_SPACES do the first such search themselves
 *              when the loaded data reaches far enough.
 *
 * Bytes past the data are zero: never '\n', SP, HTAB or a token byte.
 */
static long scan_step(__u64 index, void *ctx)
{
	struct scan *sc = ctx;
	__u32 pos = sc->scr->pos;
	__u64 m = 0;
	__u32 base = 0;
	const __u64 *win;
	__u8 *buf;
	__u8 c;

	if (pos + LOOKAHEAD > sc->n && sc->n < sc->plen)
		load_more(sc);
	buf = sc->buf;
	win = window(buf, pos);

	/* A token that ran to the end of the data ends at the zero padding. */
	if (sc->scr->state == ST_TOKEN) {
		if (find_token_end(win, &pos))
			goto token_end;
		sc->scr->pos = pos + TOKEN_STEP_BYTES;
		return 0;
	}

	if (pos >= sc->n)
		goto end;

	if (sc->scr->state == ST_OWS) {
#pragma unroll
		for (int k = 0; k < 8; k++) {
			__u64 w = win[k];
			m = bytes_not(w, ' ') & bytes_not(w, '\t');
			if (m) {
				pos += 8 * k + first_marked_byte(m);
				if (!is_bearer_sp(buf, pos))
					goto next_line;
				sc->scr->pos = pos + 7;
				sc->scr->state = ST_SPACES;
				return 0;
			}
		}
		sc->scr->pos = pos + 64;
		return 0;
	}

	if (sc->scr->state == ST_SPACES) {
#pragma unroll
		for (int k = 0; k < 8; k++) {
			__u64 w = win[k];
			m = bytes_not(w, ' ') & bytes_not(w, '\t');
			if (m) {
				pos += 8 * k + first_marked_byte(m);
				if (!is_tokbyte(load8(buf, pos)))
					goto next_line;
				goto token;
			}
		}
		sc->scr->pos = pos + 64;
		return 0;
	}

	/* ST_SEEK. Bytes past the data are zero, so never a '\n'. */
#pragma unroll
	for (int k = 0; k < 8; k++) {
		m = newline_bits(win[k]);
		if (m) {
			base = pos + 8 * k;
			goto line;
		}
	}
	sc->scr->pos = pos + 64;
	return 0;

line:
	pos = base + first_marked_byte(m) + 1;
	if (++sc->scr->lines > MAX_HEADER_LINES)
		goto end;
	/* An empty line ends the header block. */
	c = load8(buf, pos);
	if (c == '\n' || (c == '\r' && load8(buf, pos + 1) == '\n'))
		goto end;
	if ((load64(buf, pos) | FOLD8) != W8('a', 'u', 't', 'h', 'o', 'r', 'i', 'z'))
		goto next_line;
	if (((load64(buf, pos + 8) | W8(32, 32, 32, 32, 32, 0, 0, 0)) & MASK6) !=
	    W8('a', 't', 'i', 'o', 'n', ':', 0, 0))
		goto next_line;
	pos += 14;
	/* The usual form: one SP, "Bearer", one SP, the token. */
	if (load8(buf, pos) == ' ' && is_bearer_sp(buf, pos + 1) &&
	    is_tokbyte(load8(buf, pos + 8))) {
		pos += 8;
		goto token;
	}
	sc->scr->pos = pos;
	sc->scr->state = ST_OWS;
	return 0;

token:
	sc->scr->tok = pos;
	pos = unknown_pos(sc, pos);
	/* Search the token's first TOKEN_STEP_BYTES in this step: a token
	 * under that ends here. A window past the loaded data (more to load)
	 * waits for ST_TOKEN, which loads first. */
	if (pos + LOOKAHEAD <= sc->n || sc->n >= sc->plen) {
		if (find_token_end(window(buf, pos), &pos))
			goto token_end;
		pos += TOKEN_STEP_BYTES;
	}
	sc->scr->pos = pos;
	sc->scr->state = ST_TOKEN;
	return 0;

token_end:
	token_done(sc, unknown_pos(sc, pos));
	return sc->scr->state == ST_END;

next_line:
	sc->scr->pos = pos;
	sc->scr->state = ST_SEEK;
	return 0;

end:
	sc->scr->state = ST_END;
	return 1;
}

#define BYTE_AT(w, k) ((__u8)((w)[(k) / 8] >> (8 * ((k) % 8))))

/* A request line starts with a method (1..MAX_METHOD_LEN tchar bytes), SP
 * and the first byte of the request target. w holds the first payload
 * bytes, zero past the payload (zero is none of the bytes accepted). */
static __always_inline int is_request(const __u64 *w)
{
#pragma unroll
	for (int k = 0; k <= MAX_METHOD_LEN; k++) {
		__u8 c = BYTE_AT(w, k);
		if (!(reqchar[c] & 1))
			return k > 0 && c == ' ' && (reqchar[BYTE_AT(w, k + 1)] & 2);
	}
	return 0;
}

static __always_inline int parse_ipv4(struct __sk_buff *skb, __u32 l3off, struct pkt *p)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct iphdr *ip = data + l3off;
	struct tcphdr *th;
	__u32 ihl, doff, tot, ip_end;

	if ((void *)(ip + 1) > data_end)
		return PARSE_NONLINEAR;
	if (ip->version != 4 || ip->protocol != PROTO_TCP)
		return PARSE_SKIP;
	if (ip->frag_off & bpf_htons(0x1fff)) /* not the first fragment */
		return PARSE_SKIP;
	ihl = ip->ihl * 4;
	if (ihl < sizeof(*ip))
		return PARSE_SKIP;
	th = (void *)ip + ihl;
	if ((void *)(th + 1) > data_end)
		return PARSE_NONLINEAR;
	doff = th->doff * 4;
	if (doff < sizeof(*th))
		return PARSE_SKIP;

	/* tot_len is 0 for BIG TCP GSO packets: the skb length rules. */
	ip_end = skb->len;
	tot = bpf_ntohs(ip->tot_len);
	if (tot != 0 && l3off + tot < ip_end)
		ip_end = l3off + tot;

	p->family = FAMILY_INET;
	p->ip_len = ip_end - l3off;
	p->l4_off = l3off + ihl;
	p->payload_off = p->l4_off + doff;
	if (p->payload_off >= ip_end)
		return PARSE_SKIP;
	p->plen = ip_end - p->payload_off;
	return PARSE_OK;
}

struct ipv6_ext {
	__u8 nexthdr;
	__u8 hdrlen;
	__be16 frag_off; /* fragment header only */
};

static __always_inline int parse_ipv6(struct __sk_buff *skb, __u32 l3off, struct pkt *p)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ipv6hdr *ip6 = data + l3off;
	struct ipv6_ext *ext;
	struct tcphdr *th;
	__u32 off, doff, pl, ip_end;
	__u8 nh;

	if ((void *)(ip6 + 1) > data_end)
		return PARSE_NONLINEAR;
	if (ip6->version != 6)
		return PARSE_SKIP;
	nh = ip6->nexthdr;
	off = sizeof(*ip6);

#pragma unroll
	for (int i = 0; i < MAX_IPV6_EXT; i++) {
		if (nh == PROTO_TCP)
			continue;
		ext = (void *)ip6 + off;
		if ((void *)(ext + 1) > data_end)
			return PARSE_NONLINEAR;
		if (nh == NEXTHDR_HOP || nh == NEXTHDR_ROUTING || nh == NEXTHDR_DEST) {
			off += (ext->hdrlen + 1) * 8;
		} else if (nh == NEXTHDR_FRAGMENT) {
			if (ext->frag_off & bpf_htons(0xfff8)) /* not the first fragment */
				return PARSE_SKIP;
			off += 8;
		} else {
			return PARSE_SKIP;
		}
		nh = ext->nexthdr;
	}
	if (nh != PROTO_TCP)
		return PARSE_SKIP;

	th = (void *)ip6 + off;
	if ((void *)(th + 1) > data_end)
		return PARSE_NONLINEAR;
	doff = th->doff * 4;
	if (doff < sizeof(*th))
		return PARSE_SKIP;

	/* payload_len is 0 for jumbograms and BIG TCP GSO packets. */
	ip_end = skb->len;
	pl = bpf_ntohs(ip6->payload_len);
	if (pl != 0 && l3off + sizeof(*ip6) + pl < ip_end)
		ip_end = l3off + sizeof(*ip6) + pl;

	p->family = FAMILY_INET6;
	p->ip_len = ip_end - l3off;
	p->l4_off = l3off + off;
	p->payload_off = p->l4_off + doff;
	if (p->payload_off >= ip_end)
		return PARSE_SKIP;
	p->plen = ip_end - p->payload_off;
	return PARSE_OK;
}

static __always_inline int parse_headers(struct __sk_buff *skb, __u32 l3off, struct pkt *p)
{
	if (skb->protocol == bpf_htons(ETH_P_IP))
		return parse_ipv4(skb, l3off, p);
	if (skb->protocol == bpf_htons(ETH_P_IPV6))
		return parse_ipv6(skb, l3off, p);
	return PARSE_SKIP;
}

static __always_inline void count_token(__u64 id, __u64 bytes, __u64 now, int drop)
{
	struct token_stats *ts = bpf_map_lookup_elem(&token_counts, &id);

	if (!ts) {
		struct token_stats init = {
			.requests = 1,
			.bytes = bytes,
			.last_seen_ns = now,
			.drops = drop ? 1 : 0,
			.first_seen_ns = now,
		};
		if (bpf_map_update_elem(&token_counts, &id, &init, BPF_NOEXIST) == 0)
			return;
		/* Another CPU inserted it first. */
		ts = bpf_map_lookup_elem(&token_counts, &id);
		if (!ts)
			return;
	}
	__sync_fetch_and_add(&ts->requests, 1);
	__sync_fetch_and_add(&ts->bytes, bytes);
	if (drop)
		__sync_fetch_and_add(&ts->drops, 1);
	/* Racing CPUs store nearly the same time; either is fine. */
	ts->last_seen_ns = now;
}

static __always_inline void report_drop(struct __sk_buff *skb, struct global_stats *st,
					const struct pkt *p, __u64 hash, __u8 hook, __u32 l3off)
{
	struct drop_event *ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	__be16 ports[2] = {};

	if (!ev) {
		st->events_lost++;
		return;
	}
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->hash = hash;
	ev->ktime_ns = bpf_ktime_get_ns();
	ev->ifindex = skb->ifindex;
	ev->family = p->family;
	ev->action = ACTION_DROP;
	ev->hook = hook;
	if (p->family == FAMILY_INET) {
		bpf_skb_load_bytes(skb, l3off + offsetof(struct iphdr, saddr), ev->saddr, 4);
		bpf_skb_load_bytes(skb, l3off + offsetof(struct iphdr, daddr), ev->daddr, 4);
	} else {
		bpf_skb_load_bytes(skb, l3off + offsetof(struct ipv6hdr, saddr), ev->saddr, 16);
		bpf_skb_load_bytes(skb, l3off + offsetof(struct ipv6hdr, daddr), ev->daddr, 16);
	}
	bpf_skb_load_bytes(skb, p->l4_off, ports, sizeof(ports));
	ev->sport = bpf_ntohs(ports[0]);
	ev->dport = bpf_ntohs(ports[1]);
	bpf_ringbuf_submit(ev, 0);
}

static __always_inline enum verdict meter(struct __sk_buff *skb, __u32 l3off, __u8 hook,
					  int can_pull)
{
	__u32 zero = 0;
	struct global_stats *st = bpf_map_lookup_elem(&stats, &zero);
	struct pkt p = {};
	struct scan sc = {};
	__u64 w[REQ_PEEK_LEN / 8] = {}, now;
	__u32 cpu;
	void *data, *data_end;
	int r;

	if (!st)
		return VERDICT_PASS;
	st->packets++;

	r = parse_headers(skb, l3off, &p);
	if (r == PARSE_NONLINEAR && can_pull) {
		__u32 len = skb->len;
		if (len > l3off + PULL_LEN)
			len = l3off + PULL_LEN;
		if (bpf_skb_pull_data(skb, len) == 0)
			r = parse_headers(skb, l3off, &p);
	}
	if (r == PARSE_NONLINEAR) {
		st->unparsed++;
		return VERDICT_PASS;
	}
	if (r != PARSE_OK || p.plen < 3)
		return VERDICT_PASS;

	/* The request line's start: 24 bytes, zero-filled past the payload. */
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	if (p.plen >= REQ_PEEK_LEN && p.payload_off < PULL_LEN + ETH_HLEN &&
	    data + p.payload_off + REQ_PEEK_LEN <= data_end) {
		__u64 *d = data + p.payload_off;
		w[0] = d[0];
		w[1] = d[1];
		w[2] = d[2];
	} else {
		__u32 len = p.plen < REQ_PEEK_LEN ? p.plen : REQ_PEEK_LEN;
		if (len < 1 || len > REQ_PEEK_LEN ||
		    bpf_skb_load_bytes(skb, p.payload_off, w, len) < 0)
			return VERDICT_PASS;
	}
	if (!is_request(w))
		return VERDICT_PASS;
	st->requests++;

	cpu = bpf_get_smp_processor_id();
	sc.scr = bpf_map_lookup_elem(&scratch, &cpu);
	if (!sc.scr)
		return VERDICT_PASS;
	sc.scr->lines = 0;
	sc.buf = sc.scr->buf;
	sc.skb = skb;
	sc.payload_off = p.payload_off;
	sc.plen = p.plen < MAX_SCAN_LEN ? p.plen : MAX_SCAN_LEN;
	load_more(&sc);
	sc.scr->state = ST_SEEK;
	sc.scr->pos = 0;
	sc.scr->tok = 0;
	bpf_loop(SCAN_STEPS, scan_step, &sc, 0);

	if (sc.first == TOK_TRUNCATED)
		st->truncated++;
	else if (sc.first == TOK_INCOMPLETE)
		st->incomplete++;
	if (sc.first == TOK_FOUND) {
		st->tokens++;
		/* The coarse clock (one tick of resolution) is plenty for "last
		 * seen" and costs nothing; bpf_ktime_get_ns costs ~20 ns under
		 * kvm-clock. The request is counted for the first token; it is
		 * dropped if any token is revoked. */
		now = bpf_ktime_get_coarse_ns();
		count_token(sc.first_id, p.ip_len, now, sc.revoked);
	}
	if (!sc.revoked)
		return VERDICT_PASS;
	st->drops++;
	report_drop(skb, st, &p, sc.revoked_id, hook, l3off);
	return VERDICT_DROP;
}

SEC("tcx/ingress")
int tcx_ingress(struct __sk_buff *skb)
{
	return meter(skb, ETH_HLEN, HOOK_TCX_INGRESS, 1) == VERDICT_DROP ? TC_ACT_SHOT
									 : TC_ACT_UNSPEC;
}

SEC("tcx/egress")
int tcx_egress(struct __sk_buff *skb)
{
	return meter(skb, ETH_HLEN, HOOK_TCX_EGRESS, 1) == VERDICT_DROP ? TC_ACT_SHOT
									: TC_ACT_UNSPEC;
}

/* cgroup_skb sees the packet from the IP header; TCP has already made its
 * headers linear, so no pull (which cgroup_skb may not call anyway). */
SEC("cgroup_skb/ingress")
int cgroup_ingress(struct __sk_buff *skb)
{
	return meter(skb, 0, HOOK_CGROUP_INGRESS, 0) == VERDICT_DROP ? 0 : 1;
}
