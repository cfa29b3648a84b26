package e2e

import (
	"context"
	"encoding/json"
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

// statusDeadLetters runs `pgpilot status --json` and returns its count of
// dead letters.
func (e *env) statusDeadLetters() int {
	e.t.Helper()
	st := e.pgpilot("status", "--config", e.cfgPath, "--json")
	require.Equal(e.t, 0, st.wait(e.t, 60*time.Second), st.out.String())
	var report struct {
		DeadLetters int `json:"dead_letters"`
	}
	require.NoError(e.t, json.Unmarshal([]byte(st.out.String()), &report), st.out.String())
	return report.DeadLetters
}

// TestRemovedDeadLetterFileIsCreatedAgainAndCounted removes the running
// daemon's dead-letter file (rm), then renames it (a logrotate without
// copytruncate), each between two dead letters: the next one is in a new
// file under the name, and `status` counts it. Before, the daemon kept
// writing to the inode it had opened once: the file never came back and
// status said 0 while the checkpoint passed the records.
func TestRemovedDeadLetterFileIsCreatedAgainAndCounted(t *testing.T) {
	t.Parallel()
	e := newEnv(t, userpilottest.Options{})
	e.dropSlotAtEnd()
	e.up.RejectCompany("7", 400)
	ctx := context.Background()
	require.NoError(t, workload.Seed(ctx, e.conn, 20))
	path := filepath.Join(e.stateDir, state.DeadLetterFile)
	lines := func() []string {
		raw, err := os.ReadFile(path)
		if err != nil {
			return nil
		}
		return strings.Split(strings.TrimSpace(string(raw)), "\n")
	}
	p := e.run()
	e.convergeExcept(60*time.Second, "7")
	require.Eventually(t, func() bool { return len(lines()) == 1 }, 30*time.Second, 20*time.Millisecond,
		"company 7 is set aside by the initial sync")

	// Delivery is at least once: a transaction streamed again after a
	// reconnect may set company 7 aside twice, so the new file holds one
	// line or more, each of the change made after the file went.
	holdsOnly := func(plan string) func() bool {
		return func() bool {
			l := lines()
			for _, line := range l {
				if !strings.Contains(line, plan) {
					return false
				}
			}
			return len(l) > 0
		}
	}
	// status counts the file's lines itself, and a transaction streamed
	// again may append a duplicate between the two reads: both are read
	// again until they agree.
	countedByStatus := func() {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			want := len(lines())
			got := e.statusDeadLetters()
			if got == want && len(lines()) == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("status counts %d dead letters, the file holds %d", got, want)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	// The line is visible before the append ends (its fsync, the check
	// that the name still leads to the file): removed in between, the
	// append writes it again to a new file, as it must. Remove it once
	// the append said it is done.
	require.Eventually(t, func() bool {
		return strings.Count(p.out.String(), "record set aside in the dead-letter file") >= 1
	}, 30*time.Second, 20*time.Millisecond, "the first dead letter's append is done")
	require.NoError(t, os.Remove(path))
	_, err := e.conn.Exec(ctx, `UPDATE companies SET plan = 'after-rm' WHERE id IN (7, 8)`)
	require.NoError(t, err)
	e.convergeExcept(60*time.Second, "7")
	require.Eventually(t, holdsOnly("after-rm"), 20*time.Second, 20*time.Millisecond,
		"the dead letter after rm is in a new file: %q", lines())
	countedByStatus() // the dead letters written after rm

	rotatedHad := len(lines())
	require.Eventually(t, func() bool {
		return strings.Count(p.out.String(), "record set aside in the dead-letter file") >= 1+rotatedHad
	}, 30*time.Second, 20*time.Millisecond, "the appends after rm are done")
	require.NoError(t, os.Rename(path, path+".1"))
	_, err = e.conn.Exec(ctx, `UPDATE companies SET plan = 'after-rotate' WHERE id IN (7, 8)`)
	require.NoError(t, err)
	e.convergeExcept(60*time.Second, "7")
	require.Eventually(t, holdsOnly("after-rotate"), 20*time.Second, 20*time.Millisecond,
		"the dead letter after the rotation is in a new file: %q", lines())
	rotated, err := os.ReadFile(path + ".1")
	require.NoError(t, err)
	assert.Equal(t, rotatedHad, strings.Count(string(rotated), "\n"), "the rotated file keeps what it had")
	countedByStatus()

	code, _ := p.stop(t)
	assert.Equal(t, 0, code)
}

// TestTeardownThenRunResendsEveryRowAndNoStaleOutboxRecord leaves pgpilot
// killed in outbox mode (Userpilot down: the outbox owes six updates, one
// of a row deleted since), changes those rows again, wipes Userpilot, and
// runs teardown then run. Every row arrives again with its current values, and
// nothing the outbox held does. Before, teardown left store.db: the next
// run delivered the outbox's stale states first, and its initial sync
// skipped every row the no-op index knew, so Userpilot stayed empty of
// them.
func TestTeardownThenRunResendsEveryRowAndNoStaleOutboxRecord(t *testing.T) {
	t.Parallel()
	e := newEnv(t, userpilottest.Options{})
	cfg := workload.Config(e.url, workload.SlotName(e.url), e.up.URL(), apiKey, e.stateDir, 200)
	cfg = strings.Replace(cfg, "companies:\n", "delivery:\n  max_retained_wal: 0\n  outbox_after: 1s\ncompanies:\n", 1)
	e.writeConfig(cfg)
	ctx := context.Background()
	require.NoError(t, workload.Seed(ctx, e.conn, 20))
	p := e.run()
	e.converge(60 * time.Second)

	e.up.SetFault(&userpilottest.Fault{Status: 503})
	_, err := e.conn.Exec(ctx, `UPDATE companies SET plan = 'stale-outbox' WHERE id <= 6`)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		st, ok, err := state.ReadStatus(e.stateDir)
		return err == nil && ok && st.Mode == state.ModeOutbox && st.OutboxCompanies == 6
	}, 30*time.Second, 50*time.Millisecond, "the outbox owes companies 1-6")
	p.kill9()
	_, err = e.conn.Exec(ctx, `UPDATE companies SET plan = 'current' WHERE id <= 5; DELETE FROM companies WHERE id = 6`)
	require.NoError(t, err)
	e.up.SetFault(nil)
	e.up.Wipe()

	td := e.pgpilot("teardown", "--config", e.cfgPath, "--yes")
	require.Equal(t, 0, td.wait(t, 60*time.Second), td.out.String())
	out := td.out.String()
	assert.Contains(t, out, "the outbox holds changes of 6 companies not yet delivered to Userpilot")
	assert.Contains(t, out, "Companies whose row is gone from the table (1): 6. The next run does not send them")
	assert.Contains(t, out, "no-op index and outbox moved to ")
	assert.NoFileExists(t, filepath.Join(e.stateDir, state.StoreFile))
	kept, err := filepath.Glob(filepath.Join(e.stateDir, state.StoreFile+".torn-down-*"))
	require.NoError(t, err)
	assert.Len(t, kept, 1, "the store is kept aside, not deleted")
	exported, err := filepath.Glob(filepath.Join(e.stateDir, "outbox.torn-down-*.jsonl"))
	require.NoError(t, err)
	if assert.Len(t, exported, 1) {
		raw, err := os.ReadFile(exported[0])
		require.NoError(t, err)
		assert.Equal(t, 6, strings.Count(string(raw), "\n"), "every record the outbox owed, one a line")
		assert.Contains(t, string(raw), `{"company_id":"6",`)
	}

	sentBefore := len(e.up.Applied())
	p = e.run()
	e.waitInitialSync()
	converged := workload.WaitConverged(ctx, e.conn, e.up.Companies, 30*time.Second)
	assert.NoError(t, converged, "every row is sent again")
	applied := e.up.Applied()[sentBefore:]
	resent := map[string]bool{}
	for _, a := range applied {
		resent[a.CompanyID] = true
		assert.NotEqual(t, "stale-outbox", a.Metadata["plan"], "company %s: a stale outbox record arrived after teardown", a.CompanyID)
	}
	assert.Len(t, resent, 19, "every row is sent again, those the no-op index knew too")
	code, _ := p.stop(t)
	assert.Equal(t, 0, code)
}
