package e2e

import (
	"context"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/internal/pgtest"
	"github.com/pgpilot/pgpilot/internal/workload"
	"github.com/pgpilot/pgpilot/state"
	"github.com/pgpilot/pgpilot/userpilot/userpilottest"
)

// TestModesOverlapping is delivery's modes at once, as an operator met
// them: the initial sync of a table whose every 50th company holds a
// TOASTed notes value, pgpilot killed (kill -9) at its first request and
// started again; then, three times over, Userpilot answers 503 to
// everything while every company is updated (seats and plan: neither notes
// nor the key), with Postgres crash-restarted under pgpilot the first
// time, until pgpilot owes every change in its outbox, more than its
// memory holds; and Userpilot comes back while the table is updated again,
// slice after slice, so that changes stream in as the outbox drains and
// refills memory (the overlap the 200,000-company scenario met by itself:
// at this size the stream would be done before the drain starts).
// Userpilot must end equal to the table, notes included (after the
// updates only the snapshot carries an unchanged TOASTed value), and
// pgpilot must then owe nothing: back in hold mode, nothing pending.
//
// PGPILOT_OVERLAP_ROWS and PGPILOT_OVERLAP_OUTAGES scale it;
// PGPILOT_OVERLAP_LOG=FILE keeps the log of a pgpilot that stalled.
// BenchmarkOverlap is the full scenario.
func TestModesOverlapping(t *testing.T) {
	outages := 3
	if v, err := strconv.Atoi(os.Getenv("PGPILOT_OVERLAP_OUTAGES")); err == nil && v > 0 {
		outages = v
	}
	t.Parallel()
	// More than the memory window holds (25,000 companies), so that some
	// are owed only on disk.
	n := 30_000
	if v, err := strconv.Atoi(os.Getenv("PGPILOT_OVERLAP_ROWS")); err == nil && v > 0 {
		n = v
	}
	srv := pgtest.StartT(t, pgtest.Options{})
	e := newEnvOn(t, srv, userpilottest.Options{}, nil)
	ctx := context.Background()
	require.NoError(t, workload.SeedWithNotes(ctx, e.conn, n, 50))
	cfg := workload.Config(e.url, e.slot(), e.up.URL(), apiKey, e.stateDir, 2000)
	e.writeConfig(strings.Replace(cfg, "companies:\n",
		"delivery:\n  max_retained_wal: 4MB\n  snapshot_chunk_rows: 1000\ncompanies:\n", 1))

	p := e.runAt("info")
	// Killed at its first request: the initial sync has barely begun.
	require.Eventually(t, func() bool { return len(e.up.Requests()) > 0 }, 60*time.Second, time.Millisecond)
	p.kill9()
	p = e.runAt("info")
	accepted := e.up.Accepted()
	require.Eventually(t, func() bool { return e.up.Accepted() > accepted }, 60*time.Second, time.Millisecond,
		"pgpilot delivers again")

	// Each outage is followed by a drain that changes keep streaming into:
	// each is a chance for a change to meet a company owed only on disk
	// while memory has room.
	slice := max(n/100, 100)
	pass := 0
	for outage := range outages {
		e.up.AnswerAll(503)
		for a := 0; a < n; a += slice {
			require.NoError(t, workload.UpdateSlice(ctx, e.conn, a, slice, pass))
		}
		pass++
		if outage == 0 {
			// Postgres crash-restarts under pgpilot.
			require.NoError(t, srv.Crash(ctx))
			require.NoError(t, srv.Restart(ctx))
			e.conn = e.connect()
		}
		end := e.walPosition()
		require.Eventually(t, func() bool {
			st, ok, err := state.ReadStatus(e.stateDir)
			cp, _, _ := state.ReadCheckpoint(e.stateDir)
			return err == nil && ok && st.Mode == state.ModeOutbox && pglogrepl.LSN(cp.LSN) >= end
		}, 120*time.Second, 10*time.Millisecond, "pgpilot owes every change in its outbox")

		e.up.AnswerAll(0)
		// Changes go on streaming in as the outbox drains and refills
		// memory: the table is updated again, newest owed first (the
		// refill loads the oldest), slice after slice with a few always
		// waiting in the stream, until Userpilot has taken as much as
		// was owed.
		back := e.up.Accepted()
		var written []pglogrepl.LSN
		// A drain that stops (an outbox never refilled into memory) is a
		// stall to report, not a loop until the test's timeout: the whole
		// test takes about a minute.
		drainBy := time.Now().Add(drainWithin)
		for first, a := true, n-slice; first || e.up.Accepted() < back+n; a -= slice {
			if time.Now().After(drainBy) {
				t.Logf("Userpilot took %d of the %d companies owed within %s", e.up.Accepted()-back, n, drainWithin)
				e.stalled(p)
				t.FailNow()
			}
			if a < 0 {
				first, pass, a = false, pass+1, n-slice
			}
			require.NoError(t, workload.UpdateSlice(ctx, e.conn, a, slice, pass))
			written = append(written, e.walPosition())
			if len(written) > 3 {
				behind := written[len(written)-4]
				require.Eventually(t, func() bool {
					cp, ok, err := state.ReadCheckpoint(e.stateDir)
					return err == nil && ok && pglogrepl.LSN(cp.LSN) >= behind
				}, 120*time.Second, time.Millisecond, "pgpilot takes what was written")
			}
		}
		pass++
	}

	if err := workload.WaitConverged(ctx, e.conn, e.up.Companies, 120*time.Second); err != nil {
		e.stalled(p)
		t.Fatal(err)
	}
	// And it owes nothing more: back in hold mode, nothing pending.
	var st state.Status
	if !assert.Eventually(t, func() bool {
		var ok bool
		var err error
		st, ok, err = state.ReadStatus(e.stateDir)
		return err == nil && ok && st.Mode == state.ModeHold && st.Pending == 0
	}, 60*time.Second, 10*time.Millisecond, "pgpilot owes nothing once Userpilot holds the table") {
		t.Logf("status: %+v", st)
		e.stalled(p)
		t.FailNow()
	}
	code, _ := p.stop(t)
	assert.Equal(t, 0, code)
}

