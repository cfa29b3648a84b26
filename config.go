package main

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/pgpilot/pgpilot/mapping"
)

// commandFlags is the flag set every subcommand starts from.
func commandFlags(name string, stderr io.Writer) (*flag.FlagSet, *string) {
	fs := flag.NewFlagSet("pgpilot "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg := fs.String("config", "", "the mapping file (YAML)")
	return fs, cfg
}

// loadConfig parses flags and loads the config, printing the problem and
// returning exitUsage when either is bad. Nothing has touched Postgres yet.
func loadConfig(fs *flag.FlagSet, path *string, args []string, stderr io.Writer) (*mapping.Config, int) {
	if err := fs.Parse(args); err != nil {
		return nil, exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "%s: unexpected argument %q\n", fs.Name(), fs.Arg(0))
		return nil, exitUsage
	}
	if *path == "" {
		fmt.Fprintf(stderr, "%s: --config FILE is required (see mapping.example.yaml)\n", fs.Name())
		return nil, exitUsage
	}
	cfg, err := mapping.Load(*path)
	if err != nil {
		fmt.Fprintf(stderr, "%s: invalid configuration:\n%v\n", fs.Name(), err)
		return nil, exitUsage
	}
	for _, w := range cfg.Warnings {
		fmt.Fprintf(stderr, "%s: warning: %s\n", fs.Name(), w)
	}
	return cfg, exitOK
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
