package delivery

import (
	"fmt"
	"sync/atomic"
	"time"

	"github.com/pgpilot/pgpilot/liveness"
)

// published is what the dispatcher tells the liveness watch: it renews a
// report at every tick, and the watch reads the last one. A dispatcher that
// is stuck stops renewing it, which the watch shows.
type published struct {
	// moves counts what finished (companies delivered, skipped or set
	// aside; jobs completed); the dispatcher's only.
	moves, lastMoves uint64
	report           atomic.Pointer[liveness.Report]
}

func (pb *published) init(now time.Time) {
	pb.report.Store(&liveness.Report{Part: "delivery", Moved: now, At: now})
}

// publish renews the report, at now.
func (pb *published) publish(p *Pipeline, now time.Time) {
	prev := pb.report.Load()
	r := &liveness.Report{Part: "delivery", Moved: prev.Moved, At: now, Owed: p.owed()}
	if pb.moves != pb.lastMoves || (prev.Owed == "" && r.Owed != "") {
		// Moved, or owing again after an idle spell: the clock starts now.
		r.Moved, pb.lastMoves = now, pb.moves
	}
	if r.Owed != "" {
		r.Waiting = p.waits(now)
		r.Excuse = p.excuse()
		r.Patience = p.jobs.patience(p.est, p.opts.PollInterval)
	}
	pb.report.Store(r)
}

// Liveness is delivery's last report (liveness.Source). A report the
// dispatcher has not renewed for staleReport says so as something owed: a
// dispatcher that stopped turning delivers nothing more, whatever it last
// said.
func (p *Pipeline) Liveness() liveness.Report {
	r := *p.live.report.Load()
	if age := time.Since(r.At); age > staleReport {
		what := fmt.Sprintf("the dispatcher has not reported for %s (it is stuck in one step)", age.Round(time.Second))
		if r.Owed != "" {
			what += "; it last said: " + r.Owed
		}
		r.Owed = what
	}
	return r
}

// staleReport is how long the dispatcher may go without renewing its
// report: it renews it at every tick (200 ms), and no step of it is meant
// to take seconds.
const staleReport = 10 * time.Second

// owed says what delivery owes, "" when nothing.
func (p *Pipeline) owed() string {
	l := p.ledger
	if l.undelivered == 0 && l.inflight == 0 && p.outbox.empty() && len(p.leftover.held) == 0 {
		return ""
	}
	s := fmt.Sprintf("%d companies pending (%d in memory, %d in flight, %d only in the outbox)",
		p.pending(), l.undelivered, l.inflight, p.outbox.owed())
	if n := len(p.leftover.held); n > 0 {
		s += fmt.Sprintf(", %d bulk job(s) from before the restart to wait for", n)
	}
	return s
}

// waits says what each part of delivery waits for.
func (p *Pipeline) waits(now time.Time) string {
	l := p.ledger
	s := fmt.Sprintf("mode %s; %d ready to send", p.outbox.mode, l.ready.len())
	switch {
	case p.in.closed:
		s += "; input closed"
	case l.full() && p.outbox.mode != ModeOutbox:
		s += "; input paused: the memory window is full"
	}
	s += "; " + p.jobs.waits(now)
	if p.deletes.busy() || p.deletes.parked() > 0 {
		s += fmt.Sprintf("; deletions: %d waiting, a request on its way: %t", p.deletes.parked(), p.deletes.busy())
	}
	if n := len(p.refusals.held); n > 0 {
		s += fmt.Sprintf("; %d refused records held for the breaker's verdict", n)
	}
	if !p.outbox.empty() {
		s += fmt.Sprintf("; outbox: %d companies only on disk, refilled while the window (%d of %d) has room", p.outbox.owed(), l.order.len(), l.maxPending)
	}
	return s
}

// excuse says why delivery waits on something outside it, "" when it does
// not: calls to Userpilot being retried (an outage, which /readyz reports
// after http.unready_after), or the breaker tripped.
func (p *Pipeline) excuse() string {
	if r := p.opts.Breaker.Reason(); r != "" {
		return "delivery stopped by the breaker: " + r
	}
	if p.opts.Retrying != nil {
		if n := p.opts.Retrying(); n > 0 {
			return fmt.Sprintf("%d call(s) to Userpilot being retried", n)
		}
	}
	return ""
}
