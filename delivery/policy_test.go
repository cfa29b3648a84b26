package delivery

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// callsOf notes n real-time calls of took each.
func callsOf(s *sizing, n int, took time.Duration) {
	for range n {
		s.called(took)
	}
}

func TestTheRealtimePaceIsTheWorkersOverTheTimeACallTakes(t *testing.T) {
	var s sizing
	assert.Equal(t, 100_000.0, s.realtimeRate(100_000, 8), "nothing measured yet: the budget")
	callsOf(&s, 1, 8*time.Millisecond)
	assert.InDelta(t, 1000, s.realtimeRate(100_000, 8), 1, "known from the first call: 8 in flight, 8 ms each")
	assert.InDelta(t, 500, s.realtimeRate(100_000, 4), 1, "4 in flight")
	assert.Equal(t, 10.0, s.realtimeRate(10, 8), "calls quicker than the budget do not raise it")
}

// The pace is what a call takes, whenever its outcome is heard: there is
// no clock in it, so a dispatcher that hears of calls late (a busy
// machine) or a path that sits idle between calls measures the same pace.
func TestTheRealtimePaceFollowsTheCallsTimeNotAnyOnesClock(t *testing.T) {
	var s sizing
	callsOf(&s, 100, 2*time.Millisecond)
	assert.InDelta(t, 4000, s.realtimeRate(100_000, 8), 1)
	s.called(200 * time.Millisecond) // one call retried once
	assert.Greater(t, s.realtimeRate(100_000, 8), 500.0, "one slow call moves the pace only part of the way")
	callsOf(&s, 100, 20*time.Millisecond)
	assert.InDelta(t, 400, s.realtimeRate(100_000, 8), 5, "a lasting change is followed")
	s.called(0)
	assert.InDelta(t, 400, s.realtimeRate(100_000, 8), 5, "a call of no time says nothing")
}

// job is a synthetic bulk job on a stand-in of a given speed and
// overhead, polled the way waitJob polls it: what the pipeline would
// observe of it.
func job(records int, rate float64, overhead time.Duration, est bulkEstimate, progress bool) jobObservation {
	start := time.Unix(1000, 0)
	length := overhead + time.Duration(float64(records)/rate*float64(time.Second))
	o := jobObservation{records: records, submitted: start, answered: start, running: start}
	wait := firstPoll(records, est, 2*time.Second)
	for at := start.Add(wait); ; at = at.Add(wait) {
		age := at.Sub(start)
		if age >= length {
			o.ended = at
			o.serverTook = length
			return o
		}
		o.running = at
		if progress {
			o.sawProgress(int(max(0, (age-overhead).Seconds())*rate), at)
		}
		wait = nextPoll(age, 0, 2*time.Second)
	}
}

func TestBulkEstimateConvergesFromAWrongStartEitherWay(t *testing.T) {
	cases := []struct {
		name           string
		start, rate    float64
		startOverhead  time.Duration
		truthOverhead  time.Duration
		withProgress   bool
		records        int
		withServerTime bool
	}{
		{"start too slow, progress reported", 20, 300, 10 * time.Second, 0, true, 500, true},
		{"start too fast, progress reported", 1_000_000, 10, 10 * time.Second, 2 * time.Second, true, 300, true},
		{"start too slow, only job_id and status", 20, 300, 10 * time.Second, 2 * time.Second, false, 2000, false},
		{"start too fast, only job_id and status", 1_000_000, 10, 10 * time.Second, time.Second, false, 300, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			est := bulkEstimate{rate: c.start, overhead: c.startOverhead}
			for i := range 6 {
				// Jobs of different sizes, as sizing makes them.
				n := c.records * (1 + i%3)
				o := job(n, c.rate, c.truthOverhead, est, c.withProgress)
				if !c.withServerTime {
					o.serverTook = 0
				}
				require.True(t, est.learn(o))
			}
			assert.InEpsilon(t, c.rate, est.rate, 0.25, "records/s after 6 jobs (from %g)", c.start)
			// The poll that sees a job end is up to a tenth of its length
			// late: an overhead much smaller than that is within the noise.
			noise := 0.05 * (c.truthOverhead.Seconds() + float64(c.records)/c.rate)
			assert.InDelta(t, c.truthOverhead.Seconds(), est.overhead.Seconds(), 0.25*c.truthOverhead.Seconds()+noise+0.05, "overhead")
			assert.Equal(t, 6, est.jobs)
		})
	}
}

func TestTheFirstJobReplacesTheConfiguredStart(t *testing.T) {
	est := bulkEstimate{rate: 20, overhead: 10 * time.Second}
	require.True(t, est.learn(job(1000, 500, 0, est, true)))
	assert.InEpsilon(t, 500, est.rate, 0.1, "one measurement outweighs a guess")
	assert.Less(t, est.overhead, 200*time.Millisecond)
	// One odd job moves a learned estimate only part of the way.
	require.True(t, est.learn(job(1000, 50, 0, est, true)))
	assert.Greater(t, est.rate, 100.0)
	assert.Less(t, est.rate, 400.0)
}

func TestWithoutProgressTheRateIsNeverOverestimated(t *testing.T) {
	// Nothing measured, the job's time is all counted as records: a
	// slower rate than the truth, never a faster one (a job sized from
	// a rate too fast outlasts the real-time path).
	var est bulkEstimate
	est.rate, est.overhead = 20, 10*time.Second
	o := job(1000, 100, 3*time.Second, est, false)
	o.serverTook = 0
	rate, _, ok := o.measure(est)
	require.True(t, ok)
	assert.LessOrEqual(t, rate, 100.0)
}

