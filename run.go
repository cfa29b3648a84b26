package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os/signal"
	"syscall"
	"time"

	"github.com/pgpilot/pgpilot/daemon"
)

func runCommand(args []string, _ io.Reader, _, stderr io.Writer) int {
	fs, path := commandFlags("run", stderr)
	level := fs.String("log-level", "info", "debug, info, warn or error")
	grace := fs.Duration("shutdown-grace", 10*time.Second, "how long to keep delivering after SIGTERM before exiting")
	cfg, code := loadConfig(fs, path, args, stderr)
	if cfg == nil {
		return code
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*level)); err != nil {
		fmt.Fprintf(stderr, "pgpilot run: --log-level %q: want debug, info, warn or error\n", *level)
		return exitUsage
	}
	log := newLogger(stderr, lvl)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	opts := daemon.Options{Config: cfg, Logger: log, ShutdownGrace: *grace}
	if isTerminal(stderr) {
		opts.Progress = stderr // a snapshot's progress bar
	}
	notified := notifyStartAndStop(ctx, log)
	err := daemon.Run(ctx, opts)
	notified()
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, daemon.ErrConfig):
		log.Error("pgpilot cannot run with this configuration", "error", err)
		return exitUsage
	default:
		log.Error("pgpilot stopped", "error", err)
		return exitFailure
	}
}
