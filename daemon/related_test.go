package daemon_test

import (
	"context"
	"math/rand/v2"
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
	"github.com/pgpilot/pgpilot/state"
	"github.com/pgpilot/pgpilot/userpilot/userpilottest"
)

// newRelatedEnv is newEnv with subscriptions and users as related tables
// and companies.where (workload.RelatedMapping).
func newRelatedEnv(t *testing.T) *env {
	t.Helper()
	e := newEnv(t, userpilottest.Options{})
	require.NoError(t, workload.CreateRelated(context.Background(), e.conn))
	e.relatedConfig()
	return e
}

// relatedConfig replaces e's config with one that maps the related tables.
func (e *env) relatedConfig() {
	path := filepath.Join(e.t.TempDir(), "pgpilot.yaml")
	require.NoError(e.t, os.WriteFile(path, []byte(workload.Config(e.url, e.slot, e.up.URL(), apiKey, filepath.Join(e.t.TempDir(), "state"), 2000)+workload.RelatedMapping), 0o600))
	cfg, err := config.Load(path)
	require.NoError(e.t, err)
	e.cfg = cfg
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

// TestRelatedTablesOnAPostgres17Standby: pointed at a standby, pgpilot
// refuses a publication without the related tables with the statement to
// run on the primary, then reads the related values on the standby while
// the primary is written.
func TestRelatedTablesOnAPostgres17Standby(t *testing.T) {
	t.Parallel()
	primary := pgtest.StartT(t, pgtest.Options{Major: 17})
	standby := primary.StartStandbyT(t)
	logStandbySnapshots(t, primary)
	e := standbyEnv(t, primary, standby, true) // a publication of companies alone
	ctx := context.Background()
	require.NoError(t, workload.CreateRelated(ctx, e.conn))
	require.NoError(t, workload.SeedRelated(ctx, e.conn, 800))
	require.NoError(t, standby.WaitReplayed(ctx))
	e.relatedConfig()

	rctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	err := daemon.Run(rctx, daemon.Options{Config: e.cfg, Logger: testLogger(t)})
	cancel()
	require.Error(t, err)
	assert.ErrorIs(t, err, daemon.ErrConfig)
	assert.Contains(t, err.Error(), `ALTER PUBLICATION `+pgx.Identifier{e.slot}.Sanitize()+` ADD TABLE "public"."subscriptions", "public"."users";`)
	_, err = e.conn.Exec(ctx, `ALTER PUBLICATION `+pgx.Identifier{e.slot}.Sanitize()+` ADD TABLE public.subscriptions, public.users`)
	require.NoError(t, err)
	require.NoError(t, standby.WaitReplayed(ctx))

	writer, err := pgx.Connect(ctx, primary.URL(databaseOf(t, e.url)))
	require.NoError(t, err)
	defer writer.Close(ctx)
	wctx, stopWriting := context.WithCancel(ctx)
	written := make(chan int)
	go func() {
		rng, n := rand.New(rand.NewPCG(17, 5)), 0
		for wctx.Err() == nil {
			if ok, err := workload.RelatedStep(wctx, writer, rng, 300); err == nil && ok {
				n++
			}
		}
		written <- n
	}()
	stop := e.start(ctx, 5*time.Second)
	e.waitInitialSync()
	time.Sleep(time.Second)
	stopWriting()
	t.Logf("%d transactions committed on the primary while pgpilot started on the standby", <-written)
	e.convergeRelated(90 * time.Second)
	require.NoError(t, stop())
}

// TestRelatedSchemaProblemsStopWithTheFix: a related table whose DELETEs
// would not say which company they belonged to is refused at start with
// the ALTER TABLE; a related column dropped while pgpilot streams stops it
// with the column named (exit 2), rather than retrying or going stale.
func TestRelatedSchemaProblemsStopWithTheFix(t *testing.T) {
	t.Parallel()
	e := newRelatedEnv(t)
	ctx := context.Background()
	require.NoError(t, workload.SeedRelated(ctx, e.conn, 50))

	_, err := e.conn.Exec(ctx, `ALTER TABLE users REPLICA IDENTITY DEFAULT`)
	require.NoError(t, err)
	rctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	err = daemon.Run(rctx, daemon.Options{Config: e.cfg, Logger: testLogger(t)})
	cancel()
	require.Error(t, err)
	assert.ErrorIs(t, err, daemon.ErrConfig)
	assert.Contains(t, err.Error(), `ALTER TABLE "public"."users" REPLICA IDENTITY FULL;`)
	_, err = e.conn.Exec(ctx, `ALTER TABLE users REPLICA IDENTITY FULL`)
	require.NoError(t, err)

	rctx, cancel = context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- daemon.Run(rctx, daemon.Options{Config: e.cfg, Logger: testLogger(t), SnapshotChunkRows: 20, ReconnectMax: time.Second})
	}()
	e.convergeRelated(60 * time.Second)
	_, err = e.conn.Exec(ctx, `ALTER TABLE users DROP COLUMN last_login_at`)
	require.NoError(t, err)
	_, err = e.conn.Exec(ctx, `INSERT INTO users (id, company_id) VALUES (99999, 3)`)
	require.NoError(t, err)
	select {
	case err = <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("pgpilot did not stop on the dropped column")
	}
	require.NoError(t, rctx.Err(), "a clear stop, not a retry until the deadline")
	assert.ErrorIs(t, err, daemon.ErrConfig)
	assert.Contains(t, err.Error(), "last_login_at")
}

