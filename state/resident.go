package state

import (
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
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
	// measured is when the store's own share was last read from smaps
	// (Unix ns): see trimBy.
	measured atomic.Int64
}

// measureEvery is how often, at most, the store's own share of the
// resident set is read (smaps) to tell the program's file pages from the
// store's. Each read costs what hundreds of looks at statm do: in a
// catch-up, whose look-ups let the store's pages go every few records
// while a job's write read others back meanwhile, reading it at every
// drop was a tenth of pgpilot's CPU. Until the next read, the program's
// own pages are taken to be what they were: the store's pages are then
// only let go sooner, never kept longer.
const measureEvery = time.Second

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
// resident. It looks at most every 5 ms (it is called after every write).
func (x *Store) trim() { x.trimBy(x.dropMapped, 5*time.Millisecond) }

// trimAfter is trim after a write of n records: without waiting for the
// 5 ms since the last look when the write was large (a part of the outbox,
// a job's profiles), whose pages were read all over the store. Merging a
// flood of changes into a 200,000-company outbox, writes a millisecond
// apart made 20 MB of the store resident between two looks.
func (x *Store) trimAfter(n int) {
	if n >= trimEvery {
		x.trimBy(x.dropMapped, 0)
		return
	}
	x.trim()
}

// trimIn is trim from inside a long read transaction (a scan of the whole
// outbox, a job's look-ups in the index), every trimEvery records read:
// the pages it has read go as it reads on, not only once it ends. A scan
// of a 200,000-company outbox, or a job's 10,000 look-ups spread over the
// index, made 30-40 MB of the store resident between two trims.
func (x *Store) trimIn(tx *bolt.Tx) { x.trimBy(func() { x.dropMappedIn(tx) }, 0) }

// trimEvery is how many records a long read transaction reads between two
// looks at the resident set (a look is a pread of /proc/self/statm, what
// reading a record or two costs). Not the megabyte 256 records' pages
// would be: the kernel maps up to 16 pages around each page a read of the
// map faults in (fault-around; MADV_RANDOM does not stop it), so a record
// read where no other was makes 64 kB resident, and 256 reads spread over
// the store made 16 MB resident between two looks.
const trimEvery = 16

// residentBudget is how much of the store (beyond the slack) a write
// transaction may make resident before it ends, the rest of the write
// going in the next one. Once the heap held less at the overlaps' peaks,
// the peak RSS came when a write had the store's pages resident: 2 MB
// rather than 4 is a few more commits of the outbox in an outage.
const residentBudget = 2 << 20

// overBudget reports whether more than the budget of the store is
// resident.
func (x *Store) overBudget() bool {
	if !x.res.ok {
		return false
	}
	size, _ := residentFileBytes()
	return size > x.res.base.Load()+residentSlack+residentBudget
}

// writeInParts calls put for records 0 to n-1 in as many write
// transactions as the budget needs. A write cannot let its pages go as it
// goes, as a read does: its commit reads again every page it changed
// (bbolt copies a changed node's records from the map), so what it reads
// stays resident until it commits. With fault-around that is 64 kB per
// record spread over the store: a write of 500 such records (what an
// outage's tick writes to the outbox) made 30 MB of it resident at once,
// pgpilot's peak RSS. So a write ends, and commits, once the store's pages
// pass the budget, and goes on in the next transaction; a write of
// neighbours (a part of the outbox written in key order) stays one.
func (x *Store) writeInParts(n int, put func(tx *bolt.Tx, i int) error) error {
	for i := 0; i < n; {
		start, cut := i, false
		err := x.db.Update(func(tx *bolt.Tx) error {
			for i = start; i < n; i++ {
				if i > start && (i-start)%trimEvery == 0 && x.overBudget() {
					cut = true
					return nil
				}
				if err := put(tx, i); err != nil {
					return err
				}
			}
			return nil
		})
		if cut {
			x.trimBy(x.dropMapped, 0)
		} else {
			x.trimAfter(i - start) // its pages were read through the map
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (x *Store) trimBy(dropMapped func(), every time.Duration) {
	if !x.res.ok {
		return
	}
	now := time.Now().UnixNano()
	if last := x.res.checked.Load(); now-last < int64(every) || !x.res.checked.CompareAndSwap(last, now) {
		return
	}
	if size, _ := residentFileBytes(); size > x.res.base.Load()+residentSlack {
		dropMapped()
		// Whatever is still resident and not the store's is the program's
		// own (more of its text, say): measured from there on. Not all of
		// what is still resident: readers go on while the pages are let
		// go (a scan, a job's look-ups), and counting what they brought
		// back as the program's own made the slack 20 MB of the store.
		// (smaps is read only then: it costs a hundred times what statm
		// does.)
		after, _ := residentFileBytes()
		if after <= x.res.base.Load() {
			return
		}
		if last := x.res.measured.Load(); now-last < int64(measureEvery) || !x.res.measured.CompareAndSwap(last, now) {
			return
		}
		if store, ok := x.storeResident(); ok {
			after -= store
		}
		if after > x.res.base.Load() {
			x.res.base.Store(after)
		}
	}
}
