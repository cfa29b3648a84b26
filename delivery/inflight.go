package delivery

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/pgpilot/pgpilot/state"
	"github.com/pgpilot/pgpilot/userpilot"
)

// InFlight durably records what may reach Userpilot without pgpilot seeing
// the outcome (*state.Store), so that a restart neither trusts the no-op
// index where a send it did not see the end of may have changed Userpilot,
// nor lets a bulk job still running at Userpilot land after newer values:
//
//   - Before a bulk job is submitted, the companies and states it carries
//     are recorded (BeginJob), then its id (JobSubmitted); the record goes
//     once the job's end is seen (EndJob). After a restart its companies are
//     held in flight, on every path, until that job ends (it is polled by
//     id) — so an older job can never complete over newer values.
//   - Before a real-time identify or a delete request, its companies are
//     marked as being sent (MarkSending); the no-op index's write of the
//     outcome unmarks them. After a restart a company still marked may
//     have reached Userpilot unrecorded (killed between Userpilot's answer
//     and the index's write; a call cancelled at the end of the grace
//     period), so its next state is sent, never skipped as unchanged.
type InFlight interface {
	BeginBulkJob(body userpilot.BulkBody) (key uint64, err error)
	JobSubmitted(key uint64, id string) error
	EndJob(key uint64) error
	Jobs() ([]state.Job, error)
	MarkSending(ids []string) error
	Sending() ([]string, error)
}

// heldJob is a bulk job from before the restart that Userpilot may still
// be applying: its companies wait for its end.
type heldJob struct {
	job     state.Job // without its companies, once loaded
	entries []*entry
	records int // how many companies the job carries
	// alsoOlder are its companies held by an older job too, for the index
	// only.
	alsoOlder []*entry
}

// loadInFlight reads what an earlier run may have sent without seeing the
// outcome: the companies marked as being sent, whose next state is then
// sent whatever the index says, and the jobs not seen end, whose companies
// are held until those jobs end. It runs before the outbox is loaded, so
// that owed states wait behind the held ones.
func (p *Pipeline) loadInFlight() error {
	if p.opts.InFlight == nil || p.inFlightLoaded {
		return nil // once per pipeline: what an earlier process left
	}
	p.inFlightLoaded = true
	sending, err := p.opts.InFlight.Sending()
	if err != nil {
		return err
	}
	for _, id := range sending {
		p.doubt[id] = true
	}
	jobs, err := p.opts.InFlight.Jobs()
	if err != nil {
		return err
	}
	for _, j := range jobs {
		hj := &heldJob{job: j}
		for _, co := range j.Companies {
			if co.Metadata == nil {
				co.Metadata = userpilot.Metadata{}
			}
			// Done for the checkpoint and the pending count from the start:
			// what it carries is before the checkpoint, or owed again in the
			// outbox or the stream.
			e := &entry{id: co.CompanyID, md: p.keys.pack(co.Metadata), done: true, held: true}
			c := p.companies[co.CompanyID]
			if c == nil {
				c = p.newCompany(co.CompanyID)
			}
			e.co = c
			if c.inflight != nil {
				// In an older held job too: it waits for that one, and
				// this job's state is only recorded once this job completes.
				hj.alsoOlder = append(hj.alsoOlder, e)
				continue
			}
			c.inflight = e
			p.inflight++
			hj.entries = append(hj.entries, e)
		}
		// The entries hold the job's states, packed: the decoded ones
		// would be twice that for as long as the job is waited for.
		hj.records, hj.job.Companies = len(j.Companies), nil
		p.held = append(p.held, hj)
		p.log.Warn("a bulk job from before the restart may still be running at Userpilot; its companies wait for it to end",
			"job", j.ID, "companies", len(j.Companies), "submitted", j.Began.Format(time.RFC3339))
	}
	return nil
}

// inDoubt reports, once, whether an earlier run may have sent a state of
// company id without seeing the outcome: its next state is then sent, not
// skipped as unchanged (the entry keeps its resend until it is sent).
func (p *Pipeline) inDoubt(id string) bool {
	if !p.doubt[id] {
		return false
	}
	delete(p.doubt, id)
	return true
}

