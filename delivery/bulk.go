package delivery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/pgpilot/pgpilot/userpilot"
)

// maxBulkBytes keeps a job's JSON body well under Userpilot's 50 MB cap.
const maxBulkBytes = 40 << 20

// failedJobRetries is how often a job that ended "failed" is resubmitted
// before its records go out one by one on the real-time path, where a bad
// record is refused alone instead of failing the whole job.
const failedJobRetries = 2

// A bulk job's goroutine is handed a bulkJob (values only: the body, the
// profiles to record, the estimate it was sized with) and a jobRunner (what
// it may call: Userpilot, the job records, the no-op index). It holds
// nothing of the dispatcher's, and says what happens as typed events on one
// channel, in the order they happen:
//
//	jobAnswered*  (Userpilot answered for it: submitted, or a status read)
//	jobCompleted  (applied at Userpilot: its one job slot is free; the body's room comes back)
//	jobEnded      (last: recorded, not applied, or failed)

// bulkJob is a job as its goroutine gets it.
type bulkJob struct {
	n        uint64 // the dispatcher's number for it
	body     userpilot.BulkBody
	profiles profileValues // written to the index once it completed
	est      bulkEstimate  // the estimate it was sized with
}

// jobEvent is what a job's goroutine says; the dispatcher switches on the
// concrete type.
type jobEvent interface{ job() uint64 }

// jobAnswered: Userpilot answered for the job at at (its submission, or a
// status read that did not say failed): it works through it.
type jobAnswered struct {
	n  uint64
	at time.Time
}

// jobCompleted: the job completed at Userpilot, with what it showed of
// the bulk path; room is its body's, for the next job's. Its profiles are
// being written to the index: the job's jobEnded follows.
type jobCompleted struct {
	n    uint64
	obs  jobObservation
	room []byte
}

// jobOutcome is how a job ended.
type jobOutcome int

const (
	// jobApplied: completed at Userpilot and recorded in the index.
	jobApplied jobOutcome = iota
	// jobNotApplied: refused, too large, or failed too often: its records
	// go out one by one on the real-time path.
	jobNotApplied
	// jobBroken: it could not be carried on (ctx ended, the state could not
	// be written): delivery fails, and a restart resumes from the records.
	jobBroken
	// heldCompleted, heldFailed and heldUnknown end a job from before the
	// restart: completed (recorded), failed, or its end not knowable (its
	// id was never learnt: waited for as long as it would take).
	heldCompleted
	heldFailed
	heldUnknown
)

func (o jobOutcome) String() string {
	switch o {
	case jobApplied:
		return "applied"
	case jobNotApplied:
		return "not applied"
	case jobBroken:
		return "broken"
	case heldCompleted:
		return userpilot.JobCompleted
	case heldFailed:
		return userpilot.JobFailed
	case heldUnknown:
		return "unknown"
	}
	return fmt.Sprintf("jobOutcome(%d)", int(o))
}

// jobEnded is a job's last event.
type jobEnded struct {
	n       uint64
	outcome jobOutcome
	err     error // why it was not applied or broke
	took    time.Duration
}

func (e jobAnswered) job() uint64  { return e.n }
func (e jobCompleted) job() uint64 { return e.n }
func (e jobEnded) job() uint64     { return e.n }

// jobRunner is what a job's goroutine may call.
type jobRunner struct {
	sender   Sender
	inflight InFlight // nil: jobs are not recorded
	index    Index    // nil: no no-op index
	poll     time.Duration
	log      *slog.Logger
}

// say hands ev to the dispatcher, or gives up when ctx ends (the
// dispatcher is gone).
func say(ctx context.Context, events chan<- jobEvent, ev jobEvent) {
	select {
	case events <- ev:
	case <-ctx.Done():
	}
}

