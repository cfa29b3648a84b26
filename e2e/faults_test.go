package e2e

// The fault matrix: Postgres crashing, restarting, dropping pgpilot's
// connection or its slot, the network between them partitioned, Userpilot
// failing in every documented way, the state disk read-only or full, and
// the checkpoint damaged. Each test ends with the same oracle: Userpilot's
// final state equals the table's, mapped (workload.WaitConverged), or with a
// clear stop that names the way out.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/config"
	"github.com/pgpilot/pgpilot/daemon"
	"github.com/pgpilot/pgpilot/internal/faultproxy"
	"github.com/pgpilot/pgpilot/internal/pgtest"
	"github.com/pgpilot/pgpilot/internal/workload"
	"github.com/pgpilot/pgpilot/replication"
	"github.com/pgpilot/pgpilot/state"
	"github.com/pgpilot/pgpilot/userpilot"
	"github.com/pgpilot/pgpilot/userpilot/userpilottest"
)

func soak() bool { return os.Getenv("PGPILOT_SOAK") != "" }

// newEnvOn is newEnv on a server of the test's own (for faults that would
// break the shared one). pgpilotURL, if not nil, rewrites the URL pgpilot
// is given (to go through a proxy); the test itself always connects
// directly.
func newEnvOn(t *testing.T, srv *pgtest.Server, opts userpilottest.Options, pgpilotURL func(string) string) *env {
	t.Helper()
	ctx := context.Background()
	url := srv.NewDatabaseT(t)
	e := &env{t: t, url: url}
	e.conn = e.connect()
	require.NoError(t, workload.Create(ctx, e.conn))
	opts.APIKey = apiKey
	e.up = userpilottest.NewServer(opts)
	t.Cleanup(e.up.Close)
	dir := t.TempDir()
	e.cfgPath, e.stateDir = dir+"/pgpilot.yaml", dir+"/state"
	target := url
	if pgpilotURL != nil {
		target = pgpilotURL(url)
	}
	e.writeConfig(workload.Config(target, workload.SlotName(url), e.up.URL(), apiKey, e.stateDir, 2000))
	return e
}

