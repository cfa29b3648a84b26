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

	require.NoError(t, os.Remove(path))
	_, err := e.conn.Exec(ctx, `UPDATE companies SET plan = 'after-rm' WHERE id IN (7, 8)`)
	require.NoError(t, err)
	e.convergeExcept(60*time.Second, "7")
	require.Eventually(t, func() bool { return len(lines()) == 1 }, 20*time.Second, 20*time.Millisecond,
		"the dead letter after rm is in a new file")
	assert.Contains(t, lines()[0], `after-rm`)
	assert.Equal(t, 1, e.statusDeadLetters(), "status counts the dead letter written after rm")

	require.NoError(t, os.Rename(path, path+".1"))
	_, err = e.conn.Exec(ctx, `UPDATE companies SET plan = 'after-rotate' WHERE id IN (7, 8)`)
	require.NoError(t, err)
	e.convergeExcept(60*time.Second, "7")
	require.Eventually(t, func() bool { return len(lines()) == 1 }, 20*time.Second, 20*time.Millisecond,
		"the dead letter after the rotation is in a new file")
	assert.Contains(t, lines()[0], `after-rotate`)
	rotated, err := os.ReadFile(path + ".1")
	require.NoError(t, err)
	assert.Equal(t, 1, strings.Count(string(rotated), "\n"), "the rotated file keeps what it had")
	assert.Equal(t, 1, e.statusDeadLetters())

	code, _ := p.stop(t)
	assert.Equal(t, 0, code)
}
