package e2e

import (
	"context"
	"encoding/json"
	"math/rand/v2"
	"net"
	"os"
	"slices"
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

// TestKillNineAtRandomMomentsLosesNothing kills pgpilot without warning at
// random moments of a random workload, 20 times in one workload, then
// checks that Userpilot ends equal to the table. PGPILOT_SOAK=1 kills 60
// times.
func TestKillNineAtRandomMomentsLosesNothing(t *testing.T) {
	t.Parallel()
	kills := 20
	if os.Getenv("PGPILOT_SOAK") != "" {
		kills = 60
	}
	e := newEnv(t, userpilottest.Options{})
	ctx := context.Background()
	require.NoError(t, workload.Seed(ctx, e.conn, 200))

	writer, err := pgx.Connect(ctx, e.url)
	require.NoError(t, err)
	defer writer.Close(ctx)
	wctx, stopWriting := context.WithCancel(ctx)
	var committed atomic.Int64
	writing := make(chan struct{})
	go func() {
		defer close(writing)
		rng := rand.New(rand.NewPCG(7, 8))
		for wctx.Err() == nil {
			if ok, err := workload.Step(wctx, writer, rng, 300); err == nil && ok {
				committed.Add(1)
			}
			time.Sleep(time.Duration(rng.IntN(3)) * time.Millisecond)
		}
	}()

	rng := rand.New(rand.NewPCG(9, 10))
	for range kills {
		p := e.run()
		time.Sleep(time.Duration(100+rng.IntN(1400)) * time.Millisecond)
		p.kill9()
	}
	stopWriting()
	<-writing

	p := e.run()
	e.converge(120 * time.Second)
	code, _ := p.stop(t)
	assert.Equal(t, 0, code)
	t.Logf("%d kill -9s, %d transactions committed, %d identify requests, %d records applied",
		kills, committed.Load(), e.up.IdentifyRequests(), e.up.Accepted())
}

// TestRestartResumesWithoutResending stops pgpilot cleanly and starts it
// again: nothing delivered before is sent twice.
func TestRestartResumesWithoutResending(t *testing.T) {
	t.Parallel()
	e := newEnv(t, userpilottest.Options{})
	ctx := context.Background()
	require.NoError(t, workload.Seed(ctx, e.conn, 20))
	p := e.run()
	e.converge(60 * time.Second)
	_, err := e.conn.Exec(ctx, `UPDATE companies SET plan = 'pro' WHERE id <= 5`)
	require.NoError(t, err)
	e.converge(60 * time.Second)
	code, _ := p.stop(t)
	require.Equal(t, 0, code)
	before := e.up.IdentifyRequests()

	p = e.run()
	_, err = e.conn.Exec(ctx, `UPDATE companies SET plan = 'enterprise' WHERE id = 1`)
	require.NoError(t, err)
	e.converge(60 * time.Second)
	// Transactions arrive in commit order: had anything older been sent
	// again, it would have come before this one.
	assert.Equal(t, before+1, e.up.IdentifyRequests(), "only the new change is sent after a restart")
	code, _ = p.stop(t)
	assert.Equal(t, 0, code)
}

// TestSigtermDeliversWhatItHoldsAndExitsZero stops pgpilot while Userpilot
// is slow: it finishes the transaction in hand, checkpoints it, and exits 0.
func TestSigtermDeliversWhatItHoldsAndExitsZero(t *testing.T) {
	t.Parallel()
	e := newEnv(t, userpilottest.Options{})
	ctx := context.Background()
	require.NoError(t, workload.Seed(ctx, e.conn, 20))
	p := e.run()
	e.converge(60 * time.Second)
	before := e.up.IdentifyRequests()

	e.up.SetFault(&userpilottest.Fault{Delay: 200 * time.Millisecond})
	_, err := e.conn.Exec(ctx, `UPDATE companies SET seats = seats + 1`)
	require.NoError(t, err)
	require.Eventually(t, func() bool { return e.up.IdentifyRequests() > before }, 30*time.Second, 10*time.Millisecond)
	code, took := p.stop(t)
	assert.Equal(t, 0, code)
	t.Logf("stopped in %s", took)
	e.up.SetFault(nil)
	e.converge(time.Second) // delivered before exit: nothing is running now

	sent := e.up.IdentifyRequests()
	p = e.run()
	_, err = e.conn.Exec(ctx, `UPDATE companies SET plan = 'free' WHERE id = 2`)
	require.NoError(t, err)
	e.converge(60 * time.Second)
	assert.Equal(t, sent+1, e.up.IdentifyRequests(), "the drained transaction was checkpointed, so it is not sent again")
	p.stop(t)
}

// TestRolledBackTransactionIsNeverSent.
func TestRolledBackTransactionIsNeverSent(t *testing.T) {
	t.Parallel()
	e := newEnv(t, userpilottest.Options{})
	ctx := context.Background()
	require.NoError(t, workload.Seed(ctx, e.conn, 3))
	p := e.run()
	e.converge(60 * time.Second)
	tx, err := e.conn.Begin(ctx)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, `INSERT INTO companies (id, name) VALUES (999, 'Ghost')`)
	require.NoError(t, err)
	require.NoError(t, tx.Rollback(ctx))
	_, err = e.conn.Exec(ctx, `UPDATE companies SET name = 'After rollback' WHERE id = 1`)
	require.NoError(t, err)
	e.converge(60 * time.Second)
	for _, r := range e.up.Requests() {
		assert.NotContains(t, r.CompanyIDs, "999", "a rolled-back insert never reaches Userpilot")
	}
	p.stop(t)
}

