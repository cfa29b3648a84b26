package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/internal/failpoint"
	"github.com/pgpilot/pgpilot/internal/workload"
	"github.com/pgpilot/pgpilot/userpilot/userpilottest"
)

var (
	failpointBuild sync.Once
	failpointBin   string
	failpointErr   error
)

// failpointBinary is pgpilot built with -tags failpoints: it kills itself
// at the point PGPILOT_FAILPOINT names. It is built on first use, so only
// the tests that need it pay for the build.
func failpointBinary(t *testing.T) string {
	t.Helper()
	failpointBuild.Do(func() {
		failpointBin = filepath.Join(filepath.Dir(binary), "pgpilot-failpoints")
		out, err := exec.Command("go", "build", "-tags", "failpoints", "-o", failpointBin, "github.com/pgpilot/pgpilot").CombinedOutput()
		if err != nil {
			failpointErr = fmt.Errorf("build pgpilot -tags failpoints: %w\n%s", err, out)
		}
	})
	require.NoError(t, failpointErr)
	return failpointBin
}

// TestKillNineAtEachFailpointLosesNothing kills pgpilot exactly where a
// crash is most likely to lose data, rather than where a random kill
// happens to land: after Userpilot accepted an identify and before anything
// recorded it; after a flush was delivered and before its checkpoint is
// written; after the new checkpoint was renamed into place and before the
// directory's fsync. Each point fires several times (at a random hit) in
// one random workload, pgpilot restarted after each kill; then Userpilot
// must equal the table, and the records sent twice stay within one per
// worker per kill. PGPILOT_SOAK=1 kills 15 times per point.
func TestKillNineAtEachFailpointLosesNothing(t *testing.T) {
	t.Parallel()
	bin := failpointBinary(t)
	kills := 4
	if soak() {
		kills = 15
	}
	// The binary's real-time workers at rate_limit 2000 (daemon.workersFor):
	// at a kill each holds at most one call accepted but not yet recorded.
	const workers = 64
	points := []struct {
		point, subject string // subject "": any
		maxHit         int    // the kill lands on a hit in [1, maxHit]
	}{
		{failpoint.IdentifyAccepted, "", 150},
		{failpoint.CheckpointBeforeWrite, "done", 15},
		{failpoint.AtomicAfterRename, "checkpoint.json", 15},
	}
	for i, pt := range points {
		spec := pt.point
		if pt.subject != "" {
			spec += "@" + pt.subject
		}
		t.Run(spec, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, userpilottest.Options{})
			e.dropSlotAtEnd()
			ctx := context.Background()
			require.NoError(t, workload.Seed(ctx, e.conn, 200))
			// Killed during the initial sync, pgpilot sends the whole table
			// again (documented); here the kills fall while it streams.
			p := e.run()
			e.waitInitialSync()
			code, _ := p.stop(t)
			require.Equal(t, 0, code)
			// Userpilot's latency keeps calls in flight at every instant, as
			// in production: a kill then always cuts some off.
			e.up.SetFault(&userpilottest.Fault{Delay: 50 * time.Millisecond})
			// Mostly new companies: a change lost at a kill is not hidden
			// by a later write to the same company.
			w := startWriter(t, e.url, uint64(61+i), 20000)
			rng := rand.New(rand.NewPCG(uint64(71+i), 72))
			var hits []string
			for range kills {
				n := 1 + rng.IntN(pt.maxHit)
				p := e.start(bin, []string{fmt.Sprintf("%s=%s:%d", failpoint.EnvVar, spec, n)}, "run", "--config", e.cfgPath, "--log-level", "debug")
				select {
				case <-p.done:
				case <-time.After(3 * time.Minute):
					t.Fatalf("%s: hit %d never came", spec, n)
				}
				// Killed by its own failpoint, not exited for another reason.
				ws := p.cmd.ProcessState.Sys().(syscall.WaitStatus)
				require.True(t, ws.Signaled() && ws.Signal() == syscall.SIGKILL, "pgpilot ended with %v, not by SIGKILL:\n%s", p.cmd.ProcessState, tail(p.out.String(), 3000))
				marker := lineWith(p.out.String(), failpoint.Marker)
				require.Contains(t, marker, fmt.Sprintf("%s %s (%s", failpoint.Marker, pt.point, pt.subject), "the failpoint fired")
				hits = append(hits, fmt.Sprint(n))
			}
			w.stop()

			p = e.run()
			e.converge(120 * time.Second)
			code, _ = p.stop(t)
			assert.Equal(t, 0, code)
			dup := resends(e.up.Applied())
			t.Logf("%s: %d kills (at hits %s), %d transactions committed, %d identify requests, %d records applied, %d identical re-sends",
				spec, kills, strings.Join(hits, ", "), w.committed.Load(), e.up.IdentifyRequests(), e.up.Accepted(), dup)
			// Only what was accepted but not yet recorded in the no-op index
			// when pgpilot died is sent again: one call per worker per kill.
			assert.LessOrEqual(t, dup, workers*kills, "duplicates stay bounded")
		})
	}
}

// TestAnIdentifyAcceptedButNotRecordedIsNeverTrusted: company 7 is "A" in
// Userpilot and in the no-op index. It is set to "B"; Userpilot applies it
// and pgpilot dies before recording it (failpoint identify.accepted); while
// pgpilot is down the company is set back to "A". After the restart both
// changes merge into "A", which the index (still "A") would call
// unchanged, leaving Userpilot at "B" for good. A send whose outcome
// pgpilot did not see must make the next state be sent, not skipped.
func TestAnIdentifyAcceptedButNotRecordedIsNeverTrusted(t *testing.T) {
	t.Parallel()
	bin := failpointBinary(t)
	e := newEnv(t, userpilottest.Options{})
	e.dropSlotAtEnd()
	ctx := context.Background()
	require.NoError(t, workload.Seed(ctx, e.conn, 20))
	_, err := e.conn.Exec(ctx, `UPDATE companies SET plan = 'A' WHERE id = 7`)
	require.NoError(t, err)
	p := e.run()
	e.waitInitialSync()
	e.converge(60 * time.Second)
	code, _ := p.stop(t)
	require.Equal(t, 0, code)

	p = e.start(bin, []string{failpoint.EnvVar + "=" + failpoint.IdentifyAccepted + "@7"}, "run", "--config", e.cfgPath, "--log-level", "debug")
	e.waitWalsender(0, 30*time.Second)
	_, err = e.conn.Exec(ctx, `UPDATE companies SET plan = 'B' WHERE id = 7`)
	require.NoError(t, err)
	select {
	case <-p.done:
	case <-time.After(time.Minute):
		t.Fatal("the failpoint never fired")
	}
	ws := p.cmd.ProcessState.Sys().(syscall.WaitStatus)
	require.True(t, ws.Signaled() && ws.Signal() == syscall.SIGKILL, "pgpilot ended with %v:\n%s", p.cmd.ProcessState, tail(p.out.String(), 3000))
	got, _ := e.up.Company("7")
	require.Equal(t, "B", got["plan"], "Userpilot applied B before pgpilot died")

	_, err = e.conn.Exec(ctx, `UPDATE companies SET plan = 'A' WHERE id = 7`) // back, while pgpilot is down
	require.NoError(t, err)
	p = e.run()
	e.converge(60 * time.Second)
	code, _ = p.stop(t)
	assert.Equal(t, 0, code)
}
