package daemon

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgpilot/pgpilot/replication"
	"github.com/pgpilot/pgpilot/snapshot"
	"github.com/pgpilot/pgpilot/state"
)

// progressLogEvery is how often a running snapshot logs its progress.
const progressLogEvery = 5 * time.Second

// watchSnapshots starts the re-syncs `pgpilot resync` asks for (one at a
// time, once no snapshot runs) and reports a running snapshot's progress,
// until ctx is done.
func (s *session) watchSnapshots(ctx context.Context, src *source) {
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	var rate rateMeter
	var lastLog, lastPoll time.Time
	var lastJob string
	busy := func() bool {
		for _, es := range src.ents {
			if es.stage.Busy() {
				return true
			}
		}
		return false
	}
	for {
		select {
		case <-ctx.Done():
			if s.opts.Progress != nil && lastJob != "" {
				fmt.Fprintln(s.opts.Progress)
			}
			return
		case <-tick.C:
		}
		job := s.job()
		if time.Since(lastPoll) >= time.Second {
			lastPoll = time.Now()
			// Cancels first: a request they name is never started.
			stage := src.ents[0].stage
			if job != nil {
				stage = src.entityFor(*job).stage
			}
			if err := s.applyCancels(ctx, stage, job); err != nil {
				s.snapLog.Error("re-sync cancel not applied", "error", err)
			}
			if job == nil && !busy() {
				if err := s.takeResync(ctx, src); err != nil {
					s.snapLog.Error("re-sync request not started", "error", err)
				}
				continue
			}
		}
		if job == nil {
			continue
		}
		if job.ID != lastJob {
			lastJob, rate = job.ID, rateMeter{}
		}
		rate.add(time.Now(), job.Rows)
		p := progressOf(*job, src.entityFor(*job).stage.RowsRead(), rate.perSecond(), s.capacity())
		if s.opts.Progress != nil {
			fmt.Fprintf(s.opts.Progress, "\r%s", p.bar())
		}
		if time.Since(lastLog) >= progressLogEvery {
			lastLog = time.Now()
			s.snapLog.Info("snapshot progress", p.attrs()...)
		}
	}
}

// capacity is how many rows a second delivery should manage, for an ETA
// before one is measured: the bulk and real-time rates the engine has
// measured (the configured ones until it has).
func (s *session) capacity() float64 {
	if s.eng == nil {
		return s.cfg.Userpilot.BulkRate + s.cfg.Userpilot.RateLimit
	}
	l := s.eng.pipe.Learned()
	return l.BulkRate + l.RealtimeRate
}

// takeResync starts the oldest re-sync request queued in the state
// directory, if any: the job (which keeps the request's ID) is
// checkpointed first, then that request's file removed, so that a crash
// in between resumes the job and drops the request (see dropStartedRequest),
// never loses it; a request queued meanwhile is another file and waits.
func (s *session) takeResync(ctx context.Context, src *source) error {
	job, ok, err := s.dir.PendingResync()
	if err != nil {
		// A file that cannot be read: say so, and take the others.
		s.snapLog.Error("a re-sync request cannot be read", "error", err)
	}
	if !ok {
		// Nothing asked for: the users' initial sync, if it is owed (it
		// follows the companies', and starts when a users section is
		// added to a sync that runs already).
		if job, ok = s.usersInitialSync(src); !ok {
			return nil
		}
	} else if job.Users && !s.cfg.HasUsers() {
		s.snapLog.Error("a re-sync of users was asked for, but the config has no users section: dropped", "job", job.ID)
		return s.dir.TakeResync(job.ID)
	}
	es := src.entityFor(job)
	job.After, job.Rows, job.Began = nil, 0, time.Now().UTC()
	// The condition as chunks will run it: a request written by an older
	// pgpilot, or a table changed since, may no longer fit.
	if err := s.checkJob(ctx, es.stage, job); err != nil {
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) && !errors.Is(err, replication.ErrCondition) {
			return err // Postgres unreachable: try again at the next poll
		}
		job.Error, job.Fix = err.Error(), "fix the condition, then run `pgpilot resync` again"
		s.snapLog.Error("re-sync request refused: its condition does not work as a chunk query", "job", job.ID,
			"where", job.Where, "error", err, "fix", job.Fix)
		if err := s.failJob(job); err != nil {
			return err
		}
		return s.dir.TakeResync(job.ID)
	}
	job.Total = s.countRows(ctx, es, job)
	if err := s.beginJob(job); err != nil {
		return err
	}
	if job.ID != state.InitialUsersSnapshot {
		if err := s.dir.TakeResync(job.ID); err != nil {
			return err
		}
	}
	switch b := job.Backfill; {
	case job.ID == state.InitialUsersSnapshot:
		s.snapLog.Info("the users' initial sync started: sending the users table's rows alongside the stream", "job", job.ID,
			"table", es.table.String(), "rows_estimate", job.Total)
	case b != nil:
		s.snapLog.Info("backfill of a mapping change started: sending the keys that changed for every company alongside the stream",
			"job", job.ID, "keys", b.Keys, "cleared", b.Clear, "rows_estimate", job.Total)
	default:
		s.snapLog.Info("re-sync started: sending rows again alongside the stream", "job", job.ID, "users", job.Users,
			"where", job.Where, "id", job.CompanyID, "rows_estimate", job.Total)
	}
	return es.stage.Start(ctx, job)
}

