package state

import (
	"sync/atomic"
	"time"
)

// The store is read through bbolt's memory map, so every page a read or a
// write transaction touches joins pgpilot's resident set and stays there
// until the kernel wants the memory back. Those pages are the page cache,
// not memory pgpilot holds (under a container's limit they are reclaimed
// before anything is OOM-killed), but RSS counts them, and a store of
// hundreds of MB (the index of a million companies, an outbox during a
// long outage) made pgpilot's RSS hundreds of MB while its own memory was
// a few tens. So the store lets them go whenever more than residentSlack of
// file pages are resident: MADV_DONTNEED on a read-only shared mapping
// drops the pages from the process only (they stay cached, and the next
// read maps them again, without I/O). See docs/design.md, "Memory".

// residentSlack is how much more of mapped files may be resident than at
// the start before the store's pages are let go.
const residentSlack = 1 << 20

// residentCheck is how often the resident set is looked at (and after each
// write of the index or the outbox).
const residentCheck = 50 * time.Millisecond

// resident is what trimming needs: the file pages resident when none of
// the store's were (the program's own text, mostly).
type resident struct {
	base atomic.Int64
	ok   bool
	// checked is when the resident set was last read (Unix ns): writes
	// look at it at most every few milliseconds, not once per call.
	checked atomic.Int64
}

// trimResident lets the store's mapped pages go whenever they pass the
// slack, until stop is closed.
func (x *Store) trimResident(stop <-chan struct{}) {
	if !x.res.ok {
		return // not on Linux
	}
	tick := time.NewTicker(residentCheck)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
			x.trim()
		}
	}
}

// trim drops the store's mapped pages if more than the slack of them is
// resident.
func (x *Store) trim() {
	if !x.res.ok {
		return
	}
	now := time.Now().UnixNano()
	if last := x.res.checked.Load(); now-last < int64(5*time.Millisecond) || !x.res.checked.CompareAndSwap(last, now) {
		return
	}
	if size, _ := residentFileBytes(); size > x.res.base.Load()+residentSlack {
		x.dropMapped()
		// Whatever is still resident is not the store's (more of the
		// program's own text, say): measured from there on.
		if after, _ := residentFileBytes(); after > x.res.base.Load() {
			x.res.base.Store(after)
		}
	}
}
