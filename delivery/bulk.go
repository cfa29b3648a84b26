package delivery

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/pgpilot/pgpilot/userpilot"
)

// maxBulkBytes keeps a job's JSON body well under Userpilot's 50 MB cap.
const maxBulkBytes = 40 << 20

// failedJobRetries is how often a job that ended "failed" is resubmitted
// before its records go out one by one on the real-time path, where a bad
// record is refused alone instead of failing the whole job.
const failedJobRetries = 2

// takeBulk chooses the companies for a bulk job (the newest ready ones: the
// real-time path keeps draining the oldest, so the checkpoint keeps moving)
// and marks them in flight. It writes the job's body as it goes: each
// company's JSON is written once, and that is both what sizes the job and
// what is recorded and sent.
func (p *Pipeline) takeBulk(r *report) ([]*entry, userpilot.BulkBody, error) {
	k := bulkShare(p.ready.len(), p.sizing.realtimeRate(p.opts.RealtimeRate), p.opts.BulkRate,
		p.sizing.jobOverhead(p.opts.BulkOverhead), p.opts.MinBulk, userpilot.MaxBulkRecords)
	if p.full() {
		// Reading is held back at the memory bound: the backlog goes on in
		// the slot past what is in memory, and the real-time path will
		// not clear what it cannot see before more arrives. Sized for a
		// backlog without end, a job is full.
		k = userpilot.MaxBulkRecords
	}
	var body userpilot.BulkBody
	if k == 0 {
		return nil, body, nil
	}
	if err := p.lookUp(p.ready.last(k)); err != nil { // one read for the job
		return nil, body, err
	}
	var batch, keep []*entry
	for len(batch) < k && p.ready.len() > 0 {
		e := p.ready.popBack()
		if e.realtimeOnly || e.delete {
			keep = append(keep, e)
			continue
		}
		same, err := p.noOp(e)
		if err != nil {
			return nil, body, err
		}
		if same {
			p.skip(e, r)
			continue
		}
		if !body.AddWithin(p.company(e), maxBulkBytes) {
			keep = append(keep, e)
			break
		}
		if len(batch) == 0 {
			// The job's companies come from one mapping: the first one's
			// size, with a margin, is a fair guess for all.
			body.Grow(min(maxBulkBytes, (body.Size()+64)*k*5/4))
		}
		batch = append(batch, e)
	}
	for i := len(keep) - 1; i >= 0; i-- {
		p.ready.push(keep[i])
	}
	for _, e := range batch {
		p.send(e)
	}
	return batch, body, nil
}

// runBulk takes a job from submission to completion. It returns when the
// job completed (the records are applied), when the records should go out
// on the real-time path instead, or when ctx is done.
func (p *Pipeline) runBulk(ctx context.Context, batch []*entry, body userpilot.BulkBody) bulkResult {
	start := time.Now()
	// Recorded before it is submitted: killed from here on, the next run
	// knows Userpilot may be applying these states, and holds their
	// companies until the job ends.
	key, err := p.beginJob(body)
	if err != nil {
		return bulkResult{entries: batch, err: err}
	}
	for failures := 0; ; {
		job, err := p.opts.Sender.BulkIdentify(ctx, body)
		var rej *userpilot.RejectedError
		switch {
		case errors.Is(err, userpilot.ErrJobRunning):
			// One job at a time per account: another job (maybe ours from
			// before a restart) is running. Wait for it, then submit.
			if err := sleep(ctx, p.opts.PollInterval); err != nil {
				return bulkResult{entries: batch, err: err}
			}
			continue
		case errors.Is(err, userpilot.ErrTooLarge), errors.As(err, &rej):
			// Too large, or a record in it refused: the real-time path
			// sends them one by one and sets aside only the bad one.
			if err := p.endJob(key); err != nil {
				return bulkResult{entries: batch, err: err}
			}
			return bulkResult{entries: batch, fallback: true, err: err, took: time.Since(start)}
		case err != nil:
			return bulkResult{entries: batch, err: err}
		}
		if err := p.jobSubmitted(key, job.ID); err != nil {
			return bulkResult{entries: batch, err: err}
		}
		p.jobAnswered.Store(time.Now().UnixNano())
		status, err := p.waitJob(ctx, job, firstPoll(len(batch), p.opts.BulkRate, p.opts.PollInterval))
		if err != nil {
			return bulkResult{entries: batch, err: err}
		}
		if status == userpilot.JobCompleted {
			// Recorded here rather than by the dispatcher, as the real-time
			// workers do: writing 10,000 profiles to the index would stall
			// reading and the real-time path meanwhile.
			if err := p.recordEntries(batch); err != nil {
				return bulkResult{entries: batch, err: err}
			}
			if err := p.endJob(key); err != nil {
				return bulkResult{entries: batch, err: err}
			}
			return bulkResult{entries: batch, took: time.Since(start)}
		}
		failures++
		p.log.Warn("bulk job failed; its records are sent again", "job", job.ID, "records", len(batch), "failures", failures)
		if failures > failedJobRetries {
			if err := p.endJob(key); err != nil {
				return bulkResult{entries: batch, err: err}
			}
			return bulkResult{entries: batch, fallback: true, err: fmt.Errorf("bulk job %s failed %d times", job.ID, failures), took: time.Since(start)}
		}
	}
}

