package userpilot

import (
	"math"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// The real-time path's rate is measured too. rate_limit is the ceiling,
// what the operator's plan allows; Userpilot may allow less (another
// program on the same key, a smaller plan, its own load). A 429 on a
// real-time call lowers the rate, once per round (a 429 of a request sent
// before the last decrease says nothing new): to 90% of what Userpilot
// accepted over the last second, but by at least a tenth and at most a
// half. While calls succeed it climbs back toward rate_limit by 5% of the
// rate at which the last 429 came, per second: additive increase,
// multiplicative decrease (AIMD), as TCP finds a link's capacity. Against
// a fixed lower limit that is one round of 429s every several seconds, a
// small share of the calls.

const (
	// maxDecrease and minDecrease are the most and the least a 429 takes
	// off the rate (as what is left of it).
	maxDecrease, minDecrease = 0.5, 0.9
	// acceptedShare of what Userpilot accepted over the last second is
	// where a 429 sets the rate, within those bounds.
	acceptedShare = 0.9
	// increaseShare of the rate at the last 429 is added per second of
	// successes.
	increaseShare = 0.05
	// minIncrease is the least added per second (requests/s).
	minIncrease = 0.5
	// acceptedSlots of acceptedSlot each make the last second's window.
	acceptedSlots = 10
	acceptedSlot  = 100 * time.Millisecond
)

// aimd is the real-time rate in force. It is safe for concurrent use.
type aimd struct {
	mu          sync.Mutex
	ceiling     float64 // rate_limit
	floor       float64 // never below: a 429 storm must not stop delivery
	limit       float64
	level       float64   // the rate when the last 429 came
	decreasedAt time.Time // requests sent before it were sent at a higher rate
	raisedAt    time.Time
	// accepted counts the successes of the last second, per slot (the
	// slot of a time is its UnixNano / acceptedSlot, mod acceptedSlots).
	accepted [acceptedSlots]int
	slotOf   [acceptedSlots]int64
}

func newAIMD(ceiling float64, now time.Time) *aimd {
	return &aimd{ceiling: ceiling, floor: max(0.1, ceiling/1000), limit: ceiling, level: ceiling, raisedAt: now}
}

func (a *aimd) current() float64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.limit
}

// acceptedLastSecond counts the successes of the second before now.
func (a *aimd) acceptedLastSecond(now time.Time) int {
	cur := now.UnixNano() / int64(acceptedSlot)
	n := 0
	for i, s := range a.slotOf {
		if cur-s < acceptedSlots {
			n += a.accepted[i]
		}
	}
	return n
}

// decrease takes a 429 of a request sent at sent. It returns the new rate
// and true when the rate changed.
func (a *aimd) decrease(sent, now time.Time) (float64, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if sent.Before(a.decreasedAt) || a.limit <= a.floor {
		return a.limit, false
	}
	a.level = a.limit
	target := acceptedShare * float64(a.acceptedLastSecond(now))
	a.limit = max(a.floor, min(minDecrease*a.limit, max(maxDecrease*a.limit, target)))
	a.decreasedAt, a.raisedAt = now, now
	return a.limit, true
}

// raise takes a success at now: the rate climbs by the time since the
// last one (at most a second of it: an idle spell is not evidence).
func (a *aimd) raise(now time.Time) (float64, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	slot := now.UnixNano() / int64(acceptedSlot)
	if i := slot % acceptedSlots; a.slotOf[i] != slot {
		a.slotOf[i], a.accepted[i] = slot, 1
	} else {
		a.accepted[i]++
	}
	if a.limit >= a.ceiling {
		a.raisedAt = now
		return a.limit, false
	}
	dt := min(now.Sub(a.raisedAt), time.Second)
	if dt <= 0 {
		return a.limit, false
	}
	a.raisedAt = now
	step := max(minIncrease, increaseShare*a.level) * dt.Seconds()
	old := a.limit
	a.limit = min(a.ceiling, a.limit+step)
	// Only a change worth the limiter's lock is passed on.
	return a.limit, a.limit == a.ceiling || a.limit-old >= 0.001*old || math.Floor(a.limit) != math.Floor(old)
}

// setLimit applies a new real-time rate to the limiter.
func (c *Client) setLimit(l float64, lowered bool) {
	now := time.Now()
	c.limiter.SetLimitAt(now, rate.Limit(l))
	c.limiter.SetBurstAt(now, burstFor(l))
	if lowered {
		// Tokens saved up at the old rate would go out in one burst into
		// a budget Userpilot has just said is spent.
		if n := int(c.limiter.TokensAt(now)); n > 0 {
			c.limiter.AllowN(now, n)
		}
	}
}

// burstFor is the limiter's bucket for a rate: a quarter second's budget,
// not a whole second's: requests leave evenly, so jitter on the way cannot
// bunch them into more than Userpilot's bucket holds.
func burstFor(l float64) int { return max(1, int(l/4)) }

func roundRate(l float64) float64 { return math.Round(l*100) / 100 }
