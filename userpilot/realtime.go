package userpilot

import (
	"math"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// The real-time path's rate is measured too. rate_limit is the ceiling,
// what the operator's plan allows; Userpilot may allow less (another
// program on the same key, a smaller plan, its own load). Each 429 on a
// real-time call halves the rate (once per round: a 429 of a request sent
// before the last decrease says nothing new), and while calls succeed it
// climbs back toward rate_limit: additive increase, multiplicative
// decrease (AIMD), as TCP finds a link's capacity. The climb is 5% of the
// rate at which the last 429 came, per second, so it returns to that rate
// within about 10 s and probes past it slowly: one 429 per such round
// against a fixed lower limit, a small fraction of the calls.

const (
	// decreaseFactor is what a 429 leaves of the rate.
	decreaseFactor = 0.5
	// increaseShare of the rate at the last 429 is added per second of
	// successes.
	increaseShare = 0.05
	// minIncrease is the least added per second (requests/s).
	minIncrease = 0.5
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
}

func newAIMD(ceiling float64, now time.Time) *aimd {
	return &aimd{ceiling: ceiling, floor: max(0.1, ceiling/1000), limit: ceiling, level: ceiling, raisedAt: now}
}

func (a *aimd) current() float64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.limit
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
	a.limit = max(a.floor, a.limit*decreaseFactor)
	a.decreasedAt, a.raisedAt = now, now
	return a.limit, true
}

// raise takes a success at now: the rate climbs by the time since the
// last one (at most a second of it: an idle spell is not evidence).
func (a *aimd) raise(now time.Time) (float64, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
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
func (c *Client) setLimit(l float64) {
	now := time.Now()
	c.limiter.SetLimitAt(now, rate.Limit(l))
	c.limiter.SetBurstAt(now, burstFor(l))
}

// burstFor is the limiter's bucket for a rate: a quarter second's budget,
// not a whole second's: requests leave evenly, so jitter on the way cannot
// bunch them into more than Userpilot's bucket holds.
func burstFor(l float64) int { return max(1, int(l/4)) }

func roundRate(l float64) float64 { return math.Round(l*100) / 100 }