// drainWithin bounds how long Userpilot may take, once back, to have
// taken as many companies as were owed.
const drainWithin = 3 * time.Minute

// runAt is run at the given log level.
func (e *env) runAt(level string) *proc {
	return e.pgpilot("run", "--config", e.cfgPath, "--log-level", level)
}

// stalled logs what a pgpilot that stopped delivering was doing: its
// status, checkpoint, the slot, the outbox on disk and every goroutine's
// stack (which ends it).
func (e *env) stalled(p *proc) {
	t := e.t
	st, _, _ := state.ReadStatus(e.stateDir)
	cp, _, _ := state.ReadCheckpoint(e.stateDir)
	t.Logf("status: %+v\ncheckpoint: %+v", st, cp)
	if cp.Snapshot != nil {
		t.Logf("snapshot job: %+v", *cp.Snapshot)
	}
	var pos, confirmed string
	_ = e.conn.QueryRow(context.Background(), `SELECT pg_current_wal_lsn()::text,
		(SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1)`, e.slot()).Scan(&pos, &confirmed)
	t.Logf("server at %s; slot confirmed %s", pos, confirmed)
	dump := p.goroutines()
	if owed, err := state.SummarizeOutbox(e.stateDir); err == nil {
		t.Logf("the outbox on disk owes %d companies", owed.Companies)
	}
	if path := os.Getenv("PGPILOT_OVERLAP_LOG"); path != "" {
		_ = os.WriteFile(path, []byte(p.out.String()), 0o644)
	}
	t.Logf("goroutines:\n%s", tail(dump, 20000))
}

// goroutines has the Go runtime dump every goroutine's stack (SIGQUIT),
// which ends p, and returns what it wrote.
func (p *proc) goroutines() string {
	if !p.running() {
		return "(not running)"
	}
	before := len(p.out.String())
	_ = p.cmd.Process.Signal(syscall.SIGQUIT)
	<-p.done
	return p.out.String()[before:]
}

// walPosition is the server's WAL position now.
func (e *env) walPosition() pglogrepl.LSN {
	var s string
	require.NoError(e.t, e.conn.QueryRow(context.Background(), `SELECT pg_current_wal_lsn()::text`).Scan(&s))
	lsn, err := pglogrepl.ParseLSN(s)
	require.NoError(e.t, err)
	return lsn
}
