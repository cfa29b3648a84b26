package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/internal/workload"
	"github.com/pgpilot/pgpilot/state"
	"github.com/pgpilot/pgpilot/userpilot/userpilottest"
)

// resync runs `pgpilot resync` with args and returns its exit code and
// output.
func (e *env) resync(args ...string) (int, string) {
	e.t.Helper()
	r := e.pgpilot(append([]string{"resync", "--config", e.cfgPath}, args...)...)
	code := r.wait(e.t, 30*time.Second)
	return code, r.out.String()
}

// resyncQueued reports whether a re-sync request waits.
func (e *env) resyncQueued() bool {
	jobs, err := state.QueuedResyncs(e.stateDir)
	require.NoError(e.t, err)
	return len(jobs) > 0
}

// waitSnapshotIdle waits until no snapshot job runs and none is queued.
func (e *env) waitSnapshotIdle(timeout time.Duration) {
	e.t.Helper()
	require.Eventually(e.t, func() bool {
		return e.checkpointSnapshot() == nil && !e.resyncQueued()
	}, timeout, 10*time.Millisecond, "every re-sync taken and finished")
}

// waitQuery waits until a statement whose text holds each of parts runs
// on the server (other than the test's own).
func (e *env) waitQuery(timeout time.Duration, parts ...string) {
	e.t.Helper()
	conn := e.connect()
	defer conn.Close(context.Background())
	require.Eventually(e.t, func() bool {
		q := `SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND pid <> pg_backend_pid()`
		args := []any{}
		for _, p := range parts {
			args = append(args, "%"+p+"%")
			q += fmt.Sprintf(" AND query LIKE $%d", len(args))
		}
		var n int
		require.NoError(e.t, conn.QueryRow(context.Background(), q, args...).Scan(&n))
		return n > 0
	}, timeout, 5*time.Millisecond, "a statement holding %q runs", parts)
}

// TestResyncRequestsAreQueuedNeverLost: two requests written while no
// pgpilot runs both run at the next start (one used to overwrite the
// other); a request written while the daemon takes another (between its
// reading the request and removing it: here while it counts the rows of
// a slow condition) runs too (it used to be deleted unread, although the
// command line had printed "requested").
func TestResyncRequestsAreQueuedNeverLost(t *testing.T) {
	t.Parallel()
	e := newEnv(t, userpilottest.Options{})
	e.snapshotConfig(400)
	ctx := context.Background()
	require.NoError(t, workload.Seed(ctx, e.conn, 300))
	p := e.run()
	e.waitInitialSync()
	e.converge(60 * time.Second)
	code, _ := p.stop(t)
	require.Equal(t, 0, code)

	// Race 1: two requests before the daemon takes either.
	e.up.Wipe()
	for _, id := range []string{"7", "8"} {
		code, out := e.resync("--company", id)
		require.Equal(t, 0, code, out)
	}
	p = e.run()
	e.waitSnapshotIdle(60 * time.Second)
	assert.ElementsMatch(t, []string{"7", "8"}, keys(e.up.Companies()), "both requests ran, in one run")

	// Race 2: a request written while the daemon is taking another.
	e.up.Wipe()
	code, out := e.resync("--where", "id <= 5 AND (SELECT true FROM pg_sleep(2))")
	require.Equal(t, 0, code, out)
	e.waitQuery(30*time.Second, "count(*)", "pg_sleep")
	code, out = e.resync("--company", "42")
	require.Equal(t, 0, code, out)
	assert.Contains(t, out, "requested")
	// Waited for, not read at the first idle moment: between one queued
	// re-sync's end and the next one's start, nothing runs or is queued
	// for a moment while the next request is taken.
	want := slices.Sorted(slices.Values([]string{"1", "2", "3", "4", "5", "42"}))
	require.Eventually(t, func() bool { return slices.Equal(want, slices.Sorted(slices.Values(keys(e.up.Companies())))) },
		60*time.Second, 10*time.Millisecond, "the subset and the request written while it was being taken")
	e.waitSnapshotIdle(60 * time.Second)
	code, _ = p.stop(t)
	assert.Equal(t, 0, code)
}

