package daemon_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/mapping"
	"github.com/pgpilot/pgpilot/state"
	"github.com/pgpilot/pgpilot/userpilot/userpilottest"
)

// TestDeleteStreamedWhileItsChunkWaitsStaysDeletedUnderAReplicaIdentityIndex:
// the table pages by its primary key (id) but its replica identity is
// another unique index (code), so a DELETE's old row carries only code. A
// re-sync's chunk is held open (its condition sleeps once per query) while
// a row it read is deleted: the chunk's snapshot still has the row, the
// delete is streamed, and the chunk must take the row out, matched by the
// replica identity. Otherwise the row is sent after its delete and, under
// on_delete: mark (or delete), the deletion is undone. Likewise a row
// whose primary key moves while its identity stays (no old row streamed).
func TestDeleteStreamedWhileItsChunkWaitsStaysDeletedUnderAReplicaIdentityIndex(t *testing.T) {
	t.Parallel()
	e := newEnv(t, userpilottest.Options{})
	ctx := context.Background()
	_, err := e.conn.Exec(ctx, `
		CREATE TABLE accounts (id bigint PRIMARY KEY, code text NOT NULL, name text, deleted boolean NOT NULL DEFAULT false);
		CREATE UNIQUE INDEX accounts_code ON accounts (code);
		ALTER TABLE accounts REPLICA IDENTITY USING INDEX accounts_code;
		INSERT INTO accounts (id, code, name) SELECT g, 'acct-' || g, 'Account ' || g FROM generate_series(1, 120) g;`)
	require.NoError(t, err)
	// The profile says deleted: false while the row exists, true once it is
	// marked: a row sent after its delete visibly undoes it.
	e.cfg.Companies = mapping.Companies{Table: "accounts", Schema: "public", Name: "accounts", CompanyID: "code",
		Metadata:         []mapping.Field{{Key: "name", Column: "name"}, {Key: "deleted", Column: "deleted"}},
		OnDelete:         mapping.OnDeleteMark,
		OnDeleteMetadata: map[string]any{"deleted": true}}
	e.chunkRows = 50
	stop := e.start(ctx, 5*time.Second)
	e.waitInitialSync()
	require.Eventually(t, func() bool { return len(e.up.Companies()) == 120 }, 30*time.Second, 20*time.Millisecond)

	// The condition sleeps once per statement (an uncorrelated subquery), so
	// each chunk's read stays open for a second after its snapshot is taken.
	_, err = state.RequestResync(e.cfg.State.Dir, state.Snapshot{Where: "(SELECT true FROM pg_sleep(1))"})
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		var n int
		require.NoError(t, e.conn.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE state = 'active' AND query LIKE '%pg_sleep%' AND query LIKE '%ORDER BY%' AND pid <> pg_backend_pid()`).Scan(&n))
		return n > 0
	}, 30*time.Second, 5*time.Millisecond, "the first chunk is being read")
	// And a row whose primary key moves (behind the chunks, so no later
	// chunk reads it again), its identity unchanged: no old row is
	// streamed, so only the identity finds it in the chunk.
	_, err = e.conn.Exec(ctx, `DELETE FROM accounts WHERE id = 10; UPDATE accounts SET id = -20, name = 'moved' WHERE id = 20`)
	require.NoError(t, err)

	require.Eventually(t, func() bool {
		cp, ok, err := state.ReadCheckpoint(e.cfg.State.Dir)
		return err == nil && ok && cp.Snapshot == nil && len(e.up.Applied()) >= 120+119
	}, 60*time.Second, 20*time.Millisecond, "the re-sync is delivered")
	require.NoError(t, stop())

	var after []string
	marked := false
	for _, a := range e.up.Applied() {
		if a.CompanyID != "acct-10" {
			continue
		}
		if a.Metadata["deleted"] == true {
			marked = true
			after = nil
			continue
		}
		if marked {
			after = append(after, fmt.Sprint(a.Metadata))
		}
	}
	assert.True(t, marked, "the delete is streamed and marked")
	assert.Empty(t, after, "nothing of the deleted row is sent after its delete")
	got, _ := e.up.Company("acct-10")
	assert.Equal(t, true, got["deleted"], "the profile stays marked deleted")
	got, _ = e.up.Company("acct-20")
	assert.Equal(t, "moved", got["name"], "the chunk's older copy of a row whose key moved is not sent after the move")
}