// TestFiftyThousandRowTransaction streams one large transaction through.
func TestFiftyThousandRowTransaction(t *testing.T) {
	t.Parallel()
	e := newEnv(t, userpilottest.Options{})
	e.writeConfig(workload.Config(e.url, workload.SlotName(e.url), e.up.URL(), apiKey, e.stateDir, 20000))
	ctx := context.Background()
	p := e.run()
	e.waitInitialSync()
	start := time.Now()
	require.NoError(t, workload.Seed(ctx, e.conn, 50_000))
	e.converge(5 * time.Minute)
	t.Logf("50,000-row transaction delivered in %s", time.Since(start).Round(time.Millisecond))
	code, _ := p.stop(t)
	assert.Equal(t, 0, code)
}

// TestNullsUnicodeAndExactNumbersArriveIntact checks one payload to the
// letter.
func TestNullsUnicodeAndExactNumbersArriveIntact(t *testing.T) {
	t.Parallel()
	e := newEnv(t, userpilottest.Options{})
	ctx := context.Background()
	p := e.run()
	e.waitInitialSync()
	_, err := e.conn.Exec(ctx, `INSERT INTO companies (id, name, plan, seats, monthly_spend, trial, created_at)
		VALUES (42, 'Zürich 株式会社 🚀 "q" \ tab	x', NULL, 7, 1234567890123456789012345678.0123456789, false, '2024-03-01 10:30:00+01:00')`)
	require.NoError(t, err)
	require.Eventually(t, func() bool { _, ok := e.up.Company("42"); return ok }, 30*time.Second, 20*time.Millisecond)
	got, _ := e.up.Company("42")
	assert.Equal(t, "Zürich 株式会社 🚀 \"q\" \\ tab\tx", got["name"])
	assert.Equal(t, json.Number("7"), got["seats"])
	assert.Equal(t, false, got["trial"])
	assert.Equal(t, "2024-03-01T09:30:00Z", got["created_at"])
	assert.Contains(t, got, "plan", "NULL is sent as null")
	assert.Nil(t, got["plan"], "NULL clears the value")
	applied := e.up.Applied()
	last := applied[len(applied)-1]
	require.Equal(t, "42", last.CompanyID)
	assert.Contains(t, last.Metadata, "plan")
	assert.Nil(t, last.Metadata["plan"], "NULL is sent as JSON null")
	spend, ok := got["monthly_spend"].(json.Number)
	require.True(t, ok, "numbers arrive as JSON numbers")
	assert.True(t, strings.HasPrefix(string(spend), "1234567890123456789012345678.0123456789"), "no digit lost: %s", spend)
	p.stop(t)
}

