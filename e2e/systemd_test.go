package e2e

import (
	"context"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/internal/workload"
	"github.com/pgpilot/pgpilot/userpilot/userpilottest"
)

// TestRunTellsSystemdThatItStartedAndThatItStops plays systemd for a
// Type=notify unit (deploy/systemd/pgpilot.service): the binary sends
// READY=1 on NOTIFY_SOCKET once started, and STOPPING=1 when SIGTERM
// arrives, then drains and exits 0.
func TestRunTellsSystemdThatItStartedAndThatItStops(t *testing.T) {
	t.Parallel()
	socket := "@pgpilot-e2e-notify-" + t.Name()
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: socket, Net: "unixgram"})
	require.NoError(t, err)
	defer conn.Close()
	next := func() string {
		t.Helper()
		require.NoError(t, conn.SetReadDeadline(time.Now().Add(30*time.Second)))
		buf := make([]byte, 4096)
		n, err := conn.Read(buf)
		require.NoError(t, err, "nothing on NOTIFY_SOCKET")
		return string(buf[:n])
	}

	e := newEnv(t, userpilottest.Options{})
	require.NoError(t, workload.Seed(context.Background(), e.conn, 5))
	p := e.start(binary, []string{"NOTIFY_SOCKET=" + socket}, "run", "--config", e.cfgPath)
	assert.True(t, strings.HasPrefix(next(), "READY=1\n"))
	e.converge(60 * time.Second)

	require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
	assert.True(t, strings.HasPrefix(next(), "STOPPING=1\n"))
	assert.Equal(t, 0, p.wait(t, 60*time.Second))
}
