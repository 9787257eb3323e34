package bpf

import (
	"fmt"
	"strings"
	"testing"
)

// payloadCase is a TCP payload and what the parser must find in it. The
// same table drives the Go parser here and the kernel programs in
// prog_linux_test.go (payloadCases, through BPF_PROG_TEST_RUN) and
// netns_linux_test.go (longPayloadCases, too big for a test run, through a
// real interface).
type payloadCase struct {
	name       string
	payload    string
	isRequest  bool
	token      string // the token found; "" for none
	truncated  bool
	incomplete bool
}

const tok = "tw_eyJhbGciOiJFZERTQSJ9.eyJqdGkiOiIxMjMifQ.c2lnbmF0dXJl"

// goRequest is a request as Go's net/http client writes it: Host,
// User-Agent, the caller's headers sorted, then Accept-Encoding.
func goRequest(extra ...string) string {
	var b strings.Builder
	b.WriteString("GET /orders/42 HTTP/1.1\r\nHost: orders.default.svc.cluster.local\r\nUser-Agent: Go-http-client/1.1\r\n")
	for _, h := range extra {
		b.WriteString(h)
		b.WriteString("\r\n")
	}
	b.WriteString("Accept-Encoding: gzip\r\n\r\n")
	return b.String()
}

func req(headers ...string) string {
	return "GET /orders/42 HTTP/1.1\r\nHost: orders\r\n" + strings.Join(headers, "\r\n") + "\r\n\r\n"
}

// methods are common request methods; any method token makes a request.
var methods = [...]string{"GET ", "POST ", "PUT ", "DELETE ", "PATCH ", "HEAD ", "OPTIONS ", "CONNECT ", "TRACE "}

