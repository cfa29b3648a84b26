package e2e

import (
	"context"
	"encoding/json"
	"math/rand/v2"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/internal/workload"
	"github.com/pgpilot/pgpilot/state"
	"github.com/pgpilot/pgpilot/userpilot/userpilottest"
)

const snapshotChunk = 500

// snapshotConfig is the usual config with small snapshot chunks, so that a
// test-sized table is read in many.
func (e *env) snapshotConfig(rate float64) {
	cfg := workload.Config(e.url, workload.SlotName(e.url), e.up.URL(), apiKey, e.stateDir, rate)
	if strings.Contains(cfg, "\ndelivery:\n") {
		cfg = strings.Replace(cfg, "\ndelivery:\n", "\ndelivery:\n  snapshot_chunk_rows: 500\n", 1)
	} else {
		cfg += "delivery:\n  snapshot_chunk_rows: 500\n"
	}
	e.writeConfig(cfg)
}

func (e *env) checkpointSnapshot() *state.Snapshot {
	cp, ok, err := state.ReadCheckpoint(e.stateDir)
	if err != nil || !ok {
		return nil
	}
	return cp.Snapshot
}

// writeWhile runs the workload's random transactions until stop is
// called; it returns how many it committed.
func (e *env) writeWhile(maxID int) (stop func() int64) {
	return e.repeatWhile(7, func(ctx context.Context, conn *pgx.Conn, rng *rand.Rand) error {
		_, err := workload.Step(ctx, conn, rng, maxID)
		time.Sleep(2 * time.Millisecond)
		return err
	})
}

// touchWhile updates only updated_at (unmapped) of random rows until stop
// is called; it returns how many updates it committed.
func (e *env) touchWhile(maxID int) (stop func() int64) {
	return e.repeatWhile(3, func(ctx context.Context, conn *pgx.Conn, rng *rand.Rand) error {
		_, err := conn.Exec(ctx, `UPDATE companies SET updated_at = now() WHERE id BETWEEN $1 AND $1 + 20`, 1+rng.IntN(maxID))
		return err
	})
}

// repeatWhile runs step on a connection of its own until stop is called,
// and counts the steps that succeeded.
func (e *env) repeatWhile(seed uint64, step func(context.Context, *pgx.Conn, *rand.Rand) error) (stop func() int64) {
	ctx, cancel := context.WithCancel(context.Background())
	conn := e.connect()
	var n atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		rng := rand.New(rand.NewPCG(seed, seed+4))
		for ctx.Err() == nil {
			if step(ctx, conn, rng) == nil {
				n.Add(1)
			}
		}
	}()
	return func() int64 {
		cancel()
		<-done
		return n.Load()
	}
}

// TestKillNineMidSnapshotResumesWhereItStopped kills pgpilot halfway through
// the initial sync of a table that is being written, restarts it, and
// checks it resumed after the last delivered chunk (not from zero), that
// rows sent again are bounded by the chunks in flight, and that Userpilot
// ends equal to the table: a row updated after its chunk was read ends with
// the newer value.
func TestKillNineMidSnapshotResumesWhereItStopped(t *testing.T) {
	t.Parallel()
	// Bulk jobs slower than the real-time budget, as Userpilot's are: the
	// snapshot is checkpointed a little at a time, so there is a halfway
	// to kill it at. (A stand-in that completes every job at once is
	// measured as such, and one job of 10,000 would deliver it whole.)
	e := newEnv(t, userpilottest.Options{BulkRecordsPerSecond: 50})
	e.snapshotConfig(400)
	ctx := context.Background()
	const rows = 12_000
	require.NoError(t, workload.Seed(ctx, e.conn, rows))
	stopWriting := e.writeWhile(rows)
	p := e.run()
	require.Eventually(t, func() bool {
		s := e.checkpointSnapshot()
		return s != nil && s.Rows >= rows/2
	}, 120*time.Second, 5*time.Millisecond, "half the rows delivered and checkpointed")
	p.kill9()
	// The writes stop with the kill, so what the restart sends is bounded
	// by the snapshot alone: resumed, or started over.
	written := stopWriting()
	at := e.checkpointSnapshot()
	require.NotNil(t, at, "killed before the snapshot finished")
	require.Less(t, at.Rows, int64(rows))
	before := e.up.Accepted()
	t.Logf("killed with %d of %d rows checkpointed, %d records applied", at.Rows, rows, before)

	p = e.run()
	require.NoError(t, workload.WaitInitialSync(ctx, e.stateDir, 120*time.Second))
	e.converge(120 * time.Second)
	code, _ := p.stop(t)
	assert.Equal(t, 0, code)
	assert.Contains(t, p.out.String(), "resuming the snapshot where it stopped")
	read := rowsRead(t, p.out.String())
	t.Logf("after the restart: %d rows read again by the snapshot, %d records applied; %d update transactions ran before the kill",
		read, e.up.Accepted()-before, written)
	// The rest of the table and the chunks in flight at the kill (two
	// waiting, one being read); from zero it would be all 12,000. (What
	// reaches Userpilot says less: the no-op index skips rows it holds.)
	assert.LessOrEqual(t, read, rows-int(at.Rows)+3*snapshotChunk, "resumed near where it stopped, not from zero")
}

