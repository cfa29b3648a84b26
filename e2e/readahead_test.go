package e2e

import (
	"context"
	"math/rand/v2"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/internal/workload"
	"github.com/pgpilot/pgpilot/state"
	"github.com/pgpilot/pgpilot/userpilot/userpilottest"
)

// The read-ahead against the binary. Userpilot is not down, only slow (a
// scaled-down real-time budget or a per-call latency, bulk jobs of a few
// hundred records a second), and the stream changes more users than
// memory holds faster than that: the backlog outgrows memory and is read
// ahead into the outbox (delivery/backlog.go). pgpilot is killed (kill -9)
// while it reads ahead beside the initial sync or a re-sync, while a bulk
// job runs and the snapshot reads rows into the outbox, and once the
// stream has stopped while the outbox still owes; then Userpilot goes fast
// and must end equal to the tables, computed in SQL (internal/workload).

// The scenario's sizes and Userpilot's pace. The memory window (5 MB)
// holds about 13,000 of these users; delivering it at 700 records/s takes
// longer than the 15 s after which the backlog is read ahead. Fewer users
// change than hold a snapshot back (20,000 owed): it reads on beside the
// read-ahead.
const (
	readAheadCompanies = 1000
	readAheadUsers     = 16_000
	readAheadRate      = 100 // real-time requests/s, the stand-in's and rate_limit
	readAheadBulk      = 600 // bulk records/s
	// readAheadLatency is how long each real-time call takes while
	// Userpilot is slow, when the latency, not a rate limit, is its limit.
	readAheadLatency = 400 * time.Millisecond
)

// readAheadEnv is a database of companies (every 50th with a TOASTed notes
// value) and users (every 100th with a TOASTed bio; some with tickets), a
// stand-in with opts, and a config with both sections and rateLimit where
// only the read-ahead can switch to the outbox: no WAL bound, and outbox_after
// far longer than the test. A stall, if one comes, is named in the log
// after 20 s rather than the default minute.
func readAheadEnv(t *testing.T, opts userpilottest.Options, rateLimit float64) *env {
	t.Helper()
	e := newEnv(t, opts)
	e.dropSlotAtEnd()
	ctx := context.Background()
	require.NoError(t, workload.CreateUsers(ctx, e.conn))
	require.NoError(t, workload.SeedWithNotes(ctx, e.conn, readAheadCompanies, 50))
	require.NoError(t, workload.SeedUsers(ctx, e.conn, readAheadUsers, readAheadCompanies))
	// Left alone by every later update: only a snapshot carries it.
	_, err := e.conn.Exec(ctx, `UPDATE users SET bio = repeat(md5(id::text), 100) WHERE id % 100 = 1`)
	require.NoError(t, err)
	_, err = e.conn.Exec(ctx, `VACUUM ANALYZE users`)
	require.NoError(t, err)
	cfg := workload.Config(e.url, e.slot(), e.up.URL(), apiKey, e.stateDir, rateLimit) + workload.UsersMapping
	e.writeConfig(strings.Replace(cfg, "companies:\n",
		"delivery:\n  max_retained_wal: 0\n  outbox_after: 1h\n  stall_after: 20s\n  snapshot_chunk_rows: 500\ncompanies:\n", 1))
	return e
}

// backlogWriter is the stream: every round, a slice of users moved to
// another company and renamed and a slice of companies' seats and plan
// changed (neither notes nor bio), cycling over every user and company,
// faster than the slow Userpilot takes them; and random transactions over
// both tables (users made, moved to another company or to none, made
// bots, deleted; tickets; TOAST-sized values).
type backlogWriter struct {
	committed atomic.Int64
	cancel    context.CancelFunc
	done      chan struct{}
}