var payloadCases = func() []payloadCase {
	cases := []payloadCase{
		{name: "bearer", payload: req("Authorization: Bearer " + tok), isRequest: true, token: tok},
		{name: "go_client_order", payload: goRequest("Authorization: Bearer " + tok), isRequest: true, token: tok},
		{name: "no_authorization", payload: req("Accept: */*"), isRequest: true},

		// Header-name and scheme case.
		{name: "upper_case", payload: req("AUTHORIZATION: BEARER " + tok), isRequest: true, token: tok},
		{name: "lower_case", payload: req("authorization: bearer " + tok), isRequest: true, token: tok},
		{name: "mixed_case", payload: req("aUtHoRiZaTiOn: bEaReR " + tok), isRequest: true, token: tok},

		// Position in the header block.
		{name: "first_header", payload: "POST /v1/x HTTP/1.1\r\nAuthorization: Bearer " + tok + "\r\nHost: a\r\n\r\n", isRequest: true, token: tok},
		{name: "last_header", payload: req("Accept: */*", "X-A: b", "Authorization: Bearer "+tok), isRequest: true, token: tok},
		{name: "after_long_headers", payload: req(strings.Repeat("X-Long: "+strings.Repeat("z", 100)+"\r\n", 20) + "Authorization: Bearer " + tok), isRequest: true, token: tok},
		{name: "no_final_crlf", payload: "GET / HTTP/1.1\r\nAuthorization: Bearer " + tok + "\r\n", isRequest: true, token: tok},
		{name: "bare_lf_lines", payload: "GET / HTTP/1.1\nHost: a\nAuthorization: Bearer " + tok + "\n\n", isRequest: true, token: tok},

		// Which header wins.
		{name: "first_of_two", payload: req("Authorization: Bearer first", "Authorization: Bearer second"), isRequest: true, token: "first"},
		{name: "basic_then_bearer", payload: req("Authorization: Basic dXNlcjpwdw==", "Authorization: Bearer second"), isRequest: true, token: "second"},
		{name: "empty_bearer_then_bearer", payload: req("Authorization: Bearer ", "Authorization: Bearer second"), isRequest: true, token: "second"},
		{name: "three_bearer_lines", payload: req("Authorization: Bearer first", "X-A: b", "authorization:\tbearer\tsecond", "Authorization: Bearer third"), isRequest: true, token: "first"},
		{name: "bearer_then_incomplete", payload: "GET / HTTP/1.1\r\nAuthorization: Bearer first\r\nAuthorization: Bearer sec", isRequest: true, token: "first"},
		{name: "basic_only", payload: req("Authorization: Basic dXNlcjpwdw=="), isRequest: true},
		{name: "proxy_authorization", payload: req("Proxy-Authorization: Bearer other", "X-Authorization: Bearer other"), isRequest: true},
		{name: "space_before_colon", payload: req("Authorization : Bearer " + tok), isRequest: true},
		{name: "in_request_target", payload: "GET /?Authorization:%20Bearer%20x HTTP/1.1\r\nHost: a\r\n\r\n", isRequest: true},

		// Whitespace.
		{name: "no_ows", payload: req("Authorization:Bearer " + tok), isRequest: true, token: tok},
		{name: "tab_ows", payload: req("Authorization:\t Bearer " + tok), isRequest: true, token: tok},
		{name: "long_ows", payload: req("Authorization:" + strings.Repeat(" \t", 13) + "Bearer " + tok), isRequest: true, token: tok},
		{name: "extra_spaces", payload: req("Authorization: Bearer     " + tok), isRequest: true, token: tok},
		{name: "many_spaces", payload: req("Authorization: Bearer" + strings.Repeat(" ", 37) + tok), isRequest: true, token: tok},
		{name: "tab_after_bearer", payload: req("Authorization: Bearer\t" + tok), isRequest: true, token: tok},
		{name: "tabs_after_bearer", payload: req("Authorization: Bearer\t\t" + tok), isRequest: true, token: tok},
		{name: "mixed_ows_after_bearer", payload: req("Authorization: Bearer \t \t" + tok), isRequest: true, token: tok},
		{name: "tabs_everywhere", payload: req("Authorization:\tBearer\t" + tok), isRequest: true, token: tok},
		{name: "no_ows_tab_after_bearer", payload: req("Authorization:Bearer\t" + tok), isRequest: true, token: tok},
		{name: "long_tabs_after_bearer", payload: req("Authorization: Bearer" + strings.Repeat("\t ", 40) + tok), isRequest: true, token: tok},
		{name: "tab_then_crlf", payload: req("Authorization: Bearer\t", "Authorization: Bearer second"), isRequest: true, token: "second"},
		{name: "vt_after_bearer", payload: req("Authorization: Bearer\v" + tok), isRequest: true},
		{name: "no_space_after_bearer", payload: req("Authorization: Bearer" + tok), isRequest: true},
		{name: "bearer_at_end", payload: "GET / HTTP/1.1\r\nAuthorization: Bearer", isRequest: true},

		// The token's alphabet and end.
		{name: "full_alphabet", payload: req("Authorization: Bearer AZaz09-._~+/="), isRequest: true, token: "AZaz09-._~+/="},
		{name: "visible_ascii", payload: req("Authorization: Bearer !\"#$%&'()*+,-./09:;<=>?@AZ[\\]^_`az{|}~"), isRequest: true, token: "!\"#$%&'()*+,-./09:;<=>?@AZ[\\]^_`az{|}~"},
		{name: "comma_is_in_token", payload: req("Authorization: Bearer abc,def"), isRequest: true, token: "abc,def"},
		{name: "ends_at_space", payload: req("Authorization: Bearer abc def"), isRequest: true, token: "abc"},
		{name: "ends_at_nul", payload: req("Authorization: Bearer ab\x00cd"), isRequest: true, token: "ab"},
		{name: "ends_at_del", payload: req("Authorization: Bearer ab\x7fcd"), isRequest: true, token: "ab"},
		{name: "ends_at_utf8", payload: req("Authorization: Bearer t\u00f6k"), isRequest: true, token: "t"},
		{name: "starts_with_at", payload: req("Authorization: Bearer @abc"), isRequest: true, token: "@abc"},
		{name: "starts_with_del", payload: req("Authorization: Bearer \x7fabc"), isRequest: true},
		{name: "starts_with_utf8", payload: req("Authorization: Bearer \u00f6abc"), isRequest: true},
		{name: "one_byte_token", payload: req("Authorization: Bearer x"), isRequest: true, token: "x"},

		// The identity: the 11 characters that start 86 before the end.
		{name: "jws_shape", payload: req("Authorization: Bearer " + jws(40, 80)), isRequest: true, token: jws(40, 80)},
		{name: "trailing_dot", payload: req("Authorization: Bearer abc."), isRequest: true, token: "abc."},
		{name: "only_dots", payload: req("Authorization: Bearer ..."), isRequest: true, token: "..."},
		{name: "two_dots_one_word", payload: req("Authorization: Bearer a.b.cdefghijklmnop"), isRequest: true, token: "a.b.cdefghijklmnop"},
		{name: "dot_then_end_same_word", payload: req("Authorization: Bearer abcdefg.hi"), isRequest: true, token: "abcdefg.hi"},
		{name: "dot_after_end_same_word", payload: req("Authorization: Bearer abc x.y"), isRequest: true, token: "abc"},
		{name: "dot_in_next_line", payload: req("Authorization: Bearer abcdef", "X-A: .b"), isRequest: true, token: "abcdef"},
		// Around the 86 characters the identity is read from, and the
		// 128 bytes the step that finds the line searches.
		{name: "token_85", payload: req("Authorization: Bearer " + sigChars(85)), isRequest: true, token: sigChars(85)},
		{name: "token_86", payload: req("Authorization: Bearer " + sigChars(86)), isRequest: true, token: sigChars(86)},
		{name: "token_87", payload: req("Authorization: Bearer " + sigChars(87)), isRequest: true, token: sigChars(87)},
		{name: "token_127", payload: req("Authorization: Bearer " + sigChars(127)), isRequest: true, token: sigChars(127)},
		{name: "token_128", payload: req("Authorization: Bearer " + sigChars(128)), isRequest: true, token: sigChars(128)},
		{name: "token_129", payload: req("Authorization: Bearer " + sigChars(129)), isRequest: true, token: sigChars(129)},
		// A token that starts within 128 bytes of the first 512 copied,
		// with more payload to copy: its search waits for the next copy.
		{name: "token_across_first_copy", payload: req("X-Filler: "+strings.Repeat("f", 400), "Authorization: Bearer "+jws(60, 120)), isRequest: true, token: jws(60, 120)},

		// The line limit.
		{name: "last_examined_line", payload: "GET / HTTP/1.1\r\n" + strings.Repeat("a\n", MaxHeaderLines-1) + "Authorization: Bearer " + tok + "\r\n\r\n", isRequest: true, token: tok},
		{name: "past_line_limit", payload: "GET / HTTP/1.1\r\n" + strings.Repeat("a\n", MaxHeaderLines) + "Authorization: Bearer " + tok + "\r\n\r\n", isRequest: true},

		// End of the header block.
		{name: "in_body", payload: req("Host: b") + "Authorization: Bearer " + tok + "\r\n", isRequest: true},
		{name: "in_body_after_bare_lf", payload: "GET / HTTP/1.1\nHost: a\n\nAuthorization: Bearer " + tok + "\r\n", isRequest: true},
		{name: "in_body_after_lf_crlf", payload: "GET / HTTP/1.1\nHost: a\n\r\nAuthorization: Bearer " + tok + "\r\n", isRequest: true},

		// Headers split across packets: only the first packet counts.
		{name: "split_before_authorization", payload: "GET / HTTP/1.1\r\nHost: a\r\nAuthoriz", isRequest: true},
		{name: "split_in_token", payload: "GET / HTTP/1.1\r\nAuthorization: Bearer tw_abc", isRequest: true, incomplete: true},
		{name: "continuation_packet", payload: "Authorization: Bearer " + tok + "\r\n\r\n"},
		{name: "continuation_with_newline", payload: "X-A: b\r\nAuthorization: Bearer " + tok + "\r\n\r\n"},

		// Not requests.
		{name: "response", payload: "HTTP/1.1 200 OK\r\nAuthorization: Bearer " + tok + "\r\n\r\n"},
		{name: "method_without_space", payload: "GET/ HTTP/1.1\r\nAuthorization: Bearer " + tok + "\r\n\r\n"},
		{name: "tls_client_hello", payload: "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"},
		{name: "method_only", payload: "GET "},
		{name: "too_short", payload: "GET"},
		{name: "one_byte", payload: "G"},
		{name: "method_two_spaces", payload: "GET  / HTTP/1.1\r\nAuthorization: Bearer " + tok + "\r\n\r\n"},
		{name: "method_tab", payload: "GET\t/ HTTP/1.1\r\nAuthorization: Bearer " + tok + "\r\n\r\n"},
		{name: "method_17_bytes", payload: strings.Repeat("M", 17) + " / HTTP/1.1\r\nAuthorization: Bearer " + tok + "\r\n\r\n"},
		{name: "target_not_allowed", payload: "GET %2F HTTP/1.1\r\nAuthorization: Bearer " + tok + "\r\n\r\n"},
		{name: "space_first", payload: " / HTTP/1.1\r\nAuthorization: Bearer " + tok + "\r\n\r\n"},
		{name: "response_http10", payload: "HTTP/1.0 401 Unauthorized\r\nAuthorization: Bearer " + tok + "\r\n\r\n"},
		{name: "status_line_bare", payload: "HTTP/1.1"},

		// Any method token (RFC 9110 tchar), as Go's net/http server accepts.
		{name: "lower_case_method", payload: "get / HTTP/1.1\r\nAuthorization: Bearer " + tok + "\r\n\r\n", isRequest: true, token: tok},
		{name: "h2_preface", payload: "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", isRequest: true},
		{name: "method_webdav", payload: "PROPFIND /dav HTTP/1.1\r\nAuthorization: Bearer " + tok + "\r\n\r\n", isRequest: true, token: tok},
		{name: "method_one_byte", payload: "X / HTTP/1.1\r\nAuthorization: Bearer " + tok + "\r\n\r\n", isRequest: true, token: tok},
		{name: "method_16_bytes", payload: strings.Repeat("M", 16) + " / HTTP/1.1\r\nAuthorization: Bearer " + tok + "\r\n\r\n", isRequest: true, token: tok},
		{name: "method_all_tchar", payload: "!#$%&'*+-.^_`|~09azAZ /\r\n"},
		{name: "method_tchar_16", payload: "!#$%&'*+-.^_`|~0 /\r\nAuthorization: Bearer " + tok + "\r\n\r\n", isRequest: true, token: tok},
		{name: "method_min", payload: "X /", isRequest: true},
		{name: "absolute_form", payload: "GET http://orders/42 HTTP/1.1\r\nAuthorization: Bearer " + tok + "\r\n\r\n", isRequest: true, token: tok},
		{name: "asterisk_form", payload: "OPTIONS * HTTP/1.1\r\nAuthorization: Bearer " + tok + "\r\n\r\n", isRequest: true, token: tok},
		{name: "authority_form_ip", payload: "CONNECT 10.0.0.1:443 HTTP/1.1\r\nAuthorization: Bearer " + tok + "\r\n\r\n", isRequest: true, token: tok},
		{name: "authority_form_ipv6", payload: "CONNECT [::1]:443 HTTP/1.1\r\nAuthorization: Bearer " + tok + "\r\n\r\n", isRequest: true, token: tok},
		{name: "authority_form_name", payload: "CONNECT orders:443 HTTP/1.1\r\nAuthorization: Bearer " + tok + "\r\n\r\n", isRequest: true, token: tok},

		// Long tokens (up to what a test run takes; longPayloadCases go
		// further).
		{name: "token_1124", payload: req("Authorization: Bearer " + jws(200, 800)), isRequest: true, token: jws(200, 800)},
		{name: "token_3000", payload: req("Authorization: Bearer " + jws(600, 2200)), isRequest: true, token: jws(600, 2200)},
		{name: "token_3000_no_dot", payload: req("Authorization: Bearer " + strings.Repeat("b", 3000)), isRequest: true, token: strings.Repeat("b", 3000)},
		{name: "token_3000_at_end", payload: "GET / HTTP/1.1\r\nAuthorization: Bearer " + jws(600, 2200), isRequest: true, incomplete: true},
	}
	// A '.' at every offset from a word boundary, and segments of every
	// length around the 11 characters that make the identity.
	for i := 0; i < 16; i++ {
		t := strings.Repeat("x", i) + "." + "ABCDEFGHIJKLMNOPQ"[:16-i]
		cases = append(cases, payloadCase{name: fmt.Sprintf("dot_at_%d", i), payload: req("Authorization: Bearer " + t), isRequest: true, token: t})
	}
	for _, m := range methods {
		cases = append(cases, payloadCase{
			name:      "method_" + strings.TrimSpace(m),
			payload:   m + "/x HTTP/1.1\r\nAuthorization: Bearer " + tok + "\r\n\r\n",
			isRequest: true,
			token:     tok,
		})
	}
	return cases
}()

