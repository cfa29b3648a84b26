package daemon_test

import (
	"context"
	"math/rand/v2"
	"net/url"
	"os"
	"path/filepath"
	"strings"
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

// standbyEnv is an env whose pgpilot reads from a standby while the table
// is written, and the oracle reads, on the primary.
func standbyEnv(t *testing.T, primary, standby *pgtest.Server, withPublication bool) *env {
	t.Helper()
	ctx := context.Background()
	primaryURL := primary.NewDatabaseT(t)
	conn, err := pgx.Connect(ctx, primaryURL)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close(context.Background()) })
	require.NoError(t, workload.Create(ctx, conn))
	slot := workload.SlotName(primaryURL)
	if withPublication {
		// A standby cannot create it: the operator runs this on the primary.
		_, err := conn.Exec(ctx, "CREATE PUBLICATION "+pgx.Identifier{slot}.Sanitize()+" FOR TABLE public.companies")
		require.NoError(t, err)
	}
	require.NoError(t, standby.WaitReplayed(ctx), "the standby has the table (and publication) before pgpilot starts")

	up := userpilottest.NewServer(userpilottest.Options{APIKey: apiKey})
	t.Cleanup(up.Close)
	e := &env{t: t, url: standby.URL(databaseOf(t, primaryURL)), slot: slot, conn: conn, up: up}
	e.cfg = e.config(filepath.Join(t.TempDir(), "state"))
	return e
}

func databaseOf(t *testing.T, dbURL string) string {
	u, err := url.Parse(dbURL)
	require.NoError(t, err)
	return strings.TrimPrefix(u.Path, "/")
}

// logStandbySnapshots makes the primary log a running-xacts record every
// 100ms until the test ends. Creating a logical slot on a standby waits for
// one; an idle primary logs one only every 15s, and only after other
// activity (the background writer's LOG_SNAPSHOT_INTERVAL_MS).
func logStandbySnapshots(t *testing.T, primary *pgtest.Server) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			_ = primary.Exec(ctx, "postgres", "SELECT pg_log_standby_snapshot()")
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
}

