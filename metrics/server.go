package metrics

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// sampleEvery is how often the server samples the counters that date the
// last delivery and the start of a Userpilot failure.
const sampleEvery = time.Second

// Handler serves /metrics (Prometheus text or protobuf, from m's own
// registry), /healthz (200 while the process runs: liveness), /readyz
// (200 when ready, else 503, each with a one-line reason) and
// /why/{company} (where a company stands, as JSON: see SetWhy).
func (m *Metrics) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		ErrorLog: slogPrinter{m}, ErrorHandling: promhttp.ContinueOnError,
	}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /why/{company}", m.serveWhy)
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		ready, reason := m.Ready()
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if !ready {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		fmt.Fprintln(w, reason)
	})
	return mux
}

// slogPrinter hands promhttp's errors to the logger.
type slogPrinter struct{ m *Metrics }

func (p slogPrinter) Println(v ...any) {
	p.m.log.Warn("serving /metrics", "error", fmt.Sprint(v...))
}

// Server is m's HTTP server. Listen starts it; Close stops it.
type Server struct {
	srv  *http.Server
	ln   net.Listener
	stop context.CancelFunc
	wg   sync.WaitGroup
}

// Listen binds addr (host:port) and serves m's Handler there until Close.
// Binding happens before it returns, so a port in use is an error here,
// not a log line later.
func Listen(addr string, m *Metrics) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("serve metrics and health checks on http.listen %s: %w", addr, err)
	}
	ctx, stop := context.WithCancel(context.Background())
	s := &Server{ln: ln, stop: stop, srv: &http.Server{
		Handler:           m.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
	}}
	s.wg.Go(func() {
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			m.log.Error("the metrics and health check server stopped", "listen", addr, "error", err)
		}
	})
	s.wg.Go(func() {
		t := time.NewTicker(sampleEvery)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				m.Sample()
			}
		}
	})
	m.log.Info("serving /metrics, /healthz and /readyz", "listen", ln.Addr().String())
	return s, nil
}

// Addr is the address the server listens on.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Close stops the server, giving requests in progress a few seconds to
// finish, and waits for its goroutines.
func (s *Server) Close() error {
	s.stop()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	if err != nil {
		s.srv.Close() // requests still running: cut them off
	}
	s.wg.Wait()
	return err
}