// markSending durably marks companies as being sent, before the call.
func (p *Pipeline) markSending(ids ...string) error {
	if p.opts.InFlight == nil {
		return nil
	}
	return p.opts.InFlight.MarkSending(ids)
}

// resumeHeld waits for a held job's end: polled by id, or, with no id (the
// submission's answer was lost), for as long as such a job would take.
//
// est is the bulk estimate when it started (the dispatcher owns p.est).
func (p *Pipeline) resumeHeld(ctx context.Context, hj *heldJob, est bulkEstimate) bulkResult {
	res := bulkResult{entries: hj.entries, held: hj}
	if hj.job.ID == "" {
		// As long as such a job would take, with the slack after which a
		// running job is judged overdue (bulkAlone): the estimate is of
		// jobs pgpilot polled, and nobody polls a job whose submitter was
		// killed; Userpilot works through it in its own time (the stand-in
		// without a speed completes one up to a second after submission,
		// where a polled one completes at its first poll). Let go sooner,
		// a company's newer state could be overwritten by the job's older
		// one, and a company deleted since be created again.
		wait := 2*est.expected(hj.records) + p.opts.PollInterval
		wait = min(max(0, wait-time.Since(hj.job.Began)), maxHeldWait)
		if err := sleep(ctx, wait); err != nil {
			return bulkResult{entries: hj.entries, held: hj, err: err}
		}
		res.heldOutcome = "unknown"
	} else {
		status, err := p.waitJob(ctx, userpilot.Job{ID: hj.job.ID}, min(minPoll, p.opts.PollInterval), nil)
		if err != nil {
			return bulkResult{entries: hj.entries, held: hj, err: err}
		}
		res.heldOutcome = status
		if status == userpilot.JobCompleted {
			if err := p.recordEntries(append(slices.Clip(hj.entries), hj.alsoOlder...)); err != nil {
				return bulkResult{entries: hj.entries, held: hj, err: err}
			}
		}
	}
	if err := p.opts.InFlight.EndJob(hj.job.Key); err != nil {
		return bulkResult{entries: hj.entries, held: hj, err: err}
	}
	return res
}

// maxHeldWait bounds the wait for a job from before the restart whose id
// was never learnt.
const maxHeldWait = 10 * time.Minute

// heldFinished lets a held job's companies go: their newer states (from
// the stream or the outbox) are sent next. When the job's outcome is
// unknown, their next state is sent even if the index says Userpilot
// holds it.
func (p *Pipeline) heldFinished(r bulkResult, _ *report) error {
	if r.err != nil {
		if errors.Is(r.err, context.Canceled) {
			return r.err
		}
		return fmt.Errorf("wait for bulk job %s from before the restart: %w", r.held.job.ID, r.err)
	}
	p.log.Info("the bulk job from before the restart ended; its companies' newer states go next",
		"job", r.held.job.ID, "status", r.heldOutcome, "companies", len(r.entries))
	for _, e := range r.entries {
		if c := p.companies[e.id]; c != nil && c.waiting != nil && r.heldOutcome != userpilot.JobCompleted {
			c.waiting.resend, c.waiting.checked = true, false
		}
		p.finish(e)
	}
	return nil
}

// beginJob, jobSubmitted and endJob keep the record of a job, when there is
// an InFlight to keep it in.
func (p *Pipeline) beginJob(body userpilot.BulkBody) (uint64, error) {
	if p.opts.InFlight == nil {
		return 0, nil
	}
	return p.opts.InFlight.BeginBulkJob(body)
}

func (p *Pipeline) jobSubmitted(key uint64, id string) error {
	if p.opts.InFlight == nil {
		return nil
	}
	return p.opts.InFlight.JobSubmitted(key, id)
}

func (p *Pipeline) endJob(key uint64) error {
	if p.opts.InFlight == nil {
		return nil
	}
	return p.opts.InFlight.EndJob(key)
}
