package daemon_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/mapping"
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