// usersInitialSync is the users' initial sync, when it is owed: the file
// has a users section beside its companies (a users-only sync's initial
// sync is the first), and the checkpoint does not say the users table was
// sent once.
func (s *session) usersInitialSync(src *source) (state.Snapshot, bool) {
	if !s.cfg.HasUsers() || !s.cfg.HasCompanies() {
		return state.Snapshot{}, false
	}
	s.mu.Lock()
	done := s.cp.UsersSynced || s.cp.InitialSync != state.InitialSyncDone
	s.mu.Unlock()
	if done {
		return state.Snapshot{}, false
	}
	return state.Snapshot{ID: state.InitialUsersSnapshot, Users: true}, true
}

// checkJob has Postgres plan the job's chunk queries.
func (s *session) checkJob(ctx context.Context, stage *snapshot.Stage, job state.Snapshot) error {
	conn, err := replication.ConnectSQL(ctx, s.cfg.Postgres.URL)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	return stage.Check(ctx, conn, job)
}

// applyCancels applies the `pgpilot resync --cancel` requests waiting: a
// queued request they name is removed, the running job they name (job,
// as checkpointed) is cancelled in the stage. A cancel is removed once
// nothing it names is queued or running: until its job's end is
// checkpointed it is applied again at each poll, and after a restart.
func (s *session) applyCancels(ctx context.Context, stage *snapshot.Stage, job *state.Snapshot) error {
	cancels, err := state.PendingCancels(s.dir.Path())
	if len(cancels) == 0 {
		return err
	}
	queue, qerr := state.QueuedResyncs(s.dir.Path())
	err = errors.Join(err, qerr)
	for _, c := range cancels {
		waiting := false
		for _, id := range c.IDs {
			for _, q := range queue {
				if q.ID != id || (job != nil && job.ID == id) {
					continue
				}
				if err := s.dir.TakeResync(id); err != nil {
					return errors.Join(err, qerr)
				}
				s.snapLog.Info("queued re-sync cancelled", "job", id, "where", q.Where, "company_id", q.CompanyID)
			}
			if job != nil && job.ID == id {
				waiting = true
				if err := stage.Cancel(ctx, id); err != nil {
					return err
				}
			}
		}
		if !waiting {
			if err := s.dir.TakeCancel(c); err != nil {
				return err
			}
		}
	}
	return err
}

// dropStartedRequest removes the request of a job the checkpoint already
// runs: pgpilot stopped between checkpointing the job and removing its
// request, and the job resumes from the checkpoint.
func (s *session) dropStartedRequest(job *state.Snapshot) {
	if job == nil || job.Initial() {
		return
	}
	if err := s.dir.TakeResync(job.ID); err != nil {
		s.snapLog.Warn("could not remove the request of a running re-sync", "job", job.ID, "error", err)
	}
}

