package daemon_test

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/config"
	"github.com/pgpilot/pgpilot/daemon"
	"github.com/pgpilot/pgpilot/delivery"
	"github.com/pgpilot/pgpilot/internal/workload"
	"github.com/pgpilot/pgpilot/userpilot/userpilottest"
)

// withRate rewrites the env's config with another real-time rate limit.
func (e *env) withRate(rate float64) {
	path := filepath.Join(e.t.TempDir(), "pgpilot.yaml")
	require.NoError(e.t, os.WriteFile(path, []byte(workload.Config(e.url, e.slot, e.up.URL(), apiKey, e.cfg.State.Dir, rate)), 0o600))
	cfg, err := config.Load(path)
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

// TestBackPressureKeepsTheReplicationConnectionAlive holds the pipeline at
// its memory bound (one company) while Userpilot takes 6 s to answer: the
// stream waits to hand over a transaction for twice the server's
// wal_sender_timeout (3 s here) without reading, but keeps reporting, so
// the server never drops it.
func TestBackPressureKeepsTheReplicationConnectionAlive(t *testing.T) {
	t.Parallel()
	e := newEnv(t, userpilottest.Options{})
	ctx := context.Background()
	var logs syncBuffer
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- daemon.Run(runCtx, daemon.Options{Config: e.cfg, ShutdownGrace: 5 * time.Second,
			Logger:   slog.New(slog.NewTextHandler(&logs, nil)),
			Delivery: delivery.Options{MaxPending: 1}})
	}()
	e.waitInitialSync()
	e.up.FailNext(1, userpilottest.Fault{Delay: 6 * time.Second, Apply: true, Status: 202})
	// One transaction per company: the first is held, the rest queue up
	// behind the bound until the stream itself has to wait.
	for i := 1; i <= 100; i++ {
		_, err := e.conn.Exec(ctx, `INSERT INTO companies (id, name) VALUES ($1, 'c')`, i)
		require.NoError(t, err)
	}
	e.converge(120 * time.Second)
	cancel()
	require.NoError(t, <-done)
	assert.NotContains(t, logs.String(), "reconnecting", "the replication connection was never lost:\n%s", logs.String())
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
