package replication

import (
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

// scriptedConn answers each Read with the next of its lengths (bytes the
// socket holds), recording the reads.
type scriptedConn struct {
	net.Conn
	holds []int
	log   *[]string
}

func (c *scriptedConn) Read(p []byte) (int, error) {
	n := min(c.holds[0], len(p))
	c.holds = c.holds[1:]
	*c.log = append(*c.log, "read")
	return n, nil
}

// While the stream runs, a read that drained the socket is followed by a
// wait before the next read, so that what comes meanwhile is read in one
// go; a read that filled its room is not (the walsender is ahead: no
// time to lose), and outside the stream (the handshake, the slot's
// commands) nothing waits.
func TestReadsLingerAfterDrainingTheSocketWhileTheStreamRuns(t *testing.T) {
	var log []string
	c := newLingerConn(&scriptedConn{holds: []int{10, 10, 100, 100, 10, 10, 10}, log: &log})
	c.wait = func(d time.Duration) { log = append(log, "wait "+d.String()) }
	buf := make([]byte, 64)
	read := func() {
		_, err := c.Read(buf)
		assert.NoError(t, err)
	}
	read() // before the stream: a drained read
	read()
	off := linger(c)
	read() // full
	read() // full
	read() // drained
	read()
	off()
	read()
	assert.Equal(t, []string{"read", "read", "read", "read", "read", "wait 1ms", "read", "read"}, log)
}