// status runs `pgpilot status --json` and returns what it printed.
func (e *env) status() map[string]any {
	e.t.Helper()
	r := e.pgpilot("status", "--config", e.cfgPath, "--json")
	require.Equal(e.t, 0, r.wait(e.t, 30*time.Second), r.out.String())
	out := r.out.String()
	var m map[string]any
	require.NoError(e.t, json.Unmarshal([]byte(out[strings.Index(out, "{"):]), &m), out)
	return m
}

// slotActive samples, every 50 ms for d, whether the slot is streaming,
// and returns in how many samples it was, of how many.
func (e *env) slotActive(d time.Duration) (active, samples int) {
	e.t.Helper()
	conn := e.connect()
	defer conn.Close(context.Background())
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		var on bool
		err := conn.QueryRow(context.Background(), `SELECT active FROM pg_replication_slots WHERE slot_name = $1`, workload.SlotName(e.url)).Scan(&on)
		require.NoError(e.t, err)
		samples++
		if on {
			active++
		}
	}
	return active, samples
}

// lastFailed is status's failed re-sync, if it names id.
func lastFailed(st map[string]any, id string) map[string]any {
	f, _ := st["last_failed_resync"].(map[string]any)
	if f == nil || f["id"] != id {
		return nil
	}
	return f
}

// TestFailingResyncEndsItsJobNotTheStream: a condition that passes the
// check but fails on some rows at run time (plan::int on a plan that is
// not a number), and one that runs into statement_timeout, each end their
// own job, marked failed in `status` with the error and the fix, while the
// stream goes on (it used to end the replication session at every chunk,
// and the next session resumed the job and failed again, for ever, even
// after a restart). A condition with a comment or a semicolon is refused
// before anything is queued.
func TestFailingResyncEndsItsJobNotTheStream(t *testing.T) {
	t.Parallel()
	e := newEnv(t, userpilottest.Options{})
	e.snapshotConfig(400)
	ctx := context.Background()
	const rows = 3000
	require.NoError(t, workload.Seed(ctx, e.conn, rows))
	// The first two chunks' plans are numbers, the rest are not.
	_, err := e.conn.Exec(ctx, `UPDATE companies SET plan = (id % 7)::text WHERE id <= 1000`)
	require.NoError(t, err)
	p := e.run()
	e.waitInitialSync()
	e.converge(60 * time.Second)

	for _, where := range []string{"id > 0 -- every row", "id > 0 /* every row */", "id > 0; SELECT 1", "id > 0) OR (true"} {
		code, out := e.resync("--where", where)
		assert.Equal(t, 2, code, "--where %q: %s", where, out)
	}
	code, out := e.resync("--where", "id > 0 -- every row")
	assert.Contains(t, out, "comment")
	assert.False(t, e.resyncQueued(), "nothing refused is queued")
	code, out = e.resync("--where", "plan = 'a -- b; c'")
	require.Equal(t, 0, code, "a string may hold anything: %s", out)
	e.waitSnapshotIdle(60 * time.Second)

	failing := func(where, wantErr string) {
		t.Helper()
		code, out := e.resync("--where", where)
		require.Equal(t, 0, code, "the check passes: %s", out)
		id := out[strings.Index(out, "resync-"):]
		id = id[:strings.IndexByte(id, ' ')]
		// The stream goes on while the job fails: the slot stays in use
		// and a change made meanwhile arrives.
		_, err := e.conn.Exec(ctx, `UPDATE companies SET name = $1 WHERE id = 2`, "during "+where)
		require.NoError(t, err)
		active, samples := e.slotActive(5 * time.Second)
		t.Logf("--where %q: slot in use in %d of %d samples over 5 s", where, active, samples)
		assert.GreaterOrEqual(t, active, samples*95/100, "the stream goes on")
		var failed map[string]any
		require.Eventually(t, func() bool {
			failed = lastFailed(e.status(), id)
			return failed != nil
		}, 30*time.Second, 100*time.Millisecond, "status shows the job failed")
		assert.Contains(t, failed["error"], wantErr)
		assert.NotEmpty(t, failed["fix"])
		assert.Nil(t, e.status()["snapshot"], "no job runs")
		e.converge(30 * time.Second)
	}
	failing("plan::int > 0", "invalid input syntax for type integer")

	// After a restart the failed job stays failed: it does not start again.
	code, _ = p.stop(t)
	require.Equal(t, 0, code)
	p = e.run()
	_, err = e.conn.Exec(ctx, `UPDATE companies SET name = 'after the restart' WHERE id = 3`)
	require.NoError(t, err)
	e.converge(30 * time.Second)
	time.Sleep(2 * time.Second)
	assert.Nil(t, e.status()["snapshot"], "the failed job is not resumed")
	assert.NotContains(t, p.out.String(), "resuming the snapshot")

	// A condition no index serves, slower than the database's
	// statement_timeout (here: one that sleeps once per statement).
	var db string
	require.NoError(t, e.conn.QueryRow(ctx, `SELECT current_database()`).Scan(&db))
	_, err = e.conn.Exec(ctx, `ALTER DATABASE `+pgx.Identifier{db}.Sanitize()+` SET statement_timeout = '300ms'`)
	require.NoError(t, err)
	failing("id > 0 AND (SELECT true FROM pg_sleep(1))", "statement timeout")
	_, err = e.conn.Exec(ctx, `ALTER DATABASE `+pgx.Identifier{db}.Sanitize()+` RESET statement_timeout`)
	require.NoError(t, err)

	code, _ = p.stop(t)
	assert.Equal(t, 0, code)
}

