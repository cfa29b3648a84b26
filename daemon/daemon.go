// Package daemon is `pgpilot run`: it composes replication, mapping,
// delivery, userpilot and state into a long-running process that sets up the
// publication and slot, sends the initial snapshot when the slot is new,
// streams until told to stop, reconnects when Postgres goes away, and on
// shutdown delivers what it holds and checkpoints before it exits.
package daemon

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgpilot/pgpilot/config"
	"github.com/pgpilot/pgpilot/delivery"
	"github.com/pgpilot/pgpilot/internal/fix"
	"github.com/pgpilot/pgpilot/liveness"
	"github.com/pgpilot/pgpilot/metrics"
	"github.com/pgpilot/pgpilot/related"
	"github.com/pgpilot/pgpilot/replication"
	"github.com/pgpilot/pgpilot/state"
	"github.com/pgpilot/pgpilot/userpilot"
)

// Options configure Run.
type Options struct {
	Config *config.Config
	Logger *slog.Logger
	// ShutdownGrace is how long, after a stop signal, pending changes may
	// still be delivered before pgpilot exits without them (they are not
	// lost: not checkpointed, they are streamed again at the next start).
	// 0 → 10s.
	ShutdownGrace time.Duration
	// ReconnectMax caps the wait between reconnection attempts; 0 → 30s.
	ReconnectMax time.Duration
	// Userpilot overrides client options derived from the config (tests use
	// it for short backoffs); Endpoint, APIKey and RateLimit always come from
	// the config.
	Userpilot userpilot.Options
	// RetainedWALInterval is how often the slot's retained WAL is
	// measured; 0 → 5s.
	RetainedWALInterval time.Duration
	// Delivery overrides the delivery tuning (bulk overhead, minimum job,
	// poll interval, memory bound); what the config sets comes from it.
	Delivery delivery.Options
	// SnapshotChunkRows is how many rows a snapshot reads at a time; 0 →
	// 5,000.
	SnapshotChunkRows int
	// Progress, when set (a terminal), shows a running snapshot's progress
	// bar.
	Progress io.Writer
	// Metrics receives what the daemon does; nil → Run makes one from the
	// config (and serves it on http.listen when set).
	Metrics *metrics.Metrics
	// StallAfter overrides delivery.stall_after: how long work may be
	// owed with nothing moving before that is a stall.
	StallAfter time.Duration
}

// ErrConfig is wrapped by errors that the operator fixes in the config file
// or the database schema; `pgpilot run` exits 2 for them.
var ErrConfig = errors.New("configuration problem")

// permanentError marks a failure that retrying cannot cure.
type permanentError struct{ err error }

func (e permanentError) Error() string { return e.err.Error() }
func (e permanentError) Unwrap() error { return e.err }

func permanent(err error) error {
	if err == nil {
		return nil
	}
	return permanentError{err}
}

