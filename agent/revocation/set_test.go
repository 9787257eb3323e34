package revocation

import (
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/policy"
)

var t0 = time.Unix(1_900_000_000, 0)

const (
	jti      = "aaaaaaaaaaaaaaaaaaaaaaaaaa" // the shape NewTokenID makes
	otherJTI = "bbbbbbbbbbbbbbbbbbbbbbbbbb"
	textJTI  = "legacy-token-1" // any other shape
)

func token(edit func(t *policy.Token)) *policy.Token {
	t := &policy.Token{
		Claims: policy.Claims{Subject: "alice", ID: jti, IssuedAt: t0.Unix(), NotBefore: t0.Unix(), Expires: t0.Add(time.Hour).Unix(), Tenant: "acme"},
		KeyID:  "k1",
	}
	if edit != nil {
		edit(t)
	}
	return t
}

func byToken(target string, effective, expires time.Time) policy.Revocation {
	return policy.Revocation{Kind: policy.RevokeToken, Target: target, EffectiveAt: effective, Expires: expires, Reason: "test"}
}

func bySubject(id, subject string, effective, issuedBefore time.Time) policy.Revocation {
	return policy.Revocation{ID: id, Kind: policy.RevokeSubject, Target: subject, EffectiveAt: effective, IssuedBefore: issuedBefore, Expires: issuedBefore.Add(25 * time.Hour), Reason: "test"}
}

func byTenant(id, tenant string, effective, issuedBefore time.Time) policy.Revocation {
	r := bySubject(id, tenant, effective, issuedBefore)
	r.Kind = policy.RevokeTenant
	return r
}

func byKey(kid string, effective time.Time) policy.Revocation {
	return policy.Revocation{Kind: policy.RevokeKey, Target: kid, EffectiveAt: effective, Reason: "test"}
}

func TestSetRevoked(t *testing.T) {
	tests := map[string]struct {
		rules []policy.Revocation
		token *policy.Token
		at    time.Time
		want  bool
	}{
		"empty set":                               {nil, token(nil), t0, false},
		"jti":                                     {[]policy.Revocation{byToken(jti, t0, t0.Add(time.Hour))}, token(nil), t0, true},
		"other jti":                               {[]policy.Revocation{byToken(otherJTI, t0, t0.Add(time.Hour))}, token(nil), t0, false},
		"jti of another shape":                    {[]policy.Revocation{byToken(textJTI, t0, t0.Add(time.Hour))}, token(func(t *policy.Token) { t.ID = textJTI }), t0, true},
		"upper-case jti is another jti":           {[]policy.Revocation{byToken("AAAAAAAAAAAAAAAAAAAAAAAAAA", t0, t0.Add(time.Hour))}, token(nil), t0, false},
		"jti, before effective":                   {[]policy.Revocation{byToken(jti, t0.Add(time.Minute), t0.Add(time.Hour))}, token(nil), t0.Add(time.Minute - 1), false},
		"jti, at effective":                       {[]policy.Revocation{byToken(jti, t0.Add(time.Minute), t0.Add(time.Hour))}, token(nil), t0.Add(time.Minute), true},
		"subject, issued before":                  {[]policy.Revocation{bySubject("r", "alice", t0, t0.Add(time.Second))}, token(nil), t0, true},
		"subject, issued at the cut":              {[]policy.Revocation{bySubject("r", "alice", t0, t0)}, token(nil), t0, true},
		"subject, issued after":                   {[]policy.Revocation{bySubject("r", "alice", t0, t0.Add(-time.Second))}, token(nil), t0, false},
		"subject, another one":                    {[]policy.Revocation{bySubject("r", "bob", t0, t0.Add(time.Hour))}, token(nil), t0, false},
		"subject, future effective":               {[]policy.Revocation{bySubject("r", "alice", t0.Add(time.Hour), t0.Add(time.Hour))}, token(nil), t0, false},
		"subject, second rule matches":            {[]policy.Revocation{bySubject("r1", "alice", t0, t0.Add(-time.Hour)), bySubject("r2", "alice", t0, t0.Add(time.Hour))}, token(nil), t0, true},
		"tenant, issued before":                   {[]policy.Revocation{byTenant("r", "acme", t0, t0.Add(time.Second))}, token(nil), t0, true},
		"tenant, issued after":                    {[]policy.Revocation{byTenant("r", "acme", t0, t0.Add(-time.Second))}, token(nil), t0, false},
		"tenant, token without tenant":            {[]policy.Revocation{byTenant("r", "acme", t0, t0.Add(time.Hour))}, token(func(t *policy.Token) { t.Tenant = "" }), t0, false},
		"tenant rule is not a subject":            {[]policy.Revocation{byTenant("r", "alice", t0, t0.Add(time.Hour))}, token(nil), t0, false},
		"subject rule is not a tenant":            {[]policy.Revocation{bySubject("r", "acme", t0, t0.Add(time.Hour))}, token(nil), t0, false},
		"key":                                     {[]policy.Revocation{byKey("k1", t0)}, token(nil), t0, true},
		"other key":                               {[]policy.Revocation{byKey("k2", t0)}, token(nil), t0, false},
		"key, future effective":                   {[]policy.Revocation{byKey("k1", t0.Add(time.Second))}, token(nil), t0, false},
		"expired rule still revokes until pruned": {[]policy.Revocation{byToken(jti, t0, t0.Add(time.Hour))}, token(nil), t0.Add(2 * time.Hour), true},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			s := NewSet()
			for _, r := range tt.rules {
				s.Add(r)
			}
			if got := s.Revoked(tt.token, tt.at); got != tt.want {
				t.Errorf("Revoked = %v, want %v", got, tt.want)
			}
			// The Set is the indexed form of Revocation.Covers.
			covered := false
			for _, r := range tt.rules {
				covered = covered || r.Covers(tt.token, tt.at)
			}
			if covered != tt.want {
				t.Errorf("Covers = %v, Revoked = %v", covered, tt.want)
			}
		})
	}
}