func (e *env) startBacklog() *backlogWriter {
	ctx, cancel := context.WithCancel(context.Background())
	w := &backlogWriter{cancel: cancel, done: make(chan struct{})}
	conn, err := pgx.Connect(ctx, e.url)
	require.NoError(e.t, err)
	go func() {
		defer close(w.done)
		defer conn.Close(context.Background())
		rng := rand.New(rand.NewPCG(31, 32))
		const slice = 150
		for round := 0; ctx.Err() == nil; round++ {
			a := (round * slice) % readAheadUsers
			_, err := conn.Exec(ctx, `UPDATE users SET company_id = 1 + (id + $3) % $4, name = 'User ' || id || ' moved ' || $3
				WHERE id > $1 AND id <= $1 + $2`, a, slice, round, readAheadCompanies)
			if err == nil {
				w.committed.Add(1)
			}
			if workload.UpdateSlice(ctx, conn, (round*20)%readAheadCompanies, 20, round) == nil {
				w.committed.Add(1)
			}
			if ok, err := workload.Step(ctx, conn, rng, readAheadCompanies); err == nil && ok {
				w.committed.Add(1)
			}
			if ok, err := workload.UsersStep(ctx, conn, rng, readAheadUsers+100, readAheadCompanies); err == nil && ok {
				w.committed.Add(1)
			}
			time.Sleep(40 * time.Millisecond)
		}
	}()
	e.t.Cleanup(w.stop)
	return w
}

// stop ends the writing and waits for it; it is idempotent.
func (w *backlogWriter) stop() {
	w.cancel()
	<-w.done
}

// readingAhead says whether st is outbox mode started for a backlog that
// outgrew memory (not for an outage, retained WAL or a restart).
func readingAhead(st state.Status) bool {
	return st.Mode == state.ModeOutbox && strings.HasPrefix(st.Reason, "the backlog outgrew memory")
}

// moment is what pgpilot says of itself at one instant: its status and
// checkpoint.
type moment struct {
	st state.Status
	cp state.Checkpoint
}

// initialSyncOwed says whether part of the initial sync is owed: the
// companies' or the users' snapshot runs, or the users' has not run yet.
func (m moment) initialSyncOwed() bool {
	return (m.cp.Snapshot != nil && m.cp.Snapshot.Initial()) || !m.cp.UsersSynced
}

// resyncRunning says whether a re-sync runs: of the users' table if users.
func (m moment) resyncRunning(users bool) bool {
	return m.cp.Snapshot != nil && !m.cp.Snapshot.Initial() && m.cp.Snapshot.Users == users
}

// snapshotRows is how many rows the running snapshot has delivered (or
// written to the outbox); 0 when none runs.
func (m moment) snapshotRows() int64 {
	if m.cp.Snapshot == nil {
		return 0
	}
	return m.cp.Snapshot.Rows
}

