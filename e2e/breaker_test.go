package e2e

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/internal/workload"
	"github.com/pgpilot/pgpilot/state"
	"github.com/pgpilot/pgpilot/userpilot/userpilottest"
)

// TestWrongEndpointStopsDeliveryKeepsTheWALAndResumesAfterTheFix points
// pgpilot at a server that answers 404 to everything (a wrong base URL, a
// proxy): `check` fails, `run` stops delivering instead of setting every
// record aside, keeps the checkpoint (so the slot) before the refused rows,
// says the fix once, and /readyz is 503 with it. Restarted with the right
// endpoint, every row arrives.
func TestWrongEndpointStopsDeliveryKeepsTheWALAndResumesAfterTheFix(t *testing.T) {
	t.Parallel()
	e := newEnv(t, userpilottest.Options{})
	e.dropSlotAtEnd()
	wrong := userpilottest.NewServer(userpilottest.Options{APIKey: apiKey})
	t.Cleanup(wrong.Close)
	wrong.AnswerAll(http.StatusNotFound)
	addr := freeAddr(t)
	configFor := func(endpoint string) string {
		cfg := workload.Config(e.url, e.slot(), endpoint, apiKey, e.stateDir, 2000)
		return strings.Replace(cfg, "companies:\n", "http:\n  listen: "+addr+"\ncompanies:\n", 1)
	}
	e.writeConfig(configFor(wrong.URL()))
	ctx := context.Background()
	require.NoError(t, workload.Seed(ctx, e.conn, 300))

	code, out := e.runCheck()
	assert.Equal(t, 1, code, out)
	requireFailedLine(t, out, "Userpilot at "+wrong.URL(), "not Userpilot's API", "answered HTTP 404", "fix: set userpilot.endpoint")
	assert.NotContains(t, out, apiKey)

	p := e.run()
	base := "http://" + addr
	var body string
	require.Eventually(t, func() bool {
		var code int
		code, body = httpGet(base + "/readyz")
		return code == http.StatusServiceUnavailable && strings.Contains(body, "delivery stopped")
	}, 30*time.Second, 50*time.Millisecond, "/readyz says delivery stopped")
	assert.Contains(t, body, "answers 404 on POST /v1/companies/identify")
	assert.Contains(t, body, "check the base URL")
	assert.Equal(t, 1, strings.Count(body, "\n"), "one line: %q", body)

	// Changes streamed while stopped are kept as well.
	var before string
	require.NoError(t, e.conn.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&before))
	beforeLSN, err := state.ParseLSN(before)
	require.NoError(t, err)
	_, err = e.conn.Exec(ctx, `UPDATE companies SET plan = 'while stopped' WHERE id <= 50`)
	require.NoError(t, err)
	time.Sleep(2 * time.Second) // time to set records aside and checkpoint, were it to

	_, err = os.Stat(filepath.Join(e.stateDir, state.DeadLetterFile))
	assert.ErrorIs(t, err, os.ErrNotExist, "nothing is set aside")
	cp := e.checkpoint()
	require.NotNil(t, cp.Snapshot, "the initial sync is not delivered")
	assert.Zero(t, cp.Snapshot.Rows, "no refused row of the initial sync counts as delivered")
	assert.LessOrEqual(t, cp.LSN, beforeLSN, "the checkpoint is not past the refused updates")
	assert.LessOrEqual(t, e.slotConfirmed(), beforeLSN, "nor is the slot")
	tried := len(wrong.Requests())
	assert.Less(t, tried, 100, "delivery stopped after the first refusals, it did not try every row")
	assert.Equal(t, 1, strings.Count(p.out.String(), "delivery stopped: userpilot.endpoint"), "the fix is logged once")
	assert.Empty(t, e.up.Companies())

	code, _ = p.stop(t)
	assert.Equal(t, 0, code, "a stop while stopped is clean: what was held is streamed again")
	st := e.pgpilot("status", "--config", e.cfgPath, "--json")
	require.Equal(t, 0, st.wait(t, 60*time.Second))
	var report struct {
		DeadLetters int `json:"dead_letters"`
		Delivery    struct {
			Stopped string `json:"stopped"`
		} `json:"delivery"`
	}
	require.NoError(t, json.Unmarshal([]byte(st.out.String()), &report))
	assert.Zero(t, report.DeadLetters)
	assert.Contains(t, report.Delivery.Stopped, "answers 404 on POST /v1/companies/identify", "`status` says why delivery stopped")

	// The operator fixes the endpoint and restarts: every row arrives.
	e.writeConfig(configFor(e.up.URL()))
	p = e.run()
	e.converge(60 * time.Second)
	e.waitInitialSync()
	require.Eventually(t, func() bool { code, _ := httpGet(base + "/readyz"); return code == http.StatusOK },
		30*time.Second, 50*time.Millisecond, "/readyz is 200 after the restart with the fix")
	code, _ = p.stop(t)
	assert.Equal(t, 0, code)
	_, err = os.Stat(filepath.Join(e.stateDir, state.DeadLetterFile))
	assert.ErrorIs(t, err, os.ErrNotExist)
	assert.Equal(t, tried, len(wrong.Requests()), "nothing more was sent there")
	t.Logf("the wrong endpoint got %d requests before delivery stopped", tried)
}
