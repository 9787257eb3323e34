package cli

import (
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

// FuzzFlagsFromEnv: any value in any serve flag's variable is either taken
// or refused with an error naming the variable; never a panic, never a
// silently ignored value past the size bound.
func FuzzFlagsFromEnv(f *testing.F) {
	for _, seed := range []struct {
		flag  uint8
		value string
	}{{0, "127.0.0.1:1"}, {3, "a,b,,c"}, {7, "-1"}, {9, "5s"}, {11, "true"}, {12, ""}, {20, "\x00"}} {
		f.Add(seed.flag, seed.value)
	}
	var names []string
	newServeCommand().Flags().VisitAll(func(fl *pflag.Flag) { names = append(names, fl.Name) })
	f.Fuzz(func(t *testing.T, which uint8, value string) {
		name := names[int(which)%len(names)]
		cmd := newServeCommand()
		variable := envName(name)
		err := flagsFromEnv(cmd.Flags(), func(k string) (string, bool) {
			if k == variable {
				return value, true
			}
			return "", false
		})
		if err != nil {
			if !strings.Contains(err.Error(), variable) {
				t.Fatalf("error %q does not name %s", err, variable)
			}
			return
		}
		if len(value) > maxEnvValueBytes {
			t.Fatalf("a %d-byte value was taken", len(value))
		}
	})
}
