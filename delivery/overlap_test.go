package delivery_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/delivery"
	"github.com/pgpilot/pgpilot/row"
	"github.com/pgpilot/pgpilot/state"
	"github.com/pgpilot/pgpilot/userpilot"
	"github.com/pgpilot/pgpilot/userpilot/userpilottest"
)

// slowIndex holds one write of a job's part (many companies at once), the
// first after the stand-in took two jobs (the probe and a full one), until
// the stand-in has taken another, for at most a minute: with the next job
// submitted while the last one is still being recorded, the write goes on
// at once; without, only after the minute.
type slowIndex struct {
	delivery.Index
	up     *userpilottest.Server
	held   atomic.Bool
	waited atomic.Bool // the write gave up waiting
}

func (x *slowIndex) RecordProfiles(ps state.Profiles) error {
	if jobs := x.jobs(); ps.Len() >= 100 && jobs >= 2 && x.held.CompareAndSwap(false, true) {
		deadline := time.Now().Add(time.Minute)
		for x.jobs() == jobs {
			if time.Now().After(deadline) {
				x.waited.Store(true)
				break
			}
			time.Sleep(time.Millisecond)
		}
	}
	return x.Index.RecordProfiles(ps)
}

// jobs counts the bulk jobs the stand-in took.
func (x *slowIndex) jobs() int {
	n := 0
	for _, r := range x.up.Requests() {
		if r.Path == "/v1/companies/bulk_identify" && r.Status == 202 {
			n++
		}
	}
	return n
}

// A completed job's profiles are written to the index while the next job
// runs: Userpilot takes one job at a time, but the index write is
// pgpilot's own, and the next job's companies are others.
func TestTheNextJobIsSubmittedWhileTheLastOneIsRecorded(t *testing.T) {
	s := setup{
		standin: userpilottest.Options{BulkRecordsPerSecond: 1_000_000},
		delivery: delivery.Options{BulkRate: 1_000_000, MinBulk: 100, PollInterval: 20 * time.Millisecond,
			MaxPending: 100_000, MaxPendingBytes: 256 << 20},
	}
	h := newHarness(t, s)
	idx := &slowIndex{Index: h.opts.Index, up: h.up}
	h.opts.Index = idx
	h.restart()
	const n = 4 * userpilot.MaxBulkRecords
	require.NoError(t, h.run(context.Background(), backlog(900, n, "pro")))
	assert.Len(t, h.up.Companies(), n)
	assert.GreaterOrEqual(t, h.pipe.Stats().BulkJobs.Load(), int64(3))
	require.True(t, idx.held.Load(), "a job's write was held")
	assert.False(t, idx.waited.Load(), "the next job was not submitted while the last one was recorded")
}

// With a window too small for the next job to fill while the last one's
// 10,000 companies hold their place, the next job goes with what is ready:
// nothing more can be read until the write ends, and waiting for it left
// Userpilot's job slot idle for the write's length at every job (a 5 MB
// window holds 14,000 companies).
func TestAFullWindowSendsTheNextJobWhileTheLastOneIsRecorded(t *testing.T) {
	s := setup{
		standin: userpilottest.Options{BulkRecordsPerSecond: 1_000_000},
		delivery: delivery.Options{BulkRate: 1_000_000, MinBulk: 100, PollInterval: 20 * time.Millisecond,
			MaxPending: userpilot.MaxBulkRecords * 3 / 2, MaxPendingBytes: 256 << 20},
	}
	h := newHarness(t, s)
	idx := &slowIndex{Index: h.opts.Index, up: h.up}
	h.opts.Index = idx
	h.restart()
	// Transactions of 250, as a snapshot's pieces come: the window stops
	// reading between them.
	const n, per = 4 * userpilot.MaxBulkRecords, 250
	var txns []row.Transaction
	for first := 0; first < n; first += per {
		changes := make([]row.Change, per)
		for i := range changes {
			changes[i] = update(fmt.Sprint(first+i+1), "pro", nil)
		}
		txns = append(txns, txn(pglogrepl.LSN(1000+first), changes...))
	}
	require.NoError(t, h.run(context.Background(), txns...))
	assert.Len(t, h.up.Companies(), n)
	require.True(t, idx.held.Load(), "a job's write was held")
	assert.False(t, idx.waited.Load(), "the next job waited for the last one's write")
}