// record notes a completed job's profiles in the no-op index. In-flight
// entries are not changed by the dispatcher, so this may run beside it.
func (p *Pipeline) record(cos []userpilot.Company) error {
	if p.opts.Index == nil {
		return nil
	}
	return p.opts.Index.Record(cos)
}

// recordEntries records a completed job's entries, a part at a time.
func (p *Pipeline) recordEntries(batch []*entry) error {
	for len(batch) > 0 {
		n := min(len(batch), 1000)
		if err := p.record(p.companiesOf(batch[:n])); err != nil {
			return err
		}
		batch = batch[n:]
	}
	return nil
}

// companiesOf is the entries as Userpilot takes them.
func (p *Pipeline) companiesOf(batch []*entry) []userpilot.Company {
	cos := make([]userpilot.Company, len(batch))
	for i, e := range batch {
		cos[i] = p.company(e)
	}
	return cos
}

// waitJob polls the job until it completed or failed, first after wait,
// then at twice the previous wait up to PollInterval. Accepted is not
// applied: only a completed job's records count as delivered.
func (p *Pipeline) waitJob(ctx context.Context, job userpilot.Job, wait time.Duration) (string, error) {
	for {
		switch job.Status {
		case userpilot.JobCompleted, userpilot.JobFailed:
			return job.Status, nil
		}
		if err := sleep(ctx, wait); err != nil {
			return "", err
		}
		wait = min(2*wait, p.opts.PollInterval)
		next, err := p.opts.Sender.BackgroundJob(ctx, job.ID)
		var rej *userpilot.RejectedError
		if errors.As(err, &rej) {
			// The job cannot be read (e.g. 404): treat it as failed, so its
			// records are sent again rather than assumed applied.
			return userpilot.JobFailed, nil
		}
		if err != nil {
			return "", fmt.Errorf("read bulk job %s: %w", job.ID, err)
		}
		next.ID = job.ID
		job = next
		if job.Status != userpilot.JobFailed {
			p.jobAnswered.Store(time.Now().UnixNano())
		}
	}
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

// bulkFinished applies a job's outcome.
func (p *Pipeline) bulkFinished(r bulkResult, rep *report) error {
	switch {
	case r.fallback:
		p.log.Warn("bulk job not applied; sending its records on the real-time path", "records", len(r.entries), "error", r.err)
		for i := len(r.entries) - 1; i >= 0; i-- {
			e := r.entries[i]
			c := p.companies[e.id]
			c.inflight = nil
			p.inflight--
			e.realtimeOnly = true
			if w := c.waiting; w != nil {
				// A newer state arrived meanwhile: fold it into this older
				// entry (newer wins), which keeps its place in the order. A
				// deletion supersedes the older state whole.
				p.resized(e, func() {
					if w.delete {
						e.delete, e.md = true, nil
					} else {
						e.md = mergeFields(e.md, w.md)
					}
				})
				e.lsn, e.resend = w.lsn, e.resend || w.resend
				p.setDone(w)
			}
			c.waiting = e
			p.ready.pushFront(e)
		}
		return nil
	case r.err != nil:
		return fmt.Errorf("bulk identify of %d companies: %w", len(r.entries), r.err)
	}
	p.sizing.jobDone(len(r.entries), r.took, p.opts.BulkRate)
	for _, e := range r.entries {
		p.finish(e)
	}
	p.progress = time.Now()
	p.stats.Bulk.Add(int64(len(r.entries)))
	p.stats.BulkJobs.Add(1)
	rep.flush(p, "bulk", len(r.entries), r.took)
	return p.accepted(r.entries[0].sentAt)
}
