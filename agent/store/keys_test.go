package store_test

import (
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/agent/store"
)

// TestKeysAt: the states every node derives from the stored key records at
// a given instant. Attacks: a pending key signing before its time, two keys
// signing at once, a superseded key whose retirement clock starts before
// it stopped signing.
func TestKeysAt(t *testing.T) {
	t0 := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	act := store.Key{ID: "old", State: store.KeyActive, CreatedAt: t0}
	pend := store.Key{ID: "new", State: store.KeyPending, CreatedAt: t0.Add(time.Hour), ActivateAt: t0.Add(time.Hour + 6*time.Minute)}
	ver := store.Key{ID: "ver", State: store.KeyVerifying, CreatedAt: t0.Add(-time.Hour), RetiredAt: t0}
	ret := store.Key{ID: "ret", State: store.KeyRetired, CreatedAt: t0.Add(-2 * time.Hour)}
	type want struct {
		state   store.KeyState
		retired time.Time
	}
	tests := map[string]struct {
		keys []store.Key
		at   time.Time
		want map[string]want
	}{
		"no rotation pending": {
			keys: []store.Key{act, ver, ret}, at: t0.Add(2 * time.Hour),
			want: map[string]want{"old": {store.KeyActive, time.Time{}}, "ver": {store.KeyVerifying, t0}, "ret": {store.KeyRetired, time.Time{}}},
		},
		"pending key before its activation signs nothing": {
			keys: []store.Key{act, pend}, at: pend.ActivateAt.Add(-time.Nanosecond),
			want: map[string]want{"old": {store.KeyActive, time.Time{}}, "new": {store.KeyPending, time.Time{}}},
		},
		"pending key at its activation supersedes the active one": {
			keys: []store.Key{act, pend}, at: pend.ActivateAt,
			want: map[string]want{"old": {store.KeyVerifying, pend.ActivateAt}, "new": {store.KeyActive, time.Time{}}},
		},
		"two active records (an emergency rotation seen half-way): the later signs": {
			keys: []store.Key{act, {ID: "now", State: store.KeyActive, CreatedAt: t0.Add(time.Minute)}}, at: t0.Add(time.Hour),
			want: map[string]want{"old": {store.KeyVerifying, t0.Add(time.Minute)}, "now": {store.KeyActive, time.Time{}}},
		},
		"an emergency key created after a pending one activates first": {
			keys: []store.Key{act, pend, {ID: "now", State: store.KeyActive, CreatedAt: t0.Add(time.Hour + time.Minute)}}, at: t0.Add(time.Hour + 2*time.Minute),
			want: map[string]want{"old": {store.KeyVerifying, t0.Add(time.Hour + time.Minute)}, "new": {store.KeyPending, time.Time{}}, "now": {store.KeyActive, time.Time{}}},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			in := append([]store.Key(nil), tc.keys...)
			got := store.KeysAt(in, tc.at)
			active := 0
			for n, k := range got {
				if in[n].State != tc.keys[n].State || !in[n].RetiredAt.Equal(tc.keys[n].RetiredAt) {
					t.Errorf("KeysAt changed its input")
				}
				w := tc.want[k.ID]
				if k.State != w.state || !k.RetiredAt.Equal(w.retired) {
					t.Errorf("key %s: %s retired %v, want %s retired %v", k.ID, k.State, k.RetiredAt, w.state, w.retired)
				}
				if k.State == store.KeyActive {
					active++
				}
			}
			if active != 1 {
				t.Errorf("%d active keys, want exactly 1", active)
			}
		})
	}
}
