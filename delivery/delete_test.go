package delivery_test

import (
	"context"
	"fmt"
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
	assert.Contains(t, got, "deleted", "the row exists again: the mark is cleared, sent as null")
	assert.Nil(t, got["deleted"], "the row exists again: the mark is cleared")
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

// A bulk job that takes every update around a deletion leaves the deletion
// alone in the ready queue: it goes to the delete API, never to a worker as
// an identify with no metadata.
func TestADeletionLeftBesideABulkJobIsDeletedNotIdentified(t *testing.T) {
	for round := range 5 { // the hand-off races the next loop: try it a few times
		h := newHarness(t, setup{delivery: delivery.Options{OnDelete: "delete", BulkRate: 1_000_000_000, MinBulk: 10,
			BulkOverhead: 100 * time.Microsecond, PollInterval: 10 * time.Millisecond}})
		var txns []row.Transaction
		for i := range 500 {
			txns = append(txns, txn(pglogrepl.LSN(10*(i+1)), update(fmt.Sprint(i+1), "pro", nil)))
		}
		txns = append(txns, txn(10*501, del("9999")))
		require.NoError(t, h.run(context.Background(), txns...))
		assert.Contains(t, h.up.Deleted(), "9999", "round %d", round)
		_, identified := h.up.Company("9999")
		require.False(t, identified, "round %d: a deletion went out as an identify", round)
	}
}

// A company deleted while the bulk job holding its older state is being
// refused: the job's records fall back to the real-time path, and the
// deletion, newer, must win over the older state it is folded into.
func TestADeletionWaitingBehindARefusedJobIsStillDeleted(t *testing.T) {
	h := newHarness(t, setup{delivery: delivery.Options{OnDelete: "delete", BulkRate: 1_000_000_000, MinBulk: 10,
		BulkOverhead: 100 * time.Microsecond, PollInterval: 10 * time.Millisecond}})
	h.up.FailNextBulk(1, userpilottest.Fault{Delay: time.Second, Status: 400})
	in, done := h.feed(context.Background())
	var changes []row.Change
	for i := range 200 {
		changes = append(changes, update(fmt.Sprint(i+1), "pro", nil))
	}
	in <- txn(10, changes...)
	time.Sleep(500 * time.Millisecond) // the job is submitted and not answered yet
	in <- txn(20, del("200"))          // the newest company: a job takes the newest
	close(in)
	require.NoError(t, <-done)
	assert.Equal(t, []string{"200"}, h.up.Deleted(), "the deletion came after the state in the refused job")
	assert.Equal(t, pglogrepl.LSN(20), h.lastCheckpoint())
}
