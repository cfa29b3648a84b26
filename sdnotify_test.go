package main

import (
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// listenNotify is the service manager's end of NOTIFY_SOCKET.
func listenNotify(t *testing.T, name string) *net.UnixConn {
	t.Helper()
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	t.Setenv("NOTIFY_SOCKET", name)
	return conn
}

func readNotify(t *testing.T, conn *net.UnixConn) string {
	t.Helper()
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(5*time.Second)))
	buf := make([]byte, 4096)
	n, err := conn.Read(buf)
	require.NoError(t, err, "no datagram on NOTIFY_SOCKET")
	return string(buf[:n])
}

func TestNotifySystemdSendsOneDatagramToNotifySocket(t *testing.T) {
	// A short path: sun_path holds 108 bytes, and t.TempDir's are long.
	dir, err := os.MkdirTemp("", "sd")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	conn := listenNotify(t, filepath.Join(dir, "notify"))
	require.NoError(t, notifySystemd("READY=1"))
	assert.Equal(t, "READY=1", readNotify(t, conn))
}

func TestNotifySystemdReachesAnAbstractSocket(t *testing.T) {
	conn := listenNotify(t, "@pgpilot-test-"+strings.ReplaceAll(t.Name(), "/", "-"))
	require.NoError(t, notifySystemd("STOPPING=1"))
	assert.Equal(t, "STOPPING=1", readNotify(t, conn))
}

func TestNotifySystemdWithoutNotifySocketDoesNothing(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	assert.NoError(t, notifySystemd("READY=1"))
}

func TestNotifySystemdSaysWhyItCannot(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", filepath.Join(t.TempDir(), "nobody-listens"))
	err := notifySystemd("READY=1")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "NOTIFY_SOCKET=")
}

func TestRunTellsSystemdItStartedThenThatItStops(t *testing.T) {
	conn := listenNotify(t, "@pgpilot-test-"+t.Name())
	ctx, cancel := context.WithCancel(context.Background())
	done := notifyStartAndStop(ctx, slog.New(slog.DiscardHandler))
	assert.True(t, strings.HasPrefix(readNotify(t, conn), "READY=1\n"))
	cancel() // SIGTERM
	assert.True(t, strings.HasPrefix(readNotify(t, conn), "STOPPING=1\n"))
	done()

	// Stopped for another reason (a failure): no STOPPING=1 after done.
	ctx, cancel = context.WithCancel(context.Background())
	done = notifyStartAndStop(ctx, slog.New(slog.DiscardHandler))
	assert.True(t, strings.HasPrefix(readNotify(t, conn), "READY=1\n"))
	done()
	cancel()
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(200*time.Millisecond)))
	_, err := conn.Read(make([]byte, 64))
	assert.Error(t, err, "nothing more once run has ended")
}
