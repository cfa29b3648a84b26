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
	"golang.org/x/sync/errgroup"

	"github.com/pgpilot/pgpilot/config"
	"github.com/pgpilot/pgpilot/delivery"
	"github.com/pgpilot/pgpilot/internal/fix"
	"github.com/pgpilot/pgpilot/mapping"
	"github.com/pgpilot/pgpilot/metrics"
	"github.com/pgpilot/pgpilot/related"
	"github.com/pgpilot/pgpilot/replication"
	"github.com/pgpilot/pgpilot/row"
	"github.com/pgpilot/pgpilot/snapshot"
	"github.com/pgpilot/pgpilot/state"
)

// session is one connection's life: it is run again after each failure.
type session struct {
	opts   Options
	cfg    *config.Config
	dir    *state.Dir
	store  *state.Store
	sender delivery.Sender
	// Each log line says which part of pgpilot wrote it: log is the
	// stream's (the session's own lines), snapLog the snapshot's.
	log, snapLog *slog.Logger
	base         *slog.Logger // without a subsystem, for the stages'

	// confirmed is the durable checkpoint: the only position ever reported
	// to Postgres.
	confirmed atomic.Uint64
	// progress is set once a session checkpointed something, so the
	// reconnect backoff starts small again after it fails.
	progress atomic.Bool

	// relStats count the related stage's re-reads, across sessions.
	relStats *related.Stats

	// breaker outlives sessions: once Userpilot's endpoint is found to
	// refuse every record, no later session sends until a restart.
	breaker *delivery.Breaker

	// eng is the delivery engine, made by the first session that knew the
	// checkpoint and kept across sessions (see engine.go); nil before, and
	// after it failed (the next session makes a new one).
	eng *engine
	// watched is what the liveness watch looks at (see liveness.go).
	watched watched

	// where answers `pgpilot why` (see whereabouts.go).
	where *whereabouts

	// mu guards the checkpoint as last written: its identity, position and
	// snapshot job (nil: none runs), which the pipeline's checkpoints and
	// a re-sync request both update.
	mu sync.Mutex
	cp state.Checkpoint

	// The publication (see recovery.go): pub is the one this session
	// streams through; pubRefused says the last stream refused it (or saw
	// it made anew), so the next session starts over; saidPublicationGone
	// is when its absence was last logged; deletionsFor is the engine and
	// start over whose deletions that engine was handed.
	pub                 state.Publication
	pubRefused          bool
	saidPublicationGone time.Time
	deletionsFor        struct {
		eng *engine
		id  string
	}
}

// start is what setup found: the durable checkpoint, with the snapshot job
// to run or resume, if any.
type start struct {
	lsn pglogrepl.LSN
	job *state.Snapshot
}

// source is what a session found in Postgres before streaming: the
// connections, the server, and each section's table as the mapping and the
// snapshot read it.
type source struct {
	sqlConn *pgx.Conn
	rconn   *pgconn.PgConn
	srv     replication.Server
	sys     pglogrepl.IdentifySystemResult
	// ents are the sections' tables, companies first (cfg.Entities).
	ents []*entitySource
}

// entitySource is one section's table as a session found it.
type entitySource struct {
	spec     mapping.Companies // the section as the stages take it (users: mapping.Users.Entity)
	table    row.Table
	key      []string     // the columns a snapshot pages by
	identity []string     // the replica identity index's columns, when not the key (nil: the key)
	readCols []row.Column // what a snapshot reads: the mapped columns, the key and the identity
	// plan is the section's related entries, where and sql: keys compiled
	// against the database (nil: none is configured).
	plan *related.Plan
	// stage is this session's snapshot stage of the table.
	stage *snapshot.Stage
}

// users reports whether es is the users section's.
func (es *entitySource) users() bool { return es.spec.Kind == mapping.User }

// entityFor is the section a snapshot job reads.
func (src *source) entityFor(job state.Snapshot) *entitySource {
	for _, es := range src.ents {
		if es.users() == job.Users {
			return es
		}
	}
	return src.ents[0]
}

// tables are the tables the publication must hold and the stream passes
// on: the first section's, then the others and every related table.
func (src *source) tables() (row.Table, []row.Table) {
	first := src.ents[0].table
	var rest []row.Table
	seen := map[row.Table]bool{first: true}
	for _, es := range src.ents {
		for _, t := range append([]row.Table{es.table}, related.Tables(es.spec)...) {
			if !seen[t] {
				seen[t] = true
				rest = append(rest, t)
			}
		}
	}
	return first, rest
}

