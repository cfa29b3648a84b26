package delivery

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/row"
	"github.com/pgpilot/pgpilot/state"
	"github.com/pgpilot/pgpilot/userpilot"
)

// A backlog is left to bulk jobs alone only while the bulk path is measured
// as far the faster one, and its job is not overdue; then a job takes the
// oldest ready companies (nothing else moves the checkpoint).
func TestABacklogIsLeftToBulkJobsOnlyWhileBulkIsFarTheFaster(t *testing.T) {
	now := time.Now()
	// job is a running job: sized sized ago, accepted by Userpilot
	// accepted ago, and said by Userpilot to be still running answered
	// ago (zero: no job).
	type job struct{ sized, accepted, answered time.Duration }
	tests := []struct {
		name     string
		ready    int
		realtime float64 // the workers' pace at the time a call takes, calls/s
		bulk     bulkEstimate
		job      job
		wantRT   bool // a real-time worker takes the front
	}{
		{"Userpilot's published speeds: both paths", 1000, 10, bulkEstimate{rate: 20, overhead: time.Second, jobs: 3}, job{}, true},
		{"bulk 19 times faster: both paths", 1000, 100, bulkEstimate{rate: 1900, jobs: 3}, job{}, true},
		{"bulk 20 times faster: bulk alone", 1000, 100, bulkEstimate{rate: 2000, jobs: 3}, job{}, false},
		{"nothing measured, the configured start as fast as Userpilot publishes: both paths", 1000, 10, bulkEstimate{rate: 20, overhead: 10 * time.Second}, job{}, true},
		{"nothing measured, the configured start far the faster: bulk alone, a probe first", 1000, 100, bulkEstimate{rate: 1e6, overhead: 10 * time.Second}, job{}, false},
		{"too few for a job: real time", 99, 100, bulkEstimate{rate: 1e6, jobs: 3}, job{}, true},
		{"too few for a job, but a job runs: they wait for the next", 99, 100, bulkEstimate{rate: 1e6, jobs: 3}, job{time.Second, time.Second, 0}, false},
		{"too few for a job, a job runs, bulk not far the faster: real time", 99, 100, bulkEstimate{rate: 1000, jobs: 3}, job{time.Second, time.Second, 0}, true},
		{"a job runs as expected: bulk alone", 1000, 100, bulkEstimate{rate: 1e6, jobs: 3}, job{time.Second, time.Second, 0}, false},
		{"Userpilot says the job still runs long after it accepted it: real time takes up the work", 1000, 100,
			bulkEstimate{rate: 1e6, jobs: 3}, job{time.Minute, time.Minute, 0}, true},
		{"sized long ago, but Userpilot accepted it just now (pgpilot was slow to send it): bulk alone", 1000, 100,
			bulkEstimate{rate: 1e6, jobs: 3}, job{time.Minute, 10 * time.Millisecond, 0}, false},
		{"not yet accepted, sized long ago: real time takes up the work", 1000, 100,
			bulkEstimate{rate: 1e6, jobs: 3}, job{sized: time.Minute}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := New(Options{RealtimeRate: 100_000, MinBulk: 100, PollInterval: 2 * time.Second,
				Mapping: func(*row.Relation) (Mapper, error) { return sevenKeys{}, nil }})
			addCompanies(t, p, tt.ready)
			p.est = tt.bulk
			p.sizing.called(time.Duration(float64(p.opts.Workers) / tt.realtime * float64(time.Second)))
			if tt.job.sized > 0 {
				p.jobs.start(nil, now.Add(-tt.job.sized))
				p.jobs.slot.records = 10_000
				if tt.job.accepted > 0 {
					p.jobs.heard(jobAnswered{n: p.jobs.last, at: now.Add(-tt.job.accepted)})
					p.jobs.heard(jobAnswered{n: p.jobs.last, at: now.Add(-tt.job.answered)})
				}
			}
			assert.Equal(t, tt.wantRT, p.realtimeWanted(now))
			if tt.job.sized > 0 {
				return
			}
			batch, _, err := p.takeBulk(now)
			require.NoError(t, err)
			if !tt.wantRT {
				want := tt.ready
				if !tt.bulk.learned() {
					want = tt.ready / probeShare
				}
				require.Len(t, batch, want, "no real-time share is kept back (but for a probe's)")
				assert.Equal(t, "1", batch[0].id, "the oldest first")
			}
		})
	}
}

