package daemon_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/internal/workload"
	"github.com/pgpilot/pgpilot/mapping"
	"github.com/pgpilot/pgpilot/userpilot/userpilottest"
)

// TestReplicaIdentityFullAndDefaultUnderDeletePolicies streams inserts,
// updates, an update that changes the primary key (the company_id) and
// deletes, with the table's REPLICA IDENTITY DEFAULT (a DELETE carries only
// the key) and FULL (every UPDATE and DELETE carries the whole old row),
// under each on_delete policy that acts on the old row. Userpilot must end
// equal to the table, and every company whose row is gone, including the
// old id of the changed key, must be marked or deleted per the policy.
func TestReplicaIdentityFullAndDefaultUnderDeletePolicies(t *testing.T) {
	t.Parallel()
	for _, identity := range []string{"DEFAULT", "FULL"} {
		for _, policy := range []string{mapping.OnDeleteMark, mapping.OnDeleteDelete} {
			t.Run(identity+"/"+policy, func(t *testing.T) {
				t.Parallel()
				e := newEnv(t, userpilottest.Options{})
				e.cfg.Companies.OnDelete = policy
				if policy == mapping.OnDeleteMark {
					e.cfg.Companies.OnDeleteMetadata = map[string]any{"deleted": true}
				}
				ctx := context.Background()
				_, err := e.conn.Exec(ctx, `ALTER TABLE companies REPLICA IDENTITY `+identity)
				require.NoError(t, err)
				require.NoError(t, workload.Seed(ctx, e.conn, 20))
				stop := e.start(ctx, 5*time.Second)
				e.waitInitialSync()

				for _, sql := range []string{
					`INSERT INTO companies (id, name, plan) SELECT g, 'New ' || g, 'free' FROM generate_series(21, 25) g`,
					`UPDATE companies SET name = name || ' renamed', plan = 'pro' WHERE id <= 5`,
					`UPDATE companies SET updated_at = now() WHERE id = 6`, // nothing mapped changes
					`UPDATE companies SET notes = repeat('toasted ', 4000) WHERE id = 7`,
					`UPDATE companies SET plan = 'enterprise' WHERE id = 7`, // notes unchanged, TOASTed
					// The key changes: company 5 is gone, 105 is new.
					`UPDATE companies SET id = 105, seats = 5 WHERE id = 5`,
					`DELETE FROM companies WHERE id IN (2, 7, 21)`, // 7 with a TOASTed value
					`BEGIN; INSERT INTO companies (id, name) VALUES (30, 'short-lived'); DELETE FROM companies WHERE id = 30; COMMIT`,
					`UPDATE companies SET seats = 99 WHERE id = 105`,
				} {
					_, err := e.conn.Exec(ctx, sql)
					require.NoError(t, err, sql)
				}
				gone := []string{"2", "5", "7", "21", "30"}

				var diff []string
				converged := func() bool {
					want, err := workload.Expected(ctx, e.conn)
					require.NoError(t, err)
					got := e.up.Companies()
					diff = nil
					for _, id := range gone {
						require.NotContains(t, want, id)
						md, ok := got[id]
						delete(got, id)
						switch {
						case policy == mapping.OnDeleteMark && (!ok || md["deleted"] != true):
							diff = append(diff, fmt.Sprintf("company %s is not marked deleted: %v", id, md))
						case policy == mapping.OnDeleteDelete && !slices.Contains(e.up.Deleted(), id):
							diff = append(diff, fmt.Sprintf("company %s was not deleted", id))
						}
					}
					diff = append(diff, workload.Diff(want, got)...)
					return len(diff) == 0
				}
				deadline := time.Now().Add(60 * time.Second)
				for !converged() && time.Now().Before(deadline) {
					time.Sleep(100 * time.Millisecond)
				}
				require.Empty(t, diff, "Userpilot ends equal to the table, and the gone rows are handled per on_delete: %s", strings.Join(diff, "\n"))
				require.NoError(t, stop())
				if policy == mapping.OnDeleteDelete {
					deleted := e.up.Deleted()
					slices.Sort(deleted)
					assert.Equal(t, []string{"2", "21", "30", "5", "7"}, deleted, "only the gone companies are deleted")
				}
			})
		}
	}
}