func (src *source) close() {
	if src.rconn != nil {
		src.rconn.Close(context.Background())
	}
	if src.sqlConn != nil {
		src.sqlConn.Close(context.Background())
	}
}

// run is one replication session: set up, wire the stages, run them until
// the stream ends, and say what the end means.
func (s *session) run(ctx context.Context) error {
	m := s.opts.Metrics // nil-safe
	m.SessionStarted()
	defer m.SessionEnded()
	src, err := s.connect(ctx)
	defer src.close()
	if err != nil {
		return err
	}
	st, err := s.prepare(ctx, src.sqlConn, src.rconn, src.sys, src.srv)
	if err != nil {
		return err
	}
	if err := s.reconcileMapping(st); err != nil {
		return err
	}
	if s.eng == nil {
		s.confirmed.Store(uint64(st.lsn))
		m.Checkpointed(st.lsn)
		m.SnapshotProgress(snapshotJob(st.job))
		if s.eng, err = s.startEngine(ctx, st.lsn); err != nil {
			return err
		}
		s.watched.set(s.eng)
	}
	if err := s.handDeletions(ctx, src); err != nil { // a start over's, before the stream's first change
		return err
	}
	streamErr := s.stream(ctx, src, st)

	if !src.rconn.IsClosed() {
		fctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if err := replication.SendFinalStatus(fctx, src.rconn, pglogrepl.LSN(s.confirmed.Load())); err != nil {
			s.log.Debug("final status update not sent", "error", err)
		}
		cancel()
	}
	return s.classify(ctx, streamErr)
}

// connect opens the session's connections and checks what it streams from:
// the server, the table, the mapping against the table's columns, the key
// and the publication. A problem the operator must fix is permanent.
func (s *session) connect(ctx context.Context) (*source, error) {
	cfg := s.cfg
	src := &source{}
	var err error
	if src.sqlConn, err = replication.ConnectSQL(ctx, cfg.Postgres.URL); err != nil {
		return src, err
	}
	if src.srv, err = replication.ReadServer(ctx, src.sqlConn); err != nil {
		return src, err
	}
	if err := src.srv.CheckServer(); err != nil {
		return src, permanent(fmt.Errorf("%w: %w", ErrConfig, err))
	}
	for _, spec := range cfg.Entities() {
		es, err := s.connectEntity(ctx, src.sqlConn, spec)
		if err != nil {
			return src, err
		}
		src.ents = append(src.ents, es)
	}
	if src.rconn, err = replication.ConnectReplication(ctx, cfg.Postgres.URL); err != nil {
		return src, err
	}
	if src.sys, err = pglogrepl.IdentifySystem(ctx, src.rconn); err != nil {
		return src, fmt.Errorf("identify system: %w", err)
	}
	if err := s.ensurePublication(ctx, src); err != nil {
		return src, err
	}
	return src, nil
}

// connectEntity checks one section's table: it exists, the mapping fits
// its columns, no key reads a generated column, it has a key to page by;
// and it compiles the section's related entries.
func (s *session) connectEntity(ctx context.Context, conn *pgx.Conn, spec mapping.Companies) (*entitySource, error) {
	es := &entitySource{spec: spec, table: row.Table{Schema: spec.Schema, Name: spec.Name}}
	cols, err := replication.TableColumns(ctx, conn, es.table)
	if err != nil {
		if errors.Is(err, replication.ErrTableMissing) {
			return nil, permanent(fmt.Errorf("%w: %w", ErrConfig, err))
		}
		return nil, err
	}
	// Checked here, before anything streams, so a mapping that does not
	// fit the table stops pgpilot at once (exit 2); delivery compiles it
	// for each description of the table it meets.
	if _, err := mapping.Compile(spec, es.table.String(), cols); err != nil {
		return nil, permanent(fmt.Errorf("%w: %w", ErrConfig, err))
	}
	// A generated column is never streamed: a key reading it would be
	// sent by a snapshot and then never again.
	generated, err := replication.GeneratedColumns(ctx, conn, es.table)
	if err != nil {
		return nil, err
	}
	if err := spec.Generated(generated); err != nil {
		return nil, permanent(fmt.Errorf("%w: %w", ErrConfig, err))
	}
	if es.key, err = replication.KeyColumns(ctx, conn, es.table); err != nil {
		if errors.Is(err, replication.ErrNoKey) {
			return nil, permanent(fmt.Errorf("%w: %w", ErrConfig, err))
		}
		return nil, err
	}
	if es.identity, err = replication.IdentityColumns(ctx, conn, es.table); err != nil {
		return nil, err
	}
	es.readCols = replication.PickColumns(cols, append(append(spec.Columns(), es.key...), es.identity...))
	if related.Configured(spec) {
		if es.plan, err = s.relatedPlan(ctx, conn, spec); err != nil {
			return nil, err
		}
		if spec.Where != "" {
			// where may read any column: the related stage judges a
			// snapshot's rows by it too.
			es.readCols = cols
		}
	}
	return es, nil
}