func TestSetAddIsIdempotent(t *testing.T) {
	tests := map[string]struct {
		rules   []policy.Revocation
		wantLen int
	}{
		"same jti rule twice":       {[]policy.Revocation{byToken(jti, t0, t0.Add(time.Hour)), byToken(jti, t0, t0.Add(time.Hour))}, 1},
		"same text jti rule twice":  {[]policy.Revocation{byToken(textJTI, t0, t0.Add(time.Hour)), byToken(textJTI, t0, t0.Add(time.Hour))}, 1},
		"same subject rule twice":   {[]policy.Revocation{bySubject("r", "alice", t0, t0), bySubject("r", "alice", t0, t0)}, 1},
		"same id, new content":      {[]policy.Revocation{bySubject("r", "alice", t0, t0), bySubject("r", "alice", t0, t0.Add(time.Hour))}, 1},
		"same key rule twice":       {[]policy.Revocation{byKey("k1", t0), byKey("k1", t0)}, 1},
		"two subject rules":         {[]policy.Revocation{bySubject("r1", "alice", t0, t0), bySubject("r2", "alice", t0, t0.Add(time.Hour))}, 2},
		"two id-less subject rules": {[]policy.Revocation{bySubject("", "alice", t0, t0), bySubject("", "alice", t0, t0.Add(time.Hour))}, 2},
		"same id-less rule twice":   {[]policy.Revocation{bySubject("", "alice", t0, t0), bySubject("", "alice", t0, t0)}, 1},
		"one of each kind":          {[]policy.Revocation{byToken(jti, t0, t0), byToken(textJTI, t0, t0), bySubject("r1", "a", t0, t0), byTenant("r2", "b", t0, t0), byKey("k", t0)}, 5},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			s := NewSet()
			for _, r := range tt.rules {
				s.Add(r)
			}
			if got := s.Len(); got != tt.wantLen {
				t.Errorf("Len = %d, want %d", got, tt.wantLen)
			}
		})
	}
}