// waitMoment waits until p (started at since) has written a status of its
// own and cond holds of what it says, and returns that moment. p exiting,
// or the deadline, fails the test with pgpilot's state.
func (e *env) waitMoment(p *proc, since time.Time, what string, timeout time.Duration, cond func(moment) bool) moment {
	e.t.Helper()
	began := time.Now()
	deadline := began.Add(timeout)
	var m moment
	for {
		st, stOK, stErr := state.ReadStatus(e.stateDir)
		cp, cpOK, cpErr := state.ReadCheckpoint(e.stateDir)
		m = moment{st: st, cp: cp}
		if stErr == nil && cpErr == nil && stOK && cpOK && st.UpdatedAt.After(since) && cond(m) {
			e.t.Logf("%s: after %s (mode %s, %d pending, %d in the outbox)", what, time.Since(began).Round(time.Millisecond),
				st.Mode, st.Pending, st.OutboxCompanies)
			return m
		}
		if !p.running() || time.Now().After(deadline) {
			e.t.Logf("waited %s for %s; pgpilot running: %v; Userpilot accepted %d companies and %d users; its bulk job: %+v",
				timeout, what, p.running(), e.up.Accepted(), e.up.AcceptedUsers(), e.up.Job())
			e.stalled(p)
			e.t.FailNow()
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// restart kills p (kill -9) and starts pgpilot again; it returns the new
// process and when it was started.
func (e *env) restart(p *proc) (*proc, time.Time) {
	e.t.Log("kill -9")
	p.kill9()
	started := time.Now()
	return e.runAt("info"), started
}

// jobKnown says whether no bulk job is in doubt: none is being submitted,
// and the one running, if any, has had its status asked for. A pgpilot
// killed between a job's submission and its learning the job's id cannot
// ask what became of it: the next one waits for as long as the job could
// take before it sends its records again (by design; 30 s and more here).
// These tests kill elsewhere.
func (e *env) jobKnown() bool {
	j := e.up.Job()
	return !j.Submitting && (!j.Running || j.Polled)
}

// convergeReadAhead lets Userpilot go fast, waits until it holds the
// tables' companies and users (computed in SQL), and checks that pgpilot
// then owes nothing: back in hold mode, nothing pending.
func (e *env) convergeReadAhead(p *proc) {
	e.t.Helper()
	e.up.SetBulkSpeed(0, 0)
	began := time.Now()
	if err := workload.WaitConverged(context.Background(), e.conn, e.up.Companies, 120*time.Second); err != nil {
		e.stalled(p)
		e.t.Fatal(err)
	}
	e.convergeUsers(120 * time.Second)
	e.t.Logf("Userpilot holds the tables %s after it went fast", time.Since(began).Round(time.Millisecond))
	e.waitMoment(p, time.Time{}, "pgpilot to owe nothing once Userpilot holds the tables", 60*time.Second, func(m moment) bool {
		return m.st.Mode == state.ModeHold && m.st.Pending == 0
	})
	code, _ := p.stop(e.t)
	assert.Equal(e.t, 0, code)
}

// snapshotReadSince says whether, since before, the running snapshot has
// delivered rows (to Userpilot, or to the outbox): more of the same job's,
// or some of another's.
func (m moment) snapshotReadSince(before moment) bool {
	s, b := m.cp.Snapshot, before.cp.Snapshot
	return s != nil && s.Rows > 0 && (b == nil || b.ID != s.ID || s.Rows > b.Rows)
}

// killThroughTheReadAhead kills p (started at started) three times and
// returns the pgpilot running after the last kill: while it reads ahead
// and a snapshot is owed (owed: it runs or is to run); while the snapshot,
// last(moment), reads rows into the outbox after that restart, the stream
// still outpacing Userpilot; and, the stream stopped and the snapshot
// over, while a bulk job runs and the outbox still owes more than a small
// job, so that the next pgpilot, once that job has ended, sends the rest
// in bulk before any row of the users table reaches it.
func (e *env) killThroughTheReadAhead(p *proc, started time.Time, w *backlogWriter, owed, last func(moment) bool) *proc {
	e.t.Helper()
	m := e.waitMoment(p, started, "the read-ahead while a snapshot is owed", 90*time.Second, func(m moment) bool {
		return readingAhead(m.st) && owed(m) && e.jobKnown()
	})
	e.t.Logf("reading ahead: %s", m.st.Reason)
	p, started = e.restart(p)

	before := e.waitMoment(p, started, "pgpilot back", 30*time.Second, func(moment) bool { return true })
	m = e.waitMoment(p, started, "the snapshot reading into the outbox", 60*time.Second, func(m moment) bool {
		return m.st.Mode == state.ModeOutbox && last(m) && m.snapshotReadSince(before) && e.jobKnown()
	})
	e.t.Logf("snapshot %s at %d rows", m.cp.Snapshot.ID, m.cp.Snapshot.Rows)
	p, started = e.restart(p)

	w.stop()
	e.waitMoment(p, started, "a bulk job in flight, the snapshot over, the outbox still owing", 60*time.Second, func(m moment) bool {
		j := e.up.Job()
		return m.st.Mode == state.ModeOutbox && !owed(m) && m.st.OutboxCompanies > 2000 && j.Running && j.Polled
	})
	p, _ = e.restart(p)
	return p
}

// TestReadAheadThroughKillsDuringTheInitialSyncEndsEqualToTheTables: the
// initial sync of companies and users starts while the stream changes
// every user, slice after slice, faster than a Userpilot of scaled-down
// budgets takes them (real time readAheadRate requests/s, bulk jobs at
// readAheadBulk records/s). The backlog is read ahead into the outbox by
// the pace measured (the window takes longer than 15 s to deliver) while
// the users' part of the initial sync is owed, and pgpilot is killed three
// times (killThroughTheReadAhead). Then Userpilot goes fast: its companies
// and users (their companies, the TOASTed notes and bio only the snapshot
// carries) must equal the tables.
func TestReadAheadThroughKillsDuringTheInitialSyncEndsEqualToTheTables(t *testing.T) {
	t.Parallel()
	e := readAheadEnv(t, userpilottest.Options{RateLimit: readAheadRate, BulkRecordsPerSecond: readAheadBulk, JobOverhead: 500 * time.Millisecond},
		readAheadRate)
	w := e.startBacklog()
	started := time.Now()
	p := e.runAt("info")
	p = e.killThroughTheReadAhead(p, started, w, moment.initialSyncOwed, func(m moment) bool {
		return m.cp.Snapshot != nil && m.cp.Snapshot.ID == state.InitialUsersSnapshot
	})
	e.convergeReadAhead(p)
	t.Logf("%d transactions committed through 3 kill -9s; %d companies, %d users in Userpilot",
		w.committed.Load(), len(e.up.Companies()), len(e.up.Users()))
}

// TestReadAheadThroughKillsDuringAResyncEndsEqualToTheTables: after the
// initial sync, Userpilot slows down (each real-time call takes
// readAheadLatency, bulk jobs run at half readAheadBulk) while the stream
// changes every user, slice after slice: the window holds the input back
// for 15 s without turning over, and the backlog is read ahead into the
// outbox. Userpilot then loses its data and the companies and the users
// are re-synced (`pgpilot resync`, and `--users`) beside the read-ahead,
// and pgpilot is killed three times (killThroughTheReadAhead). Then
// Userpilot goes fast: its companies and users must equal the tables, the
// TOASTed notes and bio included, which after the wipe only the re-syncs
// carry.
func TestReadAheadThroughKillsDuringAResyncEndsEqualToTheTables(t *testing.T) {
	t.Parallel()
	e := readAheadEnv(t, userpilottest.Options{JobOverhead: 500 * time.Millisecond}, 1000)
	started := time.Now()
	p := e.runAt("info")
	e.waitMoment(p, started, "the initial sync done", 90*time.Second, func(m moment) bool {
		return m.cp.UsersSynced && m.cp.Snapshot == nil
	})

	e.up.SetFault(&userpilottest.Fault{Delay: readAheadLatency})
	// Slower than a window turns over in 15 s.
	e.up.SetBulkSpeed(readAheadBulk/2, 500*time.Millisecond)
	w := e.startBacklog()
	e.waitMoment(p, started, "the read-ahead", 90*time.Second, func(m moment) bool { return readingAhead(m.st) })
	// Userpilot lost its data: what the stream does not carry (the
	// TOASTed values) only the re-syncs bring back.
	e.up.Wipe()
	for _, args := range [][]string{nil, {"--users"}} {
		code, out := e.resync(args...)
		require.Equal(t, 0, code, out)
	}
	resyncing := func(m moment) bool { return m.resyncRunning(false) || m.resyncRunning(true) || e.resyncQueued() }
	p = e.killThroughTheReadAhead(p, started, w, resyncing, func(m moment) bool { return m.resyncRunning(true) })
	e.up.SetFault(nil)
	e.convergeReadAhead(p)
	t.Logf("%d transactions committed through 3 kill -9s; %d companies, %d users in Userpilot",
		w.committed.Load(), len(e.up.Companies()), len(e.up.Users()))
}
