package delivery

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/row"
	"github.com/pgpilot/pgpilot/userpilot"
)

// A backlog is left to bulk jobs alone only while the bulk path is measured
// as far the faster one, and its job is not overdue; then a job takes the
// oldest ready companies (nothing else moves the checkpoint).
func TestABacklogIsLeftToBulkJobsOnlyWhileBulkIsFarTheFaster(t *testing.T) {
	now := time.Now()
	tests := []struct {
		name     string
		ready    int
		realtime float64 // achieved, calls/s
		bulk     bulkEstimate
		jobAge   time.Duration // of the running job; 0: none runs
		wantRT   bool          // a real-time worker takes the front
	}{
		{"Userpilot's published speeds: both paths", 1000, 10, bulkEstimate{rate: 20, overhead: time.Second, jobs: 3}, 0, true},
		{"bulk 19 times faster: both paths", 1000, 100, bulkEstimate{rate: 1900, jobs: 3}, 0, true},
		{"bulk 20 times faster: bulk alone", 1000, 100, bulkEstimate{rate: 2000, jobs: 3}, 0, false},
		{"nothing measured: both paths", 1000, 100, bulkEstimate{rate: 1e6}, 0, true},
		{"too few for a job: real time", 99, 100, bulkEstimate{rate: 1e6, jobs: 3}, 0, true},
		{"a job runs as expected: bulk alone", 1000, 100, bulkEstimate{rate: 1e6, jobs: 3}, time.Second, false},
		{"the job is overdue: real time takes up the work", 1000, 100, bulkEstimate{rate: 1e6, jobs: 3}, time.Minute, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := New(Options{RealtimeRate: 100_000, MinBulk: 100, PollInterval: 2 * time.Second,
				Mapping: func(*row.Relation) (Mapper, error) { return sevenKeys{}, nil }})
			addCompanies(t, p, tt.ready)
			p.est, p.sizing.realtime = tt.bulk, tt.realtime
			if tt.jobAge > 0 {
				p.bulkBusy, p.jobStarted, p.jobRecords = true, now.Add(-tt.jobAge), 10_000
			}
			assert.Equal(t, tt.wantRT, p.realtimeWanted(now))
			if tt.jobAge > 0 {
				return
			}
			batch, _, err := p.takeBulk(newReport())
			require.NoError(t, err)
			if !tt.wantRT {
				require.Len(t, batch, tt.ready, "no real-time share is kept back")
				assert.Equal(t, "1", batch[0].id, "the oldest first")
			}
		})
	}
}

// doneSender completes every job at once.
type doneSender struct{ Sender }

func (doneSender) BulkIdentify(context.Context, userpilot.BulkBody) (userpilot.Job, error) {
	return userpilot.Job{ID: "j", Status: userpilot.JobCompleted}, nil
}

// A completed job lets its body go before its profiles are written to the
// index: beside the next job, it would hold a megabyte or two of JSON that
// nothing reads again.
func TestACompletedJobLetsItsBodyGoBeforeItIsRecorded(t *testing.T) {
	p := New(Options{MinBulk: 1, Sender: doneSender{}, Mapping: func(*row.Relation) (Mapper, error) { return sevenKeys{}, nil }})
	addCompanies(t, p, 10)
	p.est = bulkEstimate{rate: 1e6, jobs: 1}
	batch, body, err := p.takeBulk(newReport())
	require.NoError(t, err)
	require.Equal(t, 10, body.Len())
	var atFree int
	res := p.runBulk(context.Background(), batch, &body, p.est, func(jobObservation) { atFree = body.Len() })
	require.NoError(t, res.err)
	assert.Zero(t, atFree, "the body was still held when the job was reported completed")
	assert.True(t, res.freed)
}

// The next job's body is written in the room of the last one sent (a new
// body at every job was a sixth of what a catch-up allocated), and a room
// no job takes is let go after spareFor.
func TestTheNextJobsBodyIsWrittenInTheLastOnesRoom(t *testing.T) {
	p := New(Options{MinBulk: 1, Sender: doneSender{}, Mapping: func(*row.Relation) (Mapper, error) { return sevenKeys{}, nil }})
	p.est = bulkEstimate{rate: 1e6, jobs: 1}
	job := func() (*byte, bulkResult) {
		addCompanies(t, p, 10)
		batch, body, err := p.takeBulk(newReport())
		require.NoError(t, err)
		require.Equal(t, 10, body.Len())
		// Held here, the first body's bytes cannot be freed and allocated
		// again at the same address: only the reuse puts the second there.
		first := &body.JSON()[0]
		return first, p.runBulk(context.Background(), batch, &body, p.est, func(jobObservation) {})
	}
	first, res := job()
	require.NoError(t, res.err)
	for _, e := range res.entries {
		p.finish(e)
	}
	p.received = 0 // addCompanies numbers its transactions from the start again
	second, res := job()
	require.NoError(t, res.err)
	assert.Same(t, first, second, "the second body was written in room of its own")

	p.spare.expire(time.Now().Add(spareFor - time.Second))
	assert.NotNil(t, p.spare.room, "kept while a job may come")
	p.spare.expire(time.Now().Add(spareFor))
	assert.Nil(t, p.spare.room, "let go when none came")
}
