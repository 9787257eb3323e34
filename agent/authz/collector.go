package authz

import (
	"os"
	"runtime/debug"
)

// CollectorPercent is the garbage collector's target (GOGC) the agent runs
// with unless the GOGC environment variable says otherwise: the heap may
// grow to three times what is live between collections, against Go's
// default of two.
//
// Why: at one check at a time on one CPU (the chart's limit), the checks
// that land in a collection's mark phase set the p99, and the agent's live
// heap (verified tokens, their answers, the revocation set) makes each mark
// phase longer than a bare gRPC server's. At 200, collections are half as
// frequent: the one-client p99 went from 1.30× the no-op server's to 1.01×
// in the same session, and CPU per check from 1.09× to 1.04×
// (docs/authz.md). The price is memory: a few MB more with thousands of
// tokens, about one more live heap with a million revocation rules (84 MB),
// inside the chart's 512 MiB limit. GOGC=100 restores Go's default.
const CollectorPercent = 200

// TuneCollector applies CollectorPercent unless GOGC is set, and reports
// the percent in force and whether it came from the environment. serve
// calls it once at start; it sets a process-wide value.
func TuneCollector() (percent int, fromEnv bool) {
	if _, ok := os.LookupEnv("GOGC"); ok {
		p := debug.SetGCPercent(100) // read the value GOGC set ...
		debug.SetGCPercent(p)        // ... and put it back
		return p, true
	}
	debug.SetGCPercent(CollectorPercent)
	return CollectorPercent, false
}
