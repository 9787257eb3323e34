package admin

import (
	"strings"
	"testing"
)

// FuzzPageToken: no input makes the page token parser panic or accept a
// token it did not seal; what it sealed opens to the same position.
func FuzzPageToken(f *testing.F) {
	p := newPager()
	const scope = "/v1/tokens?subject=alice"
	for _, s := range []string{"", "A", p.seal(scope, "2026-12-04T19:05:09.000000000Z/abc"), p.seal(scope, "1"), "AQ", strings.Repeat("A", 600), "%%%", "AQAAAAAAAAAAAAAAAAAAAA"} {
		f.Add(s, "2026-12-04T19:05:09.000000000Z/abc")
	}
	f.Fuzz(func(t *testing.T, tok, after string) {
		if pos, ok := p.open(scope, tok); ok && p.seal(scope, pos) != tok {
			t.Fatalf("opened %q to %q, which seals differently", tok, pos)
		}
		if after == "" || len(after) > maxCursorBytes {
			return
		}
		sealed := p.seal(scope, after)
		if pos, ok := p.open(scope, sealed); !ok || pos != after {
			t.Fatalf("sealed %q opens to %q, %v", after, pos, ok)
		}
		if _, ok := p.open(scope+"&x=1", sealed); ok {
			t.Fatal("a token opened for another scope")
		}
	})
}