// Two rules on one target widen each other; neither shortens the other.
// Before the fix, a second id-less subject rule was dropped as a
// "duplicate", and a second jti rule with an earlier effective time
// replaced the first one's expiry, so Prune could drop a live rule.
func TestSetAddMerges(t *testing.T) {
	late := t0.Add(48 * time.Hour)
	tests := map[string]struct {
		rules []policy.Revocation
		token *policy.Token
		// probes: at each time, after Prune(at), is the token revoked?
		probes map[time.Duration]bool
	}{
		"earlier effective keeps the later expiry": {
			rules:  []policy.Revocation{byToken(jti, t0.Add(time.Hour), late), byToken(jti, t0, t0.Add(2*time.Hour))},
			token:  token(nil),
			probes: map[time.Duration]bool{0: true, 3 * time.Hour: true, 47 * time.Hour: true, 49 * time.Hour: false},
		},
		"a never-expiring key rule stays": {
			rules:  []policy.Revocation{byKey("k1", t0.Add(time.Hour)), {Kind: policy.RevokeKey, Target: "k1", EffectiveAt: t0, Expires: t0.Add(time.Hour), Reason: "x"}},
			token:  token(nil),
			probes: map[time.Duration]bool{0: true, 24 * 365 * time.Hour: true},
		},
		"the later of two expiries wins": {
			rules:  []policy.Revocation{byToken(jti, t0, late), byToken(jti, t0.Add(time.Hour), t0.Add(2*time.Hour))},
			token:  token(nil),
			probes: map[time.Duration]bool{0: true, 3 * time.Hour: true, 49 * time.Hour: false},
		},
		"two id-less subject rules both apply": {
			rules:  []policy.Revocation{bySubject("", "alice", t0, t0.Add(-time.Hour)), bySubject("", "alice", t0, t0.Add(time.Hour))},
			token:  token(nil),
			probes: map[time.Duration]bool{0: true},
		},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			s := NewSet()
			for _, r := range tt.rules {
				s.Add(r)
			}
			for _, d := range []time.Duration{0, time.Hour, 2 * time.Hour, 3 * time.Hour, 24 * time.Hour, 47 * time.Hour, 49 * time.Hour, 24 * 365 * time.Hour} {
				want, probe := tt.probes[d]
				s.Prune(t0.Add(d))
				if got := s.Revoked(tt.token, t0.Add(d)); probe && got != want {
					t.Errorf("at +%s: Revoked = %v, want %v", d, got, want)
				}
			}
		})
	}
}

func TestSetRemove(t *testing.T) {
	all := []policy.Revocation{
		byToken(jti, t0, t0.Add(time.Hour)), byToken(textJTI, t0, t0.Add(time.Hour)),
		bySubject("r1", "alice", t0, t0.Add(time.Hour)), bySubject("r2", "alice", t0, t0.Add(time.Hour)),
		byTenant("r3", "acme", t0, t0.Add(time.Hour)), byKey("k1", t0),
	}
	tests := map[string]struct {
		remove  policy.Revocation
		token   *policy.Token
		wantLen int
		revoked bool
	}{
		"jti":                      {all[0], token(func(t *policy.Token) { t.Subject, t.Tenant, t.KeyID = "x", "", "k9" }), 5, false},
		"text jti":                 {all[1], token(func(t *policy.Token) { t.ID, t.Subject, t.Tenant, t.KeyID = textJTI, "x", "", "k9" }), 5, false},
		"one of two subject rules": {all[2], token(func(t *policy.Token) { t.ID, t.Tenant, t.KeyID = otherJTI, "", "k9" }), 5, true},
		"tenant":                   {all[4], token(func(t *policy.Token) { t.ID, t.Subject, t.KeyID = otherJTI, "x", "k9" }), 5, false},
		"key":                      {all[5], token(func(t *policy.Token) { t.ID, t.Subject, t.Tenant = otherJTI, "x", "" }), 5, false},
		"a rule never added":       {byToken(otherJTI, t0, t0), token(nil), 6, true},
		"subject rule, wrong id":   {bySubject("nope", "alice", t0, t0), token(func(t *policy.Token) { t.ID, t.Tenant, t.KeyID = otherJTI, "", "k9" }), 6, true},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			s := NewSet()
			for _, r := range all {
				s.Add(r)
			}
			s.Remove(tt.remove)
			if got := s.Len(); got != tt.wantLen {
				t.Errorf("Len = %d, want %d", got, tt.wantLen)
			}
			if got := s.Revoked(tt.token, t0); got != tt.revoked {
				t.Errorf("Revoked = %v, want %v", got, tt.revoked)
			}
		})
	}
	t.Run("both subject rules", func(t *testing.T) {
		s := NewSet()
		for _, r := range all[2:4] {
			s.Add(r)
		}
		s.Remove(all[2])
		s.Remove(all[3])
		if s.Len() != 0 || len(s.subjects) != 0 || s.Revoked(token(nil), t0) {
			t.Errorf("rules remain: Len %d, subjects %v", s.Len(), s.subjects)
		}
	})
}