// jws is a token shaped like a tokenwarden token: prefix, header and claims
// segments of the given lengths, and an 86-character signature segment that
// differs with the lengths.
func jws(header, claims int) string {
	sig := fmt.Sprintf("S%04d%04d", header, claims) + strings.Repeat("Zz09-_", 13)[:77]
	return "tw_" + strings.Repeat("h", header) + "." + strings.Repeat("c", claims) + "." + sig
}

// sigChars is n characters of the base64url alphabet, no '.'.
func sigChars(n int) string {
	return strings.Repeat("Ab9-_zQ", n/7+1)[:n]
}

// longPayloadCases are payloads too big for BPF_PROG_TEST_RUN: tokens up to
// the largest the agent issues (MaxTokenLen) and past it.
var longPayloadCases = []payloadCase{
	{name: "token_at_max", payload: req("Authorization: Bearer " + jws(100, MaxTokenLen-3-100-2-86)), isRequest: true, token: jws(100, MaxTokenLen-3-100-2-86)},
	{name: "token_at_max_after_7KiB", payload: req("X-Filler: "+strings.Repeat("f", 7<<10), "Authorization: Bearer "+jws(100, MaxTokenLen-3-100-2-86)), isRequest: true, token: jws(100, MaxTokenLen-3-100-2-86)},
	{name: "token_over_max", payload: req("Authorization: Bearer " + jws(100, MaxTokenLen-3-100-2-86+1)), isRequest: true, truncated: true},
	{name: "token_far_over_max", payload: req("Authorization: Bearer " + strings.Repeat("b", 12000)), isRequest: true, truncated: true},
	{name: "truncated_then_bearer", payload: req("Authorization: Bearer "+strings.Repeat("t", MaxTokenLen+1), "Authorization: Bearer second"), isRequest: true, truncated: true},
	{name: "token_over_max_at_end", payload: "GET / HTTP/1.1\r\nAuthorization: Bearer " + strings.Repeat("c", MaxTokenLen+1), isRequest: true, incomplete: true},
	{name: "token_at_max_at_end", payload: "GET / HTTP/1.1\r\nAuthorization: Bearer " + strings.Repeat("c", MaxTokenLen), isRequest: true, incomplete: true},
}

