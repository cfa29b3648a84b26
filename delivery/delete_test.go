package delivery_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/delivery"
	"github.com/pgpilot/pgpilot/row"
	"github.com/pgpilot/pgpilot/state"
	"github.com/pgpilot/pgpilot/userpilot/userpilottest"
)

// del is a DELETE of company id under REPLICA IDENTITY DEFAULT: only the key
// is sent, the other columns are NULL.
func del(id string) row.Change {
	return row.Change{Op: row.Delete, Relation: rel,
		Values: []row.Value{{Text: []byte(id)}, {Null: true}, {Null: true}}}
}

func TestOnDeleteIgnoreLeavesTheProfile(t *testing.T) {
	h := newHarness(t, setup{})
	require.NoError(t, h.run(context.Background(), txn(10, update("1", "pro", nil)), txn(20, del("1"))))
	got, ok := h.up.Company("1")
	require.True(t, ok)
	assert.Equal(t, "pro", got["plan"])
	assert.Empty(t, h.up.Deleted())
}

func TestOnDeleteMarkSendsTheMarkAndARowCreatedAgainClearsIt(t *testing.T) {
	h := newHarness(t, setup{delivery: delivery.Options{OnDelete: "mark", DeleteMark: userpilottest.Metadata(map[string]any{"deleted": true})}})
	require.NoError(t, h.run(context.Background(), txn(10, update("1", "pro", nil))))
	require.NoError(t, h.run(context.Background(), txn(20, del("1"))))
	got, _ := h.up.Company("1")
	assert.Equal(t, true, got["deleted"])
	assert.Equal(t, "pro", got["plan"], "a mark merges: the other keys stay")
	require.NoError(t, h.run(context.Background(), txn(30, update("1", "free", nil))))
	got, _ = h.up.Company("1")
	assert.NotContains(t, got, "deleted", "the row exists again: the mark is cleared")
	assert.Empty(t, h.up.Deleted(), "mark never calls the delete API")
}

func TestOnDeleteDeleteCallsTheDeleteAPIAfterPendingState(t *testing.T) {
	h := newHarness(t, setup{delivery: delivery.Options{OnDelete: "delete"}})
	require.NoError(t, h.run(context.Background(),
		txn(10, update("1", "pro", nil), update("2", "pro", nil)),
		txn(20, del("1")),
	))
	assert.Equal(t, []string{"1"}, h.up.Deleted())
	assert.Equal(t, pglogrepl.LSN(20), h.lastCheckpoint(), "a requested deletion counts as delivered")

	// Deleted and created again before the deletion went out: it exists.
	h2 := newHarness(t, setup{delivery: delivery.Options{OnDelete: "delete"}})
	h2.up.FailNext(1, faultDelay(300*time.Millisecond))
	in, done := h2.feed(context.Background())
	in <- txn(10, update("3", "pro", nil))
	require.Eventually(t, func() bool { return h2.up.IdentifyRequests() == 1 }, 10*time.Second, time.Millisecond)
	in <- txn(20, del("3"))
	in <- txn(30, update("3", "enterprise", nil))
	close(in)
	require.NoError(t, <-done)
	assert.Empty(t, h2.up.Deleted(), "the deletion was superseded before it was sent")
	got, _ := h2.up.Company("3")
	assert.Equal(t, "enterprise", got["plan"])
}

func TestDeleteThatCannotBeMappedIsSetAside(t *testing.T) {
	h := newHarness(t, setup{delivery: delivery.Options{OnDelete: "delete"}})
	noKey := row.Change{Op: row.Delete, Relation: rel, Values: []row.Value{{Null: true}, {Null: true}, {Null: true}}}
	require.NoError(t, h.run(context.Background(), txn(10, noKey)))
	n, err := state.CountDeadLetters(h.dir.Path())
	require.NoError(t, err)
	assert.Equal(t, 1, n)
}

func faultDelay(d time.Duration) userpilottest.Fault {
	return userpilottest.Fault{Delay: d, Apply: true, Status: 202}
}
