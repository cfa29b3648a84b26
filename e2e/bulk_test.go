package e2e

import (
	"context"
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
