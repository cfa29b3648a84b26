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

// TestSecondInstanceStandsByAndTakesOverWhenTheFirstDies runs two pgpilots
// on one state directory (and so one slot): the second stands by, only the
// first delivers, and when the first is killed the second takes over within
// seconds and nothing is lost.
func TestSecondInstanceStandsByAndTakesOverWhenTheFirstDies(t *testing.T) {
	t.Parallel()
	e := newEnv(t, userpilottest.Options{})
	ctx := context.Background()
	require.NoError(t, workload.Seed(ctx, e.conn, 20))
	first := e.run()
	e.converge(60 * time.Second)
	second := e.run()
	require.Eventually(t, func() bool { return strings.Contains(second.out.String(), "standing by") }, 30*time.Second, 20*time.Millisecond)

	_, err := e.conn.Exec(ctx, `UPDATE companies SET plan = 'while-first-runs'`)
	require.NoError(t, err)
	e.converge(60 * time.Second)
	assert.NotContains(t, second.out.String(), `"flushed"`, "the standby delivers nothing: no split brain")

	first.kill9()
	died := time.Now()
	_, err = e.conn.Exec(ctx, `UPDATE companies SET plan = 'after-takeover'`)
	require.NoError(t, err)
	e.converge(60 * time.Second)
	t.Logf("the standby took over and delivered %s after the first was killed", time.Since(died).Round(time.Millisecond))
	assert.Contains(t, second.out.String(), "state directory locked; starting")
	code, _ := second.stop(t)
	assert.Equal(t, 0, code)
}