// A probe (nothing measured yet, bulk alone) takes a tenth of the
// backlog, and never more than a job holds: a probe of 14,179 companies
// (a tenth of a backlog gone to the outbox on a slow start) was refused
// as too large, and its companies went out one call each.
func TestAProbeOfALargeBacklogIsAtMostAJob(t *testing.T) {
	const ready = 12 * userpilot.MaxBulkRecords
	p := New(Options{RealtimeRate: 100_000, MinBulk: 100, MaxPending: 2 * ready, MaxPendingBytes: 1 << 40, PollInterval: 2 * time.Second,
		Mapping: func(*row.Relation) (Mapper, error) { return sevenKeys{}, nil }})
	addCompanies(t, p, ready)
	p.est = bulkEstimate{rate: 1e6, overhead: 10 * time.Second}
	p.sizing.called(time.Duration(float64(p.opts.Workers) / 100 * float64(time.Second)))
	require.False(t, p.realtimeWanted(time.Now()), "bulk alone")
	batch, body, err := p.takeBulk(time.Now())
	require.NoError(t, err)
	assert.Equal(t, userpilot.MaxBulkRecords, len(batch), "a tenth of the backlog, at most a job")
	assert.Equal(t, len(batch), body.Len())
}

// doneSender completes every job at once.
type doneSender struct{ Sender }

func (doneSender) BulkIdentify(context.Context, userpilot.BulkBody) (userpilot.Job, error) {
	return userpilot.Job{ID: "j", Status: userpilot.JobCompleted}, nil
}

// A completed job lets its body go before its profiles are written to the
// index: beside the next job, it would hold a megabyte or two of JSON that
// nothing reads again. Its room comes back to the dispatcher with the
// completion, before the index write.
func TestACompletedJobLetsItsBodyGoBeforeItIsRecorded(t *testing.T) {
	p := New(Options{MinBulk: 1, Sender: doneSender{}, Mapping: func(*row.Relation) (Mapper, error) { return sevenKeys{}, nil }})
	addCompanies(t, p, 10)
	p.est = bulkEstimate{rate: 1e6, jobs: 1}
	batch, body, err := p.takeBulk(time.Now())
	require.NoError(t, err)
	require.Equal(t, 10, body.Len())
	events := make(chan jobEvent, 8)
	idx := &heardFirst{events: events}
	r := jobRunner{sender: doneSender{}, index: idx, poll: time.Second, log: p.log}
	r.run(context.Background(), bulkJob{n: 1, body: body, profiles: p.enc.profileValues(batch), est: p.est}, events)
	require.True(t, idx.recorded)
	assert.True(t, idx.completedFirst, "the index was written before the job said it completed (and gave its body back)")
	assert.NotZero(t, cap(idx.room), "the completion carries the body's room back")
}

// heardFirst is an index that notes whether the job's completion (with its
// body's room) was said before the profiles were written.
type heardFirst struct {
	Index
	events         chan jobEvent
	recorded       bool
	completedFirst bool
	room           []byte
}

func (h *heardFirst) RecordProfiles(state.Profiles) error {
	h.recorded = true
	for {
		select {
		case ev := <-h.events:
			if c, ok := ev.(jobCompleted); ok {
				h.completedFirst, h.room = true, c.room
				return nil
			}
		default:
			return nil
		}
	}
}

