package delivery

import (
	"context"
	"maps"
	"time"

	"github.com/pgpilot/pgpilot/mapping"
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
	// JobBody reads a recorded job's body again (as BeginBulkJob was
	// given it): a submitted job's goroutine lets go of its own.
	JobBody(key uint64) ([]byte, error)
	JobSubmitted(key uint64, id string) error
	EndJob(key uint64) error
	Jobs() ([]state.Job, error)
	MarkSending(ids []string) error
	Sending() ([]string, error)
}

// leftover is what an earlier process left that this one must respect:
// companies it may have sent without seeing the outcome (doubt), and bulk
// jobs it submitted without seeing their end (held). Loaded once per
// pipeline, before the outbox, so that owed states wait behind held ones.
type leftover struct {
	doubt map[string]bool
	held  []*heldJob // oldest first, waited for in turn before any new job
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

// load reads what an earlier run may have sent without seeing the
// outcome: the companies marked as being sent, whose next state is then
// sent whatever the index says, and the jobs not seen end, whose companies
// are held in the ledger until those jobs end.
func (lo *leftover) load(src InFlight, l *ledger, keys *keyTable) (jobs []state.Job, err error) {
	sending, err := src.Sending()
	if err != nil {
		return nil, err
	}
	for _, id := range sending {
		lo.doubt[id] = true
	}
	jobs, err = src.Jobs()
	if err != nil {
		return nil, err
	}
	for _, j := range jobs {
		hj := &heldJob{job: j}
		records := j.Companies
		for _, u := range j.Users {
			// Under the user's key, with its company among its keys, as
			// the ledger and the no-op index keep it.
			md := maps.Clone(u.Metadata)
			if md == nil {
				md = userpilot.Metadata{}
			}
			if u.CompanyID != "" {
				md[mapping.MembershipKey], _ = userpilot.Encode(u.CompanyID) // a string always encodes
			}
			records = append(records, userpilot.Company{CompanyID: keyOf(mapping.User, u.UserID), Metadata: md})
		}
		for _, co := range records {
			if co.Metadata == nil {
				co.Metadata = userpilot.Metadata{}
			}
			e, alsoOlder := l.hold(co.CompanyID, keys.pack(co.Metadata))
			if alsoOlder {
				// In an older held job too: it waits for that one, and
				// this job's state is only recorded once this job completes.
				hj.alsoOlder = append(hj.alsoOlder, e)
				continue
			}
			hj.entries = append(hj.entries, e)
		}
		// The entries hold the job's states, packed: the decoded ones
		// would be twice that for as long as the job is waited for.
		hj.records, hj.job.Companies, hj.job.Users = len(records), nil, nil
		lo.held = append(lo.held, hj)
	}
	return jobs, nil
}

// inDoubt reports, once, whether an earlier run may have sent a state of
// company id without seeing the outcome: its next state is then sent, not
// skipped as unchanged (the entry keeps its resend until it is sent).
func (lo *leftover) inDoubt(id string) bool {
	if !lo.doubt[id] {
		return false
	}
	delete(lo.doubt, id)
	return true
}

// next takes the oldest held job, if any.
func (lo *leftover) next() *heldJob {
	if len(lo.held) == 0 {
		return nil
	}
	hj := lo.held[0]
	lo.held = lo.held[1:]
	return hj
}

// heldRun is a held job as the goroutine that waits for it gets it:
// values only.
type heldRun struct {
	n       uint64
	id      string // "" when its submission's answer was lost
	key     uint64
	records int
	began   time.Time
	// profiles are written to the index if it completed.
	profiles profileValues
	est      bulkEstimate
}

// resume waits for a held job's end: polled by id, or, with no id (the
// submission's answer was lost), for as long as such a job would take.
func (r jobRunner) resume(ctx context.Context, hj heldRun, events chan<- jobEvent) {
	end := func(outcome jobOutcome, err error) {
		say(ctx, events, jobEnded{n: hj.n, outcome: outcome, err: err})
	}
	outcome := heldUnknown
	if hj.id == "" {
		// As long as such a job would take, with the slack after which a
		// running job is judged overdue (bulkAlone): the estimate is of
		// jobs pgpilot polled, and nobody polls a job whose submitter was
		// killed; Userpilot works through it in its own time (the stand-in
		// without a speed completes one up to a second after submission,
		// where a polled one completes at its first poll). Let go sooner,
		// a company's newer state could be overwritten by the job's older
		// one, and a company deleted since be created again.
		wait := 2*hj.est.expected(hj.records) + r.poll
		wait = min(max(0, wait-time.Since(hj.began)), maxHeldWait)
		if err := sleep(ctx, wait); err != nil {
			end(jobBroken, err)
			return
		}
	} else {
		status, err := r.wait(ctx, userpilot.Job{ID: hj.id}, min(minPoll, r.poll), nil,
			func(at time.Time) { say(ctx, events, jobAnswered{n: hj.n, at: at}) })
		if err != nil {
			end(jobBroken, err)
			return
		}
		outcome = heldFailed
		if status == userpilot.JobCompleted {
			outcome = heldCompleted
			if err := r.record(hj.profiles); err != nil {
				end(jobBroken, err)
				return
			}
		}
	}
	if err := r.inflight.EndJob(hj.key); err != nil {
		end(jobBroken, err)
		return
	}
	end(outcome, nil)
}

// maxHeldWait bounds the wait for a job from before the restart whose id
// was never learnt.
const maxHeldWait = 10 * time.Minute
