package userpilot

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

func TestA429HalvesTheRealtimeRateOncePerRound(t *testing.T) {
	at := time.Unix(0, 0)
	a := newAIMD(100, at)
	assert.Equal(t, 100.0, a.current(), "it starts at rate_limit")

	sent := at.Add(time.Second)
	l, ok := a.decrease(sent, at.Add(1100*time.Millisecond))
	assert.True(t, ok)
	assert.Equal(t, 50.0, l, "nothing accepted in the last second: halved")
	// Requests sent before that decrease were sent at the old rate: their
	// 429s say nothing new.
	_, ok = a.decrease(sent.Add(50*time.Millisecond), at.Add(1200*time.Millisecond))
	assert.False(t, ok)
	assert.Equal(t, 50.0, a.current())
	// One sent after it was still too fast.
	l, ok = a.decrease(at.Add(1300*time.Millisecond), at.Add(1400*time.Millisecond))
	assert.True(t, ok)
	assert.Equal(t, 25.0, l)
}

func TestA429SetsTheRealtimeRateToWhatUserpilotAccepted(t *testing.T) {
	at := time.Unix(0, 0)
	a := newAIMD(1000, at)
	for i := range 300 { // 300 accepted in the last second
		a.raise(at.Add(time.Duration(i) * 3 * time.Millisecond))
	}
	now := at.Add(950 * time.Millisecond)
	l, _ := a.decrease(now, now)
	assert.InDelta(t, 500, l, 1e-9, "at most halved")
	l, _ = a.decrease(now.Add(time.Millisecond), now.Add(time.Millisecond))
	assert.InDelta(t, 270, l, 1e-9, "90% of the 300 Userpilot accepted")
	l, _ = a.decrease(now.Add(2*time.Millisecond), now.Add(2*time.Millisecond))
	assert.InDelta(t, 243, l, 1e-9, "at least a tenth off")
}

func TestTheRealtimeRateClimbsBackToRateLimitWhileCallsSucceed(t *testing.T) {
	at := time.Unix(0, 0)
	a := newAIMD(100, at)
	a.decrease(at, at) // at 100/s, nothing accepted: level 100, now 50
	// Successes every 10 ms: 5% of 100 per second, so back in 10 s.
	now := at
	for range 500 {
		now = now.Add(10 * time.Millisecond)
		a.raise(now)
	}
	assert.InDelta(t, 75, a.current(), 1, "halfway after 5 s")
	for range 1000 {
		now = now.Add(10 * time.Millisecond)
		a.raise(now)
	}
	assert.Equal(t, 100.0, a.current(), "never above rate_limit")

	// An idle spell is not evidence: one success after a minute adds at
	// most a second's worth.
	a.decrease(now, now)
	before := a.current()
	a.raise(now.Add(time.Minute))
	assert.InDelta(t, before+5, a.current(), 1e-9)
}

func TestTheRealtimeRateNeverStops(t *testing.T) {
	at := time.Unix(0, 0)
	a := newAIMD(10, at)
	for i := range 100 {
		a.decrease(at.Add(time.Duration(i)*time.Second), at.Add(time.Duration(i)*time.Second))
	}
	assert.Equal(t, 0.1, a.current(), "a 429 storm slows delivery to its floor, never to nothing")
}
