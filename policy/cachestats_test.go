package policy_test

import (
	"testing"

	"github.com/tokenwarden/tokenwarden/agent/revocation"
	"github.com/tokenwarden/tokenwarden/policy"
)

type cacheStats struct{ hits, misses int }

func (s *cacheStats) CacheHit()  { s.hits++ }
func (s *cacheStats) CacheMiss() { s.misses++ }

// TestCacheHitCountedOnlyWhenUsed attacks the old counting wrapper, which
// counted every cache Get that found the token as a hit, although the
// Decider verifies again a token cached under another policy or key set:
// after a reload every check was counted a hit while every one was
// verified. A hit is counted only when the cached verification is used.
func TestCacheHitCountedOnlyWhenUsed(t *testing.T) {
	lru, err := revocation.NewCache(1000)
	if err != nil {
		t.Fatal(err)
	}
	stats := &cacheStats{}
	p := loadPolicy(t, "testdata/policy.yaml")
	d := policy.NewDecider(policy.DeciderConfig{
		Env: "prod", Policy: p, Keys: keySet(testKey), Cache: lru, CacheStats: stats, Revocations: revocation.NewSet(),
	})
	req := get(mint(t, testKey, claims()), "/orders/1")
	steps := []struct {
		name         string
		before       func()
		hits, misses int
	}{
		{"first sight: verified", func() {}, 0, 1},
		{"seen before: cached", func() {}, 1, 1},
		{"after a reload: verified again", func() { d.SetPolicy(loadPolicy(t, "testdata/policy.yaml")) }, 1, 2},
		{"then cached again", func() {}, 2, 2},
		{"after a key change: verified again", func() { d.SetKeys(keySet(testKey)) }, 2, 3},
	}
	for _, s := range steps {
		s.before()
		if dec := d.Decide(req, testNow); !dec.Allow {
			t.Fatalf("%s: %s", s.name, dec.Reason)
		}
		if stats.hits != s.hits || stats.misses != s.misses {
			t.Fatalf("%s: %d hits, %d misses; want %d, %d", s.name, stats.hits, stats.misses, s.hits, s.misses)
		}
	}
}
