package daemon

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgpilot/pgpilot/delivery"
	"github.com/pgpilot/pgpilot/mapping"
	"github.com/pgpilot/pgpilot/replication"
	"github.com/pgpilot/pgpilot/row"
	"github.com/pgpilot/pgpilot/snapshot"
	"github.com/pgpilot/pgpilot/state"
	"github.com/pgpilot/pgpilot/userpilot"
)

// session is one connection's life: it is run again after each failure.
type session struct {
	opts   Options
	cfg    *mapping.Config
	dir    *state.Dir
	store  *state.Store
	sender delivery.Sender
	log    *slog.Logger

	// confirmed is the durable checkpoint: the only position ever reported
	// to Postgres.
	confirmed atomic.Uint64
	// progress is set once a session checkpointed something, so the
	// reconnect backoff starts small again after it fails.
	progress atomic.Bool

	// mu guards the checkpoint as last written: its identity, position and
	// snapshot job (nil: none runs), which the pipeline's checkpoints and
	// a re-sync request both update.
	mu sync.Mutex
	cp state.Checkpoint
}

// start is what setup found: the durable checkpoint, with the snapshot job
// to run or resume, if any.
type start struct {
	lsn pglogrepl.LSN
	job *state.Snapshot
}

func (s *session) run(ctx context.Context) error {
	cfg := s.cfg
	m := s.opts.Metrics // nil-safe
	m.SessionStarted()
	defer m.SessionEnded()
	table := row.Table{Schema: cfg.Companies.Schema, Name: cfg.Companies.Name}
	sqlConn, err := replication.ConnectSQL(ctx, cfg.Postgres.URL)
	if err != nil {
		return err
	}
	defer sqlConn.Close(context.Background())

	srv, err := replication.ReadServer(ctx, sqlConn)
	if err != nil {
		return err
	}
	if err := srv.CheckServer(); err != nil {
		return permanent(fmt.Errorf("%w: %w", ErrConfig, err))
	}
	cols, err := replication.TableColumns(ctx, sqlConn, table)
	if err != nil {
		if errors.Is(err, replication.ErrTableMissing) {
			return permanent(fmt.Errorf("%w: %w", ErrConfig, err))
		}
		return err
	}
	if _, err := mapping.Compile(cfg.Companies, table.String(), cols); err != nil {
		return permanent(fmt.Errorf("%w: %w", ErrConfig, err))
	}
	key, err := replication.KeyColumns(ctx, sqlConn, table)
	if err != nil {
		if errors.Is(err, replication.ErrNoKey) {
			return permanent(fmt.Errorf("%w: %w", ErrConfig, err))
		}
		return err
	}
	// A snapshot reads the mapped columns and the key it pages by.
	readCols := replication.PickColumns(cols, append(cfg.Companies.Columns(), key...))

	rconn, err := replication.ConnectReplication(ctx, cfg.Postgres.URL)
	if err != nil {
		return err
	}
	defer rconn.Close(context.Background())
	sys, err := pglogrepl.IdentifySystem(ctx, rconn)
	if err != nil {
		return fmt.Errorf("identify system: %w", err)
	}
	if _, err := replication.EnsurePublication(ctx, sqlConn, cfg.Postgres.Publication, table, srv); err != nil {
		return permanent(fmt.Errorf("%w: %w", ErrConfig, err))
	}

	st, err := s.prepare(ctx, sqlConn, rconn, sys, srv)
	if err != nil {
		return err
	}
	// The stage reads no further while the pipeline holds a backlog (the
	// pipeline is made below, before the stage runs).
	var pipe *delivery.Pipeline
	stage, err := snapshot.New(snapshot.Options{URL: cfg.Postgres.URL, Start: st.lsn, Table: table, Columns: readCols, Key: key,
		CompanyID: cfg.Companies.CompanyID, ChunkRows: cmp.Or(s.opts.SnapshotChunkRows, cfg.Delivery.SnapshotChunkRows),
		Backlog: func() int64 { return pipe.Stats().Pending.Load() }, Logger: s.log})
	if err != nil {
		return err
	}
	s.confirmed.Store(uint64(st.lsn))
	m.Checkpointed(st.lsn)
	m.SnapshotProgress(snapshotJob(st.job))
	if st.job != nil {
		if err := stage.Start(ctx, *st.job); err != nil {
			return err
		}
	}

	// Delivery keeps running after a stop signal, for ShutdownGrace, so
	// what was read is delivered and checkpointed before exit.
	produceCtx, stopProducing := context.WithCancel(ctx)
	defer stopProducing()
	deliverCtx, stopDelivering := context.WithCancel(context.WithoutCancel(ctx))
	defer stopDelivering()
	stopGrace := context.AfterFunc(ctx, func() {
		time.AfterFunc(s.opts.ShutdownGrace, stopDelivering)
	})
	defer stopGrace()

	// The slot's retained WAL, measured on a connection of its own (pgx
	// connections are not shared between goroutines): above
	// delivery.max_retained_wal the pipeline switches to its outbox.
	var retained atomic.Int64
	monitorCtx, stopMonitor := context.WithCancel(ctx)
	monitorDone := make(chan struct{})
	go func() {
		defer close(monitorDone)
		s.monitorRetainedWAL(monitorCtx, &retained)
	}()
	defer func() {
		stopMonitor()
		<-monitorDone
	}()

	do := s.opts.Delivery
	do.Companies, do.Sender, do.DeadLetters, do.Index = cfg.Companies, s.sender, s.dir, s.store
	do.Outbox, do.RetainedWAL, do.Status = s.store, retained.Load, s.writeStatus
	if do.MaxRetainedWAL == 0 {
		do.MaxRetainedWAL = cfg.Delivery.MaxRetainedWAL
	}
	if do.OutboxAfter == 0 {
		do.OutboxAfter = cfg.Delivery.OutboxAfter
	}
	do.Checkpoint, do.Checkpointed = s.checkpointer(), st.lsn
	do.Recorder = readRecorder{m}
	do.RealtimeRate, do.Workers, do.Logger = cfg.Userpilot.RateLimit, workersFor(cfg.Userpilot.RateLimit), s.log
	do.BulkRate = cfg.Userpilot.BulkRate
	do.OnDelete = cfg.Companies.OnDelete
	if do.DeleteMark, err = userpilot.MetadataOf(cfg.Companies.OnDeleteMetadata); err != nil {
		return permanent(fmt.Errorf("%w: companies.on_delete_metadata: %w", ErrConfig, err))
	}
	if do.BulkRate == 0 {
		do.BulkRate = -1 // bulk_rate: 0 turns the bulk path off
	}
	pipe = delivery.New(do)
	m.AttachPipeline(deliveryCounts(pipe.Stats()))
	in := make(chan row.Transaction, 16)
	// The snapshot's stage puts its chunks between the stream's
	// transactions (see package snapshot).
	staged := make(chan row.Transaction, 16)
	stageDone := make(chan error, 1)
	go func() {
		err := stage.Run(produceCtx, in, staged)
		close(staged)
		if err != nil && produceCtx.Err() == nil {
			stopProducing() // the snapshot failed: stop reading too, and start over
		}
		stageDone <- err
	}()
	pipeDone := make(chan error, 1)
	go func() {
		err := pipe.Run(deliverCtx, staged)
		stopProducing() // delivery failed: stop reading too
		pipeDone <- err
	}()

	// Re-sync requests (`pgpilot resync`) and the snapshot's progress.
	resyncCtx, stopResync := context.WithCancel(produceCtx)
	resyncDone := make(chan struct{})
	go func() {
		defer close(resyncDone)
		s.watchSnapshots(resyncCtx, stage, table)
	}()

	m.Streaming()
	prodErr := replication.Stream(produceCtx, rconn, replication.StreamOptions{
		Slot:           cfg.Postgres.Slot,
		Publication:    cfg.Postgres.Publication,
		Table:          table,
		Start:          st.lsn,
		Confirmed:      func() pglogrepl.LSN { return pglogrepl.LSN(s.confirmed.Load()) },
		Types:          replication.NewTypeResolver(sqlConn),
		StatusInterval: srv.StatusInterval(),
		WantPosition:   stage.WantPosition,
		Logger:         s.log,
	}, in)
	stopResync()
	<-resyncDone
	close(in)
	stageErr := <-stageDone
	pipeErr := <-pipeDone
	if prodErr == nil || (errors.Is(prodErr, context.Canceled) && stageErr != nil && !errors.Is(stageErr, context.Canceled)) {
		prodErr = stageErr
	}

	if !rconn.IsClosed() {
		fctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if err := replication.SendFinalStatus(fctx, rconn, pglogrepl.LSN(s.confirmed.Load())); err != nil {
			s.log.Debug("final status update not sent", "error", err)
		}
		cancel()
	}

	if ctx.Err() != nil { // asked to stop
		if pipeErr != nil && !errors.Is(pipeErr, context.Canceled) {
			return pipeErr
		}
		if pipeErr != nil {
			s.log.Warn("stopped before everything read was delivered; it will be sent again at the next start",
				"grace", s.opts.ShutdownGrace.String())
		}
		s.log.Info("stopped", "checkpoint", pglogrepl.LSN(s.confirmed.Load()).String())
		return nil
	}
	if errors.Is(pipeErr, delivery.ErrSchema) {
		return permanent(fmt.Errorf("%w: %w", ErrConfig, pipeErr))
	}
	if pipeErr != nil {
		return pipeErr
	}
	if replication.IsSlotActive(prodErr) {
		s.log.Info("the slot is in use by another process; standing by", "slot", cfg.Postgres.Slot)
	}
	return prodErr
}