// stream runs the session's stages, each owned by one errgroup, until the
// stream ends: the stream (Postgres in) → the snapshot stage (chunks put in
// their place) → the delivery engine, which outlives the session, with the
// retained-WAL monitor and the re-sync watcher beside them. Reading stops
// when the context is done, a stage fails, or the engine has stopped. It
// returns the stream's (or the snapshot stage's) error.
func (s *session) stream(ctx context.Context, src *source, st start) (streamErr error) {
	cfg := s.cfg
	eng := s.eng
	produceCtx, stopProducing := context.WithCancel(ctx)
	defer stopProducing()
	// A snapshot stage per section's table; each reads no further while
	// the pipeline holds a backlog.
	var stages []*snapshot.Stage
	for _, es := range src.ents {
		stage, err := snapshot.New(s.snapshotOptions(src, es, st.lsn, func() int64 { return eng.pipe.Stats().Pending.Load() }))
		if err != nil {
			return err
		}
		es.stage = stage
		stages = append(stages, stage)
	}
	s.watched.set(eng, stages...)
	defer s.watched.set(eng)
	s.dropStartedRequest(st.job)
	if st.job != nil {
		if err := src.entityFor(*st.job).stage.Start(ctx, *st.job); err != nil {
			return err
		}
	}

	var g errgroup.Group // owns every goroutine of the session: none outlives it
	defer g.Wait()
	// Delivery stopped (it failed, or found a schema problem): stop reading.
	g.Go(func() error {
		select {
		case <-eng.done:
			stopProducing()
		case <-produceCtx.Done():
		}
		return nil
	})
	// The slot's retained WAL, measured on a connection of its own (pgx
	// connections are not shared between goroutines): above
	// delivery.max_retained_wal the pipeline switches to its outbox.
	g.Go(func() error {
		s.monitorRetainedWAL(produceCtx, &eng.retained)
		return nil
	})
	// The publication: dropped or made anew while streaming, it ends the
	// session (see recovery.go).
	var pubErr error
	g.Go(func() error {
		if pubErr = s.watchPublication(produceCtx); pubErr != nil {
			stopProducing()
		}
		return nil
	})
	// Re-sync requests (`pgpilot resync`) and the snapshot's progress, for
	// as long as the stream runs.
	resyncCtx, stopResync := context.WithCancel(produceCtx)
	defer stopResync()
	g.Go(func() error {
		s.watchSnapshots(resyncCtx, src)
		return nil
	})
	// Transactions (and pieces of large ones, 250 changes each) wait here
	// and in the engine's input: a few, so that memory is not a queue.
	in := make(chan row.Transaction, inputDepth)
	// The snapshot stages put their chunks between the stream's
	// transactions (see package snapshot), then the related stages put in
	// each section's related values (see package related), into the
	// engine: in → snapshot stages → related stages → engine.
	var stageErrs, relErrs []error
	var mu sync.Mutex
	keep := func(err *[]error, e error) {
		mu.Lock()
		*err = append(*err, e)
		mu.Unlock()
	}
	var plans []*entitySource
	for _, es := range src.ents {
		if es.plan != nil {
			plans = append(plans, es)
		}
	}
	// Built from the engine back: each stage's output is the next's input.
	out := eng.in
	for i := len(plans) - 1; i >= 0; i-- {
		es, dst := plans[i], out
		relIn := make(chan row.Transaction, 16)
		rstage := related.New(s.relatedOptions(es.plan, keepFor(src, plans[i+1:])))
		g.Go(func() error {
			err := rstage.Run(produceCtx, relIn, dst)
			if dst != eng.in {
				close(dst)
			}
			if err != nil && produceCtx.Err() == nil {
				keep(&relErrs, err)
				stopProducing()
			}
			return nil
		})
		out = relIn
	}
	defer func() {
		for _, relErr := range relErrs {
			if errors.Is(relErr, related.ErrSchema) {
				streamErr = permanent(fmt.Errorf("%w: %w", ErrConfig, relErr))
			}
		}
	}()
	for i := len(stages) - 1; i >= 0; i-- {
		stage, dst := stages[i], out
		stIn := in
		if i > 0 {
			stIn = make(chan row.Transaction, inputDepth)
		}
		g.Go(func() error {
			err := stage.Run(produceCtx, stIn, dst)
			if dst != eng.in {
				close(dst)
			}
			if err != nil && produceCtx.Err() == nil {
				keep(&stageErrs, err)
				stopProducing() // the snapshot failed: stop reading too, and start over
			}
			return nil
		})
		out = stIn
	}

	s.opts.Metrics.Streaming()
	first, rest := src.tables()
	streamErr = replication.Stream(produceCtx, src.rconn, replication.StreamOptions{
		Slot:           cfg.Postgres.Slot,
		Publication:    cfg.Postgres.Publication,
		Table:          first,
		Related:        rest,
		Start:          st.lsn,
		Confirmed:      func() pglogrepl.LSN { return pglogrepl.LSN(s.confirmed.Load()) },
		Types:          replication.NewTypeResolver(src.sqlConn),
		StatusInterval: src.srv.StatusInterval(),
		WantPosition:   wantPosition(stages),
		Budget:         row.NewBudget(inFlightBytes),
		Logger:         s.log,
	}, in)
	// The shutdown order: the re-sync watcher first (it uses the SQL
	// connection and starts snapshot jobs), then the stage, without waiting
	// for the engine to take what it holds: that is streamed again by the
	// next session, which starts at once while delivery goes on.
	stopResync()
	stopProducing()
	close(in)
	g.Wait()
	for _, stageErr := range stageErrs {
		if streamErr == nil || (errors.Is(streamErr, context.Canceled) && stageErr != nil && !errors.Is(stageErr, context.Canceled)) {
			streamErr = stageErr
		}
	}
	for _, relErr := range relErrs {
		if streamErr == nil || (errors.Is(streamErr, context.Canceled) && relErr != nil && !errors.Is(relErr, context.Canceled)) {
			streamErr = relErr
		}
	}
	if pubErr != nil {
		streamErr = pubErr
	}
	return streamErr
}

