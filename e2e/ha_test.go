package e2e

import (
	"context"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/internal/workload"
	"github.com/pgpilot/pgpilot/userpilot/userpilottest"
)

// TestSecondInstanceStandsByAndTakesOverWhenTheFirstDies runs two pgpilots
// on one state directory (and so one slot): the second stands by, only the
// first delivers, and when the first is killed the second takes over within
// seconds and nothing is lost.
func TestSecondInstanceStandsByAndTakesOverWhenTheFirstDies(t *testing.T) {
	t.Parallel()
	e := newEnv(t, userpilottest.Options{})
	ctx := context.Background()
	require.NoError(t, workload.Seed(ctx, e.conn, 20))
	first := e.run()
	e.converge(60 * time.Second)
	second := e.run()
	require.Eventually(t, func() bool { return strings.Contains(second.out.String(), "standing by") }, 30*time.Second, 20*time.Millisecond)

	_, err := e.conn.Exec(ctx, `UPDATE companies SET plan = 'while-first-runs'`)
	require.NoError(t, err)
	e.converge(60 * time.Second)
	assert.NotContains(t, second.out.String(), `"flushed"`, "the standby delivers nothing: no split brain")

	first.kill9()
	died := time.Now()
	_, err = e.conn.Exec(ctx, `UPDATE companies SET plan = 'after-takeover'`)
	require.NoError(t, err)
	e.converge(60 * time.Second)
	t.Logf("the standby took over and delivered %s after the first was killed", time.Since(died).Round(time.Millisecond))
	assert.Contains(t, second.out.String(), "state directory locked; starting")
	code, _ := second.stop(t)
	assert.Equal(t, 0, code)
}

// TestSecondInstanceWithTheSameHTTPListenStandsByAndServesItAfterTakeover
// runs two pgpilots with one config file, http.listen included, as the
// docs/deploy.md says: the second does not exit because the port is taken;
// it stands by, and when the first dies it takes the state
// directory and the port over, answering /healthz and /readyz there.
func TestSecondInstanceWithTheSameHTTPListenStandsByAndServesItAfterTakeover(t *testing.T) {
	t.Parallel()
	e := newEnv(t, userpilottest.Options{})
	addr := freeAddr(t)
	cfg := workload.Config(e.url, workload.SlotName(e.url), e.up.URL(), apiKey, e.stateDir, 2000)
	e.writeConfig(strings.Replace(cfg, "companies:\n", "http:\n  listen: "+addr+"\ncompanies:\n", 1))
	e.dropSlotAtEnd()
	ctx := context.Background()
	require.NoError(t, workload.Seed(ctx, e.conn, 20))
	base := "http://" + addr

	first := e.run()
	e.converge(60 * time.Second)
	require.Eventually(t, func() bool { code, _ := httpGet(base + "/readyz"); return code == http.StatusOK },
		30*time.Second, 50*time.Millisecond, "the first instance serves http.listen")
	second := e.run()
	require.Eventually(t, func() bool {
		return strings.Contains(second.out.String(), "standing by") && strings.Contains(second.out.String(), "http.listen is in use")
	}, 30*time.Second, 20*time.Millisecond, second.out.String())
	select {
	case <-second.done:
		t.Fatalf("the second instance exited (code %d) instead of standing by:\n%s", second.cmd.ProcessState.ExitCode(), second.out.String())
	case <-time.After(2 * bindGraceE2E):
	}

	first.kill9()
	died := time.Now()
	require.Eventually(t, func() bool { code, _ := httpGet(base + "/healthz"); return code == http.StatusOK },
		30*time.Second, 20*time.Millisecond, "the second instance serves http.listen once the first is gone")
	healthy := time.Since(died)
	_, err := e.conn.Exec(ctx, `UPDATE companies SET plan = 'after-takeover'`)
	require.NoError(t, err)
	e.converge(60 * time.Second)
	require.Eventually(t, func() bool { code, _ := httpGet(base + "/readyz"); return code == http.StatusOK },
		30*time.Second, 50*time.Millisecond, "and is ready there once streaming")
	t.Logf("the standby answered /healthz on the shared port %s after the first was killed", healthy.Round(time.Millisecond))
	assert.Contains(t, second.out.String(), "http.listen is free now: serving it")
	code, _ := second.stop(t)
	assert.Equal(t, 0, code)
}