// TestResyncCancelEndsTheRunningAndQueuedJobs: `pgpilot resync --cancel`
// ends the running re-sync (its rows already sent stay sent, it reads no
// further) and drops the queued one; status shows the cancelled job; a
// re-sync asked for afterwards runs.
func TestResyncCancelEndsTheRunningAndQueuedJobs(t *testing.T) {
	t.Parallel()
	e := newEnv(t, userpilottest.Options{})
	e.snapshotConfig(400)
	ctx := context.Background()
	const rows = 3000
	require.NoError(t, workload.Seed(ctx, e.conn, rows))
	p := e.run()
	e.waitInitialSync()
	e.converge(60 * time.Second)

	code, out := e.resync("--cancel")
	require.Equal(t, 0, code, out)
	assert.Contains(t, out, "nothing to cancel")

	// Each chunk's read sleeps a second: six chunks.
	code, out = e.resync("--where", "id > 0 AND (SELECT true FROM pg_sleep(1))")
	require.Equal(t, 0, code, out)
	code, out = e.resync("--company", "2999")
	require.Equal(t, 0, code, out)
	require.Eventually(t, func() bool { return e.checkpointSnapshot() != nil }, 30*time.Second, 10*time.Millisecond, "the first runs")
	running := e.checkpointSnapshot().ID
	e.up.Wipe()
	code, out = e.resync("--cancel")
	require.Equal(t, 0, code, out)
	assert.Contains(t, out, running)
	require.Eventually(t, func() bool {
		cancels, err := state.PendingCancels(e.stateDir)
		require.NoError(t, err)
		return e.checkpointSnapshot() == nil && !e.resyncQueued() && len(cancels) == 0
	}, 30*time.Second, 10*time.Millisecond, "the running job ended, the queued one dropped, the cancel done")
	st := e.status()
	failed := lastFailed(st, running)
	require.NotNil(t, failed, "status shows the cancelled job: %v", st)
	assert.Contains(t, failed["error"], "cancelled")
	assert.Nil(t, st["cancel_requested"], "the cancel is done")
	time.Sleep(2 * time.Second)
	got := e.up.Companies()
	assert.Less(t, len(got), rows, "the cancelled job read no further")
	assert.NotContains(t, got, "2999", "the queued request never ran")
	r := e.pgpilot("status", "--config", e.cfgPath)
	require.Equal(t, 0, r.wait(t, 30*time.Second))
	t.Logf("status:\n%s", r.out.String())
	assert.Contains(t, r.out.String(), "re-sync ended early")

	code, out = e.resync("--company", "2999")
	require.Equal(t, 0, code, out)
	require.Eventually(t, func() bool {
		_, ok := e.up.Company("2999")
		return ok
	}, 30*time.Second, 10*time.Millisecond, "a re-sync asked for after the cancel runs")
	code, _ = p.stop(t)
	assert.Equal(t, 0, code)
}
