package delivery

import "time"

// bulkShare decides how many of the ready companies go to a bulk job so the
// last one reaches Userpilot soonest. The real-time path clears n companies
// in n/rt seconds; a bulk job of k takes overhead + k/bulk seconds and runs
// alongside. Both finish together when
//
//	(n-k)/rt = overhead + k/bulk  ⇒  k = (n - rt·overhead) · bulk/(rt+bulk)
//
// Below minBulk a job is not worth its overhead. The result is capped at
// maxRecords (Userpilot's 10,000 per request).
func bulkShare(n int, rt, bulk float64, overhead time.Duration, minBulk, maxRecords int) int {
	if rt <= 0 || bulk <= 0 {
		return 0
	}
	k := int((float64(n) - rt*overhead.Seconds()) * bulk / (rt + bulk))
	if k < minBulk {
		return 0
	}
	return min(k, maxRecords)
}

// realtimeWindow is how long the real-time path must stay busy for its
// throughput to be measured.
const realtimeWindow = time.Second

// sizing is what bulkShare is fed besides the configured rates: what the
// real-time path and bulk jobs have actually achieved. The configured
// rate_limit is a budget, not a speed: set high (a generous account, a
// local stand-in) it would make the real-time path look able to clear any
// backlog at once, and every company would go out as its own call even
// where a job of 10,000 drains it many times faster.
type sizing struct {
	windowStart time.Time
	windowSent  int
	realtime    float64 // companies/s the real-time path achieved while busy; 0: not measured yet

	overhead        time.Duration // the last completed job's time beyond its records
	overheadLearned bool
}

// realtimeSent counts one real-time delivery. busy says whether more were
// ready to go: only while the path never runs dry is its pace its
// capacity, so an idle moment starts the measurement over.
func (s *sizing) realtimeSent(now time.Time, busy bool) {
	switch {
	case !busy:
		s.windowStart = time.Time{}
	case s.windowStart.IsZero():
		s.windowStart, s.windowSent = now, 0
	default:
		s.windowSent++
		if d := now.Sub(s.windowStart); d >= realtimeWindow {
			s.realtime = float64(s.windowSent) / d.Seconds()
			s.windowStart, s.windowSent = now, 0
		}
	}
}

// realtimeRate is the real-time throughput to plan with: the budget, or
// what the path achieved if that was less.
func (s *sizing) realtimeRate(budget float64) float64 {
	if s.realtime > 0 && s.realtime < budget {
		return s.realtime
	}
	return budget
}

// jobDone learns a job's overhead from how long it took beyond its
// records at the configured bulk rate.
func (s *sizing) jobDone(records int, took time.Duration, bulkRate float64) {
	work := time.Duration(float64(records) / bulkRate * float64(time.Second))
	s.overhead, s.overheadLearned = max(0, took-work), true
}

// jobOverhead is the overhead to plan with: the last job's, or the
// configured estimate before any job completed.
func (s *sizing) jobOverhead(configured time.Duration) time.Duration {
	if s.overheadLearned {
		return s.overhead
	}
	return configured
}

// firstPoll is when a job of n records is first worth asking about: when
// it should have completed at the configured bulk rate, but no later than
// the poll interval. Against Userpilot's published 20 records/s that is
// always the poll interval; a faster account is not kept waiting.
func firstPoll(n int, bulkRate float64, interval time.Duration) time.Duration {
	const floor = 10 * time.Millisecond
	expected := time.Duration(float64(n) / bulkRate * float64(time.Second))
	return min(interval, max(floor, expected))
}
