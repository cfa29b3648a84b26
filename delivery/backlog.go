package delivery

import "time"

// The backlog: in hold mode the WAL is the queue, and the window of what is
// owed in memory holds the input back when full. That is cheap while the
// window turns over quickly (a catch-up that pgpilot itself is the limit
// of). When Userpilot's budgets are the limit and the backlog is larger
// than the window, it is not: the changes behind the window wait in the
// slot, where Postgres keeps their WAL, and a company changed again behind
// it is sent once per change instead of once, since its later states are
// read only after the earlier one went out. So outbox mode starts once the
// window holds the input back and either has for Options.ReadAheadAfter
// without taking in a window's worth of changes, or will, by the pace
// measured of Userpilot (what the window holds over the two paths' rates):
// the rest is read ahead, merged into what is owed on disk, and the
// checkpoint (and the slot) advances.
//
// While the rest is read ahead, a bulk job waits for the input to pause
// (bulkTime), for at most ReadAheadAfter: cut at once it would carry the
// states the read-ahead is about to replace, and those companies would go
// again.

// backlog watches how long the window has held the input back without
// turning over, and the read-ahead that follows. It is the dispatcher's.
type backlog struct {
	since time.Time // when the window was first seen holding the input back; zero: it is not
	taken int64     // changes taken in by then
	// readAhead is when outbox mode started for the backlog; zero: it
	// did not, or the read-ahead is over.
	readAhead time.Time
}

// observe notes, at now, whether the window holds the input back, the
// changes taken in so far, how many the window holds and how long it takes
// to deliver them at the measured pace (0: not measured), and returns for
// how long the window has held, or will hold, the input back without a
// window's worth of changes going in (0: it does not, or it just turned
// over).
func (b *backlog) observe(now time.Time, heldBack bool, taken int64, window int, drain time.Duration) time.Duration {
	if !heldBack {
		b.since = time.Time{}
		return 0
	}
	if b.since.IsZero() || taken-b.taken >= int64(window) {
		b.since, b.taken = now, taken
		return drain
	}
	return max(now.Sub(b.since), drain)
}

// readingAhead says whether, at now, the rest of a backlog is being read
// ahead: outbox mode started for it less than after ago.
func (b *backlog) readingAhead(now time.Time, after time.Duration) bool {
	return !b.readAhead.IsZero() && now.Sub(b.readAhead) < after
}

// drainTime is how long delivering n companies takes at the real-time and
// bulk rates measured (records a second); 0 when neither is known.
func drainTime(n int, realtime, bulk float64) time.Duration {
	if realtime+bulk <= 0 {
		return 0
	}
	return time.Duration(float64(n) / (realtime + bulk) * float64(time.Second))
}

// readAheadQuiet is how long the input must pause during a read-ahead
// before a bulk job is sized: longer than a burst's pause (inputQuiet),
// since a writer on a busy primary pauses longer between its transactions,
// and what is read ahead takes over ReadAheadAfter to deliver: a second
// of waiting is a small part of it.
const readAheadQuiet = time.Second