func TestSetPrune(t *testing.T) {
	exp := t0.Add(time.Hour)
	tests := map[string]struct {
		rule policy.Revocation
		tok  *policy.Token
	}{
		"jti":      {byToken(jti, t0, exp), token(nil)},
		"text jti": {byToken(textJTI, t0, exp), token(func(t *policy.Token) { t.ID = textJTI })},
		"subject":  {policy.Revocation{ID: "r", Kind: policy.RevokeSubject, Target: "alice", EffectiveAt: t0, IssuedBefore: t0, Expires: exp, Reason: "x"}, token(nil)},
		"tenant":   {policy.Revocation{ID: "r", Kind: policy.RevokeTenant, Target: "acme", EffectiveAt: t0, IssuedBefore: t0, Expires: exp, Reason: "x"}, token(nil)},
		"key":      {policy.Revocation{Kind: policy.RevokeKey, Target: "k1", EffectiveAt: t0, Expires: exp, Reason: "x"}, token(nil)},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			s := NewSet()
			s.Add(tt.rule)
			// Never before Expires, not even at it.
			for _, at := range []time.Time{t0, exp.Add(-time.Nanosecond), exp} {
				if n := s.Prune(at); n != 0 || s.Len() != 1 || !s.Revoked(tt.tok, at) {
					t.Fatalf("Prune(%s) dropped %d rules; Len %d", at.Sub(t0), n, s.Len())
				}
			}
			if n := s.Prune(exp.Add(time.Nanosecond)); n != 1 || s.Len() != 0 {
				t.Errorf("Prune after Expires dropped %d rules; Len %d", n, s.Len())
			}
			if s.Revoked(tt.tok, exp.Add(time.Nanosecond)) {
				t.Error("pruned rule still revokes")
			}
			if n := s.Prune(exp.Add(time.Hour)); n != 0 {
				t.Errorf("second Prune dropped %d", n)
			}
		})
	}
	t.Run("rules without expiry are kept", func(t *testing.T) {
		s := NewSet()
		s.Add(byKey("k1", t0))
		s.Add(byToken(jti, t0, time.Time{}))
		if n := s.Prune(t0.Add(100 * 365 * 24 * time.Hour)); n != 0 || s.Len() != 2 {
			t.Errorf("Prune dropped %d never-expiring rules", n)
		}
	})
	t.Run("an expiry past 2262 is not pruned at once", func(t *testing.T) {
		// UnixNano of a time after 2262 is undefined (it wraps negative),
		// which made the rule look long expired. A max_ttl of a few
		// hundred years is absurd but valid, and a rule must never leave
		// the set early.
		far := time.Date(2300, 1, 1, 0, 0, 0, 0, time.UTC)
		s := NewSet()
		s.Add(byToken(jti, t0, far))
		s.Add(policy.Revocation{ID: "r", Kind: policy.RevokeSubject, Target: "alice", EffectiveAt: t0, IssuedBefore: t0, Expires: far, Reason: "x"})
		if n := s.Prune(t0.Add(time.Hour)); n != 0 || s.Len() != 2 {
			t.Errorf("Prune dropped %d rules that expire in 2300", n)
		}
		if !s.Revoked(token(nil), t0.Add(time.Hour)) {
			t.Error("the rule does not revoke")
		}
		// Nor is a rule that takes effect after 2262 in effect now.
		s = NewSet()
		s.Add(byToken(jti, far, time.Time{}))
		if s.Revoked(token(nil), t0) {
			t.Error("a rule effective in 2300 revokes now")
		}
	})
	t.Run("only expired ones of a subject go", func(t *testing.T) {
		s := NewSet()
		s.Add(policy.Revocation{ID: "old", Kind: policy.RevokeSubject, Target: "alice", EffectiveAt: t0, IssuedBefore: t0.Add(-time.Hour), Expires: t0, Reason: "x"})
		s.Add(policy.Revocation{ID: "new", Kind: policy.RevokeSubject, Target: "alice", EffectiveAt: t0, IssuedBefore: t0, Expires: exp, Reason: "x"})
		if n := s.Prune(t0.Add(time.Minute)); n != 1 || s.Len() != 1 || !s.Revoked(token(nil), t0.Add(time.Minute)) {
			t.Errorf("Prune dropped %d, Len %d", n, s.Len())
		}
	})
}

