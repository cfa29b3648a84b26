package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"syscall"
	"time"

	"github.com/pgpilot/pgpilot/internal/fix"
	"github.com/pgpilot/pgpilot/metrics"
)

// bindRetry is how often a standby tries http.listen again while the port
// is taken; bindGrace how long an instance that holds the state directory
// waits for it (the holder it took over from may still be closing it).
const (
	bindRetry = 250 * time.Millisecond
	bindGrace = 5 * time.Second
)

// httpServer is the metrics and health check server on http.listen. Two
// pgpilots on one node with one config (HA) ask for the same port: the one
// that gets it serves, and the other keeps trying while it stands by, so
// the port follows the active instance. A port that stays taken once this
// instance holds the state directory is someone else's: a configuration
// problem (see bound).
type httpServer struct {
	addr string
	stop context.CancelFunc
	done chan struct{} // closed once bound, or once trying stopped

	mu      sync.Mutex
	srv     *metrics.Server
	inUse   error // the bind error while the port is taken
	waiting bool
}

// serveHTTP binds addr and serves m there. When the port is in use it
// returns a server that keeps trying in the background (until bound or
// Close); any other failure is returned.
func serveHTTP(addr string, m *metrics.Metrics, log *slog.Logger) (*httpServer, error) {
	h := &httpServer{addr: addr, done: make(chan struct{}), stop: func() {}}
	srv, err := metrics.Listen(addr, m)
	if err == nil {
		h.srv = srv
		close(h.done)
		return h, nil
	}
	if !errors.Is(err, syscall.EADDRINUSE) {
		return nil, h.problem(err)
	}
	h.inUse, h.waiting = err, true
	ctx, stop := context.WithCancel(context.Background())
	h.stop = stop
	go func() {
		defer close(h.done)
		for {
			select {
			case <-ctx.Done():
				return
			case <-time.After(bindRetry):
			}
			srv, err := metrics.Listen(addr, m)
			h.mu.Lock()
			if err == nil {
				h.srv, h.waiting = srv, false
				h.mu.Unlock()
				log.Info("http.listen is free now: serving it", "listen", addr)
				return
			}
			h.inUse = err
			h.mu.Unlock()
			if !errors.Is(err, syscall.EADDRINUSE) {
				return
			}
		}
	}()
	return h, nil
}

// Waiting reports whether the port was still taken at the last try.
func (h *httpServer) Waiting() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.waiting
}

// bound waits (up to bindGrace, or ctx) for the server to be serving: the
// instance that holds the state directory is the one that must answer on
// http.listen. It returns a configuration error if the port stays taken.
func (h *httpServer) bound(ctx context.Context) error {
	select {
	case <-h.done:
	case <-ctx.Done():
		return nil // stopping anyway
	case <-time.After(bindGrace):
		h.stop()
		<-h.done
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.srv != nil {
		return nil
	}
	return h.problem(h.inUse)
}

func (h *httpServer) problem(err error) error {
	return fix.With(fmt.Errorf("%w: %w", ErrConfig, err),
		"choose a free port for http.listen, or remove it; two pgpilots on one node may share one http.listen "+
			"(the active one serves it) or take one each (http.listen: ${PGPILOT_LISTEN})")
}

// Close stops trying and stops the server.
func (h *httpServer) Close() error {
	h.stop()
	<-h.done
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.srv == nil {
		return nil
	}
	return h.srv.Close()
}