// connect opens a connection for the test itself, closed when it ends.
func (e *env) connect() *pgx.Conn {
	e.t.Helper()
	conn, err := pgx.Connect(context.Background(), e.url)
	require.NoError(e.t, err)
	e.t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func (e *env) slot() string { return workload.SlotName(e.url) }

// running reports whether p has not exited.
func (p *proc) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// writer runs random workload transactions against url until stopped,
// reconnecting whenever the server goes away.
type writer struct {
	committed, failed atomic.Int64
	cancel            context.CancelFunc
	done              chan struct{}
}

func startWriter(t *testing.T, url string, seed uint64, maxID int) *writer {
	ctx, cancel := context.WithCancel(context.Background())
	w := &writer{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		rng := rand.New(rand.NewPCG(seed, seed+1))
		var conn *pgx.Conn
		defer func() {
			if conn != nil {
				conn.Close(context.Background())
			}
		}()
		for ctx.Err() == nil {
			if conn == nil {
				c, err := pgx.Connect(ctx, url)
				if err != nil {
					time.Sleep(50 * time.Millisecond)
					continue
				}
				conn = c
			}
			ok, err := workload.Step(ctx, conn, rng, maxID)
			switch {
			case err != nil:
				// The server went away (or the commit's fate is unknown):
				// the oracle reads the table, so either outcome is fine.
				w.failed.Add(1)
				conn.Close(context.Background())
				conn = nil
				time.Sleep(20 * time.Millisecond)
			case ok:
				w.committed.Add(1)
			}
			time.Sleep(time.Duration(rng.IntN(3)) * time.Millisecond)
		}
	}()
	t.Cleanup(w.stop)
	return w
}

// stop stops writing and waits for the writer to end; it is idempotent.
func (w *writer) stop() {
	w.cancel()
	<-w.done
}

// dropSlotAtEnd drops the test's slot when the test ends, after pgpilot was
// killed: the shared server's 20 slots serve every test of the package,
// and a slot left behind also keeps WAL on it.
func (e *env) dropSlotAtEnd() {
	e.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		for ctx.Err() == nil {
			if pid, err := activePID(ctx, e.conn, e.slot()); err == nil && pid != 0 {
				e.conn.Exec(ctx, `SELECT pg_terminate_backend($1)`, pid)
			}
			_, err := e.conn.Exec(ctx, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1`, e.slot())
			if err == nil || !replication.IsSlotActive(err) {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
}

// activePID is the pid of the walsender streaming from slot, 0 if none.
func activePID(ctx context.Context, conn *pgx.Conn, slot string) (int32, error) {
	var pid *int32
	err := conn.QueryRow(ctx, `SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&pid)
	if errors.Is(err, pgx.ErrNoRows) || pid == nil {
		return 0, nil
	}
	return deref(pid), err
}

func deref(p *int32) int32 {
	if p == nil {
		return 0
	}
	return *p
}

// waitWalsender waits until a walsender other than not streams from the
// slot and returns its pid.
func (e *env) waitWalsender(not int32, timeout time.Duration) int32 {
	e.t.Helper()
	var pid int32
	require.Eventually(e.t, func() bool {
		p, err := activePID(context.Background(), e.conn, e.slot())
		pid = p
		return err == nil && p != 0 && p != not
	}, timeout, 5*time.Millisecond, "pgpilot streams from slot %s again", e.slot())
	return pid
}

func (e *env) terminate(pid int32) {
	e.t.Helper()
	_, err := e.conn.Exec(context.Background(), `SELECT pg_terminate_backend($1)`, pid)
	require.NoError(e.t, err)
}

// slotsOfDatabase lists the replication slots of the test's database.
func (e *env) slotsOfDatabase() []string {
	e.t.Helper()
	rows, err := e.conn.Query(context.Background(), `SELECT slot_name::text FROM pg_replication_slots WHERE database = current_database() ORDER BY 1`)
	require.NoError(e.t, err)
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(e.t, err)
	return names
}

// TestPostgresCrashAndFastRestartWhileStreamingLoseNothing crashes Postgres
// (SIGQUIT: immediate stop, crash recovery on start) while pgpilot streams
// and a workload writes, restarts it, and ends with a fast clean restart.
// PGPILOT_SOAK=1 crashes it 10 times.
func TestPostgresCrashAndFastRestartWhileStreamingLoseNothing(t *testing.T) {
	t.Parallel()
	crashes := 2
	if soak() {
		crashes = 10
	}
	srv := pgtest.StartT(t, pgtest.Options{})
	e := newEnvOn(t, srv, userpilottest.Options{}, nil)
	ctx := context.Background()
	require.NoError(t, workload.Seed(ctx, e.conn, 200))
	p := e.run()
	e.converge(60 * time.Second)

	w := startWriter(t, e.url, 11, 300)
	rng := rand.New(rand.NewPCG(12, 13))
	pid := e.waitWalsender(0, 30*time.Second)
	for i := range crashes + 1 {
		time.Sleep(time.Duration(300+rng.IntN(700)) * time.Millisecond)
		how := "crash"
		if i < crashes {
			require.NoError(t, srv.Crash(ctx))
		} else {
			how = "fast clean restart"
			require.NoError(t, srv.StopKeepData(ctx))
		}
		// pgpilot's reconnection attempts meet a server that is down.
		time.Sleep(time.Duration(100+rng.IntN(500)) * time.Millisecond)
		require.NoError(t, srv.Restart(ctx))
		restarted := time.Now()
		e.conn = e.connect()
		pid = e.waitWalsender(pid, 90*time.Second)
		t.Logf("%s %d: pgpilot streaming again %s after the server was back", how, i+1, time.Since(restarted).Round(time.Millisecond))
	}
	time.Sleep(500 * time.Millisecond) // writes after the last restart too
	w.stop()
	stopped := time.Now()
	e.converge(120 * time.Second)
	t.Logf("converged %s after the writes stopped; %d transactions committed (%d failed with the server), %d identify requests, %d records applied",
		time.Since(stopped).Round(time.Millisecond), w.committed.Load(), w.failed.Load(), e.up.IdentifyRequests(), e.up.Accepted())
	require.True(t, p.running(), "pgpilot rides out a Postgres crash")
	code, _ := p.stop(t)
	assert.Equal(t, 0, code)
	assert.Equal(t, 1, strings.Count(p.out.String(), "created replication slot"), "the slot survived the crashes: no second initial sync")
}

// TestTerminatedWalsenderResumesOnTheSameSlotWithoutResync kills pgpilot's
// walsender again and again (pg_terminate_backend), then has another
// process grab the slot in the instant between the old walsender's death
// and pgpilot's reconnection: pgpilot stands by and retries, never makes a
// new slot, and never sends the initial snapshot again.
func TestTerminatedWalsenderResumesOnTheSameSlotWithoutResync(t *testing.T) {
	t.Parallel()
	e := newEnv(t, userpilottest.Options{})
	e.dropSlotAtEnd()
	ctx := context.Background()
	require.NoError(t, workload.Seed(ctx, e.conn, 100))
	// Companies the writer never touches: a second initial sync would
	// send them again.
	_, err := e.conn.Exec(ctx, `INSERT INTO companies (id, name) SELECT g, 'Untouched ' || g FROM generate_series(100001, 100300) g`)
	require.NoError(t, err)
	p := e.run()
	e.converge(60 * time.Second)
	synced := len(e.up.Applied())
	require.Equal(t, []string{e.slot()}, e.slotsOfDatabase())

	w := startWriter(t, e.url, 21, 100)
	pid := e.waitWalsender(0, 30*time.Second)
	var took []string
	for range 3 {
		e.terminate(pid)
		start := time.Now()
		pid = e.waitWalsender(pid, 60*time.Second)
		took = append(took, time.Since(start).Round(time.Millisecond).String())
	}
	t.Logf("streaming again after each pg_terminate_backend: %s", strings.Join(took, ", "))

	// The race after a fast reconnection: the slot is still (or already)
	// active for another process.
	holder := e.grabSlot(pid)
	require.Eventually(t, func() bool { return strings.Contains(p.out.String(), "standing by") }, 60*time.Second, 20*time.Millisecond,
		"pgpilot says the slot is in use and waits")
	time.Sleep(2 * time.Second)
	require.NoError(t, holder.Close(ctx))
	e.waitWalsender(0, 60*time.Second)
	w.stop()
	e.converge(60 * time.Second)

	require.True(t, p.running(), "a terminated walsender is not a reason to exit")
	assert.Equal(t, []string{e.slot()}, e.slotsOfDatabase(), "the same slot, and no other")
	assert.Equal(t, 1, strings.Count(p.out.String(), "created replication slot"), "the slot was never made again")
	for _, a := range e.up.Applied()[synced:] {
		id, err := strconv.Atoi(a.CompanyID)
		require.NoError(t, err)
		require.LessOrEqual(t, id, 100, "untouched company %s was sent again: the initial sync ran again", a.CompanyID)
	}
	t.Logf("%d transactions committed, %d records applied after the initial sync", w.committed.Load(), len(e.up.Applied())-synced)
	code, _ := p.stop(t)
	assert.Equal(t, 0, code)
}

// grabSlot terminates the slot's walsender (first pid) and starts streaming
// from the slot itself before pgpilot can reconnect. It never confirms a
// position, so the slot is left as it was. Close the connection to let go.
func (e *env) grabSlot(pid int32) *pgconn.PgConn {
	e.t.Helper()
	ctx := context.Background()
	conn, err := replication.ConnectReplication(ctx, e.url)
	require.NoError(e.t, err)
	e.t.Cleanup(func() { conn.Close(context.Background()) })
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if pid != 0 {
			e.terminate(pid)
		}
		err := pglogrepl.StartReplication(ctx, conn, e.slot(), 0, pglogrepl.StartReplicationOptions{
			PluginArgs: []string{"proto_version '1'", "publication_names '" + e.slot() + "'"},
		})
		if err == nil {
			return conn
		}
		require.True(e.t, replication.IsSlotActive(err), "%v", err)
		pid, err = activePID(ctx, e.conn, e.slot())
		require.NoError(e.t, err)
		time.Sleep(2 * time.Millisecond)
	}
	e.t.Fatal("could not take the slot from pgpilot within 60s")
	return nil
}

// TestNetworkPartitionsBetweenPgpilotAndPostgresHeal puts a proxy between
// pgpilot and a server with a 2 s wal_sender_timeout, and breaks the
// network in three ways while a workload writes: a black hole longer than
// the timeout, then healed; a silent death of the open connections (a NAT
// that forgot them: pgpilot is never told); an abrupt reset.
func TestNetworkPartitionsBetweenPgpilotAndPostgresHeal(t *testing.T) {
	t.Parallel()
	srv := pgtest.StartT(t, pgtest.Options{Settings: map[string]string{"wal_sender_timeout": "2s"}})
	direct := fmt.Sprintf("%s:%d", srv.Host, srv.Port)
	px, err := faultproxy.Start(direct)
	require.NoError(t, err)
	t.Cleanup(func() { px.Close() })
	e := newEnvOn(t, srv, userpilottest.Options{}, func(url string) string {
		return strings.Replace(url, direct, px.Addr(), 1)
	})
	ctx := context.Background()
	require.NoError(t, workload.Seed(ctx, e.conn, 100))
	p := e.run()
	e.converge(60 * time.Second)

	phases := []struct {
		name  string
		fault func()
		heal  func()
	}{
		{"black hole for 6s (3 × wal_sender_timeout), then healed", px.BlackHole, px.Heal},
		{"open connections silently dead, never healed", px.Sever, func() {}},
		{"connections reset", px.Reset, func() {}},
	}
	for i, ph := range phases {
		w := startWriter(t, e.url, uint64(31+i), 150)
		time.Sleep(500 * time.Millisecond)
		pid := e.waitWalsender(0, 60*time.Second)
		accepted := px.Accepted()
		ph.fault()
		broke := time.Now()
		time.Sleep(6 * time.Second)
		ph.heal()
		healed := time.Now()
		w.stop()
		e.converge(60 * time.Second)
		t.Logf("%s: converged %s after the fault began, %s after the heal; %d new connections; %d transactions", ph.name,
			time.Since(broke).Round(time.Millisecond), time.Since(healed).Round(time.Millisecond), px.Accepted()-accepted, w.committed.Load())
		newPID := e.waitWalsender(0, 60*time.Second)
		assert.NotEqual(t, pid, newPID, "%s: a new walsender", ph.name)
	}
	require.True(t, p.running())
	code, _ := p.stop(t)
	assert.Equal(t, 0, code)
	assert.Equal(t, 1, strings.Count(p.out.String(), "created replication slot"))
}

// TestSlotDroppedBehindPgpilotsBackStopsWithRecoverySteps drops the slot
// while pgpilot streams (terminating its walsender so the drop can go
// through): pgpilot stops with exit 1 and says how to recover, and never
// makes a new slot by itself (a new slot silently skips every change made
// while there was none). Following the steps converges.
func TestSlotDroppedBehindPgpilotsBackStopsWithRecoverySteps(t *testing.T) {
	t.Parallel()
	e := newEnv(t, userpilottest.Options{})
	e.dropSlotAtEnd()
	ctx := context.Background()
	require.NoError(t, workload.Seed(ctx, e.conn, 20))
	p := e.run()
	e.converge(60 * time.Second)

	require.Eventually(t, func() bool {
		pid, err := activePID(ctx, e.conn, e.slot())
		require.NoError(t, err)
		if pid != 0 {
			e.terminate(pid)
		}
		_, err = e.conn.Exec(ctx, `SELECT pg_drop_replication_slot($1)`, e.slot())
		if err != nil {
			require.True(t, replication.IsSlotActive(err), "%v", err)
		}
		return err == nil
	}, 60*time.Second, 10*time.Millisecond, "drop the slot from under pgpilot")
	_, err := e.conn.Exec(ctx, `UPDATE companies SET plan = 'while-no-slot' WHERE id <= 3`)
	require.NoError(t, err)

	assert.Equal(t, 1, p.wait(t, 60*time.Second))
	out := p.out.String()
	assert.Contains(t, out, fmt.Sprintf(`replication slot \"%s\" is gone`, e.slot()))
	assert.Contains(t, out, "pgpilot recover")
	assert.Empty(t, e.slotsOfDatabase(), "pgpilot never recreates a slot by itself")

	td := e.pgpilot("teardown", "--config", e.cfgPath, "--yes")
	require.Equal(t, 0, td.wait(t, 60*time.Second), td.out.String())
	// It says the slot is gone, and drops only what is there.
	assert.Contains(t, td.out.String(), fmt.Sprintf("replication slot %q is already gone", e.slot()))
	assert.NotContains(t, td.out.String(), "drops replication slot")
	assert.NotContains(t, td.out.String(), "dropped replication slot")
	assert.Contains(t, td.out.String(), fmt.Sprintf("This drops publication %q.", e.slot()))
	p = e.run()
	e.waitInitialSync()
	e.converge(60 * time.Second)
	code, _ := p.stop(t)
	assert.Equal(t, 0, code)
}

// TestInvalidatedSlotStopsWithRecoverySteps lets Postgres invalidate the
// slot (max_slot_wal_keep_size exceeded while pgpilot is frozen with
// SIGSTOP, so it confirms nothing): once thawed, pgpilot stops with exit 1
// and the way out, `check` says the same, the slot is left for the operator,
// and teardown + run converge.
func TestInvalidatedSlotStopsWithRecoverySteps(t *testing.T) {
	t.Parallel()
	srv := pgtest.StartT(t, pgtest.Options{Settings: map[string]string{"max_slot_wal_keep_size": "1MB"}})
	e := newEnvOn(t, srv, userpilottest.Options{}, nil)
	ctx := context.Background()
	require.NoError(t, workload.Seed(ctx, e.conn, 20))
	p := e.run()
	e.converge(60 * time.Second)

	require.NoError(t, p.cmd.Process.Signal(syscall.SIGSTOP))
	t.Cleanup(func() { p.cmd.Process.Signal(syscall.SIGCONT) })
	_, err := e.conn.Exec(ctx, `UPDATE companies SET plan = 'lost-to-the-slot' WHERE id <= 5`)
	require.NoError(t, err)
	var walStatus string
	require.Eventually(t, func() bool {
		for range 3 {
			_, err := e.conn.Exec(ctx, `UPDATE companies SET seats = seats WHERE id = 1; SELECT pg_switch_wal()`)
			require.NoError(t, err)
		}
		_, err := e.conn.Exec(ctx, `CHECKPOINT`)
		require.NoError(t, err)
		require.NoError(t, e.conn.QueryRow(ctx, `SELECT coalesce(wal_status, '') FROM pg_replication_slots WHERE slot_name = $1`, e.slot()).Scan(&walStatus))
		return walStatus == "lost"
	}, 60*time.Second, 100*time.Millisecond, "the slot is invalidated")
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGCONT))

	assert.Equal(t, 1, p.wait(t, 60*time.Second))
	out := p.out.String()
	assert.Contains(t, out, "lost WAL it needed")
	assert.Contains(t, out, "run `pgpilot teardown` then `pgpilot run`")
	check := e.pgpilot("check", "--config", e.cfgPath)
	assert.NotEqual(t, 0, check.wait(t, 60*time.Second))
	assert.Contains(t, check.out.String(), "wal_status: lost")
	assert.Equal(t, []string{e.slot()}, e.slotsOfDatabase(), "the lost slot is left for the operator, not replaced")

	// A re-sync asked for now would only send every row a second time
	// after the fresh initial sync: teardown drops it.
	rs := e.pgpilot("resync", "--config", e.cfgPath)
	require.Equal(t, 0, rs.wait(t, 60*time.Second), rs.out.String())
	td := e.pgpilot("teardown", "--config", e.cfgPath, "--yes")
	require.Equal(t, 0, td.wait(t, 60*time.Second), td.out.String())
	assert.Contains(t, td.out.String(), "pending re-sync request dropped")
	assert.False(t, e.resyncQueued(), "no re-sync request left")
	p = e.run()
	e.waitInitialSync()
	e.converge(60 * time.Second)
	code, _ := p.stop(t)
	assert.Equal(t, 0, code)
}