// TestResyncWhileStreamingResendsWithoutStaleOverwrites wipes the stand-in
// (Userpilot lost its data) and asks the running daemon for a re-sync of
// one company, of a WHERE subset, then of everything, while the table is
// written: each brings back exactly its rows, and the full one ends equal
// to the table.
func TestResyncWhileStreamingResendsWithoutStaleOverwrites(t *testing.T) {
	t.Parallel()
	e := newEnv(t, userpilottest.Options{})
	e.snapshotConfig(400)
	ctx := context.Background()
	const rows = 3000
	require.NoError(t, workload.Seed(ctx, e.conn, rows))
	p := e.run()
	require.NoError(t, workload.WaitInitialSync(ctx, e.stateDir, 120*time.Second))
	e.converge(60 * time.Second)

	resync := func(args ...string) {
		t.Helper()
		r := e.pgpilot(append([]string{"resync", "--config", e.cfgPath}, args...)...)
		require.Equal(t, 0, r.wait(t, 30*time.Second), r.out.String())
		require.Eventually(t, func() bool {
			return !e.resyncQueued() && e.checkpointSnapshot() == nil
		}, 60*time.Second, 10*time.Millisecond, "the re-sync is taken and finished")
	}

	e.up.Wipe()
	resync("--company", "42")
	assert.Equal(t, []string{"42"}, keys(e.up.Companies()), "one company")

	e.up.Wipe()
	resync("--where", "id <= 25")
	assert.Len(t, e.up.Companies(), 25, "the subset")

	bad := e.pgpilot("resync", "--config", e.cfgPath, "--where", "no_such_column = 1")
	assert.Equal(t, 2, bad.wait(t, 30*time.Second))
	assert.Contains(t, bad.out.String(), "no_such_column")

	e.up.Wipe()
	stopWriting := e.writeWhile(rows)
	// And changes Userpilot never sees (no mapped column changes): the
	// no-op index skips them, so a row they touch while its chunk waits
	// must still be re-sent by the chunk.
	stopTouching := e.touchWhile(rows)
	resync()
	written := stopWriting() + stopTouching()
	e.converge(60 * time.Second)
	t.Logf("full re-sync of %d rows with %d update transactions running", rows, written)
	code, _ := p.stop(t)
	assert.Equal(t, 0, code)
}

func keys(m map[string]map[string]any) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// rowsRead adds up the rows of the snapshot chunks a run's debug log says
// it read.
func rowsRead(t *testing.T, log string) int {
	n := 0
	for _, line := range strings.Split(log, "\n") {
		var rec struct {
			Msg  string `json:"msg"`
			Rows int    `json:"rows"`
		}
		if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "snapshot chunk read" {
			n += rec.Rows
		}
	}
	require.NotZero(t, n, "the debug log shows the chunks read")
	return n
}