// TestBadConfigExitsTwoBeforeTouchingPostgres points pgpilot at a listener
// that records connections, with a broken config.
func TestBadConfigExitsTwoBeforeTouchingPostgres(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	var touched atomic.Bool
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			touched.Store(true)
			c.Close()
		}
	}()
	e := newEnv(t, userpilottest.Options{})
	url := "postgres://postgres:pw-never-printed@" + ln.Addr().String() + "/app"
	tests := []struct {
		name, config, want string
	}{
		{"unknown key", workload.Config(url, "s", e.up.URL(), apiKey, e.stateDir, 10) + "extra: 1\n", `unknown key "extra"`},
		{"unset variable", strings.Replace(workload.Config(url, "s", e.up.URL(), apiKey, e.stateDir, 10), apiKey, "${PGPILOT_TEST_UNSET_VAR}", 1), "PGPILOT_TEST_UNSET_VAR is not set"},
		{"plain http to a remote host", workload.Config(url, "s", "http://example.com", apiKey, e.stateDir, 10), "https"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e.writeConfig(tt.config)
			p := e.run()
			assert.Equal(t, 2, p.wait(t, 30*time.Second))
			out := p.out.String()
			assert.Contains(t, out, tt.want)
			assert.Contains(t, out, "pgpilot.yaml:", "the message names the file and line")
			assert.NotContains(t, out, "pw-never-printed")
			assert.NotContains(t, out, apiKey)
		})
	}
	assert.False(t, touched.Load(), "no connection was opened to Postgres")
}

// TestSecretsNeverAppearInOutput runs against a password-protected server
// with a wrong password, then with a key Userpilot refuses, and reads every
// line pgpilot printed.
func TestSecretsNeverAppearInOutput(t *testing.T) {
	t.Parallel()
	const password = "pg-pa55-9f3e1c"
	srv := pgtestWithPassword(t, password)
	ctx := context.Background()
	url := srv.URL("postgres")
	conn, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	defer conn.Close(ctx)
	require.NoError(t, workload.Create(ctx, conn))
	require.NoError(t, workload.Seed(ctx, conn, 3))

	up := userpilottest.NewServer(userpilottest.Options{APIKey: "the-right-key"})
	defer up.Close()
	e := &env{t: t, url: url, conn: conn, up: up, cfgPath: t.TempDir() + "/pgpilot.yaml", stateDir: t.TempDir() + "/state"}

	wrongPW := strings.Replace(url, password, "wrong-"+password, 1)
	require.NotEqual(t, url, wrongPW)
	e.writeConfig(workload.Config(wrongPW, "secrets", up.URL(), apiKey, e.stateDir, 100))
	p := e.run()
	assert.Equal(t, 2, p.wait(t, 60*time.Second), "a refused password is a configuration problem")
	outputs := []string{p.out.String()}
	assert.Contains(t, outputs[0], "password authentication failed")

	e.writeConfig(workload.Config(url, "secrets", up.URL(), apiKey, e.stateDir, 100))
	p = e.run()
	require.Eventually(t, func() bool { return strings.Contains(p.out.String(), "api_key") }, 60*time.Second, 50*time.Millisecond,
		"a refused key is reported loudly")
	p.stop(t)
	outputs = append(outputs, p.out.String())
	for _, cmd := range []string{"status", "check"} {
		c := e.pgpilot(cmd, "--config", e.cfgPath)
		c.wait(t, 60*time.Second)
		outputs = append(outputs, c.out.String())
	}
	for i, out := range outputs {
		assert.NotContains(t, out, password, "output %d", i)
		assert.NotContains(t, out, apiKey, "output %d", i)
	}
}

func TestUnchangedToastedColumnIsOmittedNotNulled(t *testing.T) {
	t.Parallel()
	e := newEnv(t, userpilottest.Options{})
	ctx := context.Background()
	big := strings.Repeat("long note ", 2000) // 20 kB: stored out of line
	_, err := e.conn.Exec(ctx, `INSERT INTO companies (id, name, notes) VALUES (1, 'Toasty', $1)`, big)
	require.NoError(t, err)
	p := e.run()
	e.converge(60 * time.Second)
	n := len(e.up.Applied())
	_, err = e.conn.Exec(ctx, `UPDATE companies SET plan = 'pro' WHERE id = 1`)
	require.NoError(t, err)
	e.converge(60 * time.Second)
	applied := e.up.Applied()[n:]
	i := slices.IndexFunc(applied, func(a userpilottest.Applied) bool { return a.CompanyID == "1" })
	require.GreaterOrEqual(t, i, 0)
	assert.Equal(t, "pro", applied[i].Metadata["plan"])
	assert.NotContains(t, applied[i].Metadata, "notes", "an untouched TOASTed column is left out, not sent as null")
	got, _ := e.up.Company("1")
	assert.Equal(t, big, got["notes"], "so Userpilot keeps the value it had")
	p.stop(t)
}