// TestDamagedOrForeignCheckpointIsRefused damages the checkpoint in every
// way a disk or an operator can, or puts another slot's, database's or
// cluster's there: `pgpilot run` refuses before it sends anything or moves
// the slot, naming the fix. Once the good file is back, only the change
// made meanwhile is sent.
func TestDamagedOrForeignCheckpointIsRefused(t *testing.T) {
	t.Parallel()
	e := newEnv(t, userpilottest.Options{})
	e.dropSlotAtEnd()
	ctx := context.Background()
	require.NoError(t, workload.Seed(ctx, e.conn, 10))
	p := e.run()
	e.converge(60 * time.Second)
	code, _ := p.stop(t)
	require.Equal(t, 0, code)
	path := e.stateDir + "/" + state.CheckpointFile
	good, err := os.ReadFile(path)
	require.NoError(t, err)
	cp, ok, err := state.ReadCheckpoint(e.stateDir)
	require.NoError(t, err)
	require.True(t, ok)
	// The walsender may still be reading pgpilot's last status update:
	// once it has let go of the slot, the slot's position is final.
	require.Eventually(t, func() bool {
		pid, err := activePID(ctx, e.conn, e.slot())
		return err == nil && pid == 0
	}, 30*time.Second, 10*time.Millisecond)
	var slotBefore string
	require.NoError(t, e.conn.QueryRow(ctx, `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1`, e.slot()).Scan(&slotBefore))
	_, err = e.conn.Exec(ctx, `UPDATE companies SET plan = 'while-refused' WHERE id = 1`)
	require.NoError(t, err)

	raw := func(b []byte) func() {
		return func() { require.NoError(t, os.WriteFile(path, b, 0o600)) }
	}
	foreign := func(edit func(*state.Checkpoint)) func() {
		return func() {
			c := cp
			edit(&c)
			d, err := state.Open(e.stateDir)
			require.NoError(t, err)
			require.NoError(t, d.SaveCheckpoint(c))
			require.NoError(t, d.Close())
		}
	}
	const corruptFix = "remove the state directory and run `pgpilot teardown` then `pgpilot run`"
	const foreignFix = "point state.dir at this database's own state directory"
	tests := []struct {
		name  string
		write func()
		code  int
		want  []string
	}{
		{"truncated", raw(good[:len(good)/2]), 1, []string{"checkpoint is corrupt", "not a checkpoint file", corruptFix}},
		{"empty", raw(nil), 1, []string{"checkpoint is corrupt", corruptFix}},
		{"garbage", raw([]byte("\x00\x01\xfe not json at all\n")), 1, []string{"checkpoint is corrupt", corruptFix}},
		{"edited by hand", raw([]byte(strings.Replace(string(good), cp.LSN.String(), state.LSN(uint64(cp.LSN)+8).String(), 1))), 1,
			[]string{"checksum mismatch", corruptFix}},
		{"from a newer pgpilot", raw([]byte(strings.Replace(string(good), `"format": 5`, `"format": 6`, 1))), 1,
			[]string{"format 6, this pgpilot reads format 5", corruptFix}},
		{"another slot", foreign(func(c *state.Checkpoint) { c.Slot = "someone_elses_slot" }), 2,
			[]string{`belongs to slot \"someone_elses_slot\"`, foreignFix}},
		{"another database", foreign(func(c *state.Checkpoint) { c.Database = "another_db" }), 2,
			[]string{`of database \"another_db\"`, foreignFix}},
		{"another cluster", foreign(func(c *state.Checkpoint) { c.SystemID = "7000000000000000001" }), 2,
			[]string{"on system 7000000000000000001", foreignFix}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			requests := e.up.IdentifyRequests()
			tt.write()
			p := e.run()
			assert.Equal(t, tt.code, p.wait(t, 60*time.Second))
			out := p.out.String()
			for _, w := range tt.want {
				assert.Contains(t, out, w)
			}
			assert.Equal(t, requests, e.up.IdentifyRequests(), "nothing was sent")
			var slotNow string
			require.NoError(t, e.conn.QueryRow(ctx, `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1`, e.slot()).Scan(&slotNow))
			assert.Equal(t, slotBefore, slotNow, "the slot was neither moved nor made again")
			if tt.code == 1 {
				st := e.pgpilot("status", "--config", e.cfgPath)
				assert.Equal(t, 1, st.wait(t, 60*time.Second))
				assert.Contains(t, st.out.String(), "checkpoint is corrupt", "status says so too")
			}
		})
	}

	raw(good)()
	requests := e.up.IdentifyRequests()
	p = e.run()
	e.converge(60 * time.Second)
	assert.Equal(t, requests+1, e.up.IdentifyRequests(), "with the good checkpoint back, only the change made meanwhile is sent")
	code, _ = p.stop(t)
	assert.Equal(t, 0, code)
}