// run takes a job from submission to its end, saying so on events.
func (r jobRunner) run(ctx context.Context, job bulkJob, events chan<- jobEvent) {
	start := time.Now()
	end := func(outcome jobOutcome, err error) {
		say(ctx, events, jobEnded{n: job.n, outcome: outcome, err: err, took: time.Since(start)})
	}
	// Recorded before it is submitted: killed from here on, the next run
	// knows Userpilot may be applying these states, and holds their
	// companies until the job ends.
	key, err := r.begin(job.body)
	if err != nil {
		end(jobBroken, err)
		return
	}
	for failures := 0; ; {
		if err := r.recall(key, &job.body); err != nil {
			end(jobBroken, err)
			return
		}
		obs := jobObservation{records: job.profiles.Len(), submitted: time.Now()}
		submitted, err := r.sender.BulkIdentify(ctx, job.body)
		var rej *userpilot.RejectedError
		switch {
		case errors.Is(err, userpilot.ErrJobRunning):
			// One job at a time per account: another job (maybe ours from
			// before a restart) is running. Wait for it, then submit.
			if err := sleep(ctx, r.poll); err != nil {
				end(jobBroken, err)
				return
			}
			continue
		case errors.Is(err, userpilot.ErrTooLarge), errors.As(err, &rej):
			// Too large, or a record in it refused: the real-time path
			// sends them one by one and sets aside only the bad one.
			if err := r.end(key); err != nil {
				end(jobBroken, err)
				return
			}
			end(jobNotApplied, err)
			return
		case err != nil:
			end(jobBroken, err)
			return
		}
		// Userpilot's answer, before pgpilot's own write of the job's id:
		// that write is not Userpilot's time, and counted in the
		// submission it made every job's overhead look longer.
		obs.answered = time.Now()
		obs.running = obs.answered
		if err := r.submitted(key, submitted.ID); err != nil {
			end(jobBroken, err)
			return
		}
		r.forget(&job.body)
		say(ctx, events, jobAnswered{n: job.n, at: obs.answered})
		// The estimate counts from the submission, which has taken some
		// of it already.
		first := max(minPoll, firstPoll(obs.records, job.est, r.poll)-time.Since(obs.submitted))
		status, err := r.wait(ctx, submitted, first, &obs, func(at time.Time) { say(ctx, events, jobAnswered{n: job.n, at: at}) })
		if err != nil {
			end(jobBroken, err)
			return
		}
		if status == userpilot.JobCompleted {
			completed := time.Now()
			// Recorded here rather than by the dispatcher, as the real-time
			// workers do: writing 10,000 profiles to the index would stall
			// reading and the real-time path meanwhile. The next job need
			// not wait for it (its companies are others: these stay in
			// flight until recorded). Killed meanwhile, the next run finds
			// this job's record and writes the index from it. The body is
			// let go first: its room goes to the next job's body, and the
			// index write need not keep a megabyte or two of JSON alive.
			say(ctx, events, jobCompleted{n: job.n, obs: obs, room: job.body.Release()})
			if err := r.record(job.profiles); err != nil {
				end(jobBroken, err)
				return
			}
			if err := r.end(key); err != nil {
				end(jobBroken, err)
				return
			}
			// Where a job's time goes (the window waits for all of it).
			r.log.Debug("bulk job done", "records", obs.records, "recorded_before_submission", obs.submitted.Sub(start).Round(time.Millisecond),
				"submission", obs.upload().Round(time.Millisecond), "completed_after", completed.Sub(obs.answered).Round(time.Millisecond),
				"index_write", time.Since(completed).Round(time.Millisecond))
			end(jobApplied, nil)
			return
		}
		failures++
		r.log.Warn("bulk job failed; its records are sent again", "job", submitted.ID, "records", obs.records, "failures", failures)
		if failures > failedJobRetries {
			if err := r.end(key); err != nil {
				end(jobBroken, err)
				return
			}
			end(jobNotApplied, fmt.Errorf("bulk job %s failed %d times", submitted.ID, failures))
			return
		}
	}
}

// record notes a completed job's profiles in the no-op index (which writes
// them a part at a time, in key order).
func (r jobRunner) record(ps profileValues) error {
	if r.index == nil {
		return nil
	}
	return r.index.RecordProfiles(ps)
}

