package policy

import (
	"strings"
	"testing"
)

func TestFindCandidates(t *testing.T) {
	tok := "tw_eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlc2lnbmF0dXJlc2lnbmF0dXJl"
	tests := map[string]struct {
		data string
		want []int // offsets
	}{
		"none":             {"nothing here", nil},
		"alone":            {tok, []int{0}},
		"in a log line":    {`level=info msg="calling" auth="Bearer ` + tok + `" done`, []int{38}},
		"two":              {tok + "\n" + tok, []int{0, len(tok) + 1}},
		"not a jws header": {"tw_abc.def.ghijklmnopqrstuvwxyz", nil},
		"too short a sig":  {"tw_eyJhbGciOi.eyJzdWIi.c2ln", nil},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got := FindCandidates([]byte(tc.data), 0)
			if len(got) != len(tc.want) {
				t.Fatalf("found %d, want %d: %+v", len(got), len(tc.want), got)
			}
			for i, c := range got {
				if c.Offset != tc.want[i] || !strings.HasPrefix(c.Text, "tw_eyJ") {
					t.Errorf("candidate %d at %d (%q), want offset %d", i, c.Offset, c.Text, tc.want[i])
				}
			}
		})
	}
}

func FuzzFindCandidates(f *testing.F) {
	f.Add([]byte("Bearer tw_eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlc2lnbmF0dXJlc2lnbmF0dXJl"))
	f.Add([]byte("tw_eyJ....."))
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, c := range FindCandidates(data, 0) {
			if string(data[c.Offset:c.Offset+len(c.Text)]) != c.Text {
				t.Fatalf("candidate does not stand at its offset")
			}
			if _, verr := NewKeySet(nil).VerifySignature(c.Text); verr == nil {
				t.Fatal("verified under an empty key set")
			}
		}
	})
}