// TestUserpilotOutagesAgainstTheBinaryLoseNothing runs the binary, with its
// default timings, through Userpilot failing while a workload writes: 5xx
// for a long stretch, 429 storms with and without Retry-After, connection
// resets, and records applied but answered 500. After each, Userpilot
// converges to the table. PGPILOT_SOAK=1 makes the 5xx stretch 60s.
func TestUserpilotOutagesAgainstTheBinaryLoseNothing(t *testing.T) {
	t.Parallel()
	outage := 10 * time.Second
	if soak() {
		outage = 60 * time.Second
	}
	e := newEnv(t, userpilottest.Options{})
	e.dropSlotAtEnd()
	ctx := context.Background()
	require.NoError(t, workload.Seed(ctx, e.conn, 100))
	p := e.run()
	e.converge(60 * time.Second)

	up := e.up
	phases := []struct {
		name   string
		fault  func()
		hold   time.Duration
		status int // the stand-in must have answered this (0: no answer)
	}{
		{fmt.Sprintf("503 for %s", outage), func() { up.SetFault(&userpilottest.Fault{Status: 503}) }, outage, 503},
		{"429 storm with Retry-After: 2", func() { up.SetFault(&userpilottest.Fault{Status: 429, RetryAfter: "2"}) }, 4 * time.Second, 429},
		{"429 storm without Retry-After", func() { up.SetFault(&userpilottest.Fault{Status: 429}) }, 3 * time.Second, 429},
		{"connection resets", func() { up.FailNext(40, userpilottest.Fault{Reset: true}) }, 2 * time.Second, 0},
		{"applied but answered 500", func() { up.FailNext(40, userpilottest.Fault{Status: 500, Apply: true}) }, 2 * time.Second, 500},
	}
	for i, ph := range phases {
		applied, requests := len(up.Applied()), len(up.Requests())
		w := startWriter(t, e.url, uint64(41+i), 150)
		ph.fault()
		time.Sleep(ph.hold)
		w.stop()
		up.SetFault(nil)
		healed := time.Now()
		e.converge(120 * time.Second)
		recovered := time.Since(healed)

		answered := 0
		for _, r := range up.Requests()[requests:] {
			if r.Status == ph.status && r.Path == "/v1/companies/identify" {
				answered++
			}
		}
		assert.Positive(t, answered, "%s: the fault really happened", ph.name)
		t.Logf("%s: converged %s after the heal; %d transactions, %d faulty answers, %d records applied, %d of them identical re-sends",
			ph.name, recovered.Round(time.Millisecond), w.committed.Load(), answered, len(up.Applied())-applied, resends(up.Applied()[applied:]))
	}
	require.True(t, p.running())
	code, _ := p.stop(t)
	assert.Equal(t, 0, code)
}

