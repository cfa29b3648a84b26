package delivery

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

// sendEvery counts n real-time deliveries every gap from start, busy or not.
func sendEvery(s *sizing, start time.Time, n int, gap time.Duration, busy bool) time.Time {
	for range n {
		start = start.Add(gap)
		s.realtimeSent(start, busy)
	}
	return start
}

func TestBusyRealtimePaceBelowTheBudgetIsWhatIsPlannedWith(t *testing.T) {
	var s sizing
	assert.Equal(t, 100_000.0, s.realtimeRate(100_000), "nothing measured yet: the budget")
	sendEvery(&s, time.Unix(0, 0), 1500, time.Millisecond, true) // 1,000/s for 1.5s
	assert.InDelta(t, 1000, s.realtimeRate(100_000), 1, "a budget of 100,000/s but 1,000/s achieved")
	assert.Equal(t, 10.0, s.realtimeRate(10), "achieving more than the budget does not raise it")
}

func TestAnIdleRealtimePathIsNotMeasured(t *testing.T) {
	var s sizing
	at := time.Unix(0, 0)
	for range 5 { // one delivery every 300ms with nothing else ready: 3/s, not a pace
		at = at.Add(300 * time.Millisecond)
		s.realtimeSent(at, false)
	}
	assert.Equal(t, 10.0, s.realtimeRate(10))
	// Busy for 0.9s, idle, busy again for 0.9s: no whole busy second yet.
	at = sendEvery(&s, at, 900, time.Millisecond, true)
	s.realtimeSent(at.Add(time.Millisecond), false)
	sendEvery(&s, at.Add(time.Second), 900, time.Millisecond, true)
	assert.Equal(t, 100_000.0, s.realtimeRate(100_000))
}

func TestBulkOverheadIsLearnedFromTheLastJob(t *testing.T) {
	var s sizing
	assert.Equal(t, 10*time.Second, s.jobOverhead(10*time.Second), "no job yet: the configured estimate")
	s.jobDone(10_000, 2*time.Second, 100_000) // 0.1s of records
	assert.Equal(t, 1900*time.Millisecond, s.jobOverhead(10*time.Second))
	s.jobDone(10_000, 400*time.Second, 20) // faster than the configured 20/s
	assert.Equal(t, time.Duration(0), s.jobOverhead(10*time.Second), "never negative")
}

func TestABacklogGoesToBulkOnceTheRealtimePathProvesSlowerThanItsBudget(t *testing.T) {
	const n = 60_000
	var s sizing
	share := func() int {
		return bulkShare(n, s.realtimeRate(100_000), 1_000_000, s.jobOverhead(10*time.Second), 100, 10_000)
	}
	assert.Zero(t, share(), "taken at its word, a budget of 100,000/s clears the backlog before a job could")
	sendEvery(&s, time.Unix(0, 0), 5000, 250*time.Microsecond, true) // 4,000/s achieved
	assert.Equal(t, 10_000, share(), "4,000/s for the 10s a job is assumed to cost clears 40,000 of 60,000: a whole job")
	s.jobDone(10_000, 200*time.Millisecond, 1_000_000)
	assert.Equal(t, 10_000, share())

	// Userpilot's published figures: 10 calls/s achieved, 20 records/s in bulk.
	var real sizing
	sendEvery(&real, time.Unix(0, 0), 20, 100*time.Millisecond, true)
	assert.Equal(t, 10, int(real.realtimeRate(10)))
	assert.Equal(t, bulkShare(n, 10, 20, 10*time.Second, 100, 10_000),
		bulkShare(n, real.realtimeRate(10), 20, real.jobOverhead(10*time.Second), 100, 10_000),
		"at the published limits the sizing is what it was")
}

func TestFirstPollIsWhenTheJobShouldBeDone(t *testing.T) {
	assert.Equal(t, 2*time.Second, firstPoll(100, 20, 2*time.Second), "Userpilot's 20 records/s: the poll interval")
	assert.Equal(t, 100*time.Millisecond, firstPoll(10_000, 100_000, 2*time.Second))
	assert.Equal(t, 10*time.Millisecond, firstPoll(10, 1_000_000, 2*time.Second), "never sooner than 10ms")
}
