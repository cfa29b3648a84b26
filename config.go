package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/pgpilot/pgpilot/config"
)

// commandFlags is the flag set every subcommand starts from.
func commandFlags(name string, stderr io.Writer) (*flag.FlagSet, *string) {
	fs := flag.NewFlagSet("pgpilot "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg := fs.String("config", "", "the mapping file (YAML)")
	return fs, cfg
}

// loadConfig parses flags and loads the config; a problem with either is a
// usageError, found before anything touches Postgres. It prints the
// config's warnings.
func loadConfig(fs *flag.FlagSet, path *string, args []string, stderr io.Writer) (*config.Config, error) {
	if err := parseFlags(fs, args); err != nil {
		return nil, err
	}
	return readConfig(fs.Name(), *path, stderr)
}

// readConfig loads the config file at path (--config) for the command
// name; a problem is a usageError. It prints the config's warnings.
func readConfig(name, path string, stderr io.Writer) (*config.Config, error) {
	if path == "" {
		return nil, usageError{errors.New("--config FILE is required (see mapping.example.yaml)")}
	}
	cfg, err := config.Load(path)
	if err != nil {
		// A list of problems prints one a line, each fix under its problem.
		return nil, usageError{fmt.Errorf("invalid configuration:\n%w", err)}
	}
	for _, w := range cfg.Warnings {
		fmt.Fprintf(stderr, "%s: warning: %s\n", name, w)
	}
	return cfg, nil
}

// parseFlags parses a command's flags. -h (or --help) has printed the
// usage and is no error: helpShown, exit 0. A bad flag has been printed
// with the usage too: a shown usage error, exit 2. So is an argument that
// is not a flag.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return helpShown{}
		}
		return shownError{usageError{err}} // the flag package printed it, with the usage
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("unexpected argument %q", fs.Arg(0))}
	}
	return nil
}

// newLogger logs text on a terminal and JSON lines otherwise (for log
// collectors).
func newLogger(w io.Writer, level slog.Level) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	if isTerminal(w) {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

// isTerminal reports whether w is a terminal (a person watching, not a log
// collector).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
