package replication

import (
	"net"
	"sync/atomic"
	"time"
)

// While the stream runs, its reads linger: after a read that found less
// than it had room for (the socket was drained: the walsender is the
// slower end), the next read waits a moment first, so that what the
// walsender sends meanwhile is read at once rather than a message or two
// at a time, each read followed by one that finds nothing, a wait in the
// poller and a wake-up. Draining changes with nothing done to them
// (BenchmarkStreamDecode) cost the stream 2.8–3.9 µs of CPU a change so,
// 1.1–1.3 µs lingering, and the walsender beside it went faster. The
// walsender does not wait meanwhile (the socket's buffer holds a
// millisecond of a catch-up several times over), and a change is delayed
// by at most the moment: what a sleep of the runtime's takes anyway when
// no other goroutine is running.
const lingerFor = time.Millisecond

// lingerConn is the replication connection's network connection, below
// pgconn (and above TLS): see lingerFor.
type lingerConn struct {
	net.Conn
	// on: the stream runs; drained: the last read found less than it
	// had room for. Atomic: pgconn reads on a goroutine of its own while
	// a write of the stream's is slow.
	on, drained atomic.Bool
	// wait waits d (time.Sleep; tests count instead).
	wait func(d time.Duration)
}

func newLingerConn(c net.Conn) *lingerConn {
	return &lingerConn{Conn: c, wait: time.Sleep}
}

func (c *lingerConn) Read(p []byte) (int, error) {
	if c.on.Load() && c.drained.Load() {
		c.wait(lingerFor)
	}
	n, err := c.Conn.Read(p)
	c.drained.Store(n < len(p))
	return n, err
}

// linger turns lingering on for conn's reads, if it lingers, and returns
// what turns it off again.
func linger(conn net.Conn) (off func()) {
	lc, ok := conn.(*lingerConn)
	if !ok {
		return func() {}
	}
	lc.drained.Store(false)
	lc.on.Store(true)
	return func() { lc.on.Store(false) }
}