func TestUserpilotsOwnTimingIsKeptWithinWhatWasSeen(t *testing.T) {
	at := time.Unix(0, 0)
	o := jobObservation{records: 10, submitted: at, answered: at, running: at.Add(time.Second), ended: at.Add(1100 * time.Millisecond)}
	assert.Equal(t, time.Duration(0), o.upload())
	assert.Equal(t, 1050*time.Millisecond, o.took(), "no figure of its own: between the two polls")
	o.serverTook = 1080 * time.Millisecond
	assert.Equal(t, 1080*time.Millisecond, o.took())
	o.serverTook = 100 * time.Millisecond // start_time when processing began: queueing left out
	assert.Equal(t, time.Second, o.took(), "never shorter than it was seen running")
	o.serverTook = time.Hour
	assert.Equal(t, 1100*time.Millisecond, o.took(), "never longer than when it was seen ended")
}

func TestABacklogGoesToBulkOnceTheRealtimePathProvesSlowerThanItsBudget(t *testing.T) {
	const n = 60_000
	var s sizing
	est := bulkEstimate{rate: 1_000_000, overhead: 10 * time.Second, jobs: 1}
	share := func() int {
		return bulkShare(n, s.realtimeRate(100_000, 8), est.rate, est.overhead, 100, 10_000)
	}
	assert.Zero(t, share(), "taken at its word, a budget of 100,000/s clears the backlog before a job could")
	callsOf(&s, 1, 2*time.Millisecond) // 8 in flight: 4,000/s
	assert.Equal(t, 10_000, share(), "4,000/s for the 10s a job is assumed to cost clears 40,000 of 60,000: a whole job")

	// Userpilot's published figures: a budget of 10 calls/s, calls of
	// about 100 ms: the budget is what limits.
	var real sizing
	callsOf(&real, 20, 100*time.Millisecond)
	assert.Equal(t, 10, int(real.realtimeRate(10, 8)))
}

func TestWithNothingMeasuredASmallJobIsSentEarly(t *testing.T) {
	share := bulkShare(1500, 20, 20, 10*time.Second, 100, 10_000)
	assert.Equal(t, 650, share, "from the configured start alone")
	assert.Equal(t, 150, probeSize(1500, 20, share, 100), "a tenth of the backlog, to measure with")
	assert.Equal(t, 100, probeSize(3000, 100, 0, 100), "the start says no job is worth it; one is sent to find out")
	assert.Equal(t, 0, probeSize(80, 100, 0, 100), "the real-time path clears it within a second")
	assert.Equal(t, 0, probeSize(900, 100, 0, 100), "a tenth is below the smallest job")
}

func TestAJobIsSeenEndedWithinATenthOfItsLength(t *testing.T) {
	for _, length := range []time.Duration{30 * time.Millisecond, 300 * time.Millisecond, 3 * time.Second, 30 * time.Second, 10 * time.Minute} {
		for _, est := range []bulkEstimate{
			{rate: 20, overhead: 10 * time.Second},                 // nothing measured
			{rate: 1000, overhead: 0, jobs: 3},                     // measured, far too fast
			{rate: 1, overhead: time.Minute, jobs: 3},              // measured, far too slow
			{rate: 100, overhead: 100 * time.Millisecond, jobs: 3}, // about right
		} {
			o := job(100, 100/(length.Seconds()), 0, est, false)
			late := o.ended.Sub(o.submitted) - length
			assert.LessOrEqual(t, late, max(minPoll, time.Duration(pollFraction*float64(length)), min(2*time.Second, est.expected(100))-length),
				"job of %s, estimate %+v: seen %s late", length, est, late)
			if est.learned() && est.expected(100) <= 2*time.Second {
				assert.GreaterOrEqual(t, o.ended.Sub(o.submitted), min(length, est.expected(100)), "first poll when it should be done")
			}
		}
	}
}

func TestFirstPollIsWhenTheJobShouldBeDone(t *testing.T) {
	learned := bulkEstimate{rate: 100_000, overhead: 0, jobs: 1}
	assert.Equal(t, 100*time.Millisecond, firstPoll(10_000, learned, 2*time.Second))
	assert.Equal(t, 2*time.Second, firstPoll(10_000, bulkEstimate{rate: 20, jobs: 1}, 2*time.Second), "at most the poll interval")
	assert.Equal(t, minPoll, firstPoll(10, bulkEstimate{rate: 1_000_000, jobs: 1}, 2*time.Second), "never sooner than minPoll")
	assert.Equal(t, minPoll, firstPoll(10_000, bulkEstimate{rate: 20, overhead: 10 * time.Second}, 2*time.Second),
		"nothing measured: the start may be far too slow")
}

// A burst that merged changes waits longer the longer it lasted (up to
// maxInputQuiet) before its job is sized, for the next statement's
// changes to merge too; one that merged none (a catch-up of new rows) has
// nothing to wait for beyond inputQuiet.
func TestTheInputPauseAJobWaitsForIsForChangesToMerge(t *testing.T) {
	start := time.Unix(0, 0)
	for _, tt := range []struct {
		name   string
		lasted time.Duration
		merged bool
		want   time.Duration
	}{
		{"a short burst", 50 * time.Millisecond, true, inputQuiet},
		{"a burst of 400 ms: half of it", 400 * time.Millisecond, true, 200 * time.Millisecond},
		{"a long burst: at most maxInputQuiet", 10 * time.Second, true, maxInputQuiet},
		{"a long burst that merged nothing", 10 * time.Second, false, inputQuiet},
	} {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, quietFor(start.Add(tt.lasted), start, tt.merged))
		})
	}
}
