package delivery

import (
	"context"
	"errors"
	"fmt"
	"sync"
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
// real-time path keeps draining the oldest, so the checkpoint keeps moving;
// the oldest while the backlog is left to bulk jobs alone, for the same
// reason) and marks them in flight. It writes the job's body as it goes: each
// company's JSON is written once, and that is both what sizes the job and
// what is recorded and sent.
func (p *Pipeline) takeBulk(r *report) ([]*entry, userpilot.BulkBody, error) {
	rt := p.sizing.realtimeRate(p.realtimeBudget())
	k := bulkShare(p.ready.len(), rt, p.est.rate, p.est.overhead, p.opts.MinBulk, userpilot.MaxBulkRecords)
	if !p.est.learned() {
		// Nothing measured: a small job first, to learn what the bulk
		// path does before a large one is sized from a guess.
		k = probeSize(p.ready.len(), rt, k, p.opts.MinBulk)
	}
	alone := p.bulkAlone(time.Now())
	if alone && p.ready.len() >= p.opts.MinBulk {
		// No real-time path to share with: as much as a job takes.
		k = min(p.ready.len(), userpilot.MaxBulkRecords)
	}
	if p.full() && !alone {
		// Reading is held back at the memory bound: the backlog goes on in
		// the slot past what is in memory. Sized for a backlog without
		// end, a job is full while bulk is the faster path (or nothing is
		// measured yet); when the real-time path is faster, the job takes
		// bulk's share of what is ready and the real-time path keeps the
		// rest: a full job against a real-time path eight times faster
		// left that path idle for the job's 200 s.
		k = userpilot.MaxBulkRecords
		if p.est.learned() && rt > p.est.rate {
			// Below MinBulk a job is not worth its overhead here either:
			// with a window of one, every company went as a job of one.
			share := float64(p.ready.len()) * p.est.rate / (rt + p.est.rate)
			if k = min(userpilot.MaxBulkRecords, int(share)); k < p.opts.MinBulk {
				k = 0
			}
		}
	}
	var body userpilot.BulkBody
	if k == 0 {
		return nil, body, nil
	}
	body.Reuse(p.spare.take())
	take, peek, putBack := p.ready.popBack, p.ready.last, p.ready.push
	if alone {
		take, peek, putBack = p.ready.popFront, p.ready.first, p.ready.pushFront
	}
	if err := p.lookUp(peek(k)); err != nil { // one read for the job
		return nil, body, err
	}
	p.log.Debug("bulk job sized", "ready", p.ready.len(), "realtime_rate", round(rt), "bulk_rate", round(p.est.rate),
		"job_overhead", p.est.overhead.Round(time.Millisecond), "measured", p.est.learned(), "records", k)
	var batch, keep []*entry
	members := p.keys.members
	for len(batch) < k && p.ready.len() > 0 {
		e := take()
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
		p.memberJSON = e.md.appendMembers(p.memberJSON[:0], members)
		if !body.AddMembersWithin(e.id, p.memberJSON, maxBulkBytes) {
			keep = append(keep, e)
			break
		}
		if len(batch) == 0 {
			// The job's companies come from one mapping: the first one's
			// size, with a margin, is a fair guess for all. (A body is
			// the largest object pgpilot makes; with 64 bytes and a
			// quarter more, two jobs' bodies held 1.5 MB of spare room.)
			body.Grow(min(maxBulkBytes, (body.Size()+16)*k*9/8))
		}
		batch = append(batch, e)
	}
	for i := len(keep) - 1; i >= 0; i-- {
		putBack(keep[i])
	}
	now := time.Now()
	for _, e := range batch {
		p.send(e, now)
	}
	return batch, body, nil
}

// runBulk takes a job from submission to completion. It returns when the
// job completed (the records are applied), when the records should go out
// on the real-time path instead, or when ctx is done.
//
// est is the estimate the job was sized with (the dispatcher owns p.est).
// free is told when the job completed, before its profiles are written to
// the index: Userpilot's one bulk job per account is free from then on.
//
// body is let go once the job completed: its room goes to the next job's
// body (spareRoom), and the index write need not keep a megabyte or two
// of JSON alive.
func (p *Pipeline) runBulk(ctx context.Context, batch []*entry, body *userpilot.BulkBody, est bulkEstimate, free func(jobObservation)) bulkResult {
	start := time.Now()
	// Recorded before it is submitted: killed from here on, the next run
	// knows Userpilot may be applying these states, and holds their
	// companies until the job ends.
	key, err := p.beginJob(*body)
	if err != nil {
		return bulkResult{entries: batch, err: err}
	}
	for failures := 0; ; {
		obs := jobObservation{records: len(batch), submitted: time.Now()}
		job, err := p.opts.Sender.BulkIdentify(ctx, *body)
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
		obs.answered = time.Now()
		obs.running = obs.answered
		p.jobAnswered.Store(obs.answered.UnixNano())
		// The estimate counts from the submission, which has taken some
		// of it already.
		first := max(minPoll, firstPoll(len(batch), est, p.opts.PollInterval)-obs.answered.Sub(obs.submitted))
		status, err := p.waitJob(ctx, job, first, &obs)
		if err != nil {
			return bulkResult{entries: batch, err: err}
		}
		if status == userpilot.JobCompleted {
			// Recorded here rather than by the dispatcher, as the real-time
			// workers do: writing 10,000 profiles to the index would stall
			// reading and the real-time path meanwhile. The next job need
			// not wait for it (its companies are others: these stay in
			// flight until recorded). Killed meanwhile, the next run finds
			// this job's record and writes the index from it.
			p.spare.put(body.Release())
			free(obs)
			if err := p.recordEntries(batch); err != nil {
				return bulkResult{entries: batch, freed: true, err: err}
			}
			if err := p.endJob(key); err != nil {
				return bulkResult{entries: batch, freed: true, err: err}
			}
			return bulkResult{entries: batch, freed: true, took: time.Since(start)}
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

// recordEntries notes a completed job's profiles in the no-op index, read
// from the entries' packed fields (the index writes them a part at a time,
// in key order). In-flight entries are not changed by the dispatcher, so
// this may run beside it.
func (p *Pipeline) recordEntries(batch []*entry) error {
	if p.opts.Index == nil {
		return nil
	}
	return p.opts.Index.RecordProfiles(p.profilesOf(batch))
}

// waitJob polls the job until it completed or failed, first after first,
// then as nextPoll says: at a tenth of the job's age, sooner when its own
// progress says it is nearly done. Accepted is not applied: only a
// completed job's records count as delivered. What the polls show is
// noted in obs (nil: a job from before a restart, not measured).
func (p *Pipeline) waitJob(ctx context.Context, job userpilot.Job, first time.Duration, obs *jobObservation) (string, error) {
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
		at := time.Now()
		next.ID = job.ID
		job = next
		if job.Status != userpilot.JobFailed {
			p.jobAnswered.Store(at.UnixNano())
		}
		var remaining time.Duration
		if obs != nil {
			remaining = obs.saw(job, at)
		}
		wait = nextPoll(at.Sub(began), remaining, p.opts.PollInterval)
	}
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

// bulkFinished applies a job's outcome.
func (p *Pipeline) bulkFinished(r bulkResult, rep *report) error {
	switch {
	case r.fallback:
		p.log.Warn("bulk job not applied; sending its records on the real-time path", "records", len(r.entries), "error", r.err)
		for i := len(r.entries) - 1; i >= 0; i-- {
			e := r.entries[i]
			c := e.co
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
	for _, e := range r.entries {
		p.finish(e)
	}
	p.progress = time.Now()
	p.stats.Bulk.Add(int64(len(r.entries)))
	p.stats.BulkJobs.Add(1)
	rep.flush(p, "bulk", len(r.entries), r.took)
	return p.accepted(r.entries[0].sentAt)
}

// spareRoom is the room of the last body sent, for the next job's: a body
// is the largest object pgpilot makes, and a new one at every job was a
// sixth of what a catch-up allocated (and cleared). Only one is kept, and
// not for long: held idle, it would be megabytes for nothing.
type spareRoom struct {
	mu   sync.Mutex
	room []byte
	at   time.Time
}

// spareFor is how long a spare room is kept without a job to take it.
const spareFor = 30 * time.Second

func (s *spareRoom) put(room []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if cap(room) > cap(s.room) {
		s.room, s.at = room, time.Now()
	}
}

// take returns the spare room (nil: none), no longer spare.
func (s *spareRoom) take() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	room := s.room
	s.room = nil
	return room
}

// expire lets a room kept for spareFor go.
func (s *spareRoom) expire(now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.room != nil && now.Sub(s.at) >= spareFor {
		s.room = nil
	}
}
