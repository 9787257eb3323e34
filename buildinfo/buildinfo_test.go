package buildinfo

import (
	"runtime"
	"runtime/debug"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestGet(t *testing.T) {
	recorded := func(version string, settings ...debug.BuildSetting) func() (*debug.BuildInfo, bool) {
		return func() (*debug.BuildInfo, bool) {
			return &debug.BuildInfo{Main: debug.Module{Version: version}, Settings: settings}, true
		}
	}
	none := func() (*debug.BuildInfo, bool) { return nil, false }
	for _, tc := range []struct {
		name            string
		version, commit string
		read            func() (*debug.BuildInfo, bool)
		want            Info
	}{
		{"stamped by the Makefile", "v1.2.3", "abc", recorded("v9", debug.BuildSetting{Key: "vcs.revision", Value: "zzz"}), Info{"v1.2.3", "abc", runtime.Version()}},
		{"go install of a tag", "", "", recorded("v0.4.0"), Info{"v0.4.0", "unknown", runtime.Version()}},
		{"go build in a dirty tree", "", "", recorded("(devel)", debug.BuildSetting{Key: "vcs.revision", Value: "def"}, debug.BuildSetting{Key: "vcs.modified", Value: "true"}), Info{"devel", "def+dirty", runtime.Version()}},
		{"nothing recorded", "", "", none, Info{"devel", "unknown", runtime.Version()}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := get(tc.version, tc.commit, tc.read); got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestCollector(t *testing.T) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(Collector())
	i := Get()
	want := `# HELP tokenwarden_build_info The running build: always 1, labelled with its version, commit and Go version.
# TYPE tokenwarden_build_info gauge
tokenwarden_build_info{commit="` + i.Commit + `",goversion="` + i.GoVersion + `",version="` + i.Version + `"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "tokenwarden_build_info"); err != nil {
		t.Fatal(err)
	}
}
