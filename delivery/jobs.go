package delivery

import (
	"fmt"
	"time"

	"github.com/pgpilot/pgpilot/userpilot"
)

// JobState is where Userpilot's one bulk job per account stands, as the
// dispatcher sees it. The job's goroutine says what happens (bulk.go's
// events); only the dispatcher changes the state.
//
//	from         event                         to
//	JobIdle      a job is sized (start)        JobSubmitting
//	JobIdle      a held job is resumed         JobResuming
//	JobSubmitting jobAnswered                  JobRunning
//	JobRunning   jobAnswered                   JobRunning (Userpilot works through it)
//	JobSubmitting, JobRunning
//	             jobCompleted                  JobIdle, the job being recorded
//	             jobEnded (not applied/broken) JobIdle
//	JobResuming  jobEnded                      JobIdle
//	(recorded)   jobEnded (applied)            the record is done
//
// A completed job frees Userpilot's slot before its profiles are written to
// the index: the next job may be submitted meanwhile (at most one is
// recorded beside a running one, see nextNow).
type JobState int

// The states.
const (
	// JobIdle: no job of pgpilot's holds Userpilot's slot.
	JobIdle JobState = iota
	// JobSubmitting: the job's body is recorded and its submission is on
	// its way (or waits out another job: 409).
	JobSubmitting
	// JobRunning: submitted; Userpilot works through it, and it is polled.
	JobRunning
	// JobResuming: a job from before the restart, waited for until it
	// ends.
	JobResuming
)

func (s JobState) String() string {
	switch s {
	case JobIdle:
		return "idle"
	case JobSubmitting:
		return "submitting"
	case JobRunning:
		return "running"
	case JobResuming:
		return "resuming a job from before the restart"
	}
	return fmt.Sprintf("JobState(%d)", int(s))
}

// jobs is the dispatcher's side of bulk jobs.
type jobs struct {
	state JobState
	last  uint64 // the number of the last job started
	// slot is the job in Userpilot's slot (nil while JobIdle).
	slot *slotJob
	// recording are completed jobs whose profiles are being written to the
	// index: their companies stay in flight until then (a look-up must
	// not read the state before the job).
	recording []*slotJob
	// answered is when Userpilot last answered for the job in its slot;
	// accepted when it answered the job's submission.
	answered, accepted time.Time
}

// slotJob is a job the dispatcher started, with what it carries.
type slotJob struct {
	n       uint64
	entries []*entry
	started time.Time
	records int
	held    *heldJob // a job from before the restart (JobResuming)
}

// busy reports whether Userpilot's slot holds a job of pgpilot's.
func (j *jobs) busy() bool { return j.state != JobIdle }

// active reports whether a job is in the slot or being recorded.
func (j *jobs) active() bool { return j.busy() || len(j.recording) > 0 }

// start puts a new job of entries in the slot.
func (j *jobs) start(entries []*entry, now time.Time) uint64 {
	j.last++
	j.slot = &slotJob{n: j.last, entries: entries, started: now, records: len(entries)}
	j.state, j.answered, j.accepted = JobSubmitting, time.Time{}, time.Time{}
	return j.last
}

// resume puts a held job in the slot, waited for until it ends.
func (j *jobs) resume(hj *heldJob, now time.Time) uint64 {
	j.last++
	j.slot = &slotJob{n: j.last, entries: hj.entries, started: now, records: hj.records, held: hj}
	j.state, j.answered, j.accepted = JobResuming, time.Time{}, time.Time{}
	return j.last
}

// heard notes an answer Userpilot gave for job n.
func (j *jobs) heard(ev jobAnswered) {
	if j.slot == nil || j.slot.n != ev.n {
		return
	}
	j.answered = ev.at
	if j.state == JobSubmitting {
		j.state, j.accepted = JobRunning, ev.at
	}
}

// completed moves job n from the slot to the jobs being recorded.
func (j *jobs) completed(n uint64) *slotJob {
	if j.slot == nil || j.slot.n != n {
		return nil
	}
	sj := j.slot
	j.recording = append(j.recording, sj)
	j.slot, j.state = nil, JobIdle
	return sj
}

// ended takes job n out, wherever it is: the slot, or being recorded.
func (j *jobs) ended(n uint64) *slotJob {
	if j.slot != nil && j.slot.n == n {
		sj := j.slot
		j.slot, j.state = nil, JobIdle
		return sj
	}
	for i, sj := range j.recording {
		if sj.n == n {
			j.recording = append(j.recording[:i], j.recording[i+1:]...)
			return sj
		}
	}
	return nil
}

// nextNow says whether a job may be sized while the last one's profiles
// are still written to the index: one of at least half a full job, or,
// when the window is full, what is ready (at least minBulk). The companies
// being recorded hold their place in the window meanwhile, so a job sized
// then may be small, and each job costs its overhead however few it
// carries; but waiting for the write left Userpilot's job slot idle for
// the write's length at every job: against a fast Userpilot, 10-20 ms of
// every 40 ms job cycle of a catch-up (jobs of half the window, each
// waiting for the last one's write). Only one job is recorded beside a
// running one.
func (j *jobs) nextNow(ready int, full bool, minBulk int) bool {
	switch len(j.recording) {
	case 0:
		return true
	case 1:
		return ready >= userpilot.MaxBulkRecords/2 || full && ready >= minBulk
	}
	return false
}

// overdue reports whether the job in the slot has taken longer than the
// slack after which it is judged late: twice the estimate, plus a poll.
// Once Userpilot accepted it, that is judged from Userpilot's answers: it
// said the job still runs longer than the slack after it accepted it. From
// when it was sized, pgpilot's own work (the body's write, the upload) and
// delays on a busy machine counted against Userpilot, and an overdue job
// hands the backlog back to the real-time path. Before the submission is
// answered (or for a job from before a restart) the clock counts from when
// it was sized or resumed.
func (j *jobs) overdue(now time.Time, est bulkEstimate, poll time.Duration) bool {
	if j.slot == nil {
		return false
	}
	slack := 2*est.expected(j.slot.records) + poll
	if j.state == JobRunning {
		return j.answered.Sub(j.accepted) > slack
	}
	return now.Sub(j.slot.started) > slack
}

// patience is how long the job in the slot may go without pgpilot seeing
// anything move before that is a stall: a few times what it should take.
func (j *jobs) patience(est bulkEstimate, poll time.Duration) time.Duration {
	if j.slot == nil {
		return 0
	}
	if j.state == JobResuming && j.slot.held.job.ID == "" {
		return maxHeldWait + poll
	}
	return 3*est.expected(j.slot.records) + poll
}

// waits says what the jobs wait for, for the liveness report.
func (j *jobs) waits(now time.Time) string {
	s := "no bulk job"
	if j.slot != nil {
		s = fmt.Sprintf("bulk job %d (%d companies) %s for %s", j.slot.n, j.slot.records, j.state, now.Sub(j.slot.started).Round(time.Second))
		if !j.answered.IsZero() {
			s += fmt.Sprintf(", Userpilot last answered for it %s ago", now.Sub(j.answered).Round(time.Second))
		}
	}
	if n := len(j.recording); n > 0 {
		s += fmt.Sprintf("; %d completed job(s) being written to the no-op index", n)
	}
	return s
}
