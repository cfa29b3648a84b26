package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/daemon"
	"github.com/pgpilot/pgpilot/internal/workload"
	"github.com/pgpilot/pgpilot/userpilot/userpilottest"
)

// why runs `pgpilot why ID --json` and decodes its answer.
func (e *env) why(id string) daemon.Whereabouts {
	e.t.Helper()
	code, out := e.cli("", "why", id, "--config", e.cfgPath, "--json")
	require.Equal(e.t, 0, code, out)
	var w daemon.Whereabouts
	require.NoError(e.t, json.Unmarshal([]byte(out), &w), out)
	return w
}

// waitWhy waits until `pgpilot why ID` says what ok wants, and returns it.
func (e *env) waitWhy(id string, what string, ok func(daemon.Whereabouts) bool) daemon.Whereabouts {
	e.t.Helper()
	var w daemon.Whereabouts
	deadline := time.Now().Add(60 * time.Second)
	for {
		if w = e.why(id); ok(w) {
			return w
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("company %s: %s never said within 60s; last answer: %+v", id, what, w)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestWhySaysWhereACompanyStandsRunningAndStopped asks `pgpilot why` about
// companies held in each state, the stand-in slowed or failing to keep
// them there: delivered (its fingerprints, when and by which path),
// dead-lettered (the reason), pending (its turn behind the calls in
// flight), in a bulk job (its id), in the outbox; first of the running
// pgpilot (over http.listen), then, killed, of the state directory.
func TestWhySaysWhereACompanyStandsRunningAndStopped(t *testing.T) {
	t.Parallel()
	e := newEnv(t, userpilottest.Options{})
	e.dropSlotAtEnd()
	ctx := context.Background()
	addr := freeAddr(t)
	// rate_limit 5: four real-time workers, so a few slow calls fill them,
	// and a burst of 200 is worth a bulk job.
	configWith := func(delivery string) string {
		cfg := workload.Config(e.url, e.slot(), e.up.URL(), apiKey, e.stateDir, 5)
		return strings.Replace(cfg, "companies:\n", delivery+"http:\n  listen: "+addr+"\ncompanies:\n", 1)
	}
	e.writeConfig(configWith(""))
	require.NoError(t, workload.Seed(ctx, e.conn, 300))
	p := e.run()
	e.waitInitialSync()
	e.converge(60 * time.Second)

	// Delivered: the index's fingerprints, and when and how.
	w := e.why("5")
	assert.Equal(t, "delivered", w.State, "%+v", w)
	assert.Equal(t, "running pgpilot", w.Source)
	assert.Equal(t, "nothing: Userpilot holds the values the no-op index records; a change to a mapped column sends them again", w.WaitingFor)
	require.NotNil(t, w.Store)
	for _, key := range []string{"name", "plan", "seats", "monthly_spend", "trial", "created_at", "notes"} {
		assert.Regexp(t, `^[0-9a-f]{16}$`, w.Store.Fingerprints[key], "fingerprint of %s", key)
	}
	require.NotNil(t, w.Delivered, "the running pgpilot remembers the delivery")
	assert.Contains(t, []string{"bulk", "realtime"}, w.Delivered.Path)
	code, out := e.cli("", "why", "5", "--config", e.cfgPath)
	require.Equal(t, 0, code, out)
	assert.Regexp(t, `(?m)^state\s+delivered$`, out)
	assert.Regexp(t, `(?m)^  name\s+[0-9a-f]{16}$`, out)

	// Dead-lettered: refused; a neighbour accepted meanwhile vouches that
	// the refusal is the record's, not the endpoint's.
	e.up.RejectCompany("7", http.StatusBadRequest)
	_, err := e.conn.Exec(ctx, `UPDATE companies SET seats = seats + 1 WHERE id = 7`)
	require.NoError(t, err)
	w = e.waitWhy("7", "dead_lettered", func(w daemon.Whereabouts) bool {
		_, err := e.conn.Exec(ctx, `UPDATE companies SET seats = seats + 1 WHERE id = 8`)
		require.NoError(t, err)
		return w.State == "dead_lettered"
	})
	require.Len(t, w.DeadLetters, 1)
	assert.Equal(t, http.StatusBadRequest, w.DeadLetters[0].Status)
	assert.Contains(t, w.WaitingFor, "pgpilot deadletters replay --company 7")
	e.waitWhy("8", "delivered", func(w daemon.Whereabouts) bool { return w.State == "delivered" })

	// Pending: every identify answered after 25 s holds the four
	// workers; companies changed after them wait their turn.
	e.up.SetFault(&userpilottest.Fault{Delay: 25 * time.Second})
	for id := 11; id <= 16; id++ {
		_, err := e.conn.Exec(ctx, `UPDATE companies SET name = name || '!' WHERE id = $1`, id)
		require.NoError(t, err)
	}
	var pending, inFlight []string
	require.Eventually(t, func() bool {
		pending, inFlight = nil, nil
		for id := 11; id <= 16; id++ {
			switch w := e.why(fmt.Sprint(id)); w.State {
			case "pending":
				if w.Pipeline != nil && w.Pipeline.Ahead >= 0 && strings.HasPrefix(w.WaitingFor, "its turn") && w.LastChange != nil && w.LastChange.LSN != "" {
					pending = append(pending, fmt.Sprint(id))
				}
			case "in_flight":
				if strings.HasPrefix(w.WaitingFor, "Userpilot's answer to the identify call") {
					inFlight = append(inFlight, fmt.Sprint(id))
				}
			}
		}
		return len(pending) > 0 && len(inFlight) > 0
	}, 60*time.Second, 100*time.Millisecond, "companies pending behind the calls in flight")

	// In a bulk job: jobs now take a minute; the real-time path is stuck,
	// so a job takes the burst.
	e.up.SetBulkSpeed(1, time.Minute)
	_, err = e.conn.Exec(ctx, `UPDATE companies SET seats = seats + 1 WHERE id BETWEEN 101 AND 300`)
	require.NoError(t, err)
	var inJob string
	require.Eventually(t, func() bool {
		for _, r := range e.up.Requests() {
			if strings.HasSuffix(r.Path, "/bulk_identify") && r.Status/100 == 2 && len(r.CompanyIDs) > 0 {
				inJob = r.CompanyIDs[len(r.CompanyIDs)/2]
				return true
			}
		}
		return false
	}, 30*time.Second, 50*time.Millisecond, "a bulk job submitted")
	w = e.waitWhy(inJob, "in_job with its id", func(w daemon.Whereabouts) bool { return w.State == "in_job" && w.Job != nil && w.Job.ID != "" })
	jobID := w.Job.ID
	assert.Contains(t, w.WaitingFor, "Userpilot to complete bulk job "+jobID)
	assert.GreaterOrEqual(t, w.Job.Records, 100)

	// Stopped: the state directory says the same of what it holds.
	p.kill9()
	w = e.why(inJob)
	assert.Equal(t, "state directory", w.Source)
	assert.Equal(t, "in_job", w.State, "%+v", w)
	require.NotNil(t, w.Job)
	assert.Equal(t, jobID, w.Job.ID)
	assert.Contains(t, w.WaitingFor, "holds it until bulk job "+jobID+" ends")
	w = e.why("5")
	assert.Equal(t, "delivered", w.State, "%+v", w)
	assert.NotEmpty(t, w.Store.Fingerprints["name"])
	w = e.why("7")
	assert.Equal(t, "dead_lettered", w.State, "%+v", w)

	// In the outbox: Userpilot answers 503 to everything; after
	// outbox_after what is owed goes to the outbox.
	e.up.SetFault(nil)
	e.up.AnswerAll(http.StatusServiceUnavailable)
	e.writeConfig(configWith("delivery:\n  outbox_after: 1s\n"))
	p = e.run()
	_, err = e.conn.Exec(ctx, `UPDATE companies SET plan = 'outbox' WHERE id = 20`)
	require.NoError(t, err)
	w = e.waitWhy("20", "outbox", func(w daemon.Whereabouts) bool { return w.State == "outbox" })
	assert.Equal(t, "running pgpilot", w.Source)
	assert.Contains(t, w.WaitingFor, "Userpilot to accept again (outbox mode")
	require.NotNil(t, w.LastChange)
	assert.NotEmpty(t, w.LastChange.LSN)
	p.kill9()
	w = e.why("20")
	assert.Equal(t, "state directory", w.Source)
	assert.Equal(t, "outbox", w.State, "%+v", w)
	require.NotNil(t, w.Store.Outbox)
	assert.Equal(t, "the next `pgpilot run`, which delivers what the outbox owes ahead of the stream", w.WaitingFor)

	// A company pgpilot never saw.
	w = e.why("no-such-company")
	assert.Equal(t, "unknown", w.State)
	assert.True(t, slices.Contains([]string{"state directory"}, w.Source))
}
