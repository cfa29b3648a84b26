package delivery

import "time"

// input is the dispatcher's view of what it reads: whether the input is
// closed (or reading stopped at a schema problem), and the burst of
// changes it is in, which decides when a bulk job is sized.
type input struct {
	closed bool
	// stopFor is a schema problem met in the input: reading stops, but
	// everything before it is delivered and checkpointed first, so that
	// after the mapping is fixed the stream resumes exactly at the
	// transaction that needed the fix (older ones would not fit the new
	// mapping).
	stopFor error
	// last is when the last transaction was taken in, burstStart when the
	// burst it belongs to began; burstCoalesced is the changes merged into
	// pending ones before the burst.
	last, burstStart time.Time
	burstCoalesced   int64
}

// took notes a transaction taken in at now; coalesced is the count of
// changes merged into pending ones before it.
func (in *input) took(now time.Time, coalesced int64) {
	if now.Sub(in.last) >= inputQuiet {
		in.burstStart, in.last, in.burstCoalesced = now, now, coalesced
	} else {
		in.last = now
	}
}

// merged says whether a change of the burst merged into a pending one,
// given the count of changes merged so far.
func (in *input) merged(coalesced int64) bool { return coalesced > in.burstCoalesced }

// inputQuiet is how long the input must pause before a bulk job is sized:
// a job cannot take records added after it was submitted, so sizing it in
// the middle of a burst sends the rest of the burst the slow way, and the
// companies in it that the burst changes again go twice. A burst that has
// lasted longer must pause longer (half its length, up to maxInputQuiet):
// between two statements that each update many rows, Postgres sends
// nothing while it runs the next. That longer wait is for companies
// changed again: a burst that has changed none twice (a catch-up of new
// rows) waits inputQuiet only.
const (
	inputQuiet    = 100 * time.Millisecond
	maxInputQuiet = 300 * time.Millisecond
)

// quietFor is how long the input must pause, after a burst from burstStart
// to lastInput, before a bulk job is sized; merged says whether a change of
// the burst merged into one still pending.
func quietFor(lastInput, burstStart time.Time, merged bool) time.Duration {
	if !merged {
		return inputQuiet
	}
	return min(maxInputQuiet, max(inputQuiet, lastInput.Sub(burstStart)/2))
}

// paused says whether the input has paused long enough, at now, for a
// bulk job to be sized, or how long it must still pause.
func (in *input) paused(now time.Time, merged bool) (bool, time.Duration) {
	if in.closed {
		return true, 0
	}
	wait := quietFor(in.last, in.burstStart, merged) - now.Sub(in.last)
	return wait <= 0, wait
}
