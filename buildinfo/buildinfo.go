// Package buildinfo says which build of tokenwarden is running: the version
// and commit the Makefile stamps in with -ldflags, or what the Go toolchain
// recorded (module version, VCS revision) when built without them.
package buildinfo

import (
	"runtime"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
)

// Set at link time by the Makefile:
//
//	-ldflags "-X github.com/tokenwarden/tokenwarden/buildinfo.version=v1.2.3
//	          -X github.com/tokenwarden/tokenwarden/buildinfo.commit=abc123"
var (
	version string
	commit  string
)

// Info is one build's identity.
type Info struct {
	Version   string // e.g. v1.2.3, or "devel"
	Commit    string // VCS revision, "+dirty" when built from a modified tree; "unknown" when not recorded
	GoVersion string
}

// Get returns the running build's identity.
func Get() Info { return get(version, commit, debug.ReadBuildInfo) }

func get(version, commit string, read func() (*debug.BuildInfo, bool)) Info {
	info := Info{Version: version, Commit: commit, GoVersion: runtime.Version()}
	if bi, ok := read(); ok {
		if info.Version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			info.Version = bi.Main.Version
		}
		if info.Commit == "" {
			var rev, modified string
			for _, s := range bi.Settings {
				switch s.Key {
				case "vcs.revision":
					rev = s.Value
				case "vcs.modified":
					modified = s.Value
				}
			}
			if rev != "" && modified == "true" {
				rev += "+dirty"
			}
			info.Commit = rev
		}
	}
	if info.Version == "" {
		info.Version = "devel"
	}
	if info.Commit == "" {
		info.Commit = "unknown"
	}
	return info
}

// String is the one line `tokenwarden version` prints.
func (i Info) String() string {
	return "tokenwarden " + i.Version + " (commit " + i.Commit + ", " + i.GoVersion + ")"
}

// Collector exports tokenwarden_build_info: one series, value 1, labelled
// with the build's version, commit and Go version.
func Collector() prometheus.Collector {
	i := Get()
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "tokenwarden_build_info",
		Help:        "The running build: always 1, labelled with its version, commit and Go version.",
		ConstLabels: prometheus.Labels{"version": i.Version, "commit": i.Commit, "goversion": i.GoVersion},
	})
	g.Set(1)
	return g
}