// resends counts records that repeat the previous record of the same company
// exactly: sent again, not a new state.
func resends(applied []userpilottest.Applied) int {
	last := map[string]map[string]any{}
	n := 0
	for _, a := range applied {
		if prev, ok := last[a.CompanyID]; ok && maps.Equal(prev, a.Metadata) {
			n++
		}
		last[a.CompanyID] = a.Metadata
	}
	return n
}

// TestHungUserpilotRequestIsAbandonedAndRetried runs the daemon in process
// with a 1 s request timeout (the binary's is 30 s, with no flag to change
// it) against a stand-in that holds requests for 5 minutes: each is given
// up and sent again, and everything converges long before.
func TestHungUserpilotRequestIsAbandonedAndRetried(t *testing.T) {
	t.Parallel()
	e := newEnv(t, userpilottest.Options{})
	e.dropSlotAtEnd()
	ctx := context.Background()
	require.NoError(t, workload.Seed(ctx, e.conn, 30))
	cfg, err := config.Load(e.cfgPath)
	require.NoError(t, err)
	e.up.FailNext(12, userpilottest.Fault{Delay: 5 * time.Minute})

	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	// Stop the daemon before the stand-in closes, even when the test fails:
	// Close waits for the requests the stand-in holds.
	t.Cleanup(func() {
		cancel()
		<-done
	})
	go func() {
		done <- daemon.Run(runCtx, daemon.Options{
			Config: cfg, Logger: slog.New(slog.DiscardHandler), ShutdownGrace: 5 * time.Second, ReconnectMax: time.Second,
			Userpilot: userpilot.Options{RequestTimeout: time.Second, MinBackoff: 10 * time.Millisecond, MaxBackoff: 200 * time.Millisecond},
		})
	}()
	start := time.Now()
	e.converge(60 * time.Second)
	t.Logf("converged %s after start, through 12 hung requests", time.Since(start).Round(time.Millisecond))
	given := 0
	for _, r := range e.up.Requests() {
		if r.Status == 0 {
			given++
		}
	}
	assert.Equal(t, 12, given, "each hung request was given up by the client")
	cancel()
	select {
	case err := <-done:
		assert.NoError(t, err)
		done <- err // for the cleanup
	case <-time.After(30 * time.Second):
		t.Fatal("daemon did not stop")
	}
}