// keepFor are the tables a related stage must leave in the transactions for
// the stages after it: every section's table, and the tables those later
// stages read.
func keepFor(src *source, later []*entitySource) []row.Table {
	var out []row.Table
	for _, es := range src.ents {
		out = append(out, es.table)
	}
	for _, es := range later {
		out = append(out, related.Tables(es.spec)...)
	}
	return out
}

// wantPosition is the oldest position a stage's front chunk waits for the
// stream to pass (0: none waits), for the stream to ask for.
func wantPosition(stages []*snapshot.Stage) func() pglogrepl.LSN {
	return func() pglogrepl.LSN {
		var want pglogrepl.LSN
		for _, st := range stages {
			if w := st.WantPosition(); w != 0 && (want == 0 || w < want) {
				want = w
			}
		}
		return want
	}
}

// classify says what a session's end means for the stream: a clean stop,
// or a failure to reconnect after (the daemon looks at the engine).
func (s *session) classify(ctx context.Context, streamErr error) error {
	if ctx.Err() != nil { // asked to stop
		return nil
	}
	if replication.IsSlotActive(streamErr) {
		s.log.Info("the slot is in use by another process; standing by", "slot", s.cfg.Postgres.Slot)
	}
	if replication.IsPublicationMissing(streamErr) || errors.As(streamErr, new(*publicationChanged)) {
		s.pubRefused = true // the next session starts over (see ensurePublication)
	}
	return streamErr
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
	if len(s.cfg.Companies.Related) > 0 {
		n := s.relatedCounts()
		st.Related = &state.RelatedReads{Reads: n.Reads, Queries: n.Queries, Companies: n.Companies, Rows: n.Rows, Seconds: n.Seconds}
	}
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
		var last state.Snapshot // the job as it ended, when finished
		if p, ok := mark.(*snapshot.Progress); ok && cp.Snapshot != nil && p.Job.ID == cp.Snapshot.ID {
			// A mark of an older job is stale: its Done was checkpointed.
			if p.Done {
				cp.Snapshot, finished, last = nil, true, p.Job
				if p.Job.ID == state.InitialSnapshot {
					cp.Recovery = nil // a start over's re-read is delivered, its deletions before it
				}
				if p.Job.Initial() && p.Job.Users && p.Job.Error == "" {
					cp.UsersSynced = true
				}
				if p.Job.Error != "" {
					ended := p.Job
					ended.Ended = time.Now().UTC()
					cp.LastFailed = &ended
				}
			} else {
				job := p.Job
				cp.Snapshot = &job
			}
		}
		if err := s.dir.SaveCheckpoint(cp); err != nil {
			return err
		}
		switch {
		case finished && cp.LastFailed != nil && cp.LastFailed.ID == s.cp.Snapshot.ID:
			s.snapLog.Warn("re-sync ended before its last row; `pgpilot status` shows why", "job", cp.LastFailed.ID,
				"rows", cp.LastFailed.Rows, "error", cp.LastFailed.Error, "fix", cp.LastFailed.Fix)
		case finished:
			s.snapLog.Info("snapshot complete: every row delivered", "job", last.ID, "rows", last.Rows,
				"duration", time.Since(last.Began).Round(time.Second).String())
		}
		s.cp = cp
		s.confirmed.Store(uint64(lsn))
		s.progress.Store(true)
		s.opts.Metrics.ClearFault(metrics.FaultStateDirUnwritable) // written: the directory is writable again
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

// failJob records a re-sync that ended before it started (its condition
// refused when taken, or cancelled while queued), as the last failed one.
func (s *session) failJob(job state.Snapshot) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	cp := s.cp
	job.Ended = time.Now().UTC()
	cp.LastFailed = &job
	if err := s.dir.SaveCheckpoint(cp); err != nil {
		return err
	}
	s.cp = cp
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
	if s.eng != nil {
		// The engine checkpoints while this session sets up: what it last
		// wrote, in memory, is the checkpoint (never an older read of the
		// file over it).
		s.mu.Lock()
		cp, haveCP = s.cp, true
		s.mu.Unlock()
	}
	slot, haveSlot, err := replication.ReadSlot(ctx, sqlConn, slotName)
	if err != nil {
		return start{}, err
	}
	if haveCP && (cp.SystemID != sys.SystemID || cp.Slot != slotName || cp.Database != srv.Database) {
		return start{}, permanent(fix.With(fmt.Errorf("%w: the checkpoint in %s belongs to slot %q of database %q on system %s, not slot %q of %q on system %s",
			ErrConfig, s.dir.Path(), cp.Slot, cp.Database, cp.SystemID, slotName, srv.Database, sys.SystemID),
			"point state.dir at this database's own state directory, or use an empty one to start over with a full re-send"))
	}

	req, haveReq, err := state.ReadRecovery(s.dir.Path())
	if err != nil {
		return start{}, permanent(err)
	}
	if haveCP && cp.InitialSync == state.InitialSyncDone {
		if haveReq && (cp.Recovery == nil || cp.Recovery.ID != req.ID) {
			return s.startOver(ctx, sqlConn, rconn, cp, slot, haveSlot, req)
		}
		if haveReq { // begun already: the request was not removed yet
			if err := s.dir.TakeRecovery(); err != nil {
				return start{}, err
			}
		}
		if !haveSlot {
			return start{}, permanent(s.slotGone(ctx, sqlConn, cp))
		}
		if err := slot.Usable(srv.Database); err != nil {
			return start{}, permanent(err)
		}
		if s.eng == nil {
			s.cp = cp // before the engine runs, nothing else writes it
		}
		if cp.Publication == nil || *cp.Publication != s.pub {
			// Recorded, so that one dropped and made again is told by its
			// oid (a checkpoint written before it was recorded has none).
			s.mu.Lock()
			s.cp.Publication = &s.pub
			cp = s.cp
			s.mu.Unlock()
			if err := s.dir.SaveCheckpoint(cp); err != nil {
				return start{}, permanent(err)
			}
		}
		if slot.ConfirmedFlush > pglogrepl.LSN(cp.LSN) {
			return start{}, permanent(fix.With(fmt.Errorf("replication slot %q was confirmed up to %s by someone else, past this checkpoint %s: "+
				"changes in between would never reach Userpilot. Is another pgpilot with another state.dir using this slot?", slotName, slot.ConfirmedFlush, cp.LSN),
				"give each pgpilot its own postgres.slot, then re-sync"))
		}
		return start{lsn: pglogrepl.LSN(cp.LSN), job: cp.Snapshot}, nil
	}

	if haveSlot {
		if !haveCP {
			return start{}, permanent(fix.With(fmt.Errorf("%w: replication slot %q exists but %s has no checkpoint: either the state directory was lost "+
				"(and with it any updates its outbox still owed Userpilot) or another program owns this slot", ErrConfig, slotName, s.dir.Path()),
				"restore state.dir from its volume, or choose another postgres.slot, or re-sync: run `pgpilot teardown` and `pgpilot run` to re-send every row"))
		}
		// Our own slot from an initial sync that did not finish: nothing
		// was confirmed on it, so a fresh slot and snapshot lose nothing.
		s.log.Warn("the initial sync did not finish last time; starting it again with a new slot", "slot", slotName)
		if err := replication.DropSlot(ctx, sqlConn, slotName); err != nil {
			return start{}, err
		}
	}
	if haveReq {
		// A start over asked of a state directory that starts from
		// scratch anyway (after a teardown): the initial sync is one.
		if err := s.dir.TakeRecovery(); err != nil {
			return start{}, err
		}
	}
	pub := s.pub
	s.cp = state.Checkpoint{SystemID: sys.SystemID, Database: srv.Database, Slot: slotName, InitialSync: state.InitialSyncInProgress, Publication: &pub}
	if err := s.dir.SaveCheckpoint(s.cp); err != nil {
		return start{}, permanent(err)
	}
	if srv.InRecovery {
		s.log.Info("creating the slot on a standby waits for the primary's next running-transactions record "+
			"(up to ~15 s on a busy primary, indefinitely on an idle one); run SELECT pg_log_standby_snapshot(); on the primary to hurry it",
			"slot", slotName)
	}
	if cfg.Postgres.FailoverSlot && (srv.InRecovery || srv.Major() < 17) {
		return start{}, permanent(fix.With(fmt.Errorf("%w: postgres.failover_slot needs a Postgres 17+ primary (this is Postgres %d, standby: %t)",
			ErrConfig, srv.Major(), srv.InRecovery), "remove postgres.failover_slot, or point postgres.url at the primary"))
	}
	created, err := replication.CreateSlot(ctx, rconn, slotName, replication.SlotOptions{Failover: cfg.Postgres.FailoverSlot})
	if err != nil {
		return start{}, err
	}
	// From here the slot is ours and streams from its consistent point;
	// the table's rows are sent alongside, chunk by chunk, by a snapshot
	// job the checkpoint carries until it is done.
	job := s.initialJob(ctx, sqlConn)
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

// initialJob is the initial sync of the first section's table (the
// companies', or a users-only sync's users'); the users' follows the
// companies' (usersInitialSync).
func (s *session) initialJob(ctx context.Context, conn *pgx.Conn) *state.Snapshot {
	spec := s.cfg.Entities()[0]
	return &state.Snapshot{ID: state.InitialSnapshot, Users: spec.Kind == mapping.User,
		Total: estimateRows(ctx, conn, row.Table{Schema: spec.Schema, Name: spec.Name}), Began: time.Now().UTC()}
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

// relatedPlan compiles a section's related entries, where and sql: keys
// against the database and checks that each related table streams what
// its re-reads need: a problem is the operator's to fix (exit 2), with the
// fix.
func (s *session) relatedPlan(ctx context.Context, conn *pgx.Conn, spec mapping.Companies) (*related.Plan, error) {
	plan, err := related.Compile(ctx, conn, spec)
	if err != nil {
		var ces mapping.ConfigErrors
		if errors.As(err, &ces) {
			return nil, permanent(fmt.Errorf("%w: %w", ErrConfig, err))
		}
		return nil, err
	}
	for _, r := range spec.Related {
		t := row.Table{Schema: r.Schema, Name: r.Name}
		problem, err := replication.RelatedIdentityProblemOf(ctx, conn, t, r.CompanyID, spec.Kind.String())
		if err != nil {
			return nil, err
		}
		if problem != "" {
			return nil, permanent(fmt.Errorf("%w: %s: %s", ErrConfig, r.Path(), problem))
		}
	}
	return plan, nil
}
