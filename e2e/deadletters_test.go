package e2e

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
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

// cli runs a pgpilot command to its end with input on stdin and returns
// its exit code and output.
func (e *env) cli(input string, args ...string) (int, string) {
	e.t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Stdin = strings.NewReader(input)
	out, err := cmd.CombinedOutput()
	if err != nil {
		var exit *exec.ExitError
		require.ErrorAs(e.t, err, &exit, string(out))
		return exit.ExitCode(), string(out)
	}
	return 0, string(out)
}

func (e *env) outstandingDeadLetters() int {
	e.t.Helper()
	code, out := e.cli("", "status", "--config", e.cfgPath, "--json")
	require.Equal(e.t, 0, code, out)
	var report struct {
		DeadLetters int `json:"dead_letters"`
	}
	require.NoError(e.t, json.Unmarshal([]byte(out), &report), out)
	return report.DeadLetters
}

// TestDeadLettersAreListedReplayedFromTheCurrentRowAndDropped sets three
// companies aside, then, with the stream running, lists them, replays
// them (the rows as the table holds them now reach Userpilot; the one
// still refused is set aside again), and drops the last one after
// confirmation. The file stays JSON lines; `status` counts only what is
// outstanding.
func TestDeadLettersAreListedReplayedFromTheCurrentRowAndDropped(t *testing.T) {
	t.Parallel()
	e := newEnv(t, userpilottest.Options{})
	e.dropSlotAtEnd()
	for _, id := range []string{"7", "8", "9"} {
		e.up.RejectCompany(id, 400)
	}
	ctx := context.Background()
	require.NoError(t, workload.Seed(ctx, e.conn, 20))
	p := e.run()
	e.convergeExcept(60*time.Second, "7", "8", "9")
	_, err := e.conn.Exec(ctx, `UPDATE companies SET plan = 'current' WHERE id IN (7, 9, 10)`)
	require.NoError(t, err)
	e.convergeExcept(60*time.Second, "7", "8", "9")
	require.Eventually(t, func() bool { return e.outstandingDeadLetters() == 5 }, 60*time.Second, 100*time.Millisecond,
		"7 and 9 twice (snapshot, update), 8 once")

	code, out := e.cli("", "deadletters", "list", "--config", e.cfgPath)
	require.Equal(t, 0, code, out)
	for _, want := range []string{"COMPANY", "STATUS", "rejected by Userpilot", "5 outstanding dead letter(s) of 3 company(ies)"} {
		assert.Contains(t, out, want)
	}
	assert.NotContains(t, out, apiKey)
	code, out = e.cli("", "deadletters", "list", "--config", e.cfgPath, "--company", "7", "--json")
	require.Equal(t, 0, code, out)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	require.Len(t, lines, 2, out)
	var first state.DeadLetter
	require.NoError(t, json.Unmarshal([]byte(lines[0]), &first))
	assert.Contains(t, lines[0], `"plan":"pro"`, "the first dead letter holds the snapshot's, now stale, payload")

	// Userpilot accepts 7 and 9 again; replayed while the stream runs and
	// other companies change, their current rows arrive.
	e.up.RejectCompany("7", 0)
	e.up.RejectCompany("9", 0)
	stopWriting := make(chan struct{})
	wrote := make(chan struct{})
	go func() {
		defer close(wrote)
		for i := 0; ; i++ {
			select {
			case <-stopWriting:
				return
			case <-time.After(50 * time.Millisecond):
			}
			e.conn.Exec(ctx, `UPDATE companies SET seats = $1 WHERE id <= 5`, i)
		}
	}()
	replayed := time.Now()
	code, out = e.cli("", "deadletters", "replay", "--config", e.cfgPath, "--all")
	require.Equal(t, 0, code, out)
	assert.Contains(t, out, "replay of 3 company(ies) requested")
	require.Eventually(t, func() bool {
		md, _ := e.up.Company("7")
		md9, _ := e.up.Company("9")
		return md["plan"] == "current" && md9["plan"] == "current"
	}, 60*time.Second, 100*time.Millisecond, "the rows as they are now reach Userpilot")
	t.Logf("replayed rows in Userpilot %s after `deadletters replay` started", time.Since(replayed).Round(10*time.Millisecond))
	require.Eventually(t, func() bool { return e.outstandingDeadLetters() == 1 }, 60*time.Second, 100*time.Millisecond,
		"8, still refused, is set aside again; the rest is resolved")
	close(stopWriting)
	<-wrote
	e.convergeExcept(60*time.Second, "8")

	code, out = e.cli("n\n", "deadletters", "drop", "--config", e.cfgPath, "--company", "8")
	assert.Equal(t, 1, code, out)
	assert.Contains(t, out, "not confirmed; nothing dropped")
	assert.Equal(t, 1, e.outstandingDeadLetters())
	code, out = e.cli("y\n", "deadletters", "drop", "--config", e.cfgPath, "--company", "8")
	require.Equal(t, 0, code, out)
	assert.Contains(t, out, "dropped 1 dead letter(s)")
	assert.Zero(t, e.outstandingDeadLetters())
	code, out = e.cli("", "deadletters", "list", "--config", e.cfgPath)
	require.Equal(t, 0, code, out)
	assert.Contains(t, out, "no outstanding dead letters")

	code, _ = p.stop(t)
	assert.Equal(t, 0, code)

	// The file is still one JSON record a line, the replays and the drop
	// appended, nothing rewritten.
	raw, err := os.ReadFile(filepath.Join(e.stateDir, state.DeadLetterFile))
	require.NoError(t, err)
	var ops []string
	for _, l := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		var r struct {
			Op        string `json:"op"`
			CompanyID string `json:"company_id"`
		}
		require.NoError(t, json.Unmarshal([]byte(l), &r), l)
		if r.Op != "" {
			ops = append(ops, r.Op+" "+r.CompanyID)
		}
	}
	assert.Equal(t, []string{"replayed 7", "replayed 8", "replayed 9", "dropped 8"}, ops)
}

func TestDeadLettersCommandRefusesBadInputNamingTheFix(t *testing.T) {
	t.Parallel()
	e := newEnv(t, userpilottest.Options{})
	tests := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"deadletters"}, 2, "list|replay|drop"},
		{[]string{"deadletters", "purge", "--config", e.cfgPath}, 2, `unknown action "purge"`},
		{[]string{"deadletters", "replay", "--config", e.cfgPath}, 2, "--company ID, --user ID, or --all"},
		{[]string{"deadletters", "drop", "--config", e.cfgPath, "--all", "--company", "1"}, 2, "give one of --company, --user or --all"},
		{[]string{"deadletters", "list"}, 2, "--config FILE is required"},
		{[]string{"deadletters", "replay", "--config", e.cfgPath, "--company", "42"}, 1, "no outstanding dead letter"},
		{[]string{"deadletters", "list", "--config", e.cfgPath}, 0, "no outstanding dead letters"},
	}
	for _, tt := range tests {
		code, out := e.cli("", tt.args...)
		assert.Equal(t, tt.code, code, "%v: %s", tt.args, out)
		assert.Contains(t, out, tt.want, tt.args)
		assert.NotContains(t, out, apiKey)
	}
}
