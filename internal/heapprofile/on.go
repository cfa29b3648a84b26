//go:build heapprofile

package heapprofile

import (
	"fmt"
	"os"
	"runtime"
	"runtime/metrics"
	"runtime/pprof"
	"time"
)

func init() {
	prefix := os.Getenv(EnvVar)
	if prefix == "" {
		return
	}
	// A sample every 64 kB, not 512: the parts of a peak are a few MB
	// each, and at the default rate a part of 1 MB showed as 0 or 2.
	runtime.MemProfileRate = 64 << 10
	go func() {
		s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}, {Name: "/gc/cycles/total:gc-cycles"}}
		var peak, after uint64
		var last int
		for n := 1; ; time.Sleep(5 * time.Millisecond) {
			metrics.Read(s)
			cycles := s[1].Value.Uint64()
			if after != 0 && cycles > after {
				// A heap profile lags a collection behind: the one written
				// at the peak shows the heap of the collection before it,
				// which a peak of a cycle or two is not in. This one, after
				// the next collection, shows the peak's.
				write(fmt.Sprintf("%s-%d-next.pprof", prefix, last))
				after = 0
			}
			// A tenth above the last peak: each profile is one the heap
			// grew for, not one per collection.
			if v := s[0].Value.Uint64(); v > peak+peak/10 && v > 4<<20 {
				peak = v
				write(fmt.Sprintf("%s-%d.pprof", prefix, n))
				after, last = cycles, n
				n++
			}
		}
	}()
}

func write(path string) {
	if f, err := os.Create(path); err == nil {
		_ = pprof.WriteHeapProfile(f)
		f.Close()
	}
}
