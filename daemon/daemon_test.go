package daemon_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
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
	"github.com/pgpilot/pgpilot/replication"
	"github.com/pgpilot/pgpilot/state"
	"github.com/pgpilot/pgpilot/userpilot"
	"github.com/pgpilot/pgpilot/userpilot/userpilottest"
)

var pg *pgtest.Server

func TestMain(m *testing.M) {
	var err error
	// A short wal_sender_timeout makes keepalives frequent, so the idle-slot
	// test runs in seconds, and proves status updates keep pace with it.
	pg, err = pgtest.Start(context.Background(), pgtest.Options{Settings: map[string]string{"wal_sender_timeout": "3s",
		"max_replication_slots": "64", "max_wal_senders": "64", "max_connections": "300"}})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	pg.Stop()
	os.Exit(code)
}

const apiKey = "test-key-0123456789"

// env is one test's database, stand-in and config.
type env struct {
	t       *testing.T
	url     string
	slot    string
	conn    *pgx.Conn
	up      *userpilottest.Server
	cfg     *config.Config
	stateOK string
	// chunkRows is the snapshot's chunk size: small, so that even a small
	// table is read in several chunks interleaved with the stream.
	chunkRows int
}

func newEnv(t *testing.T, up userpilottest.Options) *env {
	t.Helper()
	ctx := context.Background()
	url := pg.NewDatabaseT(t)
	conn, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close(context.Background()) })
	require.NoError(t, workload.Create(ctx, conn))
	up.APIKey = apiKey
	srv := userpilottest.NewServer(up)
	t.Cleanup(srv.Close)
	e := &env{t: t, url: url, conn: conn, up: srv, chunkRows: 50}
	e.slot = workload.SlotName(url)
	e.cfg = e.config(filepath.Join(t.TempDir(), "state"))
	return e
}

func (e *env) config(stateDir string) *config.Config {
	path := filepath.Join(e.t.TempDir(), "pgpilot.yaml")
	require.NoError(e.t, os.WriteFile(path, []byte(workload.Config(e.url, e.slot, e.up.URL(), apiKey, stateDir, 2000)), 0o600))
	cfg, err := config.Load(path)
	require.NoError(e.t, err)
	return cfg
}

// start runs the daemon until the returned stop is called; stop returns
// Run's error.
func (e *env) start(ctx context.Context, grace time.Duration) (stop func() error) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- daemon.Run(ctx, daemon.Options{
			Config: e.cfg, Logger: testLogger(e.t), ShutdownGrace: grace, ReconnectMax: time.Second, SnapshotChunkRows: e.chunkRows,
			Userpilot: userpilot.Options{MinBackoff: 10 * time.Millisecond, MaxBackoff: 200 * time.Millisecond},
		})
	}()
	return func() error {
		cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(30 * time.Second):
			e.t.Fatal("daemon did not stop within 30s of cancellation")
			return nil
		}
	}
}