// TestPointedAtStandby runs pgpilot against a Postgres 17 physical standby,
// the read replica operators point it at. The subtests share one primary and
// standby and run in order (one crashes the standby).
func TestPointedAtStandby(t *testing.T) {
	t.Parallel()
	primary := pgtest.StartT(t, pgtest.Options{Major: 17})
	standby := primary.StartStandbyT(t)
	logStandbySnapshots(t, primary)

	t.Run("ChangesMadeOnPrimaryReachUserpilot", func(t *testing.T) {
		e := standbyEnv(t, primary, standby, true)
		ctx := context.Background()
		require.NoError(t, workload.Seed(ctx, e.conn, 200))
		stop := e.start(ctx, 5*time.Second)
		e.waitInitialSync()
		e.converge(60 * time.Second)

		rng := rand.New(rand.NewPCG(17, 1))
		for range 100 {
			_, err := workload.Step(ctx, e.conn, rng, 250)
			require.NoError(t, err)
		}
		e.converge(60 * time.Second)
		require.NoError(t, stop())
	})

	// The slot exports its snapshot on the standby (Postgres 16+ can), and
	// the snapshot and the stream must still meet exactly at its consistent
	// point while the primary is written.
	t.Run("SnapshotAndStreamMeetWithoutGapWhilePrimaryIsWritten", func(t *testing.T) {
		e := standbyEnv(t, primary, standby, true)
		ctx := context.Background()
		require.NoError(t, workload.Seed(ctx, e.conn, 1000))
		writer, err := pgx.Connect(ctx, primary.URL(databaseOf(t, e.url)))
		require.NoError(t, err)
		defer writer.Close(ctx)
		wctx, stopWriting := context.WithCancel(ctx)
		written := make(chan int)
		go func() {
			rng, n := rand.New(rand.NewPCG(17, 3)), 0
			for wctx.Err() == nil {
				if _, err := workload.Step(wctx, writer, rng, 1200); err == nil {
					n++
				}
			}
			written <- n
		}()
		stop := e.start(ctx, 5*time.Second)
		e.waitInitialSync() // writes land before, during and after the slot's creation
		time.Sleep(500 * time.Millisecond)
		stopWriting()
		t.Logf("%d transactions written on the primary while pgpilot started on the standby", <-written)
		e.converge(90 * time.Second)
		require.NoError(t, stop())
	})

	t.Run("StandbyCrashMidStreamReconnectsAndConverges", func(t *testing.T) {
		e := standbyEnv(t, primary, standby, true)
		ctx := context.Background()
		require.NoError(t, workload.Seed(ctx, e.conn, 50))
		stop := e.start(ctx, 5*time.Second)
		e.converge(60 * time.Second)

		rng := rand.New(rand.NewPCG(17, 2))
		for range 30 {
			_, err := workload.Step(ctx, e.conn, rng, 80)
			require.NoError(t, err)
		}
		require.NoError(t, standby.Crash(ctx))
		// Written while the standby is down: it replays them after restart.
		for range 30 {
			_, err := workload.Step(ctx, e.conn, rng, 80)
			require.NoError(t, err)
		}
		require.NoError(t, standby.Restart(ctx))
		for range 30 {
			_, err := workload.Step(ctx, e.conn, rng, 80)
			require.NoError(t, err)
		}
		e.converge(90 * time.Second)
		require.NoError(t, stop())
	})

	// Users beside companies, read from the standby while the primary is
	// written: users made, moved between companies, deleted and made bots;
	// tickets counted per user.
	t.Run("UsersAndCompaniesFromTheStandby", func(t *testing.T) {
		e := standbyEnv(t, primary, standby, false)
		ctx := context.Background()
		require.NoError(t, workload.CreateUsers(ctx, e.conn))
		_, err := e.conn.Exec(ctx, "CREATE PUBLICATION "+pgx.Identifier{e.slot}.Sanitize()+" FOR TABLE public.companies, public.users, public.tickets")
		require.NoError(t, err)
		require.NoError(t, workload.Seed(ctx, e.conn, 100))
		require.NoError(t, workload.SeedUsers(ctx, e.conn, 300, 100))
		require.NoError(t, standby.WaitReplayed(ctx))
		path := filepath.Join(t.TempDir(), "pgpilot.yaml")
		require.NoError(t, os.WriteFile(path, []byte(workload.Config(e.url, e.slot, e.up.URL(), apiKey, filepath.Join(t.TempDir(), "state"), 2000)+
			workload.UsersMapping), 0o600))
		e.cfg, err = config.Load(path)
		require.NoError(t, err)
		stop := e.start(ctx, 5*time.Second)
		rng := rand.New(rand.NewPCG(17, 4))
		for range 150 {
			if rng.IntN(3) == 0 {
				_, err = workload.Step(ctx, e.conn, rng, 100)
			} else {
				_, err = workload.UsersStep(ctx, e.conn, rng, 320, 100)
			}
			require.NoError(t, err)
		}
		e.converge(90 * time.Second)
		require.NoError(t, workload.WaitUsersConverged(ctx, e.conn, func() map[string]workload.UserProfile {
			out := map[string]workload.UserProfile{}
			for id, u := range e.up.Users() {
				out[id] = workload.UserProfile{Company: u.Company, Metadata: u.Metadata}
			}
			return out
		}, 90*time.Second))
		require.NoError(t, stop())
	})

	t.Run("MissingPublicationIsRefusedWithStatementForPrimary", func(t *testing.T) {
		e := standbyEnv(t, primary, standby, false)
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		err := daemon.Run(ctx, daemon.Options{Config: e.cfg, Logger: testLogger(t)})
		require.Error(t, err)
		require.NoError(t, ctx.Err(), "Run must refuse at once, not retry")
		assert.ErrorIs(t, err, daemon.ErrConfig)
		assert.Contains(t, err.Error(), "standby")
		assert.Contains(t, err.Error(), `CREATE PUBLICATION `+pgx.Identifier{e.slot}.Sanitize()+` FOR TABLE "public"."companies";`)
	})
}

func TestPostgres15StandbyIsRefusedNamingBothWaysOut(t *testing.T) {
	t.Parallel()
	primary := pgtest.StartT(t, pgtest.Options{Major: 15})
	standby := primary.StartStandbyT(t)
	e := standbyEnv(t, primary, standby, true)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	err := daemon.Run(ctx, daemon.Options{Config: e.cfg, Logger: testLogger(t)})
	require.Error(t, err)
	require.NoError(t, ctx.Err(), "Run must refuse at once, not retry")
	assert.ErrorIs(t, err, daemon.ErrConfig)
	assert.Contains(t, err.Error(), "standby running Postgres 15")
	assert.Contains(t, err.Error(), "point postgres.url at the primary")
	assert.Contains(t, err.Error(), "upgrade the standby to 16+")
}