// bindGraceE2E is daemon.bindGrace: how long an instance that holds the
// state directory waits for a port still taken.
const bindGraceE2E = 5 * time.Second

// TestHTTPListenTakenByAnotherProgramExitsTwoWithTheFix: a port that stays
// taken once pgpilot holds the state directory is not another pgpilot's:
// exit 2, naming the address and the ways out.
func TestHTTPListenTakenByAnotherProgramExitsTwoWithTheFix(t *testing.T) {
	t.Parallel()
	e := newEnv(t, userpilottest.Options{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	cfg := workload.Config(e.url, workload.SlotName(e.url), e.up.URL(), apiKey, e.stateDir, 2000)
	e.writeConfig(strings.Replace(cfg, "companies:\n", "http:\n  listen: "+ln.Addr().String()+"\ncompanies:\n", 1))
	p := e.run()
	assert.Equal(t, 2, p.wait(t, 30*time.Second))
	out := p.out.String()
	assert.Contains(t, out, "http.listen "+ln.Addr().String())
	assert.Contains(t, out, "address already in use")
	assert.Contains(t, out, "${PGPILOT_LISTEN}")
	assert.NotContains(t, out, apiKey)
}

// TestTwoInstancesWithAPortEachBothAnswerAndTheStandbySaysSo runs the
// docs/deploy.md's other way: one config file with http.listen: ${PGPILOT_LISTEN},
// a port per instance. Both answer /healthz; the standby's /readyz is 503
// and says it stands by, until the first dies.
func TestTwoInstancesWithAPortEachBothAnswerAndTheStandbySaysSo(t *testing.T) {
	t.Parallel()
	e := newEnv(t, userpilottest.Options{})
	cfg := workload.Config(e.url, workload.SlotName(e.url), e.up.URL(), apiKey, e.stateDir, 2000)
	e.writeConfig(strings.Replace(cfg, "companies:\n", "http:\n  listen: ${PGPILOT_LISTEN}\ncompanies:\n", 1))
	e.dropSlotAtEnd()
	ctx := context.Background()
	require.NoError(t, workload.Seed(ctx, e.conn, 20))
	runOn := func(addr string) *proc {
		return e.start(binary, []string{"PGPILOT_LISTEN=" + addr}, "run", "--config", e.cfgPath)
	}
	firstAddr, secondAddr := freeAddr(t), freeAddr(t)
	first := runOn(firstAddr)
	e.converge(60 * time.Second)
	second := runOn(secondAddr)
	require.Eventually(t, func() bool {
		code, body := httpGet("http://" + secondAddr + "/readyz")
		return code == http.StatusServiceUnavailable && strings.Contains(body, "standing by")
	}, 30*time.Second, 20*time.Millisecond, "the standby answers on its own port and says why it is not ready")
	code, _ := httpGet("http://" + secondAddr + "/healthz")
	assert.Equal(t, http.StatusOK, code)
	require.Eventually(t, func() bool { code, _ := httpGet("http://" + firstAddr + "/readyz"); return code == http.StatusOK },
		30*time.Second, 50*time.Millisecond, "the active one is ready on its port")

	first.kill9()
	_, err := e.conn.Exec(ctx, `UPDATE companies SET plan = 'after-takeover'`)
	require.NoError(t, err)
	e.converge(60 * time.Second)
	require.Eventually(t, func() bool { code, _ := httpGet("http://" + secondAddr + "/readyz"); return code == http.StatusOK },
		30*time.Second, 50*time.Millisecond, "the second is ready on its port once it streams")
	exit, _ := second.stop(t)
	assert.Equal(t, 0, exit)
}