func testLogger(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// converge waits until the stand-in holds exactly what the table says.
func (e *env) converge(timeout time.Duration) {
	e.t.Helper()
	if err := workload.WaitConverged(context.Background(), e.conn, e.up.Companies, timeout); err != nil {
		e.t.Fatal(err)
	}
}

// waitInitialSync waits until the snapshot is delivered and checkpointed:
// from then on, writes are streamed.
func (e *env) waitInitialSync() {
	e.t.Helper()
	require.NoError(e.t, workload.WaitInitialSync(context.Background(), e.cfg.State.Dir, 60*time.Second))
}

func TestInitialSnapshotThenStreamConverges(t *testing.T) {
	t.Parallel()
	e := newEnv(t, userpilottest.Options{})
	ctx := context.Background()
	require.NoError(t, workload.Seed(ctx, e.conn, 300))
	stop := e.start(ctx, 5*time.Second)
	e.converge(60 * time.Second)

	rng := rand.New(rand.NewPCG(1, 2))
	for range 200 {
		_, err := workload.Step(ctx, e.conn, rng, 400)
		require.NoError(t, err)
	}
	e.converge(60 * time.Second)
	require.NoError(t, stop(), "a stop signal ends Run cleanly")

	cp, ok, err := state.ReadCheckpoint(e.cfg.State.Dir)
	require.NoError(t, err)
	require.True(t, ok)
	assert.Equal(t, state.InitialSyncDone, cp.InitialSync)
	assert.NotZero(t, cp.LSN)
}

func TestSnapshotAndStreamMeetWithoutGapWhileTableIsWritten(t *testing.T) {
	t.Parallel()
	e := newEnv(t, userpilottest.Options{})
	ctx := context.Background()
	require.NoError(t, workload.Seed(ctx, e.conn, 2000))

	writer, err := pgx.Connect(ctx, e.url)
	require.NoError(t, err)
	defer writer.Close(ctx)
	wctx, stopWriting := context.WithCancel(ctx)
	written := make(chan int)
	go func() {
		rng, n := rand.New(rand.NewPCG(3, 4)), 0
		for wctx.Err() == nil {
			if _, err := workload.Step(wctx, writer, rng, 2500); err == nil {
				n++
			}
		}
		written <- n
	}()
	stop := e.start(ctx, 5*time.Second)
	time.Sleep(3 * time.Second) // writes land before, during and after the snapshot
	stopWriting()
	t.Logf("%d transactions written while starting", <-written)
	e.converge(90 * time.Second)
	require.NoError(t, stop())
}

func TestRejectedRecordIsSetAsideAndStreamGoesOn(t *testing.T) {
	t.Parallel()
	e := newEnv(t, userpilottest.Options{})
	ctx := context.Background()
	e.up.RejectCompany("7", 400)
	require.NoError(t, workload.Seed(ctx, e.conn, 20))
	stop := e.start(ctx, 5*time.Second)
	e.waitInitialSync()

	_, err := e.conn.Exec(ctx, `UPDATE companies SET plan = 'custom-plan' WHERE id IN (7, 8)`)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		c, ok := e.up.Company("8")
		return ok && c["plan"] == "custom-plan"
	}, 30*time.Second, 50*time.Millisecond, "company 8, in the same transaction as the rejected 7, is delivered")
	require.NoError(t, stop())

	_, ok := e.up.Company("7")
	assert.False(t, ok)
	raw, err := os.ReadFile(filepath.Join(e.cfg.State.Dir, state.DeadLetterFile))
	require.NoError(t, err)
	lines := strings.Split(strings.TrimSpace(string(raw)), "\n")
	require.Len(t, lines, 2, "company 7 is set aside once from the snapshot and once from the update")
	for _, l := range lines {
		assert.Contains(t, l, `"company_id":"7"`)
		assert.Contains(t, l, `"status":400`)
	}
}

func TestTransientFaultsAreRetriedNeverDropped(t *testing.T) {
	t.Parallel()
	e := newEnv(t, userpilottest.Options{})
	ctx := context.Background()
	require.NoError(t, workload.Seed(ctx, e.conn, 50))
	e.up.FailNext(10, userpilottest.Fault{Status: 503})
	e.up.FailNext(5, userpilottest.Fault{Status: 429, RetryAfter: "1"})
	e.up.FailNext(5, userpilottest.Fault{Status: 500, Apply: true})
	e.up.FailNext(3, userpilottest.Fault{Reset: true})
	stop := e.start(ctx, 5*time.Second)
	e.converge(60 * time.Second)
	require.NoError(t, stop())
}

func TestDroppedMappedColumnStopsWithClearError(t *testing.T) {
	t.Parallel()
	e := newEnv(t, userpilottest.Options{})
	ctx := context.Background()
	require.NoError(t, workload.Seed(ctx, e.conn, 5))
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- daemon.Run(ctx, daemon.Options{Config: e.cfg, Logger: testLogger(t)})
	}()
	e.converge(30 * time.Second)
	_, err := e.conn.Exec(ctx, `ALTER TABLE companies DROP COLUMN plan; UPDATE companies SET seats = 1 WHERE id = 1`)
	require.NoError(t, err)
	select {
	case err := <-done:
		require.Error(t, err)
		assert.ErrorIs(t, err, daemon.ErrConfig)
		assert.Contains(t, err.Error(), `"plan"`, "the error names the column")
		assert.Contains(t, err.Error(), "nothing is lost")
	case <-ctx.Done():
		t.Fatal("daemon kept running after a mapped column was dropped")
	}
}