// wait polls the job until it completed or failed, first after first, then
// as nextPoll says: at a tenth of the job's age, sooner when its own
// progress says it is nearly done. Accepted is not applied: only a
// completed job's records count as delivered. What the polls show is noted
// in obs (nil: a job from before a restart, not measured); answered hears
// of each answer that did not say failed.
func (r jobRunner) wait(ctx context.Context, job userpilot.Job, first time.Duration, obs *jobObservation, answered func(time.Time)) (string, error) {
	began := time.Now()
	if obs != nil {
		began = obs.submitted
	}
	wait := first
	for {
		switch job.Status {
		case userpilot.JobCompleted, userpilot.JobFailed:
			return job.Status, nil
		}
		if err := sleep(ctx, wait); err != nil {
			return "", err
		}
		next, err := r.sender.BackgroundJob(ctx, job.ID)
		var rej *userpilot.RejectedError
		if errors.As(err, &rej) {
			// The job cannot be read (e.g. 404): treat it as failed, so its
			// records are sent again rather than assumed applied.
			return userpilot.JobFailed, nil
		}
		if err != nil {
			return "", fmt.Errorf("read bulk job %s: %w", job.ID, err)
		}
		at := time.Now()
		next.ID = job.ID
		job = next
		if job.Status != userpilot.JobFailed && answered != nil {
			answered(at)
		}
		var remaining time.Duration
		if obs != nil {
			remaining = obs.saw(job, at)
		}
		wait = nextPoll(at.Sub(began), remaining, r.poll)
	}
}

// begin, submitted and end keep the record of a job, when there is an
// InFlight to keep it in.
func (r jobRunner) begin(body userpilot.BulkBody) (uint64, error) {
	if r.inflight == nil {
		return 0, nil
	}
	return r.inflight.BeginBulkJob(body)
}

// forget lets go of a submitted job's body while it runs at Userpilot
// (seconds to minutes; polled): it is on record, and recall reads it
// again should the job fail and be submitted anew. Held for the job's
// whole life, a body of 10,000 companies (3-4 MB) was a tenth of the live
// heap at the peaks of an overlap.
func (r jobRunner) forget(body *userpilot.BulkBody) {
	if r.inflight != nil {
		body.Forget()
	}
}

// recall gives a forgotten body its bytes back from the job's record.
func (r jobRunner) recall(key uint64, body *userpilot.BulkBody) error {
	if !body.Forgotten() {
		return nil
	}
	data, err := r.inflight.JobBody(key)
	if err != nil {
		return err
	}
	return body.Recall(data)
}

func (r jobRunner) submitted(key uint64, id string) error {
	if r.inflight == nil {
		return nil
	}
	return r.inflight.JobSubmitted(key, id)
}

func (r jobRunner) end(key uint64) error {
	if r.inflight == nil {
		return nil
	}
	return r.inflight.EndJob(key)
}

// saw notes one status answer (received at at) and returns what the job's
// own progress says is left of it (0: unknown).
func (o *jobObservation) saw(job userpilot.Job, at time.Time) time.Duration {
	switch job.Status {
	case userpilot.JobCompleted:
		o.ended = at
		switch {
		case !job.StartTime.IsZero() && job.EndTime.After(job.StartTime):
			o.serverTook = job.EndTime.Sub(job.StartTime)
		case job.Elapsed > 0:
			o.serverTook = job.Elapsed
		}
		return 0
	case userpilot.JobFailed:
		return 0
	}
	o.running = at
	if job.CompletedRows < 0 {
		return 0
	}
	o.sawProgress(job.CompletedRows, at)
	span := o.last.at.Sub(o.first.at)
	if o.first.at.IsZero() || o.last.rows <= o.first.rows || span <= 0 {
		return 0
	}
	pace := float64(o.last.rows-o.first.rows) / span.Seconds()
	return time.Duration(float64(o.records-o.last.rows) / pace * float64(time.Second))
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