// TestAlwaysRejectedCompanyIsDeadLetteredAndOthersFlow runs the binary with
// a company Userpilot always refuses (400): it is set aside with its
// payload and Userpilot's answer, counted by `status`, never retried, and
// every other company keeps flowing, across a restart.
func TestAlwaysRejectedCompanyIsDeadLetteredAndOthersFlow(t *testing.T) {
	t.Parallel()
	e := newEnv(t, userpilottest.Options{})
	e.dropSlotAtEnd()
	e.up.RejectCompany("7", 400)
	ctx := context.Background()
	require.NoError(t, workload.Seed(ctx, e.conn, 20))
	p := e.run()
	e.convergeExcept(60*time.Second, "7")
	_, err := e.conn.Exec(ctx, `UPDATE companies SET plan = 'custom' WHERE id IN (7, 8)`)
	require.NoError(t, err)
	e.convergeExcept(60*time.Second, "7")
	code, _ := p.stop(t)
	require.Equal(t, 0, code)

	raw, err := os.ReadFile(e.stateDir + "/" + state.DeadLetterFile)
	require.NoError(t, err)
	lines := strings.Split(strings.TrimSpace(string(raw)), "\n")
	require.Len(t, lines, 2, "company 7, once from the snapshot and once from the update")
	for i, l := range lines {
		var dl state.DeadLetter
		require.NoError(t, json.Unmarshal([]byte(l), &dl))
		assert.Equal(t, "7", dl.CompanyID)
		assert.Equal(t, 400, dl.Status)
		assert.Contains(t, dl.Body, "invalid_company", "Userpilot's answer is kept")
		assert.NotNil(t, dl.Payload, "the payload is kept, to replay by hand")
		if i == 1 {
			assert.NotZero(t, dl.LSN, "the update's dead letter carries its transaction's LSN")
		}
	}
	st := e.pgpilot("status", "--config", e.cfgPath, "--json")
	require.Equal(t, 0, st.wait(t, 60*time.Second))
	var report struct {
		DeadLetters int `json:"dead_letters"`
	}
	require.NoError(t, json.Unmarshal([]byte(st.out.String()), &report))
	assert.Equal(t, 2, report.DeadLetters)

	sentFor7 := func() int {
		n := 0
		for _, r := range e.up.Requests() {
			if slices.Contains(r.CompanyIDs, "7") {
				n++
			}
		}
		return n
	}
	before := sentFor7()
	p = e.run()
	_, err = e.conn.Exec(ctx, `UPDATE companies SET plan = 'after-restart' WHERE id = 9`)
	require.NoError(t, err)
	e.convergeExcept(60*time.Second, "7")
	assert.Equal(t, before, sentFor7(), "a dead letter is not retried by itself")
	code, _ = p.stop(t)
	assert.Equal(t, 0, code)
}

