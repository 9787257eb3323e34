package revocation

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/policy"
)

func cached(id string, exp time.Time) *policy.Token {
	return token(func(t *policy.Token) { t.ID, t.Expires = id, exp.Unix() })
}

func TestCacheGet(t *testing.T) {
	exp := t0.Add(time.Hour)
	skew := policy.MaxClockSkew
	tests := map[string]struct {
		at   time.Time
		want bool
	}{
		"before exp":          {t0, true},
		"at exp, within skew": {exp, true},
		"last second of skew": {exp.Add(skew - time.Second), true},
		"at exp plus skew":    {exp.Add(skew), false},
		"long after":          {exp.Add(24 * time.Hour), false},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			c, err := NewCache(10)
			if err != nil {
				t.Fatal(err)
			}
			want := cached(jti, exp)
			c.Add("tw_a", want)
			got, ok := c.Get("tw_a", tt.at)
			if ok != tt.want || ok && got != want || !ok && got != nil {
				t.Fatalf("Get = %v, %v; want hit %v", got, ok, tt.want)
			}
			if !ok && c.Len() != 0 {
				t.Errorf("an expired token stays cached (Len %d)", c.Len())
			}
			// Once expired, never returned again, whatever the clock says.
			if !ok {
				if _, ok := c.Get("tw_a", t0); ok {
					t.Error("expired token came back")
				}
			}
		})
	}
}

func TestCacheKeys(t *testing.T) {
	c, err := NewCache(10)
	if err != nil {
		t.Fatal(err)
	}
	a, b := cached(jti, t0.Add(time.Hour)), cached(otherJTI, t0.Add(time.Hour))
	c.Add("tw_a", a)
	c.Add("tw_b", b)
	tests := map[string]struct {
		token string
		want  *policy.Token
	}{
		"first":         {"tw_a", a},
		"second":        {"tw_b", b},
		"unknown":       {"tw_c", nil},
		"prefix of one": {"tw_", nil},
		"longer":        {"tw_a ", nil},
		"empty":         {"", nil},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			got, ok := c.Get(tt.token, t0)
			if got != tt.want || ok != (tt.want != nil) {
				t.Errorf("Get(%q) = %v, %v", tt.token, got, ok)
			}
		})
	}
	// A second Add of the same string replaces the entry.
	c.Add("tw_a", b)
	if got, _ := c.Get("tw_a", t0); got != b || c.Len() != 2 {
		t.Errorf("re-Add: got %v, Len %d", got, c.Len())
	}
}

func TestCacheEvictsLeastRecentlyUsed(t *testing.T) {
	c, err := NewCache(2)
	if err != nil {
		t.Fatal(err)
	}
	exp := t0.Add(time.Hour)
	c.Add("tw_1", cached("1", exp))
	c.Add("tw_2", cached("2", exp))
	c.Get("tw_1", t0) // 2 is now the least recently used
	c.Add("tw_3", cached("3", exp))
	for tok, want := range map[string]bool{"tw_1": true, "tw_2": false, "tw_3": true} {
		if _, ok := c.Get(tok, t0); ok != want {
			t.Errorf("Get(%s) hit = %v, want %v", tok, ok, want)
		}
	}
}

func TestCachePrune(t *testing.T) {
	c, err := NewCache(0) // default size
	if err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		c.Add(fmt.Sprint("tw_", i), cached(fmt.Sprint(i), t0.Add(time.Duration(i)*time.Minute)))
	}
	tests := map[string]struct {
		at        time.Time
		dropped   int
		remaining int
	}{
		"nothing expired":          {t0.Add(-time.Minute), 0, 10},
		"exp reached, within skew": {t0, 0, 10},
		"exp 0 past skew":          {t0.Add(policy.MaxClockSkew), 1, 9},
		"exp 0..4 past skew":       {t0.Add(4*time.Minute + policy.MaxClockSkew), 4, 5},
		"all":                      {t0.Add(time.Hour), 5, 0},
	}
	// In order: each step prunes from what the previous one left.
	for _, name := range []string{"nothing expired", "exp reached, within skew", "exp 0 past skew", "exp 0..4 past skew", "all"} {
		tt := tests[name]
		t.Run(name, func(t *testing.T) {
			if n := c.Prune(tt.at); n != tt.dropped || c.Len() != tt.remaining {
				t.Errorf("Prune dropped %d (Len %d), want %d (Len %d)", n, c.Len(), tt.dropped, tt.remaining)
			}
		})
	}
	c.Add("tw_x", cached("x", t0.Add(time.Hour)))
	c.Purge()
	if c.Len() != 0 {
		t.Errorf("Purge left %d", c.Len())
	}
}

func TestCacheGetDoesNotAllocate(t *testing.T) {
	c, err := NewCache(10)
	if err != nil {
		t.Fatal(err)
	}
	c.Add("tw_a", cached(jti, t0.Add(time.Hour)))
	if n := testing.AllocsPerRun(100, func() { c.Get("tw_a", t0) }); n != 0 {
		t.Errorf("Get allocates %v times", n)
	}
}

func TestCacheConcurrent(t *testing.T) {
	c, err := NewCache(64)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 1000 {
				tok := fmt.Sprint("tw_", w, "_", i%100)
				exp := t0.Add(time.Duration(i%3) * time.Minute)
				if got, ok := c.Get(tok, t0.Add(time.Minute)); ok && got.Expires+int64(policy.MaxClockSkew/time.Second) <= t0.Add(time.Minute).Unix() {
					t.Error("Get returned an expired token")
				}
				c.Add(tok, cached(tok, exp))
				if i%100 == 0 {
					c.Prune(t0.Add(time.Minute))
				}
				if i%500 == 0 {
					c.Purge()
				}
				_ = c.Len()
			}
		}()
	}
	wg.Wait()
}
