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
	"github.com/pgpilot/pgpilot/internal/fix"
	"github.com/pgpilot/pgpilot/replication"
)

// runCommand runs the daemon until SIGTERM or SIGINT. Its last error goes
// to the log, where the operator (or the log collector) watches.
func runCommand(ctx context.Context, args []string, _ io.Reader, _, stderr io.Writer) error {
	fs, path := commandFlags("run", stderr)
	level := fs.String("log-level", "info", "debug, info, warn or error")
	grace := fs.Duration("shutdown-grace", 10*time.Second, "how long to keep delivering after SIGTERM before exiting")
	cfg, err := loadConfig(fs, path, args, stderr)
	if err != nil {
		return err
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*level)); err != nil {
		return usageError{fmt.Errorf("--log-level %q: want debug, info, warn or error", *level)}
	}
	log := newLogger(stderr, lvl)

	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := refusePooler(ctx, cfg.Postgres.URL); err != nil {
		logStopped(log, err)
		return shownError{err}
	}
	opts := daemon.Options{Config: cfg, Logger: log, ShutdownGrace: *grace}
	if isTerminal(stderr) {
		opts.Progress = stderr // a snapshot's progress bar
	}
	notified := notifyStartAndStop(ctx, log)
	err = daemon.Run(ctx, opts)
	notified()
	if err != nil {
		logStopped(log, err)
		return shownError{err}
	}
	return nil
}

// refusePooler returns a configuration error when postgres.url goes
// through a connection pooler, found before the daemon creates anything
// (publication, slot, state). Anything else the probe meets is left to the
// daemon, which retries what may pass.
func refusePooler(ctx context.Context, url string) error {
	// Bounded: a server that does not answer is the daemon's to wait for.
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if route := replication.ProbeRoute(ctx, url); route.Pooler != nil {
		return fmt.Errorf("%w: %w", daemon.ErrConfig, route.Pooler.Err())
	}
	return nil
}

// logStopped logs why the daemon stopped, with the fix, when the error
// carries one, as the "fix" attribute.
func logStopped(log *slog.Logger, err error) {
	msg := "pgpilot stopped"
	if errors.Is(err, daemon.ErrConfig) {
		msg = "pgpilot cannot run with this configuration"
	}
	attrs := []any{"error", err}
	if f := fix.Of(err); f != "" {
		attrs = append(attrs, "fix", f)
	}
	log.Error(msg, attrs...)
}
