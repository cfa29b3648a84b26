package daemon_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/config"
	"github.com/pgpilot/pgpilot/internal/workload"
	"github.com/pgpilot/pgpilot/state"
	"github.com/pgpilot/pgpilot/userpilot/userpilottest"
)

// withBulkRate rewrites the env's config with rate_limit and a bulk_rate
// (the bulk estimate's starting point).
func (e *env) withBulkRate(rate, bulk float64) {
	text := workload.Config(e.url, e.slot, e.up.URL(), apiKey, e.cfg.State.Dir, rate)
	text = insertLine(text, "  rate_limit:", fmt.Sprintf("  bulk_rate: %g", bulk))
	path := filepath.Join(e.t.TempDir(), "pgpilot.yaml")
	require.NoError(e.t, os.WriteFile(path, []byte(text), 0o600))
	cfg, err := config.Load(path)
	require.NoError(e.t, err)
	e.cfg = cfg
}

func insertLine(text, after, line string) string {
	var out []byte
	for len(text) > 0 {
		i := 0
		for i < len(text) && text[i] != '\n' {
			i++
		}
		cur := text[:min(i+1, len(text))]
		text = text[len(cur):]
		out = append(out, cur...)
		if len(cur) >= len(after) && cur[:len(after)] == after {
			out = append(out, line+"\n"...)
		}
	}
	return string(out)
}

// waitStatus waits until the running daemon's status report satisfies ok.
func (e *env) waitStatus(what string, ok func(state.Status) bool) state.Status {
	e.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		st, found, err := state.ReadStatus(e.cfg.State.Dir)
		require.NoError(e.t, err)
		if found && ok(st) {
			return st
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("status never showed %s; last: %+v", what, st)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestBulkEstimateConvergesToUserpilotsSpeedAndSurvivesARestart: the
// config's bulk_rate is wrong (far too slow, or far too fast); backlogs go
// out in jobs, and the estimate pgpilot sizes them from comes within a
// factor of the stand-in's real speed. Stopped and started again, it
// starts from what it measured, not from bulk_rate.
func TestBulkEstimateConvergesToUserpilotsSpeedAndSurvivesARestart(t *testing.T) {
	cases := []struct {
		name       string
		configured float64 // bulk_rate in the file
		speed      float64 // the stand-in's
		overhead   time.Duration
	}{
		{"configured far too slow", 20, 1000, 0},
		{"configured far too fast", 1_000_000, 400, 100 * time.Millisecond},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			const companies, rate = 800, 20
			e := newEnv(t, userpilottest.Options{RateLimit: rate, BulkRecordsPerSecond: c.speed, JobOverhead: c.overhead})
			e.withBulkRate(rate, c.configured)
			ctx := context.Background()
			require.NoError(t, workload.Seed(ctx, e.conn, companies))
			stop := e.start(ctx, 5*time.Second)
			e.converge(120 * time.Second)

			// Each round's backlog (every company changed) is many seconds
			// of real-time calls: it goes out in jobs, each measured.
			const wantJobs = 4
			for round := 0; ; round++ {
				st, _, err := state.ReadStatus(e.cfg.State.Dir)
				require.NoError(t, err)
				if st.BulkJobsLearned >= wantJobs {
					break
				}
				require.Less(t, round, 12, "jobs measured after %d rounds: %d", round, st.BulkJobsLearned)
				_, err = e.conn.Exec(ctx, `UPDATE companies SET seats = seats + 1, updated_at = now()`)
				require.NoError(t, err)
				e.converge(120 * time.Second)
				e.waitStatus("the round's jobs", func(s state.Status) bool { return s.Pending == 0 })
			}
			st := e.waitStatus("the estimate", func(s state.Status) bool { return s.BulkJobsLearned >= wantJobs })
			require.NoError(t, stop())
			t.Logf("configured %g records/s, stand-in %g: estimated %.4g records/s, overhead %.3fs, from %d jobs",
				c.configured, c.speed, st.BulkRate, st.BulkOverheadSeconds, st.BulkJobsLearned)
			assert.InEpsilon(t, c.speed, st.BulkRate, 0.5, "within a factor of 1.5 of the stand-in's speed")

			// Kept in the state directory, and where a new run starts.
			dir, err := state.Open(e.cfg.State.Dir)
			require.NoError(t, err)
			store, err := dir.OpenStore()
			require.NoError(t, err)
			kept, ok, err := store.BulkEstimate()
			require.NoError(t, err)
			require.NoError(t, store.Close())
			require.NoError(t, dir.Close())
			require.True(t, ok, "the estimate is in the store")
			assert.InEpsilon(t, st.BulkRate, kept.RecordsPerSecond, 0.5)
			assert.GreaterOrEqual(t, kept.Jobs, wantJobs)

			stopped := time.Now().UTC()
			stop = e.start(ctx, 5*time.Second)
			again := e.waitStatus("a report of the new run", func(s state.Status) bool { return s.UpdatedAt.After(stopped) })
			require.NoError(t, stop())
			assert.Equal(t, kept.Jobs, again.BulkJobsLearned, "the new run starts from what was measured")
			assert.InDelta(t, kept.RecordsPerSecond, again.BulkRate, 1e-6*kept.RecordsPerSecond)
		})
	}
}