func TestSetConcurrent(t *testing.T) {
	s := NewSet()
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 500 {
				id := policy.NewTokenID()
				s.Add(byToken(id, t0, t0.Add(time.Duration(i)*time.Second)))
				s.Add(bySubject(fmt.Sprint(w, i), fmt.Sprint("user", i%7), t0, t0))
				s.Add(byTenant(fmt.Sprint(w, i), "acme", t0, t0))
				s.Add(byKey(fmt.Sprint("k", i%5), t0))
				if i%3 == 0 {
					s.Remove(byToken(id, t0, t0))
				}
				if i%50 == 0 {
					s.Prune(t0.Add(time.Duration(i) * time.Second))
				}
			}
		}()
	}
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tok := token(func(t *policy.Token) { t.Subject = "user3" })
			for range 2000 {
				if !s.Revoked(tok, t0) {
					// The tenant and subject rules are added at once by
					// every writer; the first check may run before them.
					continue
				}
				_ = s.Len()
			}
		}()
	}
	wg.Wait()
	if !s.Revoked(token(nil), t0) {
		t.Error("tenant acme should be revoked")
	}
}

// fill adds n jti rules and returns the jtis.
func fill(s *Set, n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = policy.NewTokenID()
		s.Add(byToken(ids[i], t0, t0.Add(time.Hour)))
	}
	return ids
}

// BenchmarkRevocationLookup1M looks a token up in a set of a million jti
// rules, one revoked and one not.
func BenchmarkRevocationLookup1M(b *testing.B) {
	s := NewSet()
	ids := fill(s, 1_000_000)
	cases := map[string]struct {
		tok  *policy.Token
		want bool
	}{
		"revoked":     {token(func(t *policy.Token) { t.ID = ids[len(ids)/2] }), true},
		"not revoked": {token(func(t *policy.Token) { t.ID = policy.NewTokenID() }), false},
	}
	for name, c := range cases {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if s.Revoked(c.tok, t0) != c.want {
					b.Fatal("wrong answer")
				}
			}
		})
	}
}

// heapPerRule is the heap a set of n jti rules takes, per rule.
func heapPerRule(n int) float64 {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = policy.NewTokenID()
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	s := NewSet()
	for _, id := range ids {
		s.Add(byToken(id, t0, t0.Add(time.Hour)))
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(s)
	runtime.KeepAlive(ids)
	return float64(int64(after.HeapAlloc)-int64(before.HeapAlloc)) / float64(n)
}

// BenchmarkRevocationMemory reports the heap a million jti rules take.
func BenchmarkRevocationMemory(b *testing.B) {
	var per float64
	for b.Loop() {
		per = heapPerRule(1_000_000)
	}
	b.ReportMetric(per, "B/rule")
}

func TestSetMemoryPerRule(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a set of a million rules")
	}
	const limit = 100
	if per := heapPerRule(1_000_000); per > limit {
		t.Errorf("a jti rule takes %.1f bytes of heap, over %d", per, limit)
	} else {
		t.Logf("%.1f bytes per jti rule at 1M rules", per)
	}
}

// BenchmarkRevocationScale is the look-up of a token that is not revoked
// and the heap per rule, by the number of jti rules held (for
// docs/benchmarks.md).
func BenchmarkRevocationScale(b *testing.B) {
	for _, n := range []int{1_000, 10_000, 100_000, 1_000_000} {
		b.Run(fmt.Sprintf("rules=%d", n), func(b *testing.B) {
			s := NewSet()
			fill(s, n)
			tok := token(func(t *policy.Token) { t.ID = policy.NewTokenID() })
			b.ReportAllocs()
			for b.Loop() {
				if s.Revoked(tok, t0) {
					b.Fatal("wrong answer")
				}
			}
			b.StopTimer()
			b.ReportMetric(heapPerRule(n), "B/rule")
		})
	}
}
