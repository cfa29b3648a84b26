// Command pgpilot keeps Userpilot's company profiles in step with a Postgres
// table, through logical replication. See README.md.
package main

import (
	"fmt"
	"io"
	"os"
)

// Exit codes, as DESIGN.md promises them.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

const usage = `pgpilot keeps Userpilot company profiles in step with a Postgres table.

Usage:
  pgpilot run      --config FILE   stream changes to Userpilot until SIGTERM/SIGINT
  pgpilot check    --config FILE   preflight: config, Postgres and slot, each problem with its fix
  pgpilot preview  --config FILE [--limit N] [--where SQL]   print the payloads rows would become
  pgpilot status   --config FILE [--json]   checkpoint, slot position, lag and snapshot progress
  pgpilot resync   --config FILE [--company ID | --where SQL]   send rows again, alongside the stream
  pgpilot teardown --config FILE [--yes]    drop the slot (and the publication pgpilot created)
  pgpilot version                  version, commit, Go version and build date (also --version)

Exit codes: 0 success, 1 runtime failure, 2 bad usage or configuration.
`

func main() {
	os.Exit(cli(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// cli dispatches to one subcommand and returns the process exit code.
func cli(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	cmds := map[string]func([]string, io.Reader, io.Writer, io.Writer) int{
		"run":      runCommand,
		"check":    checkCommand,
		"preview":  previewCommand,
		"status":   statusCommand,
		"teardown": teardownCommand,
		"resync":   resyncCommand,
		"version":  versionCommand,
	}
	if args[0] == "--version" {
		args = append([]string{"version"}, args[1:]...)
	}
	if args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprint(stdout, usage)
		return exitOK
	}
	cmd, ok := cmds[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "pgpilot: unknown command %q\n\n%s", args[0], usage)
		return exitUsage
	}
	return cmd(args[1:], stdin, stdout, stderr)
}
