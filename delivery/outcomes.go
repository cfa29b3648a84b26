package delivery

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/pgpilot/pgpilot/mapping"
	"github.com/pgpilot/pgpilot/state"
	"github.com/pgpilot/pgpilot/userpilot"
)

// What Userpilot answered: each call's outcome finishes its entries,
// requeues them, or holds them for the breaker's verdict; dead letters are
// written here.

// realtimeDone takes a real-time call's outcome.
func (p *Pipeline) realtimeDone(r realtimeResult) error {
	c := p.ledger.company(r.id)
	if c == nil || c.inflight == nil {
		return fmt.Errorf("a real-time call for company %q returned, but the ledger holds nothing of it in flight", r.id)
	}
	e := c.inflight
	var rej *userpilot.RejectedError
	answered := errors.As(r.err, &rej)
	if r.err == nil || answered {
		p.sizing.called(r.took)
	}
	switch {
	case r.err == nil:
		now := time.Now()
		p.stats.Realtime.Add(1)
		if entity, _ := subjectOf(e.id); entity == mapping.User {
			p.stats.Users.Realtime.Add(1)
		}
		p.progress = now
		p.report.realtime++
		p.finish(e)
		return p.accepted(e.sentAt.time())
	case answered:
		p.report.rejected++
		// Set aside, or kept, once the breaker knows which it is.
		path := "POST /v1/companies/identify"
		if entity, _ := subjectOf(e.id); entity == mapping.User {
			path = "POST /v1/identify"
		}
		return p.refused(e, rej, path, "rejected by Userpilot")
	default:
		return fmt.Errorf("deliver company %q: %w", r.id, r.err)
	}
}

// jobEvent takes what a bulk job's goroutine says.
func (p *Pipeline) jobEvent(ev jobEvent) error {
	switch ev := ev.(type) {
	case jobAnswered:
		p.jobs.heard(ev)
	case jobCompleted:
		// Completed at Userpilot: the account's one job may be the next,
		// while this one's profiles are written to the index. Userpilot
		// applied it: that is progress, for the switch to the outbox,
		// before the index write is done too.
		p.jobs.completed(ev.n)
		now := time.Now()
		p.progress = now
		p.enc.putSpare(ev.room, now)
		p.live.moves++
		return p.learnJob(ev.obs)
	case jobEnded:
		sj := p.jobs.ended(ev.n)
		if sj == nil {
			return fmt.Errorf("bulk job %d ended, but the dispatcher knows no such job", ev.n)
		}
		if sj.held != nil {
			return p.heldEnded(sj, ev)
		}
		return p.bulkEnded(sj, ev)
	}
	return nil
}

// bulkEnded applies a job's outcome.
func (p *Pipeline) bulkEnded(sj *slotJob, ev jobEnded) error {
	switch ev.outcome {
	case jobNotApplied:
		p.log.Warn("bulk job not applied; sending its records on the real-time path", "records", len(sj.entries), "error", ev.err)
		p.ledger.requeue(sj.entries)
		return nil
	case jobBroken:
		return fmt.Errorf("bulk identify of %d companies: %w", len(sj.entries), ev.err)
	}
	for _, e := range sj.entries {
		p.finish(e)
	}
	p.progress = time.Now()
	p.stats.Bulk.Add(int64(len(sj.entries)))
	if entity, _ := subjectOf(sj.entries[0].id); entity == mapping.User {
		p.stats.Users.Bulk.Add(int64(len(sj.entries))) // a job is of one entity
	}
	p.stats.BulkJobs.Add(1)
	p.report.flush(p, "bulk", len(sj.entries), ev.took)
	return p.accepted(sj.entries[0].sentAt.time())
}

// heldEnded lets a held job's companies go: their newer states (from the
// stream or the outbox) are sent next. When the job's outcome is not
// known to be completed, their next state is sent even if the index says
// Userpilot holds it.
func (p *Pipeline) heldEnded(sj *slotJob, ev jobEnded) error {
	if ev.outcome == jobBroken {
		if errors.Is(ev.err, context.Canceled) {
			return ev.err
		}
		return fmt.Errorf("wait for bulk job %s from before the restart: %w", sj.held.job.ID, ev.err)
	}
	p.log.Info("the bulk job from before the restart ended; its companies' newer states go next",
		"job", sj.held.job.ID, "status", ev.outcome.String(), "companies", len(sj.entries))
	for _, e := range sj.entries {
		if c := e.co; c.waiting != nil && ev.outcome != heldCompleted {
			c.waiting.resend, c.waiting.checked = true, false
		}
		p.finish(e)
	}
	return nil
}