// TestAnUnchangedAggregateIsNotSentAgain: a related change that leaves a
// company's related values as they were (an update of a column no key
// reads) is re-read, and the no-op index skips it like any other key.
func TestAnUnchangedAggregateIsNotSentAgain(t *testing.T) {
	t.Parallel()
	e := newRelatedEnv(t)
	ctx := context.Background()
	require.NoError(t, workload.SeedRelated(ctx, e.conn, 20))
	stop := e.start(ctx, 5*time.Second)
	e.waitInitialSync()
	e.convergeRelated(60 * time.Second)
	before := e.up.IdentifyRequests()

	_, err := e.conn.Exec(ctx, `UPDATE users SET active = active WHERE company_id = 5`)
	require.NoError(t, err)
	_, err = e.conn.Exec(ctx, `INSERT INTO users (id, company_id) VALUES (7001, 6)`)
	require.NoError(t, err)
	e.convergeRelated(30 * time.Second)
	time.Sleep(200 * time.Millisecond) // a call for company 5 would have been made before company 6's
	// Transactions arrive in commit order: company 5's re-read came first.
	assert.Equal(t, before+1, e.up.IdentifyRequests(), "only company 6's new user count is sent")
	require.NoError(t, stop())
}

// TestResyncSendsRelatedKeysAndStatusCountsTheReReads: after Userpilot
// loses every profile, a full re-sync brings back the related keys with
// the rows; the status file counts the re-reads.
func TestResyncSendsRelatedKeysAndStatusCountsTheReReads(t *testing.T) {
	t.Parallel()
	e := newRelatedEnv(t)
	ctx := context.Background()
	require.NoError(t, workload.SeedRelated(ctx, e.conn, 120))
	stop := e.start(ctx, 5*time.Second)
	e.waitInitialSync()
	e.convergeRelated(60 * time.Second)

	e.up.Wipe()
	_, err := state.RequestResync(e.cfg.State.Dir, state.Snapshot{})
	require.NoError(t, err)
	e.convergeRelated(60 * time.Second)
	require.Eventually(t, func() bool {
		st, ok, err := state.ReadStatus(e.cfg.State.Dir)
		return err == nil && ok && st.Related != nil && st.Related.Queries >= 2 && st.Related.Companies >= 2*108
	}, 10*time.Second, 100*time.Millisecond, "status counts the re-reads of the initial sync and the re-sync (108 companies match where)")
	require.NoError(t, stop())
}
