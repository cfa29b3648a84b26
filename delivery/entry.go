package delivery

import (
	"math"
	"time"

	"github.com/jackc/pglogrepl"
)

// entry is the merged pending state of one company: every change merged in
// since the entry was made, newest values winning key by key. The ledger
// owns entries; other parts read them only on the dispatcher's goroutine.
type entry struct {
	id string
	// co is its company, in the ledger while the entry is owed or on its
	// way (a look-up by id in send and finish was a measurable part of a
	// change's CPU).
	co *company
	md fields // the metadata owed (see fields.go)
	// safe is the position that may be checkpointed while this entry is
	// undelivered: the end of the last transaction received before the
	// entry's first change.
	safe pglogrepl.LSN
	seq  uint64 // order of making, for marks
	// lsn is the end of the newest transaction merged in (0 while that
	// transaction is still arriving), for dead letters.
	lsn   pglogrepl.LSN
	since moment // when its first change arrived
	// sentAt is when it was last handed to a call, for the breaker: an
	// acceptance vouches for refusals sent before it.
	sentAt       moment
	changes      int
	done         bool
	checked      bool // looked up in the no-op index since the last merge
	same         bool // what the look-up found: Userpilot holds every value (while checked)
	absent       bool // what the look-up found: the index holds no record of the company (while checked)
	resend       bool // never skipped as a no-op: a re-sync asked for it
	realtimeOnly bool // a bulk job could not take it: send it alone
	delete       bool // owed is a deletion in Userpilot (on_delete: delete)
	held         bool // in a bulk job from before a restart, which may still be running
	counted      bool // in order, and so in the window's byte count
}

// moment is a time as an entry keeps it: nanoseconds from epoch, on the
// monotonic clock. An entry is made for every change and the window holds
// thousands: as time.Time (24 bytes, one of them a pointer for the
// collector to follow) its two times made it 144 bytes, 112 now.
type moment int64

// epoch is where moments count from.
var epoch = time.Now()

// never is the moment of the zero time.Time.
const never = moment(math.MinInt64)

func momentOf(t time.Time) moment {
	if t.IsZero() {
		return never
	}
	return moment(t.Sub(epoch))
}

// time is m as a time.Time (the zero one for never).
func (m moment) time() time.Time {
	if m == never {
		return time.Time{}
	}
	return epoch.Add(time.Duration(m))
}

// entryOverhead is what an entry costs beside its id and metadata bytes:
// the entry, its company, their places in the maps and queues
// (BenchmarkPendingCompanyBytes measures the whole).
const entryOverhead = 280

// size is what e holds in memory, for the window's byte bound.
func (e *entry) size() int { return entryOverhead + len(e.id) + cap(e.md) }

// company is what is undelivered for one company_id: at most one entry on
// its way to Userpilot, and at most one waiting behind it. A waiting entry
// is never sent while one is in flight, so an older state can never land
// after a newer one.
type company struct {
	inflight, waiting *entry
	// disk is the size of its outbox record (0: it has none). Only
	// companies in memory carry it: pgpilot keeps nothing in memory per
	// company owed only on disk.
	disk int
}

// queue is a FIFO of entries with O(1) push, pop at both ends.
type queue struct {
	items []*entry
	head  int
}

func (q *queue) len() int      { return len(q.items) - q.head }
func (q *queue) push(e *entry) { q.items = append(q.items, e) }
func (q *queue) front() *entry { return q.items[q.head] }
func (q *queue) back() *entry  { return q.items[len(q.items)-1] }

// first and last are the n entries at the front and the back (fewer if it
// holds fewer), to look at without taking them.
func (q *queue) first(n int) []*entry { return q.items[q.head : q.head+min(n, q.len())] }
func (q *queue) last(n int) []*entry  { return q.items[len(q.items)-min(n, q.len()):] }

// pushFront puts e first. Without room before the head it makes as much
// room again as the queue holds, so a run of pushes to the front (a refused
// job's records going back) costs amortised O(1) each. The new array is
// sized by what the queue holds, not by the old one's capacity: a
// compaction keeps that capacity, and a job's worth taken from the front
// and put back at every sizing (records only the real-time path may send,
// ahead of a backlog left to bulk jobs) added the old capacity to the new
// one each time, until the array was gigabytes.
func (q *queue) pushFront(e *entry) {
	if q.head == 0 {
		n := len(q.items)
		room := max(16, n)
		items := make([]*entry, room+n, room+max(n, 16))
		copy(items[room:], q.items)
		q.items, q.head = items, room
	}
	q.head--
	q.items[q.head] = e
}

func (q *queue) popFront() *entry {
	e := q.items[q.head]
	q.items[q.head] = nil
	q.head++
	// Compacted once the popped slots are twice what is left: a pushFront
	// made room ahead of the head on purpose, and is not undone at once.
	// In place: an array made anew at each compaction (and the appends
	// that grew it again) was a tenth of what a catch-up allocated.
	if q.head > 1024 && q.head > 2*q.len() {
		n := copy(q.items, q.items[q.head:])
		clear(q.items[n:])
		q.items, q.head = q.items[:n], 0
	}
	return e
}

func (q *queue) popBack() *entry {
	e := q.items[len(q.items)-1]
	q.items[len(q.items)-1] = nil
	q.items = q.items[:len(q.items)-1]
	return e
}
