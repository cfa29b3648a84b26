package delivery

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The fallback of a refused 10,000-record job puts every record back at the
// front, one by one: that must cost a few allocations, not one copy of the
// queue each (quadratic).
func TestPushFrontIsAmortisedConstant(t *testing.T) {
	e := &entry{}
	allocs := testing.AllocsPerRun(1, func() {
		var q queue
		for range 10_000 {
			q.pushFront(e)
		}
	})
	assert.Less(t, allocs, 50.0)
}

func TestQueueKeepsOrderAtBothEnds(t *testing.T) {
	var q queue
	var ref []*entry // the same operations on a plain slice
	es := make([]*entry, 3000)
	for i := range es {
		es[i] = &entry{seq: uint64(i)}
	}
	for i, e := range es {
		switch i % 5 {
		case 0, 1:
			q.push(e)
			ref = append(ref, e)
		case 2:
			q.pushFront(e)
			ref = append([]*entry{e}, ref...)
		case 3:
			require.Equal(t, ref[0], q.popFront())
			ref = ref[1:]
		case 4:
			q.pushFront(e)
			ref = append([]*entry{e}, ref...)
			require.Equal(t, ref[len(ref)-1], q.popBack())
			ref = ref[:len(ref)-1]
		}
		require.Equal(t, len(ref), q.len())
	}
	for len(ref) > 0 {
		require.Equal(t, ref[0], q.front())
		require.Equal(t, ref[0], q.popFront())
		ref = ref[1:]
	}
}

// Entries taken from the front and put back, over and over (a backlog
// left to bulk jobs behind records only the real-time path may send: each
// job's sizing takes them and puts them back), keep the queue's array the
// size of what it holds: it grew by the old array's capacity at each turn,
// to gigabytes.
func TestTakingFromTheFrontAndPuttingBackKeepsTheQueueSmall(t *testing.T) {
	var q queue
	const n = 14_000
	for range n {
		q.push(&entry{})
	}
	keep := make([]*entry, 0, n)
	for range 200 {
		keep = keep[:0]
		for q.len() > 0 {
			keep = append(keep, q.popFront())
		}
		for i := len(keep) - 1; i >= 0; i-- {
			q.pushFront(keep[i])
		}
	}
	require.Equal(t, n, q.len())
	assert.LessOrEqual(t, cap(q.items), 4*n, "the queue's array, for %d entries", n)
}

// A queue that stays about the same length (entries made as others leave:
// the order and the ready queue in a catch-up) allocates nothing once
// warm: compacting it is done in place.
func TestASteadyQueueAllocatesNothing(t *testing.T) {
	e := &entry{}
	var q queue
	for range 1000 {
		q.push(e)
	}
	allocs := testing.AllocsPerRun(3, func() {
		for range 100_000 {
			q.push(e)
			q.popFront()
		}
	})
	assert.Zero(t, allocs)
	assert.Equal(t, 1000, q.len())
}
