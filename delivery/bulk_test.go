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
	"github.com/pgpilot/pgpilot/userpilot/userpilottest"
)

// TestBacklogBeyondTheMemoryBoundGoesOutInJobs: what is in memory (300
// companies) looks small next to the real-time path, so sizing by it alone
// never sends a job; but reading is held back there and 2,000 companies
// wait. One call at a time, 10ms each, would take 20s.
func TestBacklogBeyondTheMemoryBoundGoesOutInJobs(t *testing.T) {
	h := newHarness(t, setup{
		rate: 1000, // the budget; the path achieves 100/s
		delivery: delivery.Options{Workers: 1, MaxPending: 300, BulkRate: 1_000_000, MinBulk: 10,
			PollInterval: 20 * time.Millisecond},
	})
	h.up.SetFault(&userpilottest.Fault{Delay: 10 * time.Millisecond, Apply: true, Status: 202})
	txns := make([]row.Transaction, 2000)
	for i := range txns {
		txns[i] = txn(pglogrepl.LSN(10*(i+1)), update(fmt.Sprint(i+1), "pro", nil))
	}
	require.NoError(t, h.run(context.Background(), txns...))
	assert.Len(t, h.up.Companies(), 2000)
	st := h.pipe.Stats()
	assert.Greater(t, st.Bulk.Load(), int64(1000), "most of the backlog went in jobs")
	assert.Equal(t, pglogrepl.LSN(20000), h.lastCheckpoint())
}

// TestBulkEstimateFollowsUserpilotsSpeedAsItChanges: Userpilot's speed
// varies with its load. Fast at first, then ten times slower: each run's
// backlog goes in a job, and the estimate (kept in the store across the
// restarts) follows the stand-in both ways.
func TestBulkEstimateFollowsUserpilotsSpeedAsItChanges(t *testing.T) {
	h := newHarness(t, setup{
		standin:  userpilottest.Options{BulkRecordsPerSecond: 2000},
		rate:     20,
		delivery: delivery.Options{BulkRate: 20, MinBulk: 10},
	})
	end := pglogrepl.LSN(0)
	round := func(plan string) {
		end += 1000
		h.restart() // a new process on the same store
		require.NoError(t, h.run(context.Background(), backlog(end, 400, plan)))
	}
	for i := range 3 {
		round(fmt.Sprint("fast", i))
	}
	fast := h.pipe.Learned()
	assert.InEpsilon(t, 2000, fast.BulkRate, 0.5, "%+v", fast)
	assert.GreaterOrEqual(t, fast.BulkJobs, 3)

	h.up.SetBulkSpeed(200, 0)
	for i := range 4 {
		round(fmt.Sprint("slow", i))
	}
	slow := h.pipe.Learned()
	assert.InEpsilon(t, 200, slow.BulkRate, 0.5, "%+v", slow)
	assert.Len(t, h.up.Companies(), 400)
}
