package delivery

import (
	"container/heap"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"sort"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/pgpilot/pgpilot/row"
	"github.com/pgpilot/pgpilot/state"
	"github.com/pgpilot/pgpilot/userpilot"
)

// Outbox is the durable per-company store of what is owed to Userpilot.
type Outbox interface {
	WriteOutbox(put []state.OutboxRecord, remove []string) error
	// ScanOutbox and ReadOutbox read what is owed a part at a time (a
	// start, and refilling memory, never load it whole); MergeOutbox folds
	// newer states into records on disk (companies not in memory).
	ScanOutbox(fn func(state.OutboxEntry) error) error
	ReadOutbox(ids []string) ([]state.OutboxRecord, error)
	MergeOutbox([]state.OutboxMerge) ([]state.Merged, error)
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

// Memory is a window over what is owed. In outbox mode, once the window
// (MaxPending companies) is full, a change to a company not in memory is not
// kept there: it waits in a small overflow until the next write, which
// folds it into the company's outbox record on disk (MergeOutbox). When the
// window has room again it is refilled from the outbox, oldest owed first.
// A company is either in memory or only on disk, never both, so it never
// has two states on their way.

// spilled is a newer state of a company that is only on disk, until the
// next outbox write folds it in.
type spilled struct {
	rec     state.OutboxRecord
	replace bool // supersedes the record whole (a deletion, or created again after one)
}

// spilling reports whether a change to a company not in memory goes to disk.
func (p *Pipeline) spilling() bool {
	return p.opts.Outbox != nil && p.mode == state.ModeOutbox && p.full()
}

// spill merges a change of a company not in memory into the overflow.
func (p *Pipeline) spill(id string, md userpilot.Metadata, del bool, txn row.Transaction) {
	s := p.overflow[id]
	if s == nil {
		s = &spilled{rec: state.OutboxRecord{CompanyID: id, Metadata: userpilot.Metadata{}, Since: time.Now()}}
		p.overflow[id] = s
	} else {
		p.stats.Coalesced.Add(1)
	}
	switch {
	case del:
		s.rec.Delete, s.rec.Metadata, s.replace = true, userpilot.Metadata{}, true
	case s.rec.Delete:
		// Created again before the deletion went out: it exists.
		s.rec.Delete, s.rec.Metadata = false, maps.Clone(md)
	default:
		for k, v := range md {
			s.rec.Metadata[k] = v
		}
	}
	s.rec.LSN = max(s.rec.LSN, state.LSN(txn.EndLSN))
	s.rec.Resend = s.rec.Resend || txn.Resend || p.inDoubt(id)
}

// maxOverflow bounds the overflow between outbox writes: past it, it is
// written at once.
const maxOverflow = 2000

// flushOverflow folds the overflow into the outbox records, durably.
func (p *Pipeline) flushOverflow() error {
	if len(p.overflow) == 0 {
		return nil
	}
	merges := make([]state.OutboxMerge, 0, len(p.overflow))
	for _, s := range p.overflow {
		merges = append(merges, state.OutboxMerge{Record: s.rec, Replace: s.replace})
	}
	merged, err := p.opts.Outbox.MergeOutbox(merges)
	if err != nil {
		return err
	}
	for _, m := range merged {
		if m.Was == 0 {
			// Not in memory, and now on disk.
			p.diskOnly++
			p.outboxCompanies++
		}
		p.outboxBytes += int64(m.Size - m.Was)
	}
	clear(p.overflow)
	return nil
}

// loadOutbox makes what a previous run left in the outbox pending again,
// ahead of the stream (which resumes after it): as much as the window
// holds, oldest first; the rest is refilled as the window empties.
func (p *Pipeline) loadOutbox() error {
	if p.opts.Outbox == nil {
		return nil
	}
	n := 0
	// A company in memory now is held by a bulk job from before the
	// restart: its record (what it owes beyond the job) waits behind the
	// job, in memory, so that the job's end lets it go rather than
	// forgetting it.
	held := map[string]int{}
	if err := p.opts.Outbox.ScanOutbox(func(s state.OutboxEntry) error {
		n++
		p.outboxBytes += int64(s.Size)
		if _, ok := p.companies[s.CompanyID]; ok {
			held[s.CompanyID] = s.Size
		}
		return nil
	}); err != nil {
		return err
	}
	if n > 0 {
		p.setMode(state.ModeOutbox, fmt.Sprintf("the outbox holds %d companies from before the restart", n))
	}
	p.outboxCompanies += n
	p.diskOnly += n
	if err := p.loadRecords(slices.Collect(maps.Keys(held)), held); err != nil {
		return err
	}
	return p.refill()
}

// loadRecords puts the outbox records of these companies in memory, in
// this order, as what each owes next; sizes are their stored sizes.
func (p *Pipeline) loadRecords(ids []string, sizes map[string]int) error {
	// A part at a time: decoded, the records are twice what they are once
	// packed.
	for part := range slices.Chunk(ids, persistBatch) {
		if err := p.loadSome(part, sizes); err != nil {
			return err
		}
	}
	return nil
}

func (p *Pipeline) loadSome(ids []string, sizes map[string]int) error {
	recs, err := p.opts.Outbox.ReadOutbox(ids)
	if err != nil {
		return err
	}
	for _, r := range recs {
		e := &entry{id: r.CompanyID, md: p.keys.pack(r.Metadata), safe: p.done, lsn: pglogrepl.LSN(r.LSN), changes: 1, since: r.Since,
			delete: r.Delete, resend: r.Resend || p.inDoubt(r.CompanyID)}
		c := p.companies[r.CompanyID]
		if c == nil {
			c = p.newCompany(r.CompanyID)
		}
		e.co = c
		c.disk = sizes[r.CompanyID]
		c.waiting = e
		p.enqueue(e)
		p.diskOnly--
		if c.inflight == nil {
			p.ready.push(e) // not when a job from before the restart holds it
		}
	}
	return nil
}

// refill loads, while the window has room, the companies owed only on
// disk, oldest first.
func (p *Pipeline) refill() error {
	room := p.opts.MaxPending - p.order.len()
	if p.opts.Outbox == nil || p.diskOnly == 0 || room <= 0 {
		return nil
	}
	oldest := &byAge{}
	if err := p.opts.Outbox.ScanOutbox(func(s state.OutboxEntry) error {
		if _, inMemory := p.companies[s.CompanyID]; inMemory {
			return nil
		}
		if _, waiting := p.overflow[s.CompanyID]; waiting {
			return nil // folded in at the next write; refilled after it
		}
		heap.Push(oldest, s)
		if oldest.Len() > room {
			heap.Pop(oldest) // the youngest
		}
		return nil
	}); err != nil {
		return err
	}
	if oldest.Len() == 0 {
		return nil
	}
	sort.Sort(sort.Reverse(oldest)) // oldest first
	ids := make([]string, oldest.Len())
	sizes := make(map[string]int, oldest.Len())
	for i, s := range *oldest {
		ids[i], sizes[s.CompanyID] = s.CompanyID, s.Size
	}
	return p.loadRecords(ids, sizes)
}

// byAge is a max-heap of outbox records by age: the youngest on top, so
// that keeping n means popping it.
type byAge []state.OutboxEntry

func (h byAge) Len() int           { return len(h) }
func (h byAge) Less(i, j int) bool { return h[i].Since.After(h[j].Since) }
func (h byAge) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *byAge) Push(x any)        { *h = append(*h, x.(state.OutboxEntry)) }
func (h *byAge) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
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
		last := p.progress
		if answered := time.Unix(0, p.jobAnswered.Load()); p.bulkBusy && answered.After(last) {
			last = answered // a job Userpilot is working through
		}
		if p.recording > 0 {
			last = time.Now() // a job Userpilot completed, written to the index: pgpilot's own work
		}
		if reason == "" && p.undelivered > 0 && time.Since(last) > p.opts.OutboxAfter {
			reason = fmt.Sprintf("Userpilot has accepted nothing for %s (delivery.outbox_after)", time.Since(last).Round(time.Second))
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
		if p.order.len() == 0 && p.outboxCompanies == 0 && len(p.dirty) == 0 && len(p.overflow) == 0 {
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
	if p.opts.Outbox == nil {
		return nil
	}
	if err := p.flushOverflow(); err != nil {
		return err
	}
	if len(p.dirty) == 0 {
		return nil
	}
	// In writes of persistBatch records: the records of every company in
	// memory, made all at once when outbox mode starts, were a third of
	// that moment's heap.
	put := make([]state.OutboxRecord, 0, min(len(p.dirty), persistBatch))
	var remove []string
	for id := range p.dirty {
		c := p.companies[id]
		if c == nil || (c.inflight == nil && c.waiting == nil) {
			if _, ok := p.gone[id]; ok {
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
			maps.Copy(r.Metadata, p.keys.unpack(e.md))
			r.Resend = r.Resend || e.resend
			r.LSN = max(r.LSN, state.LSN(e.lsn))
			if r.Since.IsZero() || e.since.Before(r.Since) {
				r.Since = e.since
			}
		}
		if put = append(put, r); len(put) == persistBatch {
			if err := p.writeOutbox(put, nil); err != nil {
				return err
			}
			put = put[:0]
		}
	}
	if err := p.writeOutbox(put, remove); err != nil {
		return err
	}
	clear(p.dirty)
	return nil
}

// persistBatch is how many records persist makes before it writes them.
const persistBatch = 1000

// writeOutbox writes records of companies in memory and removes those of
// companies gone, keeping the counts.
func (p *Pipeline) writeOutbox(put []state.OutboxRecord, remove []string) error {
	if err := p.opts.Outbox.WriteOutbox(put, remove); err != nil {
		return err
	}
	for _, id := range remove {
		p.outboxBytes -= int64(p.gone[id])
		p.outboxCompanies--
		delete(p.gone, id)
	}
	for _, r := range put {
		c := p.companies[r.CompanyID]
		size := recordSize(r)
		if c.disk == 0 {
			p.outboxCompanies++
		}
		p.outboxBytes += int64(size - c.disk)
		c.disk = size
	}
	return nil
}

// touch notes that a company's owed state changed.
//
// c is the company's, in p.companies (its callers hold it already: a look-up
// more per change was a measurable part of a catch-up).
func (p *Pipeline) touch(id string, c *company) {
	if p.opts.Outbox == nil {
		return
	}
	if (c != nil && c.disk > 0) || p.mode == state.ModeOutbox {
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
	st := state.Status{Mode: p.mode, Reason: p.modeReason, OutboxCompanies: p.outboxCompanies,
		OutboxBytes: p.outboxBytes, Pending: p.pending(), Stopped: p.opts.Breaker.Reason()}
	if p.order.len() > 0 {
		st.OldestPending = p.order.front().since
	}
	p.learnedStatus(&st)
	p.opts.Status(st)
}

func recordSize(r state.OutboxRecord) int {
	b, _ := json.Marshal(r)
	return len(r.CompanyID) + len(b)
}
