package e2e

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/internal/failpoint"
	"github.com/pgpilot/pgpilot/internal/workload"
	"github.com/pgpilot/pgpilot/userpilot/userpilottest"
)

// TestAFrozenDispatcherIsReportedAsAStall freezes a part of the running
// binary: the delivery dispatcher blocks for good in a checkpoint write
// (the fifth, when the initial sync, slowed by Userpilot's pace, still
// owes thousands of companies), as a bug would leave it. Nothing is lost, but nothing moves: within
// delivery.stall_after pgpilot must say so, as an ERROR naming what is
// owed, pgpilot_stalled 1 and /readyz 503. (That a quiet database, with
// nothing owed, is never taken for a stall is the liveness and delivery
// packages' tests: it needs no binary.)
func TestAFrozenDispatcherIsReportedAsAStall(t *testing.T) {
	t.Parallel()
	bin := failpointBinary(t)
	// A bulk path of 300 records/s: the sync takes seconds, and the freeze
	// comes in the middle of it.
	e := newEnv(t, userpilottest.Options{BulkRecordsPerSecond: 300})
	e.dropSlotAtEnd()
	addr := freeAddr(t)
	cfg := workload.Config(e.url, e.slot(), e.up.URL(), apiKey, e.stateDir, 2000)
	cfg = strings.Replace(cfg, "companies:\n", "http:\n  listen: "+addr+"\ndelivery:\n  stall_after: 10s\ncompanies:\n", 1)
	e.writeConfig(cfg)
	require.NoError(t, workload.Seed(context.Background(), e.conn, 3000))
	e.up.SetFault(&userpilottest.Fault{Delay: 20 * time.Millisecond, Apply: true, Status: 202})

	p := e.start(bin, []string{fmt.Sprintf("%s=freeze/%s:5", failpoint.EnvVar, failpoint.CheckpointBeforeWrite)},
		"run", "--config", e.cfgPath, "--log-level", "debug")
	require.Eventually(t, func() bool { return strings.Contains(p.out.String(), failpoint.FreezeMarker) },
		60*time.Second, 50*time.Millisecond, "the dispatcher froze")
	require.Eventually(t, func() bool { return strings.Contains(p.out.String(), "delivery stalled") },
		90*time.Second, 100*time.Millisecond, "the stall is never said")
	line := lineWith(p.out.String(), "delivery stalled")
	assert.Contains(t, line, `"level":"ERROR"`)
	assert.Contains(t, line, "the dispatcher has not reported")
	assert.Contains(t, line, "companies pending")
	base := "http://" + addr
	code, body := httpGet(base + "/readyz")
	assert.Equal(t, http.StatusServiceUnavailable, code)
	assert.Contains(t, body, "delivery stalled")
	_, metrics := httpGet(base + "/metrics")
	assert.Contains(t, metrics, "pgpilot_stalled 1")
	p.kill9()

	// Restarted without the freeze, everything arrives.
	e.up.SetFault(nil)
	q := e.run()
	e.converge(120 * time.Second)
	code, _ = q.stop(t)
	assert.Equal(t, 0, code)
}
