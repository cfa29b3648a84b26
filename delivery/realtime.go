package delivery

import (
	"context"
	"time"

	"github.com/pgpilot/pgpilot/userpilot"
)

// caller is what a real-time worker, or a delete request's goroutine, may
// call: Userpilot, the marks of what is being sent, the no-op index. It
// holds nothing of the dispatcher's: a worker gets the company to send as
// a value, and answers with its id and the outcome.
type caller struct {
	sender   Sender
	inflight InFlight // nil: nothing is marked
	index    Index    // nil: no no-op index
}

// realtimeResult is a real-time call's outcome for one entry key (the
// ledger holds its entry in flight: one per company or user), and how long
// the call took the worker, from taking the entry to having its outcome
// durable (the real-time path's pace is made of it: sizing).
type realtimeResult struct {
	id   string
	err  error
	took time.Duration
}

// work sends each company or user it is handed on the real-time endpoint
// and answers on results, until work is closed or ctx ends.
func (c caller) work(ctx context.Context, work <-chan call, results chan<- realtimeResult) {
	for cl := range work {
		began := time.Now()
		err := c.identify(ctx, cl)
		select {
		case results <- realtimeResult{cl.key, err, time.Since(began)}:
		case <-ctx.Done():
			return
		}
	}
}

// identify sends one company or user. It is marked before the call and
// unmarked by the index's write of its outcome: killed in between, the next
// run knows. The outcome is recorded before the dispatcher hears of it, so
// a later no-op check never reads an older state.
func (c caller) identify(ctx context.Context, cl call) error {
	err := c.markSending([]string{cl.key})
	if err == nil {
		if cl.user {
			err = c.sender.IdentifyUser(ctx, cl.person)
		} else {
			err = c.sender.IdentifyCompany(ctx, cl.company)
		}
	}
	if err == nil && c.index != nil {
		err = c.index.Record([]userpilot.Company{cl.record})
	}
	return err
}

// markSending durably marks companies as being sent, before the call.
func (c caller) markSending(ids []string) error {
	if c.inflight == nil {
		return nil
	}
	return c.inflight.MarkSending(ids)
}