func TestParseRequest(t *testing.T) {
	if n := len(jws(100, MaxTokenLen-3-100-2-86)); n != MaxTokenLen {
		t.Fatalf("test bug: the longest token is %d bytes", n)
	}
	for _, c := range append(payloadCases[:len(payloadCases):len(payloadCases)], longPayloadCases...) {
		t.Run(c.name, func(t *testing.T) {
			hash, found, isRequest, truncated := ParseRequest([]byte(c.payload))
			if isRequest != c.isRequest {
				t.Errorf("isRequest = %v, want %v", isRequest, c.isRequest)
			}
			if found != (c.token != "") {
				t.Errorf("tokenFound = %v, want %v", found, c.token != "")
			}
			if c.token != "" && hash != HashToken(c.token) {
				t.Errorf("hash = %#x, want HashToken(%q) = %#x", hash, c.token, HashToken(c.token))
			}
			if truncated != c.truncated {
				t.Errorf("truncated = %v, want %v", truncated, c.truncated)
			}
			if got := parse([]byte(c.payload)).incomplete; got != c.incomplete {
				t.Errorf("incomplete = %v, want %v", got, c.incomplete)
			}
		})
	}
}

// TestParseAllTokens checks the hashes of every bearer token in the header
// block, which the kernel looks up in the revoked set.
func TestParseAllTokens(t *testing.T) {
	long := strings.Repeat("t", MaxTokenLen+1)
	for _, tc := range []struct {
		name    string
		payload string
		want    []string
	}{
		{"one", req("Authorization: Bearer " + tok), []string{tok}},
		{"two", req("Authorization: Bearer a", "Authorization: Bearer b"), []string{"a", "b"}},
		{"basic_between", req("Authorization: Bearer a", "Authorization: Basic Zm9v", "authorization:\t bearer\t\tb"), []string{"a", "b"}},
		{"after_truncated", req("Authorization: Bearer "+long, "Authorization: Bearer b"), []string{"b"}},
		{"two_on_one_line", req("Authorization: Bearer a, Bearer b"), []string{"a"}},
		{"incomplete_last", "GET / HTTP/1.1\r\nAuthorization: Bearer a\r\nAuthorization: Bearer b", []string{"a"}},
		{"not_in_body", req("Authorization: Bearer a") + "Authorization: Bearer b\r\n", []string{"a"}},
		{"not_past_line_limit", "GET / HTTP/1.1\r\n" + strings.Repeat("Authorization: Bearer a\n", MaxHeaderLines) + "Authorization: Bearer b\n\n", []string{"a"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := scan([]byte(tc.payload)).hashes
			var want []uint64
			seen := map[uint64]bool{}
			for _, w := range tc.want {
				want = append(want, HashToken(w))
			}
			for _, h := range got {
				seen[h] = true
			}
			if len(seen) != len(want) {
				t.Fatalf("hashes %x, want those of %q", got, tc.want)
			}
			for _, h := range want {
				if !seen[h] {
					t.Fatalf("hashes %x, want those of %q", got, tc.want)
				}
			}
		})
	}
}

