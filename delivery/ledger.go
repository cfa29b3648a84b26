package delivery

import (
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/pgpilot/pgpilot/row"
)

// ledger is the book of what is owed to Userpilot, and the only part that
// decides how far the checkpoint may go. It does no I/O and reads no
// clock: every transition is a method call with its inputs, so a model
// test can drive it through any sequence (ledger_model_test.go).
//
// Entries are kept in the order they were made (order); the position that
// may be checkpointed is the one the oldest undelivered entry recorded when
// it was made (its safe), or, with nothing undelivered, the end of the last
// transaction received. A company has at most one entry in flight and one
// waiting behind it (company), so an older state never lands after a newer
// one.
//
// The states of an entry, and what moves it:
//
//	waiting ──send──▶ in flight ──finish──▶ done (delivered, skipped or set aside)
//	   ▲                 │
//	   └──── requeue ────┘   (a job not applied: back to the front, newer merged in)
//
// A done entry leaves order once every entry before it is done: that is
// when the watermark passes it.
type ledger struct {
	companies map[string]*company
	order     queue // every undelivered entry, oldest first (and finished ones until they reach the front)
	ready     queue // entries that may be sent now, oldest first
	// undelivered counts the entries not done: order also holds done
	// entries behind an older undelivered one.
	undelivered int
	inflight    int
	// windowBytes is what the entries in order hold (entry.size), bounded
	// by maxBytes.
	windowBytes int64
	maxPending  int
	maxBytes    int64

	received pglogrepl.LSN // end of the last whole transaction received
	// seq numbers entries in the order they are made; marks wait, oldest
	// first, for every entry made before them to be done.
	seq      uint64
	marks    []pendingMark
	markDone any // the newest mark with everything before it done

	// checkpointed and markSaved are what was last written to the
	// checkpoint (see due and saved).
	checkpointed pglogrepl.LSN
	markSaved    any

	// watch hears of every change to what a company owes (the outbox
	// keeps its records from it).
	watch owedWatcher
}

// owedWatcher hears of changes to what companies owe.
type owedWatcher interface {
	// changed: the company's owed state changed (an entry made, merged,
	// sent or done).
	changed(id string, c *company)
	// left: the company has nothing owed or on its way, and left memory.
	left(id string, c *company)
}

// pendingMark is a Transaction's Mark, waiting for the entries made before
// it (seq below its own) to be done.
type pendingMark struct {
	seq  uint64
	mark any
}

func newLedger(checkpointed pglogrepl.LSN, maxPending int, maxBytes int64, watch owedWatcher) *ledger {
	return &ledger{companies: map[string]*company{}, received: checkpointed, checkpointed: checkpointed,
		maxPending: maxPending, maxBytes: maxBytes, watch: watch}
}

// seen reports whether txn was received before: the pipeline outlives
// replication sessions, and a new session streams again from the durable
// checkpoint, which may be behind what was received. What was received is
// merged already (merging it again could put an older value over a newer
// one), so it is dropped. A piece of a large transaction is a repeat when
// its transaction committed before the last whole one received; a chunk
// never is (a snapshot's rows are read anew, in a newer MVCC snapshot).
func (l *ledger) seen(txn row.Transaction) bool {
	switch txn.Kind {
	case row.Commit, row.Marker:
		return txn.EndLSN != 0 && txn.EndLSN <= l.received
	case row.Piece:
		return txn.CommitLSN < l.received
	}
	return false
}

// took notes a transaction whose changes were all pended (or spilled): its
// end is received, and its mark waits for what was made before it.
func (l *ledger) took(txn row.Transaction) {
	if txn.EndLSN > l.received {
		l.received = txn.EndLSN
	}
	if txn.Mark != nil {
		l.marks = append(l.marks, pendingMark{seq: l.seq, mark: txn.Mark})
	}
}

// company is id's, or nil when nothing of it is in memory.
func (l *ledger) company(id string) *company { return l.companies[id] }

// adopt puts a company in memory; disk is the size of its outbox record
// (0: none).
func (l *ledger) adopt(id string, disk int) *company {
	c := &company{disk: disk}
	l.companies[id] = c
	return c
}

// pend merges a company's new state (metadata, or a deletion) into what is
// owed for it, made at at by a transaction ending at lsn. It reports
// whether it merged into an entry already waiting.
func (l *ledger) pend(id string, c *company, md fields, del, resend bool, lsn pglogrepl.LSN, at time.Time) (merged bool) {
	if w := c.waiting; w != nil {
		switch {
		case del:
			// Pending metadata is moot for a company about to be deleted.
			l.resized(w, func() { w.delete, w.md = true, nil })
			w.changes++
		case w.delete:
			// Created again before the deletion went out: it exists.
			l.resized(w, func() { w.delete, w.md = false, md })
			w.changes++
		default:
			l.merge(w, md)
		}
		w.checked = false
		w.resend = w.resend || resend
		w.lsn = lsn
		l.watch.changed(id, c)
		return true
	}
	e := &entry{id: id, co: c, md: md, safe: l.received, seq: l.seq, lsn: lsn, changes: 1, since: momentOf(at), delete: del, resend: resend}
	l.seq++
	c.waiting = e
	l.watch.changed(id, c)
	l.enqueue(e)
	if c.inflight == nil {
		l.ready.push(e)
	}
	return false
}

// owe puts a state owed from before (an outbox record) in memory as what
// company id owes next, behind whatever it has in flight.
func (l *ledger) owe(id string, c *company, md fields, del, resend bool, lsn, safe pglogrepl.LSN, since time.Time) {
	e := &entry{id: id, co: c, md: md, safe: safe, lsn: lsn, changes: 1, since: momentOf(since), delete: del, resend: resend}
	c.waiting = e
	l.enqueue(e)
	if c.inflight == nil {
		l.ready.push(e) // not when a job from before the restart holds it
	}
}

