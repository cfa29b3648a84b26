// Package faultproxy is a TCP proxy for tests that puts network faults
// between pgpilot and Postgres: a black hole (nothing is forwarded in either
// direction, and nothing is closed, as in a network partition), a heal, a
// silent death of the connections already open (a NAT or firewall that forgot
// them: the peer is never told), and an abrupt reset.
//
// It listens on 127.0.0.1:0; point the client at Addr instead of the server.
package faultproxy

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Proxy forwards every connection accepted on its listener to one target.
// Its methods are safe for concurrent use.
type Proxy struct {
	target string
	ln     net.Listener

	mu     sync.Mutex
	open   chan struct{} // closed while traffic flows; replaced by BlackHole
	closed bool
	conns  map[*link]struct{}

	accepted atomic.Int64
	wg       sync.WaitGroup
	done     chan struct{}
}

// link is one proxied connection: the client's side and the target's side.
type link struct {
	client net.Conn
	mu     sync.Mutex
	server net.Conn // nil until dialled
	// severed links never forward again and never close on their own: the
	// peers must find out by themselves that the other end is gone.
	severed atomic.Bool
	dead    chan struct{} // closed by Sever, so blocked pumps give up waiting
}

// Start listens on 127.0.0.1:0 and forwards to target (host:port).
func Start(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("faultproxy: listen on 127.0.0.1: %w", err)
	}
	open := make(chan struct{})
	close(open)
	p := &Proxy{target: target, ln: ln, open: open, conns: map[*link]struct{}{}, done: make(chan struct{})}
	p.wg.Add(1)
	go p.acceptLoop()
	return p, nil
}

// Addr is the proxy's host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Port is the proxy's port.
func (p *Proxy) Port() int { return p.ln.Addr().(*net.TCPAddr).Port }

// Accepted counts the connections accepted so far.
func (p *Proxy) Accepted() int { return int(p.accepted.Load()) }

// BlackHole stops forwarding, in both directions, on every connection, open
// or new, without closing any: bytes wait (in the proxy and the kernels'
// buffers) as they would behind a partition while TCP retransmits. New
// connections are accepted but the target is not dialled until Heal.
func (p *Proxy) BlackHole() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.open:
		p.open = make(chan struct{})
	default: // already black-holed
	}
}

// Heal resumes forwarding on every connection that was not severed; what
// waited is delivered, in order.
func (p *Proxy) Heal() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.open:
	default:
		close(p.open)
	}
}

// Sever makes every connection open now go silent forever: nothing more is
// forwarded on it in either direction and it is not closed (until Close), so
// neither end is told. New connections are not affected. This is what a
// stateful firewall or NAT that dropped its state does to a long-lived TCP
// connection.
func (p *Proxy) Sever() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for l := range p.conns {
		if !l.severed.Swap(true) {
			close(l.dead)
		}
	}
}

// Reset closes every open connection at once on both sides, with a TCP RST
// where possible, as a crashed middlebox would.
func (p *Proxy) Reset() {
	p.mu.Lock()
	links := make([]*link, 0, len(p.conns))
	for l := range p.conns {
		links = append(links, l)
	}
	p.mu.Unlock()
	for _, l := range links {
		l.close(true)
	}
}

// Close stops listening, closes every connection and waits for the proxy's
// goroutines to end.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	close(p.done)
	links := make([]*link, 0, len(p.conns))
	for l := range p.conns {
		links = append(links, l)
	}
	p.mu.Unlock()
	err := p.ln.Close()
	for _, l := range links {
		l.close(false)
	}
	p.wg.Wait()
	return err
}

func (p *Proxy) acceptLoop() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// A transient accept error (EMFILE…): back off a little.
			select {
			case <-p.done:
				return
			case <-time.After(10 * time.Millisecond):
			}
			continue
		}
		p.accepted.Add(1)
		l := &link{client: c, dead: make(chan struct{})}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			c.Close()
			return
		}
		p.conns[l] = struct{}{}
		p.mu.Unlock()
		p.wg.Add(1)
		go p.serve(l)
	}
}

// gate blocks until l may forward: the proxy is healed, and l is not
// severed. It returns false when l must stop for good.
func (p *Proxy) gate(l *link) bool {
	for {
		p.mu.Lock()
		open := p.open
		p.mu.Unlock()
		select {
		case <-open:
			if l.severed.Load() {
				<-p.done // silent until the proxy closes
				return false
			}
			p.mu.Lock()
			still := p.open == open // not black-holed again meanwhile
			p.mu.Unlock()
			if still {
				return true
			}
		case <-l.dead:
			<-p.done
			return false
		case <-p.done:
			return false
		}
	}
}

func (p *Proxy) serve(l *link) {
	defer p.wg.Done()
	defer func() {
		p.mu.Lock()
		delete(p.conns, l)
		p.mu.Unlock()
	}()
	// Dial only once traffic may flow: behind a partition the server never
	// hears of the new connection.
	if !p.gate(l) {
		l.close(false)
		return
	}
	server, err := net.DialTimeout("tcp", p.target, 10*time.Second)
	if err != nil {
		l.close(true) // like a refused connection: the client hears at once
		return
	}
	l.mu.Lock()
	l.server = server
	l.mu.Unlock()
	if p.isClosed() {
		l.close(false)
		return
	}
	var pumps sync.WaitGroup
	pumps.Add(2)
	go func() { defer pumps.Done(); p.pump(l, server, l.client) }()
	go func() { defer pumps.Done(); p.pump(l, l.client, server) }()
	pumps.Wait()
}

func (p *Proxy) isClosed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.closed
}

// pump copies src to dst, passing the gate before each write. When src ends
// (EOF or error) the whole link is closed, unless it is severed: then the
// other end is never told.
func (p *Proxy) pump(l *link, dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			if !p.gate(l) {
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				l.close(false)
				return
			}
		}
		if rerr != nil {
			// An end seen behind a black hole is passed on only once healed,
			// and never for a severed link.
			if !p.gate(l) {
				return
			}
			l.close(false)
			return
		}
	}
}

// close closes both sides; with rst, a TCP RST is sent instead of a FIN.
func (l *link) close(rst bool) {
	l.mu.Lock()
	server := l.server
	l.mu.Unlock()
	for _, c := range []net.Conn{l.client, server} {
		if c == nil {
			continue
		}
		if tc, ok := c.(*net.TCPConn); ok && rst {
			_ = tc.SetLinger(0)
		}
		_ = c.Close()
	}
}
