package userpilot

import (
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

func TestParseRetryAfterReadsSecondsAndDatesCapped(t *testing.T) {
	now := time.Date(2025, 3, 1, 9, 30, 0, 0, time.UTC)
	tests := []struct {
		header string
		want   time.Duration
		ok     bool
	}{
		{"", 0, false},
		{"soon", 0, false},
		{"-3", 0, false},
		{"0", 0, true},
		{"7", 7 * time.Second, true},
		{" 7 ", 7 * time.Second, true},
		{"86400", maxRetryAfter, true},
		{"99999999999999999", maxRetryAfter, true},
		{now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second, true},
		{now.Add(-time.Minute).Format(http.TimeFormat), 0, true},
		{now.Add(time.Hour).Format(http.TimeFormat), maxRetryAfter, true},
	}
	for _, tt := range tests {
		got, ok := parseRetryAfter(tt.header, now)
		assert.Equal(t, tt.ok, ok, tt.header)
		assert.Equal(t, tt.want, got, tt.header)
	}
}

func TestBackoffDoublesWithinCapAndJitterStaysInRange(t *testing.T) {
	base, limit := 500*time.Millisecond, 30*time.Second
	assert.Equal(t, 500*time.Millisecond, ceiling(1, base, limit))
	assert.Equal(t, time.Second, ceiling(2, base, limit))
	assert.Equal(t, 16*time.Second, ceiling(6, base, limit))
	assert.Equal(t, limit, ceiling(7, base, limit))
	assert.Equal(t, limit, ceiling(10_000, base, limit), "no overflow however long it retries")
	for attempt := 1; attempt < 100; attempt++ {
		full := fullJitter(attempt, base, limit)
		assert.True(t, full >= 0 && full <= ceiling(attempt, base, limit))
		equal := equalJitter(attempt, time.Second, limit)
		assert.True(t, equal >= ceiling(attempt, time.Second, limit)/2 && equal <= ceiling(attempt, time.Second, limit))
	}
}