// monitorRetainedWAL keeps retained up to date until ctx is done. A failed
// measurement keeps the last value: the stream notices a dead server itself.
func (s *session) monitorRetainedWAL(ctx context.Context, retained *atomic.Int64) {
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	for {
		if conn == nil {
			c, err := replication.ConnectSQL(ctx, s.cfg.Postgres.URL)
			if err == nil {
				conn = c
			}
		}
		if conn != nil {
			n, err := replication.RetainedWAL(ctx, conn, s.cfg.Postgres.Slot)
			var pos pglogrepl.LSN
			if err == nil && s.opts.Metrics != nil {
				pos, err = replication.CurrentLSN(ctx, conn)
			}
			if err != nil {
				conn.Close(context.Background())
				conn = nil
			} else {
				retained.Store(n)
				s.opts.Metrics.RetainedWAL(n)
				s.opts.Metrics.ServerPosition(pos)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(cmp.Or(s.opts.RetainedWALInterval, 5*time.Second)):
		}
	}
}

// writeStatus hands the delivery mode to `pgpilot status`.
func (s *session) writeStatus(st state.Status) {
	s.opts.Metrics.Status(deliveryStatus(st))
	if err := s.dir.WriteStatus(st); err != nil {
		s.log.Warn("could not write the status file", "error", err)
	}
}

// checkpointer durably records lsn and the snapshot's delivered progress,
// then lets the stream confirm lsn.
func (s *session) checkpointer() func(pglogrepl.LSN, any) error {
	return func(lsn pglogrepl.LSN, mark any) error {
		s.mu.Lock()
		defer s.mu.Unlock()
		cp := s.cp
		cp.LSN = state.LSN(lsn)
		finished := false
		if p, ok := mark.(*snapshot.Progress); ok && cp.Snapshot != nil && p.Job.ID == cp.Snapshot.ID {
			// A mark of an older job is stale: its Done was checkpointed.
			if p.Done {
				cp.Snapshot, finished = nil, true
			} else {
				job := p.Job
				cp.Snapshot = &job
			}
		}
		if err := s.dir.SaveCheckpoint(cp); err != nil {
			return err
		}
		if finished {
			s.log.Info("snapshot complete: every row delivered", "job", s.cp.Snapshot.ID, "rows", s.cp.Snapshot.Rows,
				"duration", time.Since(s.cp.Snapshot.Began).Round(time.Second).String())
		}
		s.cp = cp
		s.confirmed.Store(uint64(lsn))
		s.progress.Store(true)
		s.opts.Metrics.Checkpointed(lsn)
		s.opts.Metrics.SnapshotProgress(snapshotJob(cp.Snapshot))
		return nil
	}
}

// job returns the running snapshot job, as checkpointed (nil: none).
func (s *session) job() *state.Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cp.Snapshot == nil {
		return nil
	}
	j := *s.cp.Snapshot
	return &j
}

