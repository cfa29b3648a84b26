package delivery

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/state"
)

// keptEstimates counts the estimate's writes.
type keptEstimates struct{ saved []state.BulkEstimate }

func (k *keptEstimates) BulkEstimate() (state.BulkEstimate, bool, error) {
	return state.BulkEstimate{}, false, nil
}
func (k *keptEstimates) SaveBulkEstimate(e state.BulkEstimate) error {
	k.saved = append(k.saved, e)
	return nil
}

// The estimate is written to the store when it is first measured, then at
// most every keepEstimateEvery while jobs go on (not at every job: that
// was a write with its fsyncs on the dispatcher's path), and when delivery
// stops.
func TestTheBulkEstimateIsKeptFirstThenNowAndThenAndAtTheEnd(t *testing.T) {
	k := &keptEstimates{}
	p := New(Options{Estimates: k})
	require.NoError(t, p.loadEstimate())
	job := func() jobObservation {
		at := time.Now()
		return jobObservation{records: 1000, submitted: at, answered: at.Add(time.Millisecond), running: at.Add(5 * time.Millisecond), ended: at.Add(10 * time.Millisecond)}
	}
	require.NoError(t, p.learnJob(job()))
	require.Len(t, k.saved, 1, "the first measurement is kept at once")
	for range 20 {
		require.NoError(t, p.learnJob(job()))
	}
	assert.Len(t, k.saved, 1, "not at every job")

	require.NoError(t, p.keepEstimate(time.Now().Add(keepEstimateEvery/2), false))
	assert.Len(t, k.saved, 1)
	require.NoError(t, p.keepEstimate(time.Now().Add(keepEstimateEvery), false))
	require.Len(t, k.saved, 2, "kept once keepEstimateEvery passed")
	assert.Equal(t, 21, k.saved[1].Jobs)
	require.NoError(t, p.keepEstimate(time.Now().Add(3*keepEstimateEvery), false))
	assert.Len(t, k.saved, 2, "nothing new to keep")

	require.NoError(t, p.learnJob(job()))
	require.NoError(t, p.keepEstimate(time.Now(), true))
	require.Len(t, k.saved, 3, "kept when delivery stops")
	assert.Equal(t, 22, k.saved[2].Jobs)
}