func TestIdleMappedTableLetsSlotAdvance(t *testing.T) {
	t.Parallel()
	e := newEnv(t, userpilottest.Options{})
	ctx := context.Background()
	require.NoError(t, workload.Seed(ctx, e.conn, 5))
	stop := e.start(ctx, 5*time.Second)
	defer stop()
	e.converge(30 * time.Second)

	// ≈ 200 MB of WAL in a table pgpilot does not publish.
	var before string
	require.NoError(t, e.conn.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&before))
	_, err := e.conn.Exec(ctx, `CREATE TABLE other (id serial, pad text)`)
	require.NoError(t, err)
	for range 10 {
		_, err = e.conn.Exec(ctx, `INSERT INTO other (pad) SELECT repeat('x', 500) FROM generate_series(1, 40000)`)
		require.NoError(t, err)
	}
	var written int64
	require.NoError(t, e.conn.QueryRow(ctx, `SELECT (pg_current_wal_lsn() - $1::pg_lsn)::bigint`, before).Scan(&written))
	var after string
	require.NoError(t, e.conn.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&after))
	require.Eventually(t, func() bool {
		var passed bool
		err := e.conn.QueryRow(ctx, `SELECT confirmed_flush_lsn >= $2::pg_lsn FROM pg_replication_slots WHERE slot_name = $1`, e.slot, after).Scan(&passed)
		return err == nil && passed
	}, 30*time.Second, 200*time.Millisecond, "the slot's confirmed position passes writes to an unpublished table")
	var retained int64
	require.Eventually(t, func() bool {
		_, err := e.conn.Exec(ctx, `CHECKPOINT`) // a restart point for the slot, as the bgwriter logs every 15 s
		require.NoError(t, err)
		retained, err = replication.RetainedWAL(ctx, e.conn, e.slot)
		return err == nil && retained < 16<<20
	}, 30*time.Second, 200*time.Millisecond, "the slot retains little of the WAL written to other tables")
	t.Logf("%d MB of WAL written to another table; the slot retains %d kB", written>>20, retained>>10)

	cp, _, err := state.ReadCheckpoint(e.cfg.State.Dir)
	require.NoError(t, err)
	var slotPos string
	require.NoError(t, e.conn.QueryRow(ctx, `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1`, e.slot).Scan(&slotPos))
	confirmed, err := state.ParseLSN(slotPos)
	require.NoError(t, err)
	assert.LessOrEqual(t, confirmed, cp.LSN, "the slot is never confirmed past the local checkpoint")
}

func TestInterruptedInitialSyncResumesWhereItStopped(t *testing.T) {
	t.Parallel()
	e := newEnv(t, userpilottest.Options{})
	// Real time only: a bulk job submitted as the first run stops, its
	// answer unseen, is rightly sent again by the second (its outcome is
	// unknown), which is not what this test counts.
	e.withBulkRate(2000, 0)
	ctx := context.Background()
	const rows = 1500
	require.NoError(t, workload.Seed(ctx, e.conn, rows))
	// Slow answers, and almost no grace: the first run stops mid-snapshot.
	e.up.SetFault(&userpilottest.Fault{Delay: 20 * time.Millisecond})
	stop := e.start(ctx, time.Millisecond)
	require.Eventually(t, func() bool {
		cp, ok, err := state.ReadCheckpoint(e.cfg.State.Dir)
		return err == nil && ok && cp.Snapshot != nil && cp.Snapshot.Rows >= 300
	}, 60*time.Second, 20*time.Millisecond, "some chunks are delivered and checkpointed")
	require.NoError(t, stop())
	cp, ok, err := state.ReadCheckpoint(e.cfg.State.Dir)
	require.NoError(t, err)
	require.True(t, ok)
	require.NotNil(t, cp.Snapshot, "the first run must stop before the snapshot was delivered")
	require.Less(t, cp.Snapshot.Rows, int64(rows), "the first run must stop before the snapshot was delivered")
	done := cp.Snapshot.Rows
	t.Logf("stopped with %d of %d rows delivered and checkpointed", done, rows)

	e.up.SetFault(nil)
	_, err = e.conn.Exec(ctx, `UPDATE companies SET plan = 'changed-between-runs' WHERE id <= 10`)
	require.NoError(t, err)
	before := e.up.Accepted()
	stop = e.start(ctx, 5*time.Second)
	e.waitInitialSync()
	e.converge(60 * time.Second)
	require.NoError(t, stop())
	sent := e.up.Accepted() - before
	// Resumed, not started over: the rows not yet checkpointed, at most
	// the chunks that were in flight (two waiting, one being read) again,
	// and the ten updated rows.
	t.Logf("second run sent %d records", sent)
	assert.LessOrEqual(t, sent, int(rows-done)+3*e.chunkRows+10)
}
