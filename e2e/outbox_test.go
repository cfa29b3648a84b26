package e2e

import (
	"context"
	"math/rand/v2"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/internal/workload"
	"github.com/pgpilot/pgpilot/userpilot/userpilottest"
)

// TestKillNineDuringOutageSwitchAndDrainLosesNothing kills pgpilot without
// warning while Userpilot is down (before and after the switch to the
// outbox, which starts one second into the outage) and while the outbox
// drains once Userpilot is back. Userpilot ends equal to the table.
func TestKillNineDuringOutageSwitchAndDrainLosesNothing(t *testing.T) {
	t.Parallel()
	e := newEnv(t, userpilottest.Options{})
	cfg := workload.Config(e.url, workload.SlotName(e.url), e.up.URL(), apiKey, e.stateDir, 200)
	e.writeConfig(strings.Replace(cfg, "companies:\n", "delivery:\n  max_retained_wal: 0\n  outbox_after: 1s\ncompanies:\n", 1))
	ctx := context.Background()
	require.NoError(t, workload.Seed(ctx, e.conn, 200))
	p := e.run()
	e.converge(60 * time.Second)

	writer, err := pgx.Connect(ctx, e.url)
	require.NoError(t, err)
	defer writer.Close(ctx)
	wctx, stopWriting := context.WithCancel(ctx)
	var committed atomic.Int64
	writing := make(chan struct{})
	go func() {
		defer close(writing)
		rng := rand.New(rand.NewPCG(11, 12))
		for wctx.Err() == nil {
			if ok, err := workload.Step(wctx, writer, rng, 250); err == nil && ok {
				committed.Add(1)
			}
			time.Sleep(2 * time.Millisecond)
		}
	}()

	e.up.SetFault(&userpilottest.Fault{Status: 503})
	rng := rand.New(rand.NewPCG(13, 14))
	for range 5 { // outage: before and after the switch
		time.Sleep(time.Duration(300+rng.IntN(2000)) * time.Millisecond)
		p.kill9()
		p = e.run()
	}
	require.Eventually(t, func() bool { return strings.Contains(p.out.String(), `delivery mode: outbox`) }, 30*time.Second, 50*time.Millisecond)
	stopWriting()
	<-writing
	e.up.SetFault(&userpilottest.Fault{Delay: 20 * time.Millisecond, Apply: true, Status: 202}) // back, slowly: the drain takes a while
	for range 3 {                                                                               // while the outbox drains
		time.Sleep(time.Duration(200+rng.IntN(600)) * time.Millisecond)
		p.kill9()
		p = e.run()
	}
	e.up.SetFault(nil)
	e.converge(120 * time.Second)
	code, _ := p.stop(t)
	assert.Equal(t, 0, code)
	t.Logf("%d transactions committed during 8 kill -9s; %d records applied", committed.Load(), e.up.Accepted())
}
