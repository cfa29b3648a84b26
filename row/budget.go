package row

import "sync"

// Budget bounds the bytes of streamed changes on their way from the
// stream to delivery: through the channels between the stages, a related
// stage gathering a read, a snapshot stage passing them on. The stream
// takes a transaction's bytes before it hands it on (TryTake, waiting on
// Freed while it cannot); delivery gives them back once it has taken the
// transaction in (Charge.Release). Counted in pieces of 250 changes the
// same way could hold five times as many bytes of one table's changes as
// of another's: users' updates under REPLICA IDENTITY FULL (old row and
// new) filled the stages with 20,000 changes, the largest part of the heap
// at the peak of an overlap.
//
// A budget is a session's: what a session leaves in flight when it ends
// (dropped by a stage) is never given back, and the next session makes
// its own.
type Budget struct {
	mu    sync.Mutex
	used  int64
	max   int64
	freed chan struct{}
}

// NewBudget bounds what may be in flight to max bytes.
func NewBudget(max int64) *Budget {
	return &Budget{max: max, freed: make(chan struct{}, 1)}
}

// TryTake takes n bytes if they fit, or if nothing is taken (a
// transaction larger than the budget goes alone), and returns the charge
// to release; ok is false when they do not fit.
func (b *Budget) TryTake(n int64) (c Charge, ok bool) {
	if b == nil {
		return Charge{}, true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.used > 0 && b.used+n > b.max {
		return Charge{}, false
	}
	b.used += n
	return Charge{b: b, n: n}, true
}

// Freed is signalled when bytes are given back: wait on it, then TryTake
// again.
func (b *Budget) Freed() <-chan struct{} { return b.freed }

// Used is what is in flight now, in bytes.
func (b *Budget) Used() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used
}

// Charge is what one transaction took from a Budget; the zero Charge
// (a snapshot chunk, a marker) holds nothing.
type Charge struct {
	b *Budget
	n int64
}

// Release gives the charge back; once per transaction, by whoever takes
// it in last.
func (c Charge) Release() {
	if c.b == nil {
		return
	}
	c.b.mu.Lock()
	c.b.used -= c.n
	c.b.mu.Unlock()
	select {
	case c.b.freed <- struct{}{}:
	default:
	}
}

// Bytes is about what a change holds in memory: its values (as Value
// structs and their text) and the change itself.
func (c Change) Bytes() int {
	n := 64 + 32*(len(c.Values)+len(c.Old))
	for _, v := range c.Values {
		n += len(v.Text)
	}
	for _, v := range c.Old {
		n += len(v.Text)
	}
	return n
}
