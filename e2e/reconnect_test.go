package e2e

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/internal/pgtest"
	"github.com/pgpilot/pgpilot/internal/workload"
	"github.com/pgpilot/pgpilot/state"
	"github.com/pgpilot/pgpilot/userpilot/userpilottest"
)

// TestAReconnectDuringAnOutageStreamsAgainAtOnce: while Userpilot answers
// 503 to everything, pgpilot's walsender is terminated and then Postgres
// crash-restarts. Each time pgpilot streams from the slot again within
// seconds (delivery goes on beside the new session: before, a session
// waited for every pending company to be delivered first, which during an
// outage is never, and the slot sat inactive while WAL grew), /metrics
// says pgpilot_streaming 0 while no stream runs, and the slot's confirmed
// position keeps moving (the outbox holds what is owed). Once Userpilot is
// back, every row arrives.
func TestAReconnectDuringAnOutageStreamsAgainAtOnce(t *testing.T) {
	t.Parallel()
	srv := pgtest.StartT(t, pgtest.Options{})
	e := newEnvOn(t, srv, userpilottest.Options{}, nil)
	addr := freeAddr(t)
	cfg := workload.Config(e.url, workload.SlotName(e.url), e.up.URL(), apiKey, e.stateDir, 2000)
	e.writeConfig(strings.Replace(cfg, "companies:\n",
		"delivery:\n  outbox_after: 1s\nhttp:\n  listen: "+addr+"\ncompanies:\n", 1))
	ctx := context.Background()
	require.NoError(t, workload.Seed(ctx, e.conn, 100))
	p := e.run()
	e.converge(60 * time.Second)
	base := "http://" + addr

	// Sample pgpilot_streaming all along: it must be seen 0 between a
	// stream's end and the next one's start.
	var sawNotStreaming atomic.Bool
	sampling, stopSampling := context.WithCancel(ctx)
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for sampling.Err() == nil {
			if fams, err := scrapeErr(base); err == nil && fams["pgpilot_streaming"] != nil && metricValue(fams, "pgpilot_streaming") == 0 {
				sawNotStreaming.Store(true)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()

	e.up.SetFault(&userpilottest.Fault{Status: 503}) // the outage
	write := func(round int) state.LSN {
		_, err := e.conn.Exec(ctx, `UPDATE companies SET seats = $1`, round)
		require.NoError(t, err)
		var lsn string
		require.NoError(t, e.conn.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&lsn))
		end, err := state.ParseLSN(lsn)
		require.NoError(t, err)
		return end
	}
	confirmedPast := func(lsn state.LSN, what string) {
		require.Eventually(t, func() bool { return e.slotConfirmed() >= lsn }, 30*time.Second, 20*time.Millisecond,
			"%s: the slot's confirmed position passes the outage's writes (they are in the outbox)", what)
	}
	confirmedPast(write(1), "before any reconnect")

	pid := e.waitWalsender(0, 30*time.Second)
	e.terminate(pid)
	started := time.Now()
	pid = e.waitWalsender(pid, 20*time.Second)
	t.Logf("walsender terminated during the outage: streaming again after %s", time.Since(started).Round(time.Millisecond))
	confirmedPast(write(2), "after the walsender was terminated")

	require.NoError(t, srv.Crash(ctx))
	require.NoError(t, srv.Restart(ctx))
	e.conn = e.connect()
	started = time.Now()
	e.waitWalsender(pid, 30*time.Second)
	t.Logf("Postgres crash-restarted during the outage: streaming again after %s", time.Since(started).Round(time.Millisecond))
	confirmedPast(write(3), "after Postgres crash-restarted")

	stopSampling()
	<-sampled
	assert.True(t, sawNotStreaming.Load(), "pgpilot_streaming was 0 while no stream ran")
	assert.Zero(t, e.up.Accepted()-100, "nothing was delivered during the outage")

	e.up.SetFault(nil)
	e.converge(120 * time.Second)
	require.True(t, p.running())
	code, _ := p.stop(t)
	assert.Equal(t, 0, code)
}
