package faultproxy_test

import (
	"bufio"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/internal/faultproxy"
)

// echoServer echoes every line back and records how many connections it saw
// and how many of them ended.
type echoServer struct {
	ln          net.Listener
	mu          sync.Mutex
	conns, ends int
}

func startEcho(t *testing.T) *echoServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	e := &echoServer{ln: ln}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			e.mu.Lock()
			e.conns++
			e.mu.Unlock()
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
				e.mu.Lock()
				e.ends++
				e.mu.Unlock()
			}()
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return e
}

func (e *echoServer) counts() (conns, ends int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.conns, e.ends
}

func startProxy(t *testing.T, target string) *faultproxy.Proxy {
	t.Helper()
	p, err := faultproxy.Start(target)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, p.Close()) })
	return p
}

type client struct {
	net.Conn
	r *bufio.Reader
}

func dial(t *testing.T, p *faultproxy.Proxy) *client {
	t.Helper()
	c, err := net.Dial("tcp", p.Addr())
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return &client{Conn: c, r: bufio.NewReader(c)}
}

// roundTrip sends line and reads its echo, giving up after wait.
func (c *client) roundTrip(line string, wait time.Duration) (string, error) {
	if _, err := c.Write([]byte(line + "\n")); err != nil {
		return "", err
	}
	return c.read(wait)
}

func (c *client) read(wait time.Duration) (string, error) {
	_ = c.SetReadDeadline(time.Now().Add(wait))
	s, err := c.r.ReadString('\n')
	return s, err
}

func isTimeout(err error) bool {
	return errors.Is(err, os.ErrDeadlineExceeded)
}

func TestProxyForwardsBothWays(t *testing.T) {
	t.Parallel()
	p := startProxy(t, startEcho(t).ln.Addr().String())
	c := dial(t, p)
	got, err := c.roundTrip("hello", 10*time.Second)
	require.NoError(t, err)
	assert.Equal(t, "hello\n", got)
	assert.Equal(t, 1, p.Accepted())
}

func TestBlackHoleHoldsTrafficWithoutClosingAndHealDeliversIt(t *testing.T) {
	t.Parallel()
	echo := startEcho(t)
	p := startProxy(t, echo.ln.Addr().String())
	c := dial(t, p)
	_, err := c.roundTrip("before", 10*time.Second)
	require.NoError(t, err)

	p.BlackHole()
	_, err = c.roundTrip("during", 300*time.Millisecond)
	require.True(t, isTimeout(err), "nothing comes back through a black hole, and nothing is closed: %v", err)
	late := dial(t, p) // a new connection is accepted, but the target never hears of it
	_, err = late.roundTrip("new", 300*time.Millisecond)
	require.True(t, isTimeout(err), "%v", err)
	conns, ends := echo.counts()
	assert.Equal(t, 1, conns, "the target is not dialled behind a black hole")
	assert.Equal(t, 0, ends)

	p.Heal()
	got, err := c.read(10 * time.Second)
	require.NoError(t, err)
	assert.Equal(t, "during\n", got, "what waited is delivered, in order")
	got, err = late.read(10 * time.Second)
	require.NoError(t, err)
	assert.Equal(t, "new\n", got)
	got, err = c.roundTrip("after", 10*time.Second)
	require.NoError(t, err)
	assert.Equal(t, "after\n", got)
}

func TestSeverSilencesOpenConnectionsForeverButNotNewOnes(t *testing.T) {
	t.Parallel()
	echo := startEcho(t)
	p := startProxy(t, echo.ln.Addr().String())
	c := dial(t, p)
	_, err := c.roundTrip("before", 10*time.Second)
	require.NoError(t, err)

	p.Sever()
	_, err = c.roundTrip("lost", 300*time.Millisecond)
	require.True(t, isTimeout(err), "a severed connection answers nothing: %v", err)
	p.BlackHole()
	p.Heal() // healing the network does not bring a forgotten flow back
	_, err = c.read(300 * time.Millisecond)
	require.True(t, isTimeout(err), "neither data nor a close reaches the client: %v", err)

	fresh := dial(t, p)
	got, err := fresh.roundTrip("fresh", 10*time.Second)
	require.NoError(t, err)
	assert.Equal(t, "fresh\n", got)
}

func TestResetClosesOpenConnections(t *testing.T) {
	t.Parallel()
	p := startProxy(t, startEcho(t).ln.Addr().String())
	c := dial(t, p)
	_, err := c.roundTrip("before", 10*time.Second)
	require.NoError(t, err)
	p.Reset()
	_, err = c.read(10 * time.Second)
	require.Error(t, err)
	assert.False(t, isTimeout(err), "the client hears of the reset at once: %v", err)
}

func TestCloseEndsEveryConnectionEvenSeveredOnes(t *testing.T) {
	t.Parallel()
	echo := startEcho(t)
	p, err := faultproxy.Start(echo.ln.Addr().String())
	require.NoError(t, err)
	c := dial(t, p)
	_, err = c.roundTrip("x", 10*time.Second)
	require.NoError(t, err)
	p.Sever()
	held := dial(t, p)
	p.BlackHole() // held waits at the gate, before dialling
	_, _ = held.Write([]byte("waiting\n"))

	done := make(chan error, 1)
	go func() { done <- p.Close() }()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return")
	}
	_, err = c.read(10 * time.Second)
	assert.Error(t, err)
	_, err = held.read(10 * time.Second)
	assert.Error(t, err)
	require.NoError(t, p.Close(), "Close is idempotent")
}
