package metrics

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

// TestStandingByIsExposed: an alert tells a standby that waits too long
// (deploy/prometheus/alerts.yaml) from one that is not streaming.
func TestStandingByIsExposed(t *testing.T) {
	m, _ := newTestMetrics(t, Options{})
	assert.Zero(t, must(t, m, "pgpilot_standing_by"))
	m.StandingBy("4242")
	assert.Equal(t, 1.0, must(t, m, "pgpilot_standing_by"))
	assert.Zero(t, must(t, m, "pgpilot_streaming"))
	m.SessionStarted() // took the state directory over
	assert.Zero(t, must(t, m, "pgpilot_standing_by"))
}
