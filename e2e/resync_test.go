package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

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
	e.waitSnapshotIdle(60 * time.Second)
	assert.ElementsMatch(t, []string{"1", "2", "3", "4", "5", "42"}, keys(e.up.Companies()),
		"the subset and the request written while it was being taken")
	code, _ = p.stop(t)
	assert.Equal(t, 0, code)
}