// convergeExcept is converge, leaving the given companies out of the
// comparison (Userpilot refuses them).
func (e *env) convergeExcept(timeout time.Duration, ids ...string) {
	e.t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(timeout)
	for {
		want, err := workload.Expected(ctx, e.conn)
		require.NoError(e.t, err)
		got := e.up.Companies()
		for _, id := range ids {
			delete(want, id)
			require.NotContains(e.t, got, id, "company %s reached Userpilot", id)
		}
		diff := workload.Diff(want, got)
		if len(diff) == 0 {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("Userpilot did not converge within %s: %s", timeout, strings.Join(diff[:min(10, len(diff))], "\n"))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// requireMount makes dir a mount point with the given mount arguments, or
// skips: tests run as root in CI, and a sandbox may forbid mounting. The
// returned unmount may be called early; it runs at cleanup otherwise.
func requireMount(t *testing.T, dir string, args ...string) (unmount func()) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a file system for the state directory")
	}
	out, err := exec.Command("mount", append(args, dir)...).CombinedOutput()
	if err != nil {
		t.Skipf("cannot mount here (mount %s: %v: %s)", strings.Join(args, " "), err, out)
	}
	var once sync.Once
	unmount = func() {
		once.Do(func() {
			if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
				t.Errorf("umount %s: %v: %s", dir, err, out)
				exec.Command("umount", "-l", dir).Run()
			}
		})
	}
	t.Cleanup(unmount)
	return unmount
}

func (e *env) checkpoint() state.Checkpoint {
	e.t.Helper()
	cp, ok, err := state.ReadCheckpoint(e.stateDir)
	require.NoError(e.t, err, "the checkpoint stays readable")
	require.True(e.t, ok)
	return cp
}

// slotConfirmed is the slot's confirmed_flush_lsn.
func (e *env) slotConfirmed() state.LSN {
	e.t.Helper()
	var s string
	require.NoError(e.t, e.conn.QueryRow(context.Background(), `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1`, e.slot()).Scan(&s))
	lsn, err := state.ParseLSN(s)
	require.NoError(e.t, err)
	return lsn
}

// assertCheckpointHeld checks, for a while, that while the state disk
// cannot be written neither the checkpoint nor the slot moves past what
// was durable before.
func (e *env) assertCheckpointHeld(before state.LSN) {
	e.t.Helper()
	for range 20 {
		assert.Equal(e.t, before, e.checkpoint().LSN, "the checkpoint did not move")
		assert.LessOrEqual(e.t, e.slotConfirmed(), before, "the slot is never confirmed past the durable checkpoint")
		time.Sleep(100 * time.Millisecond)
	}
}