// Run runs the daemon until ctx is done (returns nil after a clean drain) or
// a permanent failure.
func Run(ctx context.Context, opts Options) error {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.ShutdownGrace <= 0 {
		opts.ShutdownGrace = 10 * time.Second
	}
	if opts.ReconnectMax <= 0 {
		opts.ReconnectMax = 30 * time.Second
	}
	cfg := opts.Config
	// Each log line says which part of pgpilot wrote it.
	stateLog := opts.Logger.With("subsystem", "state")
	if opts.Metrics == nil {
		opts.Metrics = metrics.New(metricsOptions(cfg, opts.Logger))
	}
	var web *httpServer
	if cfg.HTTP.Listen != "" { // before the lock: a standby answers /healthz too
		var err error
		if web, err = serveHTTP(cfg.HTTP.Listen, opts.Metrics, opts.Logger.With("subsystem", "http")); err != nil {
			return err
		}
		defer web.Close()
	}
	// Two pgpilots may share a state directory (and so a slot) for high
	// availability: the second waits for the first's lock and takes over
	// the moment it dies. The lock, and the slot, ensure only one streams.
	dir, err := state.OpenWait(ctx, cfg.State.Dir, func(holder string) {
		opts.Metrics.StandingBy(holder)
		stateLog.Info("standing by: another pgpilot holds the state directory; taking over when it stops",
			"state_dir", cfg.State.Dir, "holder_pid", holder)
		if web != nil && web.Waiting() {
			stateLog.Info("http.listen is in use, likely by the pgpilot standing in front of this one: serving it as soon as it is free",
				"listen", cfg.HTTP.Listen)
		}
	})
	if err != nil {
		if ctx.Err() != nil {
			return nil // stopped while standing by
		}
		if errors.Is(err, state.ErrNotWritable) {
			return fmt.Errorf("%w: %w", ErrConfig, err) // the volume's to fix, before Postgres is touched
		}
		return err
	}
	defer dir.Close()
	if web != nil {
		// The instance that holds the directory answers on http.listen; a
		// port still taken now is not another pgpilot's.
		if err := web.bound(ctx); err != nil {
			return err
		}
		if ctx.Err() != nil {
			return nil // stopped while waiting for the port
		}
	}
	stateLog.Info("state directory locked; starting", "state_dir", cfg.State.Dir)

	client, err := userpilot.New(userpilotOptions(cfg, opts.Userpilot, opts.Logger))
	if err != nil {
		return fmt.Errorf("%w: userpilot: %w", ErrConfig, err)
	}
	opts.Metrics.SetUserpilot(userpilotCounts(client))

	store, err := dir.OpenStore()
	if err != nil {
		if errors.Is(err, state.ErrNotWritable) {
			return fmt.Errorf("%w: %w", ErrConfig, err)
		}
		var damage *state.StoreDamage
		if errors.As(err, &damage) {
			return StoreDamaged(cfg, damage)
		}
		return err
	}
	defer store.Close()

	streamLog := opts.Logger.With("subsystem", "stream")
	s := &session{opts: opts, cfg: cfg, dir: dir, store: store, sender: client, log: streamLog, relStats: &related.Stats{},
		snapLog: opts.Logger.With("subsystem", "snapshot"), base: opts.Logger,
		breaker: &delivery.Breaker{Endpoint: cfg.Userpilot.Endpoint, OnTrip: opts.Metrics.DeliveryStopped},
		where:   &whereabouts{}}
	opts.Metrics.SetWhy(s.why)
	if len(cfg.Companies.Related) > 0 {
		opts.Metrics.SetRelated(s.relatedCounts)
	}
	// A sync that stops must say so: the watch logs an ERROR, sets
	// pgpilot_stalled and fails /readyz when work is owed and nothing
	// moves (package liveness).
	s.watched.faults = faultSource{opts.Metrics}
	watchCtx, stopWatch := context.WithCancel(context.WithoutCancel(ctx))
	watch := liveness.New(liveness.Options{Sources: s.watched.list, After: cmp.Or(opts.StallAfter, cfg.Delivery.StallAfter),
		Alarm: opts.Metrics, Logger: opts.Logger.With("subsystem", "liveness")})
	watchDone := make(chan struct{})
	go func() { // owned by Run: stopped and waited for below
		defer close(watchDone)
		watch.Run(watchCtx)
	}()
	defer func() { stopWatch(); <-watchDone }()
	// The delivery engine outlives the sessions: whatever ends the loop,
	// it delivers and checkpoints what it holds (for at most the grace
	// period) before Run returns.
	defer func() {
		if s.eng != nil {
			s.eng.stop(opts.ShutdownGrace)
		}
	}()
	backoff := time.Second
	for {
		started := time.Now()
		s.progress.Store(false)
		err := s.run(ctx)
		if ctx.Err() != nil {
			return s.stop(err)
		}
		if s.eng != nil && s.eng.failed() {
			// Delivery stopped. A schema problem is the operator's to fix;
			// anything else starts a new engine with the next session, from
			// the durable checkpoint.
			pipeErr := s.eng.err
			s.eng.stop(0)
			s.eng = nil
			s.watched.set(nil)
			if errors.Is(pipeErr, delivery.ErrSchema) {
				return fmt.Errorf("%w: %w", ErrConfig, pipeErr)
			}
			err = pipeErr
		}
		var perm permanentError
		if errors.As(err, &perm) {
			return perm.err
		}
		if isCredentialProblem(err) {
			return fix.With(fmt.Errorf("%w: %w", ErrConfig, err), "fix postgres.url (the role, its password, the database name)")
		}
		if time.Since(started) > time.Minute || s.progress.Load() {
			// It had worked: this is a new failure, not a flapping one.
			backoff = time.Second
		}
		wait := backoff/2 + rand.N(backoff/2+1)
		if replication.IsSlotActive(err) {
			// Still held by the walsender of a pgpilot that just stopped or
			// died (Postgres lets go once it notices): try again soon, so a
			// takeover takes seconds, without growing the backoff.
			wait = time.Second
		} else {
			backoff = min(backoff*2, opts.ReconnectMax)
		}
		var gone *publicationGone
		if errors.As(err, &gone) {
			// Not a failure to back off from: it is looked for again every
			// few seconds, so the start over follows its creation closely.
			wait = min(wait, 5*time.Second)
			s.waitingForPublication(gone)
		} else if isStateDiskProblem(err) {
			// Reconnecting to Postgres will not cure this; the operator must.
			// The next checkpoint written clears the fault.
			opts.Metrics.SetFault(metrics.FaultStateDirUnwritable, fmt.Sprintf(
				"cannot write the state directory %s (%v): free space on it or make it writable; nothing is checkpointed until then, and nothing is lost", dir.Path(), err))
			stateLog.Error("cannot write the state directory: free space on it or make it writable (state.dir); "+
				"until then nothing is checkpointed or confirmed to Postgres, and nothing is lost",
				"state_dir", dir.Path(), "error", err, "retry_in", wait.Round(time.Millisecond).String())
		} else {
			streamLog.Warn("replication session ended; reconnecting", "error", err, "in", wait.Round(time.Millisecond).String())
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}
}

// stop ends the daemon after a stop signal: the engine delivers what it
// holds for the grace period, then checkpoints.
func (s *session) stop(sessionErr error) error {
	var pipeErr error
	if s.eng != nil {
		pipeErr = s.eng.stop(s.opts.ShutdownGrace)
		s.eng = nil
	}
	switch {
	case pipeErr != nil && !errors.Is(pipeErr, context.Canceled) && !errors.Is(pipeErr, delivery.ErrRefusing):
		return pipeErr
	case pipeErr != nil:
		s.log.Warn("stopped before everything read was delivered; it will be sent again at the next start",
			"grace", s.opts.ShutdownGrace.String())
	case sessionErr != nil && !errors.Is(sessionErr, context.Canceled):
		return sessionErr
	}
	s.log.Info("stopped", "checkpoint", pglogrepl.LSN(s.confirmed.Load()).String())
	return nil
}

// workersFor sizes the identify concurrency to the rate limit: enough calls
// in flight to use the budget at ordinary latencies, never a stampede.
func workersFor(rate float64) int {
	return int(min(64, max(4, rate/5)))
}

// isCredentialProblem reports whether Postgres refused who we are or where
// we asked to go (bad password, no such role or database): waiting will not
// fix that, the config will.
func isCredentialProblem(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return false
	}
	return strings.HasPrefix(pgErr.Code, "28") || pgErr.Code == "3D000"
}

// isStateDiskProblem reports a write to the state directory that the file
// system refused (full, read-only, immutable, over quota).
func isStateDiskProblem(err error) bool {
	for _, errno := range []syscall.Errno{syscall.ENOSPC, syscall.EDQUOT, syscall.EROFS, syscall.EPERM, syscall.EACCES} {
		if errors.Is(err, errno) {
			return true
		}
	}
	return false
}
