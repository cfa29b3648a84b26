package daemon

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/pgpilot/pgpilot/state"
)

func TestSnapshotETAFollowsDeliveryNotReading(t *testing.T) {
	job := state.Snapshot{ID: "initial", Rows: 1000, Total: 10_000}
	tests := []struct {
		name           string
		rate, capacity float64
		want           time.Duration
		known          bool
	}{
		// 9,000 rows left.
		{"delivered rate known", 300, 30, 30 * time.Second, true},
		{"before any delivery: Userpilot's configured limits", 0, 30, 300 * time.Second, true},
		{"nothing to go on", 0, 0, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Reading has raced ahead to 9,000: it does not shorten the ETA.
			p := progressOf(job, 9000, tt.rate, tt.capacity)
			assert.Equal(t, tt.known, p.known)
			assert.Equal(t, tt.want, p.remaining)
		})
	}
	bar := progressOf(job, 9000, 300, 30).bar()
	assert.True(t, strings.Contains(bar, "10%") && strings.Contains(bar, "1000/10000 rows") && strings.Contains(bar, "ETA 30s"), bar)
	unknown := progressOf(state.Snapshot{ID: "resync-1", Rows: 5, Total: -1}, 5, 0, 30).bar()
	assert.Contains(t, unknown, "5/? rows")
	assert.Contains(t, unknown, "ETA ?")
}