// beginJob checkpoints a new snapshot job before it starts, so that a
// crash from here on resumes it.
func (s *session) beginJob(job state.Snapshot) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	cp := s.cp
	cp.Snapshot = &job
	if err := s.dir.SaveCheckpoint(cp); err != nil {
		return err
	}
	s.cp = cp
	s.opts.Metrics.SnapshotProgress(snapshotJob(&job))
	return nil
}

// prepare decides where the stream starts, creating the slot (and owing a
// snapshot) on first start.
func (s *session) prepare(ctx context.Context, sqlConn *pgx.Conn, rconn *pgconn.PgConn,
	sys pglogrepl.IdentifySystemResult, srv replication.Server) (start, error) {
	cfg := s.cfg
	slotName := cfg.Postgres.Slot
	cp, haveCP, err := s.dir.Checkpoint()
	if err != nil {
		return start{}, permanent(err)
	}
	slot, haveSlot, err := replication.ReadSlot(ctx, sqlConn, slotName)
	if err != nil {
		return start{}, err
	}
	if haveCP && (cp.SystemID != sys.SystemID || cp.Slot != slotName || cp.Database != srv.Database) {
		return start{}, permanent(fmt.Errorf("%w: the checkpoint in %s belongs to slot %q of database %q on system %s, not slot %q of %q on system %s; "+
			"point state.dir at this database's own state directory, or use an empty one to start over with a full re-send",
			ErrConfig, s.dir.Path(), cp.Slot, cp.Database, cp.SystemID, slotName, srv.Database, sys.SystemID))
	}

	if haveCP && cp.InitialSync == state.InitialSyncDone {
		if !haveSlot {
			return start{}, permanent(fmt.Errorf("replication slot %q is gone (dropped by hand or by another tool) but the checkpoint is at %s: "+
				"changes since then cannot be streamed. Run `pgpilot teardown`, remove %s, and run again to re-send every row",
				slotName, cp.LSN, s.dir.Path()))
		}
		if err := slot.Usable(srv.Database); err != nil {
			return start{}, permanent(err)
		}
		s.cp = cp
		if slot.ConfirmedFlush > pglogrepl.LSN(cp.LSN) {
			return start{}, permanent(fmt.Errorf("replication slot %q was confirmed up to %s by someone else, past this checkpoint %s: "+
				"changes in between would never reach Userpilot. Is another pgpilot with another state.dir using this slot? "+
				"Give each its own postgres.slot, then re-sync", slotName, slot.ConfirmedFlush, cp.LSN))
		}
		return start{lsn: pglogrepl.LSN(cp.LSN), job: cp.Snapshot}, nil
	}

	if haveSlot {
		if !haveCP {
			return start{}, permanent(fmt.Errorf("%w: replication slot %q exists but %s has no checkpoint: either the state directory was lost "+
				"(and with it any updates its outbox still owed Userpilot) or another program owns this slot. Restore state.dir "+
				"from its volume, or choose another postgres.slot, or re-sync: run `pgpilot teardown` and `pgpilot run` to re-send every row", ErrConfig, slotName, s.dir.Path()))
		}
		// Our own slot from an initial sync that did not finish: nothing
		// was confirmed on it, so a fresh slot and snapshot lose nothing.
		s.log.Warn("the initial sync did not finish last time; starting it again with a new slot", "slot", slotName)
		if err := replication.DropSlot(ctx, sqlConn, slotName); err != nil {
			return start{}, err
		}
	}
	s.cp = state.Checkpoint{SystemID: sys.SystemID, Database: srv.Database, Slot: slotName, InitialSync: state.InitialSyncInProgress}
	if err := s.dir.SaveCheckpoint(s.cp); err != nil {
		return start{}, permanent(err)
	}
	if srv.InRecovery {
		s.log.Info("creating the slot on a standby waits for the primary's next running-transactions record "+
			"(up to ~15 s on a busy primary, indefinitely on an idle one); run SELECT pg_log_standby_snapshot(); on the primary to hurry it",
			"slot", slotName)
	}
	if cfg.Postgres.FailoverSlot && (srv.InRecovery || srv.Major() < 17) {
		return start{}, permanent(fmt.Errorf("%w: postgres.failover_slot needs a Postgres 17+ primary (this is Postgres %d, standby: %t); "+
			"remove it, or point postgres.url at the primary", ErrConfig, srv.Major(), srv.InRecovery))
	}
	created, err := replication.CreateSlot(ctx, rconn, slotName, replication.SlotOptions{Failover: cfg.Postgres.FailoverSlot})
	if err != nil {
		return start{}, err
	}
	// From here the slot is ours and streams from its consistent point;
	// the table's rows are sent alongside, chunk by chunk, by a snapshot
	// job the checkpoint carries until it is done.
	job := &state.Snapshot{ID: state.InitialSnapshot, Total: estimateRows(ctx, sqlConn, s.table()), Began: time.Now().UTC()}
	cp = s.cp
	cp.LSN, cp.InitialSync, cp.Snapshot = state.LSN(created.ConsistentPoint), state.InitialSyncDone, job
	if err := s.dir.SaveCheckpoint(cp); err != nil {
		return start{}, permanent(err)
	}
	s.cp = cp
	s.log.Info("created replication slot; sending the table's current rows alongside the stream", "slot", slotName,
		"consistent_point", created.ConsistentPoint.String(), "rows_estimate", job.Total)
	return start{lsn: created.ConsistentPoint, job: job}, nil
}

func (s *session) table() row.Table {
	return row.Table{Schema: s.cfg.Companies.Schema, Name: s.cfg.Companies.Name}
}

// estimateRows is the planner's estimate of table's row count, for the
// initial sync's progress; -1 when unknown (never analyzed).
func estimateRows(ctx context.Context, conn *pgx.Conn, table row.Table) int64 {
	var n float64
	if err := conn.QueryRow(ctx, `SELECT reltuples::float8 FROM pg_class WHERE oid = $1::regclass`, table.Quoted()).Scan(&n); err != nil || n < 0 {
		return -1
	}
	return int64(n)
}
