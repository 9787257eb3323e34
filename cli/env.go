package cli

import (
	"fmt"
	"strings"

	"github.com/spf13/pflag"
)

// envPrefix starts the environment variable of every serve flag.
const envPrefix = "TOKENWARDEN_"

// maxEnvValueBytes bounds a flag's value taken from the environment.
const maxEnvValueBytes = 64 << 10

// envName is the variable that sets flag name: --etcd-ca is
// TOKENWARDEN_ETCD_CA.
func envName(name string) string {
	return envPrefix + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// flagsFromEnv sets every flag not given on the command line from its
// environment variable, when that is set. Repeatable (array) flags take a
// comma-separated list. A value the flag refuses is an error naming both.
func flagsFromEnv(fs *pflag.FlagSet, lookup func(string) (string, bool)) error {
	var err error
	fs.VisitAll(func(f *pflag.Flag) {
		if err != nil || f.Changed || f.Name == "help" {
			return
		}
		name := envName(f.Name)
		v, ok := lookup(name)
		if !ok {
			return
		}
		if len(v) > maxEnvValueBytes {
			err = usageErrorf("%s is longer than %d bytes", name, maxEnvValueBytes)
			return
		}
		values := []string{v}
		if strings.HasSuffix(f.Value.Type(), "Array") {
			values = strings.Split(v, ",")
		}
		for _, one := range values {
			if serr := fs.Set(f.Name, one); serr != nil {
				err = usageErrorf("%s: invalid value for --%s: %v", name, f.Name, serr)
				return
			}
		}
	})
	return err
}

// documentEnv adds each flag's variable to its help line.
func documentEnv(fs *pflag.FlagSet) {
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Name == "help" {
			return
		}
		f.Usage = fmt.Sprintf("%s (env %s)", f.Usage, envName(f.Name))
	})
}
