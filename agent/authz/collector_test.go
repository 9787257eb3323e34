package authz

import (
	"os"
	"runtime/debug"
	"testing"
)

func TestTuneCollector(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	for _, tc := range []struct {
		name    string
		env     *string
		percent int
		fromEnv bool
	}{
		{"unset: the agent's default", nil, CollectorPercent, false},
		{"GOGC=100: Go's default", gogc("100"), 100, true},
		{"GOGC=off", gogc("off"), -1, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.env != nil {
				t.Setenv("GOGC", *tc.env)
				// The runtime reads GOGC once at start; a test sets what
				// the process would have started with.
				if *tc.env == "off" {
					debug.SetGCPercent(-1)
				} else {
					debug.SetGCPercent(100)
				}
			} else {
				t.Setenv("GOGC", "") // restored after the test
				os.Unsetenv("GOGC")
			}
			p, fromEnv := TuneCollector()
			if p != tc.percent || fromEnv != tc.fromEnv {
				t.Fatalf("TuneCollector() = %d, %v; want %d, %v", p, fromEnv, tc.percent, tc.fromEnv)
			}
			if got := debug.SetGCPercent(100); got != tc.percent {
				t.Fatalf("the collector runs at %d, want %d", got, tc.percent)
			}
		})
	}
}

func gogc(s string) *string { return &s }