// countRows estimates how many rows a job will read: the planner's estimate
// for the whole table, a count (bounded in time) for a subset; -1: unknown.
func (s *session) countRows(ctx context.Context, es *entitySource, job state.Snapshot) int64 {
	table := es.table
	conn, err := replication.ConnectSQL(ctx, s.cfg.Postgres.URL)
	if err != nil {
		return -1
	}
	defer conn.Close(context.Background())
	where, args := snapshot.Filter(job, es.spec.CompanyID)
	if where == "" {
		return estimateRows(ctx, conn, table)
	}
	q := "SELECT count(*) FROM " + table.Quoted() + " WHERE " + where
	var n int64
	err = pgx.BeginTxFunc(ctx, conn, pgx.TxOptions{AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SET LOCAL statement_timeout = '10s'"); err != nil {
			return err
		}
		return tx.QueryRow(ctx, q, args...).Scan(&n)
	})
	if err != nil {
		return -1
	}
	return n
}

// rateMeter measures a rate over the last half minute.
type rateMeter struct {
	samples []rateSample
}

type rateSample struct {
	at   time.Time
	rows int64
}

func (r *rateMeter) add(at time.Time, rows int64) {
	r.samples = append(r.samples, rateSample{at, rows})
	for len(r.samples) > 2 && at.Sub(r.samples[0].at) > 30*time.Second {
		r.samples = r.samples[1:]
	}
}

func (r *rateMeter) perSecond() float64 {
	if len(r.samples) < 2 {
		return 0
	}
	first, last := r.samples[0], r.samples[len(r.samples)-1]
	d := last.at.Sub(first.at).Seconds()
	if d < 1 {
		return 0
	}
	return float64(last.rows-first.rows) / d
}

// progress is a running snapshot as shown to the operator.
type progress struct {
	job       state.Snapshot
	read      int64   // rows read (delivered or on their way)
	rate      float64 // rows delivered per second lately
	capacity  float64 // what Userpilot's limits allow, records per second
	remaining time.Duration
	known     bool // remaining is an estimate worth showing
}

// progressOf estimates the time left from the delivered rate; before there
// is one, from Userpilot's configured limits: reading is never what bounds
// a snapshot for long, Userpilot's bulk rate is.
func progressOf(job state.Snapshot, read int64, rate, capacity float64) progress {
	p := progress{job: job, read: max(read, job.Rows), rate: rate, capacity: capacity}
	if job.Total > 0 && job.Rows < job.Total {
		speed := rate
		if speed <= 0 {
			speed = capacity
		}
		if speed > 0 {
			p.remaining = time.Duration(float64(job.Total-job.Rows) / speed * float64(time.Second))
			p.known = true
		}
	}
	return p
}

func (p progress) percent() float64 {
	if p.job.Total <= 0 {
		return 0
	}
	return min(100, 100*float64(p.job.Rows)/float64(p.job.Total))
}

func (p progress) attrs() []any {
	a := []any{"job", p.job.ID, "rows_delivered", p.job.Rows, "rows_read", p.read, "rows_per_second", int64(p.rate)}
	if p.job.Total >= 0 {
		a = append(a, "rows_estimate", p.job.Total, "percent", int(p.percent()))
	}
	if p.known {
		a = append(a, "eta", p.remaining.Round(time.Second).String())
	}
	return a
}

// bar is one terminal line: [#####.....] 45% 450000/1000000 rows 12000 rows/s ETA 1m20s.
func (p progress) bar() string {
	const width = 30
	filled := int(p.percent() / 100 * width)
	total := "?"
	if p.job.Total >= 0 {
		total = fmt.Sprint(p.job.Total)
	}
	eta := "ETA ?"
	if p.known {
		eta = "ETA " + p.remaining.Round(time.Second).String()
	}
	return fmt.Sprintf("snapshot %s [%s%s] %3.0f%% %d/%s rows %.0f rows/s %s   ", p.job.ID,
		strings.Repeat("#", filled), strings.Repeat(".", width-filled), p.percent(), p.job.Rows, total, p.rate, eta)
}
