package delivery

import "time"

// report gathers what the real-time path did between log lines, so a busy
// stream logs one line every few seconds rather than one per call.
type report struct {
	since                       time.Time
	realtime, skipped, rejected int
	changes, coalesced          int64
}

const reportEvery = 5 * time.Second

func newReport() *report { return &report{since: time.Now()} }

// maybeLog writes the real-time summary once reportEvery has passed.
func (r *report) maybeLog(p *Pipeline) {
	if time.Since(r.since) < reportEvery || r.realtime+r.skipped+r.rejected == 0 {
		return
	}
	r.flush(p, "realtime", r.realtime, time.Since(r.since))
	r.realtime, r.skipped, r.rejected = 0, 0, 0
	r.since = time.Now()
}

// flush logs one delivery line: what was sent on which path, and what was
// coalesced or skipped since the last line.
func (r *report) flush(p *Pipeline, path string, records int, took time.Duration) {
	changes, coalesced := p.stats.Changes.Load(), p.stats.Coalesced.Load()
	p.log.Info("flushed", "path", path, "records", records, "changes", changes-r.changes,
		"coalesced", coalesced-r.coalesced, "skipped", r.skipped, "rejected", r.rejected,
		"duration", took.Round(time.Millisecond).String(), "checkpoint", p.ledger.checkpointed.String(), "pending", p.ledger.undelivered)
	r.changes, r.coalesced = changes, coalesced
}
