package delivery

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

// An entry's times, kept as moments, come back as the times they were:
// the zero time as the zero time (a state never sent), a time read from
// disk (no monotonic reading) at its wall clock, and in their order.
func TestAMomentIsTheTimeItWasMadeOf(t *testing.T) {
	now := time.Now()
	tests := []struct {
		name string
		t    time.Time
	}{
		{"zero: never sent", time.Time{}},
		{"now", now},
		{"from disk, without a monotonic reading", now.Add(-time.Hour).Round(0)},
		{"long before the process", time.Date(2020, 1, 2, 3, 4, 5, 6, time.UTC)},
	}
	for _, tt := range tests {
		got := momentOf(tt.t).time()
		assert.True(t, got.Equal(tt.t), "%s: %v, want %v", tt.name, got, tt.t)
		assert.Equal(t, tt.t.IsZero(), got.IsZero(), tt.name)
	}
	earlier, later := momentOf(now), momentOf(now.Add(time.Nanosecond))
	assert.True(t, later.time().After(earlier.time()), "a nanosecond apart, in order")
}