// The next job's body is written in the room of the last one sent (a new
// body at every job was a sixth of what a catch-up allocated), and a room
// no job takes is let go after spareFor.
func TestTheNextJobsBodyIsWrittenInTheLastOnesRoom(t *testing.T) {
	p := New(Options{MinBulk: 1, Sender: doneSender{}, Mapping: func(*row.Relation) (Mapper, error) { return sevenKeys{}, nil }})
	p.est = bulkEstimate{rate: 1e6, jobs: 1}
	r := jobRunner{sender: doneSender{}, poll: time.Second, log: p.log}
	job := func() (*byte, []*entry) {
		addCompanies(t, p, 10)
		batch, body, err := p.takeBulk(time.Now())
		require.NoError(t, err)
		require.Equal(t, 10, body.Len())
		// Held here, the first body's bytes cannot be freed and allocated
		// again at the same address: only the reuse puts the second there.
		first := &body.JSON()[0]
		events := make(chan jobEvent, 8)
		r.run(context.Background(), bulkJob{n: 1, body: body, profiles: p.enc.profileValues(batch), est: p.est}, events)
		close(events)
		for ev := range events {
			switch ev := ev.(type) {
			case jobCompleted:
				p.enc.putSpare(ev.room, time.Now())
			case jobEnded:
				require.Equal(t, jobApplied, ev.outcome, "%v", ev.err)
			}
		}
		return first, batch
	}
	first, batch := job()
	for _, e := range batch {
		p.finish(e)
	}
	p.ledger.received = 0 // addCompanies numbers its transactions from the start again
	second, _ := job()
	assert.Same(t, first, second, "the second body was written in room of its own")

	p.enc.expireSpare(time.Now().Add(spareFor - time.Second))
	assert.NotNil(t, p.enc.spare, "kept while a job may come")
	p.enc.expireSpare(time.Now().Add(spareFor))
	assert.Nil(t, p.enc.spare, "let go when none came")
}

// idAt is job records that note when the job's id was written.
type idAt struct {
	InFlight
	at time.Time
}

func (r *idAt) BeginBulkJob(userpilot.BulkBody) (uint64, error) { return 1, nil }
func (r *idAt) EndJob(uint64) error                             { return nil }
func (r *idAt) JobSubmitted(uint64, string) error {
	r.at = time.Now()
	return nil
}

// A job's submission is timed by Userpilot's answer, not by pgpilot's
// write of its id after it: that write is pgpilot's own time, and in the
// submission it would make every job's overhead look longer.
func TestASubmissionIsTimedByUserpilotsAnswer(t *testing.T) {
	p := New(Options{MinBulk: 1, Sender: doneSender{}, Mapping: func(*row.Relation) (Mapper, error) { return sevenKeys{}, nil }})
	addCompanies(t, p, 10)
	p.est = bulkEstimate{rate: 1e6, jobs: 1}
	batch, body, err := p.takeBulk(time.Now())
	require.NoError(t, err)
	records := &idAt{}
	events := make(chan jobEvent, 8)
	r := jobRunner{sender: doneSender{}, inflight: records, poll: time.Second, log: p.log}
	r.run(context.Background(), bulkJob{n: 1, body: body, profiles: p.enc.profileValues(batch), est: p.est}, events)
	close(events)
	var obs jobObservation
	for ev := range events {
		if c, ok := ev.(jobCompleted); ok {
			obs = c.obs
		}
	}
	require.False(t, records.at.IsZero(), "the id was written")
	require.False(t, obs.answered.IsZero(), "the job completed")
	assert.False(t, obs.answered.After(records.at), "answered %s, the id written from %s on", obs.answered.Format(time.StampMicro), records.at.Format(time.StampMicro))
}

// While a completed job's profiles are written to the index, the next job
// goes if it is worth its overhead (half a full job), or if reading is
// held back at the memory bound; never a third beside two.
func TestTheNextJobGoesWhileTheLastOneIsRecorded(t *testing.T) {
	var j jobs
	assert.True(t, j.nextNow(100, false, 100), "nothing being recorded")
	j.recording = []*slotJob{{}}
	for _, tt := range []struct {
		ready int
		full  bool
		want  bool
	}{
		{userpilot.MaxBulkRecords, false, true},
		{userpilot.MaxBulkRecords / 2, false, true},
		{userpilot.MaxBulkRecords/2 - 1, false, false},
		{100, true, true},
		{99, true, false},
	} {
		assert.Equal(t, tt.want, j.nextNow(tt.ready, tt.full, 100), "%d ready, full %v", tt.ready, tt.full)
	}
	j.recording = append(j.recording, &slotJob{})
	assert.False(t, j.nextNow(userpilot.MaxBulkRecords, true, 100), "two being recorded")
}
