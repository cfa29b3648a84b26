package daemon_test

import (
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/internal/workload"
	"github.com/pgpilot/pgpilot/mapping"
	"github.com/pgpilot/pgpilot/userpilot/userpilottest"
)

// newRelatedEnv is newEnv with subscriptions and users as related tables
// and companies.where (workload.RelatedMapping).
func newRelatedEnv(t *testing.T) *env {
	t.Helper()
	e := newEnv(t, userpilottest.Options{})
	require.NoError(t, workload.CreateRelated(context.Background(), e.conn))
	path := filepath.Join(t.TempDir(), "pgpilot.yaml")
	require.NoError(t, os.WriteFile(path, []byte(workload.Config(e.url, e.slot, e.up.URL(), apiKey, e.cfg.State.Dir, 2000)+workload.RelatedMapping), 0o600))
	cfg, err := mapping.Load(path)
	require.NoError(t, err)
	e.cfg = cfg
	return e
}

func (e *env) convergeRelated(timeout time.Duration) {
	e.t.Helper()
	if err := workload.WaitRelatedConverged(context.Background(), e.conn, e.up.Companies, timeout); err != nil {
		e.t.Fatal(err)
	}
}

// TestRelatedValuesFollowEveryChangeWhileTheSnapshotRuns writes a random
// workload over companies, subscriptions and users before, during and
// after the initial snapshot: Userpilot ends equal to the join and the
// aggregates computed in SQL.
func TestRelatedValuesFollowEveryChangeWhileTheSnapshotRuns(t *testing.T) {
	t.Parallel()
	e := newRelatedEnv(t)
	ctx := context.Background()
	require.NoError(t, workload.SeedRelated(ctx, e.conn, 1500))

	writer, err := pgx.Connect(ctx, e.url)
	require.NoError(t, err)
	defer writer.Close(ctx)
	wctx, stopWriting := context.WithCancel(ctx)
	written := make(chan int)
	go func() {
		rng, n := rand.New(rand.NewPCG(5, 6)), 0
		for wctx.Err() == nil {
			if ok, err := workload.RelatedStep(wctx, writer, rng, 400); err == nil && ok {
				n++
			}
		}
		written <- n
	}()
	stop := e.start(ctx, 5*time.Second)
	time.Sleep(3 * time.Second)
	stopWriting()
	t.Logf("%d transactions committed while starting", <-written)
	e.convergeRelated(90 * time.Second)

	// A burst for one company is read together.
	_, err = e.conn.Exec(ctx, `INSERT INTO users (id, company_id) SELECT 1000000 + g, 1 FROM generate_series(1, 10000) g`)
	require.NoError(t, err)
	e.convergeRelated(30 * time.Second)
	require.NoError(t, stop())
}
