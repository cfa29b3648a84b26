package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/internal/workload"
	"github.com/pgpilot/pgpilot/userpilot/userpilottest"
)

// TestKillNineDuringBulkJobLosesNothing kills pgpilot after Userpilot
// accepted a bulk job and before the job completed. Accepted is not
// applied: the restarted pgpilot sends the records again (after waiting out
// the still-running job's 409s), and Userpilot ends equal to the table.
func TestKillNineDuringBulkJobLosesNothing(t *testing.T) {
	t.Parallel()
	e := newEnv(t, userpilottest.Options{BulkRecordsPerSecond: 300})
	// A small real-time budget and a fast bulk rate: a backlog of 1,000
	// companies goes mostly into one job.
	cfg := workload.Config(e.url, workload.SlotName(e.url), e.up.URL(), apiKey, e.stateDir, 50)
	e.writeConfig(strings.Replace(cfg, "  rate_limit: 50\n", "  rate_limit: 50\n  bulk_rate: 500\n", 1))
	ctx := context.Background()
	p := e.run()
	e.waitInitialSync()

	require.NoError(t, workload.Seed(ctx, e.conn, 1000))
	require.Eventually(t, func() bool {
		for _, r := range e.up.Requests() {
			if r.Path == "/v1/companies/bulk_identify" && r.Status == 202 {
				return true
			}
		}
		return false
	}, 60*time.Second, 5*time.Millisecond, "a bulk job is submitted")
	p.kill9()
	applied := e.up.Accepted()
	t.Logf("killed with %d of 1,000 records applied", applied)
	assert.Less(t, applied, 1000, "the kill came before the job completed")

	p = e.run()
	e.converge(120 * time.Second)
	code, _ := p.stop(t)
	assert.Equal(t, 0, code)
	conflicts := 0
	for _, r := range e.up.Requests() {
		if r.Path == "/v1/companies/bulk_identify" && r.Status == 409 {
			conflicts++
		}
	}
	t.Logf("after restart: %d submissions answered 409 while the first job ran; %d records applied in all", conflicts, e.up.Accepted())
}

// TestKillNineDuringALongBulkJobNeverLetsItsOlderStatesWin: a burst of small
// transactions changes every company and goes out mostly in a bulk job that
// takes 10 s at Userpilot; while it runs, newer values of some of its
// companies are written, and pgpilot is killed. The restarted pgpilot sizes
// its work differently (the newer values are a small backlog, for the
// real-time path): if it sent them at once, the old job would complete
// after and write the older values over them, and the no-op index, having
// recorded the newer ones, would never resend them. Twice; once the old job
// has surely ended, Userpilot still equals the table.
func TestKillNineDuringALongBulkJobNeverLetsItsOlderStatesWin(t *testing.T) {
	t.Parallel()
	const companies = 1000
	e := newEnv(t, userpilottest.Options{BulkRecordsPerSecond: 100}) // a job of 1,000 takes 10 s
	cfg := workload.Config(e.url, workload.SlotName(e.url), e.up.URL(), apiKey, e.stateDir, 50)
	e.writeConfig(strings.Replace(cfg, "  rate_limit: 50\n", "  rate_limit: 50\n  bulk_rate: 500\n", 1))
	ctx := context.Background()
	require.NoError(t, workload.Seed(ctx, e.conn, companies))
	p := e.run()
	e.converge(120 * time.Second)
	bulkAccepted := func() int {
		n := 0
		for _, r := range e.up.Requests() {
			if r.Path == "/v1/companies/bulk_identify" && r.Status == 202 {
				n++
			}
		}
		return n
	}
	for round := range 2 {
		before := bulkAccepted()
		for i := 0; i < companies; i += 10 {
			_, err := e.conn.Exec(ctx, `UPDATE companies SET plan = $1 WHERE id > $2 AND id <= $2 + 10`, fmt.Sprintf("r%d-burst", round), i)
			require.NoError(t, err)
		}
		require.Eventually(t, func() bool { return bulkAccepted() > before }, 60*time.Second, 5*time.Millisecond, "the burst goes in a job")
		submitted := time.Now()
		for i := 0; i < companies; i += 70 { // newer values of some companies in the running job
			_, err := e.conn.Exec(ctx, `UPDATE companies SET plan = $1 WHERE id > $2 AND id <= $2 + 7`, fmt.Sprintf("r%d-newer", round), i)
			require.NoError(t, err)
		}
		time.Sleep(300 * time.Millisecond) // read, and some on their way
		p.kill9()
		p = e.run()
		e.converge(120 * time.Second)
		// The old job ran 10 s at Userpilot; once it has surely ended, no
		// older state of it may have landed over a newer one.
		time.Sleep(time.Until(submitted.Add(12 * time.Second)))
		e.converge(10 * time.Second)
		t.Logf("round %d: converged, and still equal after the old job ended", round+1)
	}
	code, _ := p.stop(t)
	assert.Equal(t, 0, code)
}
