package daemon_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/internal/workload"
	"github.com/pgpilot/pgpilot/mapping"
	"github.com/pgpilot/pgpilot/state"
	"github.com/pgpilot/pgpilot/userpilot/userpilottest"
)

func TestOnDeletePoliciesAgainstRealDeletes(t *testing.T) {
	t.Parallel()
	tests := []struct {
		policy      string
		wantDeleted []string
		wantMark    bool
	}{
		{mapping.OnDeleteIgnore, nil, false},
		{mapping.OnDeleteMark, nil, true},
		{mapping.OnDeleteDelete, []string{"2"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.policy, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, userpilottest.Options{})
			e.cfg.Companies.OnDelete = tt.policy
			if tt.policy == mapping.OnDeleteMark {
				e.cfg.Companies.OnDeleteMetadata = map[string]any{"deleted": true}
			}
			ctx := context.Background()
			_, err := e.conn.Exec(ctx, `INSERT INTO companies (id, name) VALUES (1, 'stays'), (2, 'goes')`)
			require.NoError(t, err)
			stop := e.start(ctx, 5*time.Second)
			e.waitInitialSync()
			_, err = e.conn.Exec(ctx, `DELETE FROM companies WHERE id = 2; UPDATE companies SET plan = 'after' WHERE id = 1`)
			require.NoError(t, err)
			require.Eventually(t, func() bool {
				got, _ := e.up.Company("1")
				return got["plan"] == "after"
			}, 30*time.Second, 20*time.Millisecond)
			require.NoError(t, stop())
			assert.Equal(t, tt.wantDeleted, e.up.Deleted())
			got, ok := e.up.Company("2")
			require.True(t, ok, "Userpilot deletes in a daily batch: the profile is still there")
			if tt.wantMark {
				assert.Equal(t, true, got["deleted"])
			} else {
				assert.NotContains(t, got, "deleted")
			}
		})
	}
}

// A batch of 1,000 deletions that Userpilot refuses because of one id is
// split and sent again, half by half, so only that id is set aside; every
// request keeps to Userpilot's one delete every 2 seconds.
func TestRefusedDeleteBatchIsSplitUntilOnlyTheBadIDIsSetAside(t *testing.T) {
	t.Parallel()
	e := newEnv(t, userpilottest.Options{})
	e.cfg.Companies.OnDelete = mapping.OnDeleteDelete
	e.up.RejectDeletion("500", 400)
	ctx := context.Background()
	require.NoError(t, workload.Seed(ctx, e.conn, 1000))
	stop := e.start(ctx, 5*time.Second)
	e.waitInitialSync()
	_, err := e.conn.Exec(ctx, `DELETE FROM companies`)
	require.NoError(t, err)
	require.Eventually(t, func() bool { return len(e.up.Deleted()) >= 999 }, 90*time.Second, 100*time.Millisecond,
		"the 999 good ids are deleted")
	// Once the last half with the bad id was refused alone, it is set aside.
	require.Eventually(t, func() bool { return len(deadLetters(t, e.cfg.State.Dir)) > 0 }, 10*time.Second, 50*time.Millisecond)
	require.NoError(t, stop())

	assert.Len(t, e.up.Deleted(), 999)
	assert.NotContains(t, e.up.Deleted(), "500")
	var ids []string
	for _, dl := range deadLetters(t, e.cfg.State.Dir) {
		ids = append(ids, dl.CompanyID)
		assert.Equal(t, 400, dl.Status)
	}
	assert.Equal(t, []string{"500"}, ids, "only the id Userpilot refuses is set aside")

	var deletes []userpilottest.Request
	for _, r := range e.up.Requests() {
		if r.Method == "DELETE" {
			deletes = append(deletes, r)
		}
	}
	for i, r := range deletes {
		assert.NotEqual(t, 429, r.Status, "delete request %d was rate limited", i)
		if i > 0 {
			assert.GreaterOrEqual(t, r.Time.Sub(deletes[i-1].Time), 2*time.Second, "delete requests %d and %d", i-1, i)
		}
	}
	t.Logf("%d delete requests isolated the bad id among 1,000, over %s", len(deletes), deletes[len(deletes)-1].Time.Sub(deletes[0].Time).Round(time.Second))
}

// deadLetters reads the dead-letter file of a state directory.
func deadLetters(t *testing.T, dir string) []state.DeadLetter {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, state.DeadLetterFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	require.NoError(t, err)
	var out []state.DeadLetter
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		var dl state.DeadLetter
		require.NoError(t, json.Unmarshal([]byte(line), &dl), line)
		out = append(out, dl)
	}
	return out
}
