//go:build failpoints

package failpoint

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// Enabled reports whether this binary was built with failpoints.
const Enabled = true

type spec struct {
	point, subject string
	n              int64
	freeze         bool
}

var (
	armed spec
	mu    sync.Mutex
	hits  int64
)

func init() {
	v := os.Getenv(EnvVar)
	if v == "" {
		return
	}
	s, err := parse(v)
	if err != nil {
		// A test that meant to kill must not pass because nothing fired.
		fmt.Fprintf(os.Stderr, "%s=%q: %v\n", EnvVar, v, err)
		os.Exit(3)
	}
	armed = s
}

func parse(v string) (spec, error) {
	s := spec{n: 1}
	if rest, ok := strings.CutPrefix(v, freezePrefix); ok {
		s.freeze, v = true, rest
	}
	if i := strings.LastIndexByte(v, ':'); i >= 0 {
		n, err := strconv.ParseInt(v[i+1:], 10, 64)
		if err != nil || n < 1 {
			return spec{}, fmt.Errorf("count %q is not a positive integer", v[i+1:])
		}
		s.n, v = n, v[:i]
	}
	s.point, s.subject, _ = strings.Cut(v, "@")
	switch s.point {
	case IdentifyAccepted, CheckpointBeforeWrite, AtomicAfterRename:
	default:
		return spec{}, fmt.Errorf("unknown failpoint %q", s.point)
	}
	return s, nil
}

// Hit kills the process with SIGKILL (or, for a freeze/ point, blocks the
// calling goroutine for good) if it is the armed point's nth hit.
func Hit(point, subject string) {
	if armed.point != point || (armed.subject != "" && armed.subject != subject) {
		return
	}
	mu.Lock()
	// Held until the kill: no other goroutine gets past its own point.
	hits++
	if hits < armed.n {
		mu.Unlock()
		return
	}
	if armed.freeze {
		mu.Unlock()
		fmt.Fprintf(os.Stderr, "%s %s (%s), hit %d: this goroutine blocks for good\n", FreezeMarker, point, subject, hits)
		select {}
	}
	fmt.Fprintf(os.Stderr, "%s %s (%s), hit %d: SIGKILL\n", Marker, point, subject, hits)
	syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {} // the signal is on its way
}
