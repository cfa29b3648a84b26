package delivery

import "time"

// The backlog: in hold mode the WAL is the queue, and the window of what is
// owed in memory holds the input back when full. That is cheap while the
// window turns over quickly (a catch-up that pgpilot itself is the limit
// of). When Userpilot's budgets are the limit and the backlog is larger
// than the window, it is not: the changes behind the window wait in the
// slot, where Postgres keeps their WAL, and a company changed again behind
// it is sent once per change instead of once, since its later states are
// read only after the earlier one went out. So once the window has held
// the input back for Options.ReadAheadAfter without taking in a window's
// worth of changes, outbox mode starts: the rest is read ahead, merged
// into what is owed on disk, and the checkpoint (and the slot) advances.

// backlog watches how long the window has held the input back without
// turning over. It is the dispatcher's.
type backlog struct {
	since time.Time // when the window was first seen holding the input back; zero: it is not
	taken int64     // changes taken in by then
}

// observe notes, at now, whether the window holds the input back, the
// changes taken in so far and how many the window holds, and returns for
// how long it has held the input back without a window's worth of changes
// going in (0: it does not, or it just turned over).
func (b *backlog) observe(now time.Time, heldBack bool, taken int64, window int) time.Duration {
	if !heldBack {
		b.since = time.Time{}
		return 0
	}
	if b.since.IsZero() || taken-b.taken >= int64(window) {
		b.since, b.taken = now, taken
		return 0
	}
	return now.Sub(b.since)
}
