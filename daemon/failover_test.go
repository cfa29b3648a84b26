package daemon_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/config"
	"github.com/pgpilot/pgpilot/daemon"
	"github.com/pgpilot/pgpilot/internal/pgtest"
	"github.com/pgpilot/pgpilot/internal/workload"
	"github.com/pgpilot/pgpilot/userpilot/userpilottest"
)

func TestFailoverSlotIsCreatedOnAPostgres17PrimaryAndRefusedOn15(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	up := userpilottest.NewServer(userpilottest.Options{APIKey: apiKey})
	defer up.Close()
	run := func(t *testing.T, srv *pgtest.Server) (*config.Config, *pgx.Conn, context.CancelFunc, chan error) {
		url := srv.NewDatabaseT(t)
		conn, err := pgx.Connect(ctx, url)
		require.NoError(t, err)
		t.Cleanup(func() { conn.Close(context.Background()) })
		require.NoError(t, workload.Create(ctx, conn))
		require.NoError(t, workload.Seed(ctx, conn, 3))
		path := filepath.Join(t.TempDir(), "pgpilot.yaml")
		cfg := workload.Config(url, "failover", up.URL(), apiKey, filepath.Join(t.TempDir(), "state"), 100)
		require.NoError(t, os.WriteFile(path, []byte(cfg), 0o600))
		c, err := config.Load(path)
		require.NoError(t, err)
		c.Postgres.FailoverSlot = true
		runCtx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- daemon.Run(runCtx, daemon.Options{Config: c, Logger: testLogger(t)}) }()
		return c, conn, cancel, done
	}

	t.Run("17 primary", func(t *testing.T) {
		srv := pgtest.StartT(t, pgtest.Options{Major: 17})
		_, conn, cancel, done := run(t, srv)
		require.NoError(t, workload.WaitConverged(ctx, conn, up.Companies, 60*time.Second))
		var failover bool
		require.NoError(t, conn.QueryRow(ctx, `SELECT failover FROM pg_replication_slots WHERE slot_name = 'failover'`).Scan(&failover))
		assert.True(t, failover, "the slot can be synchronised to standbys")
		cancel()
		require.NoError(t, <-done)
	})
	t.Run("15 refuses", func(t *testing.T) {
		_, _, cancel, done := run(t, pg)
		defer cancel()
		select {
		case err := <-done:
			require.ErrorIs(t, err, daemon.ErrConfig)
			assert.Contains(t, err.Error(), "postgres.failover_slot needs a Postgres 17+ primary")
		case <-time.After(60 * time.Second):
			t.Fatal("pgpilot ran with failover_slot on Postgres 15")
		}
	})
}
