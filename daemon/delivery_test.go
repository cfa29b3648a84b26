package daemon_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/internal/workload"
	"github.com/pgpilot/pgpilot/mapping"
	"github.com/pgpilot/pgpilot/userpilot/userpilottest"
)

// withRate rewrites the env's config with another real-time rate limit.
func (e *env) withRate(rate float64) {
	path := filepath.Join(e.t.TempDir(), "pgpilot.yaml")
	require.NoError(e.t, os.WriteFile(path, []byte(workload.Config(e.url, e.slot, e.up.URL(), apiKey, e.cfg.State.Dir, rate)), 0o600))
	cfg, err := mapping.Load(path)
	require.NoError(e.t, err)
	e.cfg = cfg
}

func TestManyUpdatesPerCompanyConvergeWithFarFewerRequests(t *testing.T) {
	t.Parallel()
	e := newEnv(t, userpilottest.Options{})
	e.withRate(300)
	ctx := context.Background()
	require.NoError(t, workload.Seed(ctx, e.conn, 1000))
	stop := e.start(ctx, 5*time.Second)
	e.converge(60 * time.Second)
	before := e.up.Accepted()

	const rounds = 20
	for i := range rounds {
		_, err := e.conn.Exec(ctx, `UPDATE companies SET seats = $1, updated_at = now()`, i)
		require.NoError(t, err)
	}
	e.converge(120 * time.Second)
	require.NoError(t, stop())
	sent := e.up.Accepted() - before
	t.Logf("%d updates (1,000 companies × %d) reached Userpilot as %d records", 1000*rounds, rounds, sent)
	assert.Less(t, sent, 1000*rounds/4, "pending changes to one company are merged before they are sent")
}

func TestUpdateTouchingOnlyUnmappedColumnsSendsNothing(t *testing.T) {
	t.Parallel()
	e := newEnv(t, userpilottest.Options{})
	ctx := context.Background()
	require.NoError(t, workload.Seed(ctx, e.conn, 50))
	stop := e.start(ctx, 5*time.Second)
	e.converge(60 * time.Second)
	before := e.up.IdentifyRequests()

	_, err := e.conn.Exec(ctx, `UPDATE companies SET updated_at = now() + interval '1 day'`)
	require.NoError(t, err)
	_, err = e.conn.Exec(ctx, `UPDATE companies SET plan = 'marker' WHERE id = 1`)
	require.NoError(t, err)
	e.converge(60 * time.Second)
	require.NoError(t, stop())
	assert.Equal(t, before+1, e.up.IdentifyRequests(), "50 updates of updated_at sent nothing; the mapped change sent one call")
}