// hold puts a state a bulk job from before the restart carries in flight
// for company id: its newer states wait until that job ends. It is done
// for the checkpoint from the start (what it carries is before the
// checkpoint, or owed again in the outbox or the stream). alsoOlder says
// an older held job holds the company already: this state is then only
// recorded in the index once its own job completes, and nothing is held.
func (l *ledger) hold(id string, md fields) (e *entry, alsoOlder bool) {
	c := l.companies[id]
	if c == nil {
		c = l.adopt(id, 0)
	}
	e = &entry{id: id, co: c, md: md, done: true, held: true}
	if c.inflight != nil {
		return e, true
	}
	c.inflight = e
	l.inflight++
	return e, false
}

// merge folds a newer state in. Keys it leaves out (an unchanged TOAST
// value) keep the pending value.
func (l *ledger) merge(e *entry, md fields) {
	l.resized(e, func() { e.md = mergeFields(e.md, md) })
	e.changes++
	e.checked = false
}

// resized applies change to e, keeping the window's byte count true.
func (l *ledger) resized(e *entry, change func()) {
	before := e.size()
	change()
	if e.counted {
		l.windowBytes += int64(e.size() - before)
	}
}

// enqueue puts a new entry last in the order, and in the window.
func (l *ledger) enqueue(e *entry) {
	l.order.push(e)
	l.undelivered++
	e.counted = true
	l.windowBytes += int64(e.size())
}

// send marks e as on its way, handed to a call at at: newer changes for its
// company now wait.
func (l *ledger) send(e *entry, at time.Time) {
	c := e.co
	c.inflight, c.waiting = e, nil
	l.inflight++
	e.sentAt = momentOf(at)
}

// finish marks e done (delivered, skipped or set aside) and lets its
// company's waiting entry go. It reports whether the company left memory.
func (l *ledger) finish(e *entry) (left bool) {
	l.setDone(e)
	c := e.co
	l.watch.changed(e.id, c)
	if c.inflight == e {
		c.inflight = nil
		l.inflight--
	}
	if c.waiting != nil {
		l.ready.push(c.waiting)
		return false
	}
	if c.inflight == nil {
		delete(l.companies, e.id)
		l.watch.left(e.id, c)
		return true
	}
	return false
}

// requeue puts entries a bulk job did not apply back at the front of the
// ready queue, in their order, each with any newer state of its company
// merged in (newer wins; a deletion supersedes the older state whole): the
// merged entry keeps the older one's place in the order, so the
// checkpoint does not pass it. They go out alone from then on
// (realtimeOnly), where a bad record is refused by itself.
func (l *ledger) requeue(es []*entry) {
	for i := len(es) - 1; i >= 0; i-- {
		e := es[i]
		c := e.co
		c.inflight = nil
		l.inflight--
		e.realtimeOnly = true
		if w := c.waiting; w != nil {
			l.resized(e, func() {
				if w.delete {
					e.delete, e.md = true, nil
				} else {
					e.md = mergeFields(e.md, w.md)
				}
			})
			e.lsn, e.resend = w.lsn, e.resend || w.resend
			l.setDone(w)
		}
		c.waiting = e
		l.ready.pushFront(e)
	}
}

// setDone finishes e for the checkpoint's order and the pending count.
func (l *ledger) setDone(e *entry) {
	if !e.done {
		e.done = true
		l.undelivered--
	}
}

// chunksOwed says whether rows of a snapshot (the initial sync, a
// re-sync, a backfill) are owed in memory: a piece's mark waits for them.
func (l *ledger) chunksOwed() bool { return len(l.marks) > 0 }

// watermark is the newest position with nothing undelivered before it. It
// drops the done entries at the front of the order, and takes the marks
// they held back.
func (l *ledger) watermark() pglogrepl.LSN {
	for l.order.len() > 0 && l.order.front().done {
		e := l.order.popFront()
		l.windowBytes -= int64(e.size())
		e.counted = false
	}
	// A merge into an older entry keeps that entry's seq, so a mark never
	// passes a state it was made after.
	for len(l.marks) > 0 && (l.order.len() == 0 || l.order.front().seq >= l.marks[0].seq) {
		l.markDone = l.marks[0].mark
		l.marks = l.marks[1:]
	}
	if l.order.len() > 0 {
		return l.order.front().safe
	}
	return l.received
}

// due is the position and mark to checkpoint now, and whether either moved
// since the last checkpoint. With all (outbox mode: everything received is
// delivered or durably in the outbox) it is everything received, marks
// included; else the watermark.
func (l *ledger) due(all bool) (pglogrepl.LSN, any, bool) {
	w := l.watermark()
	if all {
		if n := len(l.marks); n > 0 {
			l.markDone, l.marks = l.marks[n-1].mark, nil
		}
		w = l.received
	}
	if w <= l.checkpointed && l.markDone == l.markSaved {
		return l.checkpointed, l.markSaved, false
	}
	return max(w, l.checkpointed), l.markDone, true
}

// saved notes that lsn and mark are durably checkpointed.
func (l *ledger) saved(lsn pglogrepl.LSN, mark any) {
	l.checkpointed, l.markSaved = lsn, mark
}

// full reports whether the window holds all memory may: maxPending
// entries, or maxBytes of them.
func (l *ledger) full() bool {
	return l.order.len() >= l.maxPending || l.windowBytes >= l.maxBytes
}

// idle reports whether nothing is owed or on its way in memory.
func (l *ledger) idle() bool { return l.order.len() == 0 && l.inflight == 0 }
