//go:build heapprofile

package heapprofile

import (
	"fmt"
	"os"
	"runtime/metrics"
	"runtime/pprof"
	"time"
)

func init() {
	prefix := os.Getenv(EnvVar)
	if prefix == "" {
		return
	}
	go func() {
		live := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
		var peak uint64
		for n := 1; ; time.Sleep(20 * time.Millisecond) {
			metrics.Read(live)
			// A tenth above the last peak: each profile is one the heap
			// grew for, not one per collection.
			if v := live[0].Value.Uint64(); v > peak+peak/10 && v > 4<<20 {
				peak = v
				// The profile is the heap as of the last collection: the
				// live heap just read.
				if f, err := os.Create(fmt.Sprintf("%s-%d.pprof", prefix, n)); err == nil {
					_ = pprof.WriteHeapProfile(f)
					f.Close()
					n++
				}
			}
		}
	}()
}
