// Command pgpilot keeps Userpilot's company profiles in step with a Postgres
// table, through logical replication. See README.md and docs/.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/pgpilot/pgpilot/daemon"
	"github.com/pgpilot/pgpilot/internal/fix"
	_ "github.com/pgpilot/pgpilot/internal/heapprofile" // heap profiles at peaks, in builds with -tags heapprofile only
)

// Exit codes, as the README and docs/operate.md promise them.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

const usage = `pgpilot keeps Userpilot company profiles in step with a Postgres table.

Usage:
  pgpilot init     --table SCHEMA.TABLE [--users-table SCHEMA.TABLE] [--out FILE]   write a starter config from the table (reads $DATABASE_URL)
  pgpilot run      --config FILE   stream changes to Userpilot until SIGTERM/SIGINT
  pgpilot check    --config FILE   preflight: config, Postgres and slot, each problem with its fix
  pgpilot preview  --config FILE [--limit N] [--where SQL] [--changes]   print the payloads rows would become (--changes: what a mapping change backfills)
  pgpilot status   --config FILE [--json]   checkpoint, slot position, lag and snapshot progress
  pgpilot why      COMPANY_ID --config FILE [--json]   where one company stands, and what it waits for
  pgpilot resync   --config FILE [--company ID | --where SQL | --cancel]   send rows again, alongside the stream (or end the re-syncs)
  pgpilot deadletters list|replay|drop --config FILE [--company ID] [--all]   the records set aside
  pgpilot recover  --config FILE [--yes]    start over after the slot, the publication or store.db was lost, keeping what the state directory knows
  pgpilot teardown --config FILE [--yes]    drop the slot (and the publication pgpilot created)
  pgpilot version                  version, commit, Go version and build date (also --version)

Exit codes: 0 success, 1 runtime failure, 2 bad usage or configuration.
`

// command is one subcommand. It returns nil when it did its work, or an
// error for report to print and classify (see exitCode).
type command func(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error

var commands = map[string]command{
	"run":         runCommand,
	"init":        initCommand,
	"check":       checkCommand,
	"preview":     previewCommand,
	"status":      statusCommand,
	"why":         whyCommand,
	"teardown":    teardownCommand,
	"recover":     recoverCommand,
	"resync":      resyncCommand,
	"deadletters": deadlettersCommand,
	"version":     versionCommand,
}

func main() {
	os.Exit(cli(context.Background(), os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// cli dispatches to one subcommand and returns the process exit code.
func cli(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	if args[0] == "--version" {
		args = append([]string{"version"}, args[1:]...)
	}
	if args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprint(stdout, usage)
		return exitOK
	}
	cmd, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "pgpilot: unknown command %q\n\n%s", args[0], usage)
		return exitUsage
	}
	return report(stderr, args[0], cmd(ctx, args[1:], stdin, stdout, stderr))
}

// report prints what a command returned, as `pgpilot NAME: ERROR` and, for
// an error that carries its fix, `  fix: FIX` on a line of its own, and
// returns the exit code. An error the command has shown already (see
// shownError) is not printed again.
func report(stderr io.Writer, name string, err error) int {
	if err == nil {
		return exitOK
	}
	if !errors.As(err, new(shownError)) && !errors.As(err, new(helpShown)) {
		fmt.Fprintf(stderr, "pgpilot %s: %v\n", name, err)
		if f := fix.Of(err); f != "" {
			fmt.Fprintf(stderr, "  fix: %s\n", f)
		}
	}
	return exitCode(err)
}

// exitCode is 0 for no error, 2 for a mistake in the command line or the
// configuration (a usageError, or daemon.ErrConfig from the daemon), and 1
// for anything else.
func exitCode(err error) int {
	switch {
	case err == nil, errors.As(err, new(helpShown)):
		return exitOK
	case errors.As(err, new(usageError)), errors.Is(err, daemon.ErrConfig):
		return exitUsage
	default:
		return exitFailure
	}
}

// usageError is a mistake the operator corrects on the command line or in
// the config file, before pgpilot touches anything: exit code 2.
type usageError struct{ error }

func (e usageError) Unwrap() error { return e.error }

// helpShown is what a command returns when it printed its usage because
// -h asked for it: nothing to report, exit 0.
type helpShown struct{}

func (helpShown) Error() string { return "help shown" }

// shownError is an error the command has already shown the operator (the
// flag package's complaint, check's ✗ lines, run's last log line): report
// only turns it into the exit code.
type shownError struct{ error }

func (e shownError) Unwrap() error { return e.error }