// deleteDone takes a delete request's answer.
func (p *Pipeline) deleteDone(err error) error {
	batch, v := p.deletes.answered(err, time.Now())
	var rej *userpilot.RejectedError
	errors.As(err, &rej)
	switch v {
	case deleteAccepted:
		p.log.Info("deletion requested from Userpilot (on_delete: delete; Userpilot erases in its daily batch)", "companies", len(batch))
		p.progress = time.Now()
		for _, e := range batch {
			p.finish(e)
		}
		return p.accepted(batch[0].sentAt.time())
	case deleteSplit:
		p.log.Info("deletion batch refused by Userpilot; sending it again in halves to find the refused id",
			"companies", len(batch), "status", rej.Status)
		return nil
	case deleteSetAside:
		e := batch[0]
		if err := p.deadLetter(subjectLetter(e.id, state.DeadLetter{LSN: state.LSN(e.lsn), Status: rej.Status,
			Reason: "deletion refused by Userpilot", Body: rej.Body})); err != nil {
			return err
		}
		p.finish(e)
		return nil
	case deleteRefused:
		// One id refused alone (or a 404: no Userpilot there to split
		// for): the breaker decides whether it is set aside.
		for _, e := range batch {
			path := "DELETE /v1/companies"
			if entity, _ := subjectOf(e.id); entity == mapping.User {
				path = "DELETE /v1/users"
			}
			if err := p.refused(e, rej, path, "deletion refused by Userpilot"); err != nil {
				return err
			}
		}
		return nil
	}
	return fmt.Errorf("delete %d companies: %w", len(batch), err)
}

// refused takes a record Userpilot refused on path: set aside now, or held
// for the breaker's verdict (and the breaker tripped, when that is it).
func (p *Pipeline) refused(e *entry, rej *userpilot.RejectedError, path, reason string) error {
	v, trip := p.refusals.refused(e, rej, path, reason, time.Now())
	if trip != "" {
		if p.opts.Breaker.trip(trip) {
			p.log.Error("delivery stopped: "+trip, "held_records", len(p.refusals.held))
		}
		p.reportStatus(true) // `pgpilot status` says so too
	}
	if v == holdForVerdict {
		return nil
	}
	dl := subjectLetter(e.id, state.DeadLetter{LSN: state.LSN(e.lsn), Status: rej.Status, Reason: reason, Body: rej.Body, Payload: p.enc.payload(e)})
	if rej.Status == 0 {
		dl.Payload = p.enc.company(e)
	}
	if err := p.deadLetter(dl); err != nil {
		return err
	}
	p.finish(e)
	return nil
}

// accepted is Userpilot accepting a request sent at sent: the refusals held
// from before it are bad records, set aside now.
func (p *Pipeline) accepted(sent time.Time) error {
	return p.setAside(p.refusals.accepted(sent))
}

// setAside dead-letters refused records; those it could not are held
// again.
func (p *Pipeline) setAside(hs []refusal) error {
	for i, h := range hs {
		if err := p.deadLetter(subjectLetter(h.e.id, state.DeadLetter{LSN: state.LSN(h.e.lsn),
			Status: h.rej.Status, Reason: h.reason, Body: h.rej.Body, Payload: p.enc.payload(h.e)})); err != nil {
			p.refusals.putBack(hs[i:])
			return err
		}
		p.finish(h.e)
	}
	return nil
}

func (p *Pipeline) deadLetter(dl state.DeadLetter) error {
	if err := p.opts.DeadLetters.AppendDeadLetter(dl); err != nil {
		if dl.UserID != "" {
			return fmt.Errorf("set aside user %q: %w", dl.UserID, err)
		}
		return fmt.Errorf("set aside company %q: %w", dl.CompanyID, err)
	}
	p.stats.DeadLettered.Add(1)
	if dl.UserID != "" {
		p.stats.Users.DeadLettered.Add(1)
	}
	p.log.Warn("record set aside in the dead-letter file", "company_id", dl.CompanyID, "user_id", dl.UserID, "status", dl.Status,
		"reason", dl.Reason, "lsn", dl.LSN.String())
	return nil
}

// subjectLetter is dl about the company or user key names.
func subjectLetter(key string, dl state.DeadLetter) state.DeadLetter {
	if entity, id := subjectOf(key); entity == mapping.User {
		dl.UserID = id
	} else {
		dl.CompanyID = id
	}
	return dl
}
