package delivery

import (
	"fmt"
	"time"

	"github.com/pgpilot/pgpilot/state"
)

// The tick: every Options.Tick the dispatcher writes the outbox, refills
// memory from it, checkpoints, and reports.

// tick saves progress: in outbox mode it writes the outbox and then
// checkpoints everything received (all of it is delivered or in the
// outbox); in hold mode it checkpoints the watermark. It also refills
// memory from the outbox, and publishes what the parts wait for.
func (p *Pipeline) tick() error {
	now := time.Now()
	p.publish()
	// Before this tick's writes: a tick stuck in one still reported what
	// was owed when it began.
	p.live.publish(p, now)
	if err := p.setAside(p.refusals.expired(now)); err != nil {
		return err
	}
	p.enc.expireSpare(now)
	if err := p.keepEstimate(now, false); err != nil {
		return err
	}
	p.ledger.watermark()
	p.updateMode(now)
	if err := p.outbox.persist(p.ledger); err != nil {
		return err
	}
	p.updateMode(now) // the write may have emptied the outbox
	// Below half of both bounds (<=: a window of one is refilled too).
	if l := p.ledger; l.order.len() <= l.maxPending/2 && l.windowBytes <= l.maxBytes/2 {
		if err := p.outbox.refill(p.ledger, p.owedFrom()); err != nil {
			return err
		}
	}
	p.reportStatus(false)
	// In outbox mode everything received is delivered or in the outbox
	// now: so are the marks received.
	err := p.checkpoint(p.outbox.mode == ModeOutbox)
	p.report.maybeLog(p)
	return err
}

// updateMode hands the outbox what the choice of mode is made from.
func (p *Pipeline) updateMode(now time.Time) {
	last := p.progress
	if p.jobs.busy() && p.jobs.answered.After(last) {
		last = p.jobs.answered // a job Userpilot is working through
	}
	if len(p.jobs.recording) > 0 {
		last = now // a job Userpilot completed, written to the index: pgpilot's own work
	}
	var retained int64
	if p.opts.RetainedWAL != nil {
		retained = p.opts.RetainedWAL()
	}
	var drain time.Duration
	if p.backlogOutgrows(now) {
		drain = p.drainTime()
	}
	heldBack := p.backlog.observe(now, p.holdsInputBack() || drain > 0, p.stats.Changes.Load(), p.ledger.order.len(), drain)
	before := p.outbox.mode
	p.outbox.updateMode(p.ledger, modeSignals{now: now, retained: retained, maxRetained: p.opts.MaxRetainedWAL,
		lastProgress: last, outboxAfter: p.opts.OutboxAfter, owed: p.ledger.undelivered > 0,
		heldBack: heldBack, readAheadAfter: p.opts.ReadAheadAfter, window: p.ledger.order.len()})
	if p.outbox.mode != before {
		p.reportStatus(true)
		if p.outbox.mode == ModeOutbox && heldBack > p.opts.ReadAheadAfter {
			p.backlog.readAhead = now
		}
	}
	if p.outbox.mode != ModeOutbox {
		p.backlog.readAhead = time.Time{}
	}
}

// drainTime is how long the window takes to deliver at the pace measured
// of Userpilot (0: not measured yet). With bulk jobs allowed, the bulk
// path's pace counts from the start: the configured bulk_rate until a job
// is measured (the estimate starts from it). Counted only once measured,
// the first real-time calls of a catch-up on a busy machine, alone, made
// a window of 14,000 companies look like half a minute's work 0.25 s into
// it, and the read-ahead wrote to disk a backlog the bulk path cleared in
// seconds.
func (p *Pipeline) drainTime() time.Duration {
	var bulk float64
	if !p.opts.NoBulk {
		bulk = p.est.rate
	}
	return drainTime(p.ledger.order.len(), p.realtimeRate(), bulk)
}

// backlogOutgrows says whether, at now, the stream's backlog is outgrowing
// memory by the pace measured of Userpilot: in hold mode, no snapshot rows
// owed (see holdsInputBack), the window half full or more while changes
// still come in, and what it holds takes longer than ReadAheadAfter to
// deliver. (Sized at once, a bulk job would carry states
// that changes behind the window replace.)
func (p *Pipeline) backlogOutgrows(now time.Time) bool {
	l := p.ledger
	if p.outbox.store == nil || p.outbox.mode == ModeOutbox || p.in.closed || l.chunksOwed() {
		return false
	}
	if l.order.len() < p.opts.MaxPending/2 && l.windowBytes < p.opts.MaxPendingBytes/2 {
		return false
	}
	if now.Sub(p.in.last) >= readAheadQuiet && (p.waiting == nil || !p.waiting()) {
		return false // the burst was read: it fits
	}
	return p.drainTime() > p.opts.ReadAheadAfter
}

// readAheadDue says whether the backlog is read ahead, or is about to be:
// a bulk job sized now would carry states the read-ahead replaces.
func (p *Pipeline) readAheadDue(now time.Time) bool {
	return p.backlog.readingAhead(now, p.opts.ReadAheadAfter) || p.backlogOutgrows(now)
}

// holdsInputBack says whether the window keeps the stream's changes from
// being read: full in hold mode, with transactions waiting in the input.
// Not while a snapshot's rows are owed in memory: the snapshot reads its
// chunks only as delivery drains them (its own backlog), so its rows are
// never a backlog to read ahead, and the stream's changes behind them wait
// only as long as those rows take.
func (p *Pipeline) holdsInputBack() bool {
	return !p.in.closed && p.ledger.full() && p.outbox.mode != ModeOutbox && !p.ledger.chunksOwed() && p.waiting != nil && p.waiting()
}

// checkpoint writes what the ledger says is due: everything received (all:
// outbox mode, after the outbox write), or the watermark. Only after it
// returns may the position be confirmed to Postgres.
func (p *Pipeline) checkpoint(all bool) error {
	w, mark, due := p.ledger.due(all)
	if !due {
		return nil
	}
	if err := p.opts.Checkpoint(w, mark); err != nil {
		return fmt.Errorf("checkpoint %s: %w", w, err)
	}
	p.ledger.saved(w, mark)
	return nil
}

// reportStatus hands the mode and outbox figures to Options.Status, at
// most every two seconds unless forced.
func (p *Pipeline) reportStatus(force bool) {
	if p.opts.Status == nil || (!force && time.Since(p.statusAt) < 2*time.Second) {
		return
	}
	p.statusAt = time.Now()
	st := state.Status{Mode: p.outbox.mode.String(), Reason: p.outbox.reason, OutboxCompanies: p.outbox.companies,
		OutboxBytes: p.outbox.bytes, Pending: p.pending(), Stopped: p.opts.Breaker.Reason()}
	if p.ledger.order.len() > 0 {
		st.OldestPending = p.ledger.order.front().since.time()
	}
	p.learnedStatus(&st)
	p.opts.Status(st)
}
