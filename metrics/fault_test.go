package metrics

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestFaultFailsReadinessAndSetsItsGaugeUntilCleared: a fault makes /readyz
// answer 503 with its reason, whatever else holds, and its gauge 1; once
// cleared, readiness is what it was. The known kinds are exported at 0
// before any is set, so an alert has a series to watch.
func TestFaultFailsReadinessAndSetsItsGaugeUntilCleared(t *testing.T) {
	m, _ := newTestMetrics(t, Options{})
	for _, kind := range []string{FaultPublicationMissing, FaultStateDirUnwritable} {
		assert.Equal(t, 0.0, must(t, m, "pgpilot_fault", "kind", kind), "%s exported at 0 from the start", kind)
	}
	m.SessionStarted()
	m.Streaming()
	ready, _ := m.Ready()
	require.True(t, ready)

	m.SetFault(FaultPublicationMissing, "publication \"pgpilot\" was dropped;\ncreate it again")
	m.SetFault("stalled", "nothing moved for 10m")
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	code, body := get(t, srv.URL+"/readyz")
	assert.Equal(t, http.StatusServiceUnavailable, code)
	assert.Equal(t, "fault: publication_missing: publication \"pgpilot\" was dropped; create it again; stalled: nothing moved for 10m\n", body,
		"every fault, in kind order, on one line")
	assert.Equal(t, 1.0, must(t, m, "pgpilot_fault", "kind", FaultPublicationMissing))
	assert.Equal(t, 1.0, must(t, m, "pgpilot_fault", "kind", "stalled"), "a kind the caller names is exported too")
	assert.Equal(t, 0.0, must(t, m, "pgpilot_fault", "kind", FaultStateDirUnwritable))
	assert.Equal(t, 0.0, must(t, m, "pgpilot_ready"))
	reason, set := m.Fault(FaultPublicationMissing)
	assert.True(t, set)
	assert.Contains(t, reason, "create it again")

	m.ClearFault(FaultPublicationMissing)
	m.ClearFault("stalled")
	m.ClearFault("never set")
	code, body = get(t, srv.URL+"/readyz")
	assert.Equal(t, http.StatusOK, code, body)
	assert.Equal(t, 0.0, must(t, m, "pgpilot_fault", "kind", "stalled"), "a cleared kind stays exported, at 0, so its alert resolves")
	assert.Equal(t, 1.0, must(t, m, "pgpilot_ready"))

	var none *Metrics // nil-safe, as every report
	none.SetFault("x", "y")
	none.ClearFault("x")
}
