package daemon

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/delivery"
	"github.com/pgpilot/pgpilot/state"
)

// job is a bulk job's companies, as the index's write gets them.
type job []string

func (j job) Len() int                                         { return len(j) }
func (j job) CompanyID(i int) string                           { return j[i] }
func (j job) Metadata(int, func(string, json.RawMessage) bool) {}

// noIndex accepts every write.
type noIndex struct{ delivery.Index }

func (noIndex) RecordProfiles(state.Profiles) error { return nil }

// `why` remembers the last recentSize deliveries, the newest of a company
// first, and nothing older.
func TestTheDaemonRemembersItsLastDeliveries(t *testing.T) {
	var r recentDeliveries
	t0 := time.Unix(1000, 0)
	r.add("a", false, t0)
	r.add("b", true, t0.Add(time.Second))
	r.add("a", true, t0.Add(2*time.Second))
	d, ok := r.get("a")
	require.True(t, ok)
	assert.Equal(t, Delivered{At: t0.Add(2 * time.Second).UTC(), Path: "bulk"}, d, "the newest delivery of a company")
	d, _ = r.get("b")
	assert.Equal(t, "bulk", d.Path)
	_, ok = r.get("c")
	assert.False(t, ok, "never delivered")

	for i := range recentSize - 2 {
		r.add(fmt.Sprint("x", i), false, t0.Add(3*time.Second))
	}
	_, ok = r.get("b")
	assert.True(t, ok, "%d deliveries ago", recentSize-1)
	r.add("y", false, t0.Add(4*time.Second))
	_, ok = r.get("b")
	assert.False(t, ok, "%d deliveries ago: forgotten", recentSize)
	d, ok = r.get("a")
	require.True(t, ok)
	assert.Equal(t, "bulk", d.Path)

	// A job larger than the ring: its last companies are remembered.
	big := make(job, recentSize+10)
	for i := range big {
		big[i] = fmt.Sprint("j", i)
	}
	require.NoError(t, r.wrap(noIndex{}).RecordProfiles(big))
	_, ok = r.get("j9")
	assert.False(t, ok)
	for _, id := range []string{"j10", big[len(big)-1]} {
		d, ok = r.get(id)
		require.True(t, ok, id)
		assert.Equal(t, "bulk", d.Path)
	}
	_, ok = r.get("a")
	assert.False(t, ok)
}