func TestParseScanLimit(t *testing.T) {
	line := "Authorization: Bearer " + tok + "\r\n\r\n"
	for _, tc := range []struct {
		name  string
		at    int // offset of the Authorization line
		found bool
	}{
		{"well_inside", 4000, true},
		{"ends_at_limit", MaxScanLen - len(line) + 3, true}, // the '\r' after the token is the last byte scanned
		{"token_cut_by_limit", MaxScanLen - len(line) + 4, false},
		{"past_limit", MaxScanLen + 10, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := "GET / HTTP/1.1\r\n"
			filler := tc.at - len(p) - 2
			p += "X: " + strings.Repeat("f", filler-3) + "\r\n" + line
			if got := strings.Index(p, "Authorization"); got != tc.at {
				t.Fatalf("test bug: Authorization at %d, want %d", got, tc.at)
			}
			_, found, _, _ := ParseRequest([]byte(p))
			if found != tc.found {
				t.Errorf("found = %v, want %v", found, tc.found)
			}
		})
	}
}

// FuzzParseRequest checks invariants of the Go parser alone; the kernel
// agreement is FuzzParseAgreement.
func FuzzParseRequest(f *testing.F) {
	for _, c := range append(payloadCases[:len(payloadCases):len(payloadCases)], longPayloadCases...) {
		f.Add([]byte(c.payload))
	}
	f.Fuzz(func(t *testing.T, p []byte) {
		sr := scan(p)
		r := sr.parseResult
		if r.tokenFound && (len(sr.hashes) == 0 || sr.hashes[0] != r.hash) {
			t.Fatalf("first token %#x is not the first of %x", r.hash, sr.hashes)
		}
		if !r.isRequest && (r.tokenFound || r.truncated || r.incomplete) {
			t.Fatalf("token result %+v for a non-request", r)
		}
		if btoi(r.tokenFound)+btoi(r.truncated)+btoi(r.incomplete) > 1 {
			t.Fatalf("more than one outcome: %+v", r)
		}
		if !r.tokenFound && r.hash != 0 {
			t.Fatalf("hash %#x without a token", r.hash)
		}
		if len(p) > MaxScanLen {
			if r2 := parse(p[:MaxScanLen]); r2 != r {
				t.Fatalf("bytes past MaxScanLen changed the result: %+v vs %+v", r, r2)
			}
		}
	})
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// BenchmarkHashToken200B is the identity of a 200-byte token in Go: decode
// the 11 characters that start 86 before its end.
func BenchmarkHashToken200B(b *testing.B) {
	token := jws(40, 69)
	if len(token) != 200 {
		b.Fatalf("token is %d bytes", len(token))
	}
	var sink uint64
	for b.Loop() {
		sink += HashToken(token)
	}
	_ = sink
}