// TestFullStateDiskHoldsTheCheckpointAndLosesNothing puts the state
// directory on a 1 MB tmpfs and fills it while pgpilot runs: the
// checkpoint write fails with ENOSPC, it is said, neither the checkpoint
// nor the slot moves, and once space is freed pgpilot catches up by itself.
func TestFullStateDiskHoldsTheCheckpointAndLosesNothing(t *testing.T) {
	t.Parallel()
	e := newEnv(t, userpilottest.Options{})
	e.dropSlotAtEnd()
	require.NoError(t, os.MkdirAll(e.stateDir, 0o700))
	requireMount(t, e.stateDir, "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs")
	ctx := context.Background()
	require.NoError(t, workload.Seed(ctx, e.conn, 30))
	p := e.run()
	e.converge(60 * time.Second)
	e.waitInitialSync()
	before := e.checkpoint().LSN

	filler, err := os.Create(e.stateDir + "/filler")
	require.NoError(t, err)
	for {
		if _, err := filler.Write(make([]byte, 4096)); err != nil {
			require.ErrorIs(t, err, syscall.ENOSPC)
			break
		}
	}
	require.NoError(t, filler.Close())
	_, err = e.conn.Exec(ctx, `UPDATE companies SET plan = 'while-disk-full' WHERE id <= 10`)
	require.NoError(t, err)
	require.Eventually(t, func() bool { return strings.Contains(p.out.String(), "no space left on device") }, 60*time.Second, 20*time.Millisecond,
		"the failed checkpoint write is reported")
	t.Logf("reported as: %s", lineWith(p.out.String(), "no space left on device"))
	e.assertCheckpointHeld(before)

	require.NoError(t, os.Remove(e.stateDir+"/filler"))
	freed := time.Now()
	e.converge(60 * time.Second)
	require.Eventually(t, func() bool { return e.checkpoint().LSN > before }, 60*time.Second, 50*time.Millisecond)
	t.Logf("checkpoint moving again %s after the disk was freed", time.Since(freed).Round(time.Millisecond))
	require.True(t, p.running(), "a full disk is waited out, not a reason to exit")
	code, _ := p.stop(t)
	assert.Equal(t, 0, code)
	leftovers, _ := filepath.Glob(e.stateDir + "/.checkpoint.json.tmp-*")
	assert.Empty(t, leftovers, "failed writes leave no temporary files")

	p = e.run()
	_, err = e.conn.Exec(ctx, `UPDATE companies SET plan = 'after-restart' WHERE id = 1`)
	require.NoError(t, err)
	e.converge(60 * time.Second)
	code, _ = p.stop(t)
	assert.Equal(t, 0, code)
}

// TestUnwritableStateDirHoldsTheCheckpointAndLosesNothing makes the state
// directory unwritable in the two ways root cannot ignore: immutable
// (chattr +i) while pgpilot runs, then a read-only bind mount at start.
// While it lasts nothing is checkpointed or confirmed; afterwards pgpilot
// converges.
func TestUnwritableStateDirHoldsTheCheckpointAndLosesNothing(t *testing.T) {
	t.Parallel()
	e := newEnv(t, userpilottest.Options{})
	e.dropSlotAtEnd()
	ctx := context.Background()
	require.NoError(t, workload.Seed(ctx, e.conn, 20))
	p := e.run()
	e.converge(60 * time.Second)
	e.waitInitialSync()
	before := e.checkpoint().LSN

	if out, err := exec.Command("chattr", "+i", e.stateDir).CombinedOutput(); err != nil {
		t.Skipf("chattr +i is not available here (%v: %s)", err, out)
	}
	t.Cleanup(func() { exec.Command("chattr", "-i", e.stateDir).Run() })
	_, err := e.conn.Exec(ctx, `UPDATE companies SET plan = 'while-immutable' WHERE id <= 5`)
	require.NoError(t, err)
	require.Eventually(t, func() bool { return strings.Contains(p.out.String(), "operation not permitted") }, 60*time.Second, 20*time.Millisecond,
		"the failed checkpoint write is reported")
	t.Logf("reported as: %s", lineWith(p.out.String(), "operation not permitted"))
	e.assertCheckpointHeld(before)
	out, err := exec.Command("chattr", "-i", e.stateDir).CombinedOutput()
	require.NoError(t, err, "%s", out)
	fixed := time.Now()
	e.converge(60 * time.Second)
	require.Eventually(t, func() bool { return e.checkpoint().LSN > before }, 60*time.Second, 50*time.Millisecond)
	t.Logf("checkpoint moving again %s after the directory was writable", time.Since(fixed).Round(time.Millisecond))
	require.True(t, p.running())
	code, _ := p.stop(t)
	require.Equal(t, 0, code)

	// Read-only from the start: refused at once, as a setup problem (exit
	// 2), with the directory named.
	_, err = e.conn.Exec(ctx, `UPDATE companies SET plan = 'while-read-only' WHERE id <= 5`)
	require.NoError(t, err)
	unmount := requireMount(t, e.stateDir, "--bind", e.stateDir)
	if out, err := exec.Command("mount", "-o", "remount,bind,ro", e.stateDir).CombinedOutput(); err != nil {
		t.Skipf("cannot remount read-only here (%v: %s)", err, out)
	}
	before = e.checkpoint().LSN
	p = e.run()
	assert.Equal(t, 2, p.wait(t, 60*time.Second))
	assert.Contains(t, p.out.String(), "read-only file system")
	t.Logf("refused at start with: %s", lineWith(p.out.String(), "read-only file system"))
	assert.Contains(t, p.out.String(), e.stateDir)
	assert.Equal(t, before, e.checkpoint().LSN)
	unmount()

	p = e.run()
	e.converge(60 * time.Second)
	code, _ = p.stop(t)
	assert.Equal(t, 0, code)
}

// lineWith returns the first line of out that contains s.
func lineWith(out, s string) string {
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, s) {
			return l
		}
	}
	return ""
}
