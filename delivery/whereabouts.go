package delivery

import (
	"context"
	"slices"
	"time"

	"github.com/jackc/pglogrepl"
)

// Whereabouts is what the pipeline holds of one company, as its dispatcher
// sees it between two events: what `pgpilot why` asks a running pgpilot.
// Only the dispatcher reads its fields, so the answer is consistent.
type Whereabouts struct {
	// InMemory: the company has a state owed or on its way in memory.
	InMemory bool `json:"in_memory"`
	// OnItsWay is the state sent and not yet answered (a real-time call, a
	// bulk job, a delete request, a job from before a restart), or a
	// refused one held for the breaker's verdict.
	OnItsWay *Owed `json:"on_its_way,omitempty"`
	// Waiting is a state owed and not sent yet: behind the one on its way
	// (one state at a time per company), or in its turn.
	Waiting *Owed `json:"waiting,omitempty"`
	// Ahead is how many states are ready to be sent before Waiting, -1
	// when Waiting is not ready (behind the one on its way, or none).
	Ahead int `json:"ahead"`
	// InDoubt: an earlier run may have sent it without seeing the end, so
	// its next state is sent whatever the no-op index says.
	InDoubt bool `json:"in_doubt,omitempty"`
	// OutboxBytes is the size of its outbox record, 0 when it has none
	// (known here for companies in memory); Overflow a newer state of a
	// company only on disk, folded into its record at the next write.
	OutboxBytes int  `json:"outbox_bytes,omitempty"`
	Overflow    bool `json:"overflow,omitempty"`
	// The pipeline as a whole: its mode, why delivery is stopped (the
	// breaker), how many companies are owed, whether a bulk job runs.
	Mode       string `json:"mode"`
	ModeReason string `json:"mode_reason,omitempty"`
	Stopped    string `json:"stopped,omitempty"`
	Pending    int    `json:"pending_companies"`
	BulkBusy   bool   `json:"bulk_job_running"`
}

// Owed is one state of a company, as the pipeline holds it.
type Owed struct {
	// LSN is the end of the newest transaction merged in (empty while it
	// is still arriving); Since when its first change arrived; Changes how
	// many changes it merges.
	LSN     string    `json:"lsn,omitempty"`
	Since   time.Time `json:"since"`
	Changes int       `json:"changes"`
	// Path is how it goes: "realtime", "bulk" or "delete" once sent
	// (the dispatcher tells realtime from bulk by the store's job
	// records, which the daemon reads: here "sent"), "held" for a bulk
	// job from before a restart, "refused" for a refusal held for the
	// breaker.
	Path   string    `json:"path,omitempty"`
	SentAt time.Time `json:"sent_at,omitzero"`
	Delete bool      `json:"delete,omitempty"`
	Resend bool      `json:"resend,omitempty"`
}

// whereRequest is a question for the dispatcher; it answers on answer.
type whereRequest struct {
	id     string
	answer chan Whereabouts
}

// Where asks the running dispatcher where company id stands. It returns
// ctx's error when the dispatcher does not answer (its Run has returned,
// or is not started).
func (p *Pipeline) Where(ctx context.Context, id string) (Whereabouts, error) {
	q := whereRequest{id: id, answer: make(chan Whereabouts, 1)}
	select {
	case p.where <- q:
	case <-ctx.Done():
		return Whereabouts{}, ctx.Err()
	}
	select {
	case w := <-q.answer:
		return w, nil
	case <-ctx.Done():
		return Whereabouts{}, ctx.Err()
	}
}

// answerWhere answers q; the dispatcher calls it, between two events.
func (p *Pipeline) answerWhere(q whereRequest) {
	l := p.ledger
	w := Whereabouts{Ahead: -1, Mode: p.outbox.mode.String(), ModeReason: p.outbox.reason, Stopped: p.opts.Breaker.Reason(),
		Pending: p.pending(), BulkBusy: p.jobs.busy(), InDoubt: p.leftover.doubt[q.id]}
	if _, ok := p.outbox.overflow[q.id]; ok {
		w.Overflow = true
	}
	c := l.company(q.id)
	if c == nil {
		q.answer <- w
		return
	}
	w.InMemory, w.OutboxBytes = true, c.disk
	if e := c.inflight; e != nil && !e.done {
		o := owedOf(e)
		switch {
		case e.held:
			o.Path = "held"
		case slices.ContainsFunc(p.refusals.held, func(r refusal) bool { return r.e == e }):
			o.Path = "refused"
		case e.delete:
			o.Path = "delete"
		default:
			o.Path = "sent"
		}
		w.OnItsWay = &o
	}
	if e := c.waiting; e != nil && !e.done {
		o := owedOf(e)
		w.Waiting = &o
		for i, r := range l.ready.items[l.ready.head:] {
			if r == e {
				w.Ahead = i
				break
			}
		}
	}
	q.answer <- w
}

func owedOf(e *entry) Owed {
	o := Owed{Since: e.since.time(), Changes: e.changes, SentAt: e.sentAt.time(), Delete: e.delete, Resend: e.resend}
	if e.lsn != 0 {
		o.LSN = pglogrepl.LSN(e.lsn).String()
	}
	return o
}
