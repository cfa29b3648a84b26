package delivery

import (
	"container/heap"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sort"
	"time"

	"github.com/jackc/pglogrepl"

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

// Mode is what the slot's position waits for.
//
// In hold mode (the default) the slot is confirmed only once changes are
// delivered: safe, but during a long Userpilot outage the slot pins WAL on
// the database until its disk fills. Identify is a last-write-wins merge, so
// pgpilot does not need the WAL to remember what is owed, only the latest
// pending state of each company. In outbox mode every pending company's
// merged state is written to the outbox each tick, and the checkpoint (so
// the slot) moves to the last position received: each change before it is
// delivered or durably in the outbox.
//
//	hold ──(retained WAL > max_retained_wal, or nothing accepted for outbox_after)──▶ outbox
//	outbox ──(nothing owed in memory or on disk, nothing waiting to be written)──▶ hold
type Mode int

// The modes.
const (
	// ModeHold: the slot waits for delivery; the WAL is the buffer.
	ModeHold Mode = iota
	// ModeOutbox: the slot waits for the outbox write; the outbox is the
	// buffer.
	ModeOutbox
)

// String is the mode as `pgpilot status` shows it.
func (m Mode) String() string {
	if m == ModeOutbox {
		return state.ModeOutbox
	}
	return state.ModeHold
}

// Memory is a window over what is owed. In outbox mode, once the window
// (MaxPending companies) is full, a change to a company not in memory is not
// kept there: it waits in a small overflow until the next write, which
// folds it into the company's outbox record on disk (MergeOutbox). When the
// window has room again it is refilled from the outbox, oldest owed first.
// A company is either in memory or only on disk (the overflow counts as
// disk), never both, so it never has two states on their way.

// outbox is the part that keeps what is owed on disk: the mode, the
// records' bookkeeping, the overflow, and the refill of memory. It is the
// dispatcher's; it reads and fills the ledger, which it is handed.
type outbox struct {
	store Outbox // nil: no outbox; hold mode for good
	log   *slog.Logger
	keys  *keyTable

	mode   Mode
	reason string
	// dirty are companies whose owed state changed since the last write.
	dirty map[string]struct{}
	// overflow are newer states of companies only on disk, until the next
	// write.
	overflow map[string]*spilled
	// gone are companies delivered and so no longer in memory whose outbox
	// record (its size) the next write removes.
	gone      map[string]int
	diskOnly  int // companies owed in the outbox and not in memory
	companies int // companies with an outbox record
	bytes     int64
}

func newOutbox(store Outbox, keys *keyTable, log *slog.Logger) *outbox {
	return &outbox{store: store, keys: keys, log: log, dirty: map[string]struct{}{},
		overflow: map[string]*spilled{}, gone: map[string]int{}}
}

// spilled is a newer state of a company that is only on disk, until the
// next outbox write folds it in.
type spilled struct {
	rec     state.OutboxRecord
	replace bool // supersedes the record whole (a deletion, or created again after one)
}

// changed notes that a company's owed state changed (owedWatcher): in
// outbox mode, or when it has a record, the next write writes it.
func (o *outbox) changed(id string, c *company) {
	if o.store == nil {
		return
	}
	if c.disk > 0 || o.mode == ModeOutbox {
		o.dirty[id] = struct{}{}
	}
}

// left notes that a company left memory (owedWatcher): its record, if it
// has one, is removed at the next write.
func (o *outbox) left(id string, c *company) {
	if c.disk > 0 {
		o.gone[id] = c.disk
	}
}

// adopt is the size of the record of a company coming into memory, which
// the company takes over: a company delivered whose record the next write
// was to remove.
func (o *outbox) adopt(id string) int {
	size, ok := o.gone[id]
	if ok {
		delete(o.gone, id)
	}
	return size
}

// spills reports whether a change to id, a company not in memory, goes to
// disk (merged into its record, if it has one): in outbox mode while memory
// is full, and whenever the company may have a state owed only on disk.
// In memory as well, it would have two states owed, and the older one's
// record would be written over (losing the keys the newer state leaves
// out) or sent after it. pgpilot keeps nothing in memory per company owed
// only on disk, so while any is, every company not in memory may be one:
// its change is merged into its record, and memory is refilled from there.
// Not for a company just delivered whose record the next write removes
// (gone): its record holds nothing owed, and that write would remove this
// change with it.
func (o *outbox) spills(id string, full bool) bool {
	if o.store == nil {
		return false
	}
	if _, waiting := o.overflow[id]; waiting {
		return true
	}
	if _, leaving := o.gone[id]; leaving {
		return false
	}
	return o.diskOnly > 0 || (o.mode == ModeOutbox && full)
}

// spill merges a change of a company not in memory into the overflow.
// It reports whether it merged into a state there already.
func (o *outbox) spill(id string, md userpilot.Metadata, del, resend bool, lsn pglogrepl.LSN, at time.Time) (merged bool) {
	s := o.overflow[id]
	if s == nil {
		s = &spilled{rec: state.OutboxRecord{CompanyID: id, Metadata: userpilot.Metadata{}, Since: at}}
		o.overflow[id] = s
	} else {
		merged = true
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
	s.rec.LSN = max(s.rec.LSN, state.LSN(lsn))
	s.rec.Resend = s.rec.Resend || resend
	return merged
}

// maxOverflow bounds the overflow between outbox writes: past it, it is
// written at once. Each record waiting is a metadata map, and its write
// encodes them all again beside bbolt's pages: at 2,000 a flush was one of
// the heap's peaks in the overlap with users; 1,000 is twice the writes of
// a flood, each half as large.
const maxOverflow = 1000

// overflowing reports whether the overflow should be written now.
func (o *outbox) overflowing() bool { return len(o.overflow) >= maxOverflow }

// flushOverflow folds the overflow into the outbox records, durably.
func (o *outbox) flushOverflow() error {
	if len(o.overflow) == 0 {
		return nil
	}
	merges := make([]state.OutboxMerge, 0, len(o.overflow))
	for _, s := range o.overflow {
		merges = append(merges, state.OutboxMerge{Record: s.rec, Replace: s.replace})
	}
	merged, err := o.store.MergeOutbox(merges)
	if err != nil {
		return err
	}
	for _, m := range merged {
		if m.Was == 0 {
			// Not in memory, and now on disk.
			o.diskOnly++
			o.companies++
		}
		o.bytes += int64(m.Size - m.Was)
	}
	clear(o.overflow)
	return nil
}

// owed is how many companies are owed only on disk. Until the next write
// (at most a tick or maxOverflow changes away) a company in the overflow
// that already had a record is counted twice: knowing would take a read of
// the store per change, or a map of every company on disk.
func (o *outbox) owed() int { return o.diskOnly + len(o.overflow) }

// empty reports whether nothing is owed on disk or waiting to be written
// there.
func (o *outbox) empty() bool { return o.diskOnly == 0 && len(o.overflow) == 0 }

// owedFrom makes an outbox record a ledger entry's fields.
type owedFrom struct {
	// safe is the position that may be checkpointed while it is owed.
	safe pglogrepl.LSN
	// doubt says whether an earlier run may have sent company id without
	// seeing the outcome (leftover.inDoubt).
	doubt func(id string) bool
}

// load makes what a previous run left in the outbox pending again, ahead
// of the stream (which resumes after it): as much as the window holds,
// oldest first; the rest is refilled as the window empties.
func (o *outbox) load(l *ledger, from owedFrom) error {
	if o.store == nil {
		return nil
	}
	n := 0
	// A company in memory now is held by a bulk job from before the
	// restart: its record (what it owes beyond the job) waits behind the
	// job, in memory, so that the job's end lets it go rather than
	// forgetting it.
	held := map[string]int{}
	if err := o.store.ScanOutbox(func(s state.OutboxEntry) error {
		n++
		o.bytes += int64(s.Size)
		if l.company(s.CompanyID) != nil {
			held[s.CompanyID] = s.Size
		}
		return nil
	}); err != nil {
		return err
	}
	if n > 0 {
		o.setMode(ModeOutbox, fmt.Sprintf("the outbox holds %d companies from before the restart", n))
	}
	o.companies += n
	o.diskOnly += n
	if err := o.loadRecords(l, from, slices.Collect(maps.Keys(held)), held); err != nil {
		return err
	}
	return o.refill(l, from)
}

// loadRecords puts the outbox records of these companies in memory, in
// this order, as what each owes next; sizes are their stored sizes.
func (o *outbox) loadRecords(l *ledger, from owedFrom, ids []string, sizes map[string]int) error {
	// A part at a time: decoded, the records are twice what they are once
	// packed.
	for part := range slices.Chunk(ids, persistBatch) {
		recs, err := o.store.ReadOutbox(part)
		if err != nil {
			return err
		}
		for _, r := range recs {
			c := l.company(r.CompanyID)
			if c == nil {
				c = l.adopt(r.CompanyID, o.adopt(r.CompanyID))
			}
			c.disk = sizes[r.CompanyID]
			l.owe(r.CompanyID, c, o.keys.pack(r.Metadata), r.Delete, r.Resend || from.doubt(r.CompanyID),
				pglogrepl.LSN(r.LSN), from.safe, r.Since)
			o.diskOnly--
		}
	}
	return nil
}

// refill loads, while the window has room, the companies owed only on
// disk, oldest first.
func (o *outbox) refill(l *ledger, from owedFrom) error {
	// Room by count and by bytes: an entry holds at least entryOverhead.
	room := min(l.maxPending-l.order.len(), int((l.maxBytes-l.windowBytes)/entryOverhead))
	if o.store == nil || o.diskOnly == 0 || room <= 0 {
		return nil
	}
	oldest := &byAge{}
	if err := o.store.ScanOutbox(func(s state.OutboxEntry) error {
		if l.company(s.CompanyID) != nil {
			return nil
		}
		if _, waiting := o.overflow[s.CompanyID]; waiting {
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
	// A part at a time, until the window's bytes are full too: loaded by
	// count alone, 25,000 companies of a few hundred bytes were twice the
	// maxBytes the window is bounded by (and, with a TOASTed value of a
	// few kB in some, more).
	for part := range slices.Chunk(ids, persistBatch) {
		if l.windowBytes >= l.maxBytes {
			break
		}
		if err := o.loadRecords(l, from, part, sizes); err != nil {
			return err
		}
	}
	return nil
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

// modeSignals is what the choice of mode is made from.
type modeSignals struct {
	now time.Time
	// retained is the slot's retained WAL as last measured, and
	// maxRetained the bound above which the outbox starts (0: never).
	retained, maxRetained int64
	// lastProgress is when Userpilot last showed it works (accepted
	// something, answered for a job it is working through), or when
	// changes started waiting after an idle spell.
	lastProgress time.Time
	outboxAfter  time.Duration
	// owed: something undelivered is in memory.
	owed bool
	// heldBack is how long the window has held, or will hold, the input
	// back without turning over (backlog.observe), window how many it
	// holds; past readAheadAfter, the rest of the backlog is read ahead.
	heldBack, readAheadAfter time.Duration
	window                   int
}

// updateMode switches to outbox mode when holding WAL back has become the
// danger, and back to hold mode once nothing is owed.
func (o *outbox) updateMode(l *ledger, s modeSignals) {
	if o.store == nil {
		return
	}
	switch o.mode {
	case ModeHold:
		var reason string
		if s.maxRetained > 0 && s.retained > s.maxRetained {
			reason = fmt.Sprintf("the slot retains %d MB of WAL, above delivery.max_retained_wal (%d MB)", s.retained>>20, s.maxRetained>>20)
		}
		if idle := s.now.Sub(s.lastProgress); reason == "" && s.owed && idle > s.outboxAfter {
			reason = fmt.Sprintf("Userpilot has accepted nothing for %s (delivery.outbox_after)", idle.Round(time.Second))
		}
		if reason == "" && s.heldBack > s.readAheadAfter {
			reason = fmt.Sprintf("the backlog outgrew memory: the %d companies and users in memory, with more changes coming in behind them, "+
				"hold the input back for %s at the pace measured of Userpilot; the rest is read ahead, where later changes merge into what is owed and the slot's WAL is freed",
				s.window, s.heldBack.Round(time.Second))
		}
		if reason == "" {
			return
		}
		// Everything undelivered goes to the outbox at the next write.
		for id := range l.companies {
			o.dirty[id] = struct{}{}
		}
		o.setMode(ModeOutbox, reason)
	case ModeOutbox:
		if l.order.len() == 0 && o.companies == 0 && len(o.dirty) == 0 && len(o.overflow) == 0 {
			o.setMode(ModeHold, "the outbox is empty")
		}
	}
}

func (o *outbox) setMode(mode Mode, reason string) {
	o.mode, o.reason = mode, reason
	if mode == ModeOutbox {
		o.log.Warn("delivery mode: outbox; pending changes are kept on disk so Postgres can free its WAL", "reason", reason)
	} else {
		o.log.Info("delivery mode: hold", "reason", reason)
	}
}

// persist writes the merged owed state of every company that changed
// since the last write, and removes delivered ones, in one durable write.
func (o *outbox) persist(l *ledger) error {
	if o.store == nil {
		return nil
	}
	if err := o.flushOverflow(); err != nil {
		return err
	}
	if len(o.dirty) == 0 {
		return nil
	}
	// In writes of persistBatch records: the records of every company in
	// memory, made all at once when outbox mode starts, were a third of
	// that moment's heap.
	put := make([]state.OutboxRecord, 0, min(len(o.dirty), persistBatch))
	var remove []string
	for id := range o.dirty {
		c := l.company(id)
		if c == nil || (c.inflight == nil && c.waiting == nil) {
			if _, ok := o.gone[id]; ok {
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
			maps.Copy(r.Metadata, o.keys.unpack(e.md))
			r.Resend = r.Resend || e.resend
			r.LSN = max(r.LSN, state.LSN(e.lsn))
			if since := e.since.time(); r.Since.IsZero() || since.Before(r.Since) {
				r.Since = since
			}
		}
		if put = append(put, r); len(put) == persistBatch {
			if err := o.write(l, put, nil); err != nil {
				return err
			}
			put = put[:0]
		}
	}
	if err := o.write(l, put, remove); err != nil {
		return err
	}
	clear(o.dirty)
	return nil
}

// persistBatch is how many records persist makes before it writes them.
const persistBatch = 1000

// write writes records of companies in memory and removes those of
// companies gone, keeping the counts.
func (o *outbox) write(l *ledger, put []state.OutboxRecord, remove []string) error {
	if err := o.store.WriteOutbox(put, remove); err != nil {
		return err
	}
	for _, id := range remove {
		o.bytes -= int64(o.gone[id])
		o.companies--
		delete(o.gone, id)
	}
	for _, r := range put {
		c := l.company(r.CompanyID)
		size := recordSize(r)
		if c.disk == 0 {
			o.companies++
		}
		o.bytes += int64(size - c.disk)
		c.disk = size
	}
	return nil
}

func recordSize(r state.OutboxRecord) int {
	b, _ := json.Marshal(r)
	return len(r.CompanyID) + len(b)
}
