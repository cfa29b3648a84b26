package delivery

import (
	"encoding/json"
	"fmt"
	"maps"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/pgpilot/pgpilot/state"
	"github.com/pgpilot/pgpilot/userpilot"
)

// Outbox is the durable per-company store of what is owed to Userpilot.
type Outbox interface {
	WriteOutbox(put []state.OutboxRecord, remove []string) error
	Outbox() ([]state.OutboxRecord, error)
}

// In hold mode (the default) the slot is confirmed only once changes are
// delivered: safe, but during a long Userpilot outage the slot pins WAL on
// the database until its disk fills. Identify is a last-write-wins merge, so
// pgpilot does not need the WAL to remember what is owed, only the latest
// pending state of each company. In outbox mode every pending company's
// merged state is written to the outbox each tick, and the checkpoint (so
// the slot) moves to the last position received: each change before it is
// delivered or durably in the outbox. Outbox mode starts when the slot's
// retained WAL passes MaxRetainedWAL or Userpilot has accepted nothing for
// OutboxAfter, and ends when the outbox is empty.

// loadOutbox makes what a previous run left in the outbox pending again,
// ahead of the stream (which resumes after it).
func (p *Pipeline) loadOutbox() error {
	if p.opts.Outbox == nil {
		return nil
	}
	recs, err := p.opts.Outbox.Outbox()
	if err != nil {
		return err
	}
	for _, r := range recs {
		md := r.Metadata
		if md == nil {
			md = userpilot.Metadata{}
		}
		e := &entry{co: userpilot.Company{CompanyID: r.CompanyID, Metadata: md}, safe: p.done, lsn: pglogrepl.LSN(r.LSN), changes: 1, since: r.Since, delete: r.Delete}
		p.companies[r.CompanyID] = &company{waiting: e}
		p.order.push(e)
		p.ready.push(e)
		p.inOutbox[r.CompanyID] = recordSize(r)
		p.outboxBytes += int64(p.inOutbox[r.CompanyID])
	}
	if len(recs) > 0 {
		p.setMode(state.ModeOutbox, fmt.Sprintf("the outbox holds %d companies from before the restart", len(recs)))
	}
	return nil
}

// updateMode switches to outbox mode when holding WAL back has become the
// danger, and back to hold mode once the outbox is empty.
func (p *Pipeline) updateMode() {
	if p.opts.Outbox == nil {
		return
	}
	switch p.mode {
	case state.ModeHold:
		var reason string
		if p.opts.MaxRetainedWAL > 0 && p.opts.RetainedWAL != nil {
			if r := p.opts.RetainedWAL(); r > p.opts.MaxRetainedWAL {
				reason = fmt.Sprintf("the slot retains %d MB of WAL, above delivery.max_retained_wal (%d MB)", r>>20, p.opts.MaxRetainedWAL>>20)
			}
		}
		if reason == "" && p.order.len() > 0 && time.Since(p.progress) > p.opts.OutboxAfter {
			reason = fmt.Sprintf("Userpilot has accepted nothing for %s (delivery.outbox_after)", time.Since(p.progress).Round(time.Second))
		}
		if reason == "" {
			return
		}
		// Everything undelivered goes to the outbox at the next write.
		for id := range p.companies {
			p.dirty[id] = struct{}{}
		}
		p.setMode(state.ModeOutbox, reason)
	case state.ModeOutbox:
		if p.order.len() == 0 && len(p.inOutbox) == 0 && len(p.dirty) == 0 {
			p.setMode(state.ModeHold, "the outbox is empty")
		}
	}
}

func (p *Pipeline) setMode(mode, reason string) {
	p.mode, p.modeReason = mode, reason
	if mode == state.ModeOutbox {
		p.log.Warn("delivery mode: outbox; pending changes are kept on disk so Postgres can free its WAL", "reason", reason)
	} else {
		p.log.Info("delivery mode: hold", "reason", reason)
	}
	p.reportStatus(true)
}

// persist writes the merged pending state of every company that changed
// since the last write, and removes delivered ones, in one durable write.
func (p *Pipeline) persist() error {
	if p.opts.Outbox == nil || len(p.dirty) == 0 {
		return nil
	}
	var put []state.OutboxRecord
	var remove []string
	for id := range p.dirty {
		c := p.companies[id]
		if c == nil || (c.inflight == nil && c.waiting == nil) {
			if _, ok := p.inOutbox[id]; ok {
				remove = append(remove, id)
			}
			continue
		}
		// What is owed is everything not yet accepted: the state in flight
		// with the waiting one merged over it (newer wins).
		r := state.OutboxRecord{CompanyID: id, Metadata: userpilot.Metadata{}}
		for _, e := range []*entry{c.inflight, c.waiting} {
			if e == nil {
				continue
			}
			if e.delete {
				// A deletion supersedes what came before it; what comes
				// after it (the company created again) supersedes it.
				r.Delete, r.Metadata = true, userpilot.Metadata{}
			} else {
				r.Delete = false
			}
			maps.Copy(r.Metadata, e.co.Metadata)
			r.LSN = max(r.LSN, state.LSN(e.lsn))
			if r.Since.IsZero() || e.since.Before(r.Since) {
				r.Since = e.since
			}
		}
		put = append(put, r)
	}
	if err := p.opts.Outbox.WriteOutbox(put, remove); err != nil {
		return err
	}
	for _, id := range remove {
		p.outboxBytes -= int64(p.inOutbox[id])
		delete(p.inOutbox, id)
	}
	for _, r := range put {
		size := recordSize(r)
		p.outboxBytes += int64(size - p.inOutbox[r.CompanyID])
		p.inOutbox[r.CompanyID] = size
	}
	clear(p.dirty)
	return nil
}

// touch notes that a company's owed state changed.
func (p *Pipeline) touch(id string) {
	if p.opts.Outbox == nil {
		return
	}
	if _, ok := p.inOutbox[id]; ok || p.mode == state.ModeOutbox {
		p.dirty[id] = struct{}{}
	}
}

// reportStatus hands the mode and outbox figures to Options.Status, at
// most every two seconds unless forced.
func (p *Pipeline) reportStatus(force bool) {
	if p.opts.Status == nil || (!force && time.Since(p.statusAt) < 2*time.Second) {
		return
	}
	p.statusAt = time.Now()
	st := state.Status{Mode: p.mode, Reason: p.modeReason, OutboxCompanies: len(p.inOutbox),
		OutboxBytes: p.outboxBytes, Pending: p.order.len(), Stopped: p.opts.Breaker.Reason()}
	if p.order.len() > 0 {
		st.OldestPending = p.order.front().since
	}
	p.opts.Status(st)
}

func recordSize(r state.OutboxRecord) int {
	b, _ := json.Marshal(r)
	return len(r.CompanyID) + len(b)
}
