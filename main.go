// Command tokenwarden is the API token policy enforcer: one binary is the
// node agent (`tokenwarden serve`) and the CLI that drives it.
package main

import (
	"os"

	"github.com/tokenwarden/tokenwarden/cli"
)

func main() { os.Exit(cli.Execute()) }
