package daemon

import (
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

// TestWhyRemembersTheNewestOfTheLastDeliveries: `why` answers with a
// company's newest delivery among the last recentSize, whatever path it
// took, and forgets one delivered before them.
func TestWhyRemembersTheNewestOfTheLastDeliveries(t *testing.T) {
	var r recentDeliveries
	_, ok := r.get("1")
	assert.False(t, ok, "nothing delivered yet")
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	r.add("1", false, t0)
	r.add("2", true, t0.Add(time.Second))
	r.add("1", true, t0.Add(2*time.Second))
	d, ok := r.get("1")
	assert.True(t, ok)
	assert.Equal(t, Delivered{At: t0.Add(2 * time.Second), Path: "bulk"}, d, "the newest of its deliveries")
	d, _ = r.get("2")
	assert.Equal(t, Delivered{At: t0.Add(time.Second), Path: "bulk"}, d)
	// recentSize-1 deliveries of others: "1"'s last is still remembered,
	// "2"'s not.
	for i := range recentSize - 1 {
		r.add("x"+strconv.Itoa(i), false, t0.Add(3*time.Second))
	}
	d, ok = r.get("1")
	assert.True(t, ok)
	assert.Equal(t, "bulk", d.Path)
	_, ok = r.get("2")
	assert.False(t, ok, "delivered before the last recentSize")
	r.add("y", false, t0)
	_, ok = r.get("1")
	assert.False(t, ok, "delivered before the last recentSize")
	d, ok = r.get("x0")
	assert.True(t, ok)
	assert.Equal(t, Delivered{At: t0.Add(3 * time.Second), Path: "realtime"}, d)
}

// BenchmarkRecentDeliveriesBytes: what the ring `why` uses holds per
// delivery remembered, beside the ids (which the deliveries made).
func BenchmarkRecentDeliveriesBytes(b *testing.B) {
	ids := make([]string, 4*recentSize)
	for i := range ids {
		ids[i] = "u:" + strconv.Itoa(100000+i)
	}
	now := time.Now()
	var per float64
	for range b.N {
		var m0, m1 runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&m0)
		r := &recentDeliveries{}
		for i, id := range ids {
			r.add(id, i%2 == 0, now)
		}
		runtime.GC()
		runtime.ReadMemStats(&m1)
		per = float64(int64(m1.HeapAlloc)-int64(m0.HeapAlloc)) / recentSize
		runtime.KeepAlive(r)
	}
	b.ReportMetric(per, "bytes/slot")
}
