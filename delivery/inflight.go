package delivery

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/pgpilot/pgpilot/row"
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
//   - Before any state is sent, the send horizon (a position past every
//     change a sent state comes from) is made durable. After a restart, a
//     change streamed again at or before it may have reached Userpilot
//     unrecorded (killed between Userpilot's answer and the index's write;
//     a call cancelled at the end of the grace period), so its company's
//     next state is sent, never skipped as unchanged.
type InFlight interface {
	BeginJob(companies []userpilot.Company) (key uint64, err error)
	JobSubmitted(key uint64, id string) error
	EndJob(key uint64) error
	Jobs() ([]state.Job, error)
	SendHorizon() (state.LSN, error)
	RaiseSendHorizon(state.LSN) error
}

// horizonSlack is how far past what was heard the send horizon is moved at
// a time: one durable write per 16 MB of WAL, at the cost of not skipping
// as unchanged, after a crash, the changes up to 16 MB past the last one
// sent.
const horizonSlack = 16 << 20

// heldJob is a bulk job from before the restart that Userpilot may still
// be applying: its companies wait for its end.
type heldJob struct {
	job     state.Job
	entries []*entry
}

// loadInFlight reads what an earlier run may have sent without seeing the
// outcome: the send horizon, and the jobs not seen end, whose companies
// are held until those jobs end. It runs before the outbox is loaded, so
// that owed states wait behind the held ones.
func (p *Pipeline) loadInFlight() error {
	if p.opts.InFlight == nil || p.inFlightLoaded {
		return nil // once per pipeline: what an earlier process left
	}
	p.inFlightLoaded = true
	h, err := p.opts.InFlight.SendHorizon()
	if err != nil {
		return err
	}
	p.horizon = pglogrepl.LSN(h)
	if p.horizon > p.done {
		p.doubtful = p.horizon
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
			e := &entry{co: co, done: true, held: true}
			c := p.companies[co.CompanyID]
			if c == nil {
				c = &company{}
				p.companies[co.CompanyID] = c
			}
			if c.inflight != nil {
				continue // in an older held job too: it waits for that one
			}
			c.inflight = e
			p.inflight++
			hj.entries = append(hj.entries, e)
		}
		p.held = append(p.held, hj)
		p.log.Warn("a bulk job from before the restart may still be running at Userpilot; its companies wait for it to end",
			"job", j.ID, "companies", len(j.Companies), "submitted", j.Began.Format(time.RFC3339))
	}
	return nil
}

// inDoubt reports whether txn was heard by an earlier run before a send it
// did not see the end of: its company is then sent, not skipped.
func (p *Pipeline) inDoubt(txn row.Transaction) bool {
	if p.doubtful == 0 {
		return false
	}
	switch txn.Kind {
	case row.Commit, row.Marker:
		return txn.EndLSN != 0 && txn.EndLSN <= p.doubtful
	case row.Piece:
		return txn.CommitLSN < p.doubtful
	}
	return false
}

// hear notes how far the changes taken in go, for the send horizon.
func (p *Pipeline) hear(txn row.Transaction) {
	p.heard = max(p.heard, txn.EndLSN)
	if txn.CommitLSN != 0 {
		p.heard = max(p.heard, txn.CommitLSN+1)
	}
}

// coverSends makes the send horizon durable past every change heard, before
// any state from them is handed to a sender.
func (p *Pipeline) coverSends() error {
	if p.opts.InFlight == nil || p.heard <= p.horizon {
		return nil
	}
	h := p.heard + horizonSlack
	if err := p.opts.InFlight.RaiseSendHorizon(state.LSN(h)); err != nil {
		return err
	}
	p.horizon = h
	return nil
}

// resumeHeld waits for a held job's end: polled by id, or, with no id (the
// submission's answer was lost), for as long as such a job would take.
func (p *Pipeline) resumeHeld(ctx context.Context, hj *heldJob) bulkResult {
	res := bulkResult{entries: hj.entries, held: hj}
	if hj.job.ID == "" {
		wait := p.sizing.jobOverhead(p.opts.BulkOverhead) +
			time.Duration(float64(len(hj.job.Companies))/p.opts.BulkRate*float64(time.Second))
		wait = min(max(0, wait-time.Since(hj.job.Began)), maxHeldWait)
		if err := sleep(ctx, wait); err != nil {
			return bulkResult{entries: hj.entries, held: hj, err: err}
		}
		res.heldOutcome = "unknown"
	} else {
		status, err := p.waitJob(ctx, userpilot.Job{ID: hj.job.ID}, min(50*time.Millisecond, p.opts.PollInterval))
		if err != nil {
			return bulkResult{entries: hj.entries, held: hj, err: err}
		}
		res.heldOutcome = status
		if status == userpilot.JobCompleted {
			if err := p.record(hj.entries); err != nil {
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
		if c := p.companies[e.co.CompanyID]; c != nil && c.waiting != nil && r.heldOutcome != userpilot.JobCompleted {
			c.waiting.resend, c.waiting.checked = true, false
		}
		p.finish(e)
	}
	return nil
}

// beginJob, jobSubmitted and endJob keep the record of a job, when there is
// an InFlight to keep it in.
func (p *Pipeline) beginJob(cos []userpilot.Company) (uint64, error) {
	if p.opts.InFlight == nil {
		return 0, nil
	}
	return p.opts.InFlight.BeginJob(cos)
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
