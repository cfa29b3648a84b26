package config

import (
	"fmt"
	"math"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/pgpilot/pgpilot/delivery"
	"github.com/pgpilot/pgpilot/liveness"
	"github.com/pgpilot/pgpilot/metrics"
	"github.com/pgpilot/pgpilot/snapshot"
	"github.com/pgpilot/pgpilot/state"
)

// The keys of the delivery:, http: and state: sections.
var (
	deliveryKeys = []string{"max_retained_wal", "outbox_after", "warn_retained_wal", "snapshot_chunk_rows", "stall_after"}
	httpKeys     = []string{"listen", "unready_after"}
	stateKeys    = []string{"dir"}
)

// delivery reads the outbox thresholds.
func (p *parser) delivery(s section) Delivery {
	d := defaultDelivery()
	if v, ok := p.value(s, "snapshot_chunk_rows"); ok {
		n, err := strconv.Atoi(strings.TrimSpace(v.text))
		if err != nil || n < 1 || n > 100_000 {
			p.fail(v.line, s.keyOf("snapshot_chunk_rows"), v.show()+" is not a row count from 1 to 100000", "write e.g. snapshot_chunk_rows: 5000")
		}
		d.SnapshotChunkRows = n
	}
	if v, ok := p.value(s, "max_retained_wal"); ok {
		n, err := parseBytes(v.text)
		if err != nil {
			p.fail(v.line, s.keyOf("max_retained_wal"), v.show()+" is not a size",
				"write e.g. max_retained_wal: 256MB (units B, kB, MB, GB, TB), or 0 to never switch for WAL")
		}
		d.MaxRetainedWAL = n
	}
	if v, ok := p.value(s, "outbox_after"); ok {
		dur, err := time.ParseDuration(strings.TrimSpace(v.text))
		if err != nil || dur <= 0 {
			p.fail(v.line, s.keyOf("outbox_after"), v.show()+" is not a positive duration", "write e.g. outbox_after: 5m")
		}
		d.OutboxAfter = dur
	}
	if v, ok := p.value(s, "stall_after"); ok {
		dur, err := time.ParseDuration(strings.TrimSpace(v.text))
		if err != nil || dur < 10*time.Second {
			p.fail(v.line, s.keyOf("stall_after"), v.show()+" is not a duration of 10s or more", "write e.g. stall_after: 1m")
		}
		d.StallAfter = dur
	}
	if v, ok := p.value(s, "warn_retained_wal"); ok {
		n, err := parseBytes(v.text)
		if err != nil {
			p.fail(v.line, s.keyOf("warn_retained_wal"), v.show()+" is not a size",
				"write e.g. warn_retained_wal: 1GB (units B, kB, MB, GB, TB), or 0 to never warn")
		}
		d.WarnRetainedWAL = n
	}
	return d
}

// http reads where metrics and health checks are served.
func (p *parser) http(s section) HTTP {
	h := defaultHTTP()
	if v, ok := p.value(s, "listen"); ok && v.text != "" {
		if msg := checkListen(v.text); msg != "" {
			p.fail(v.line, s.keyOf("listen"), v.show()+" "+msg, "write host:port, e.g. listen: 127.0.0.1:9187 (or :9187 for every interface)")
		}
		h.Listen = strings.TrimSpace(v.text)
	}
	if v, ok := p.value(s, "unready_after"); ok && v.text != "" {
		dur, err := time.ParseDuration(strings.TrimSpace(v.text))
		if err != nil || dur <= 0 {
			p.fail(v.line, s.keyOf("unready_after"), v.show()+" is not a positive duration", "write e.g. unready_after: 5m")
		}
		h.UnreadyAfter = dur
	}
	return h
}

// checkListen says what is wrong with a listen address, or "". Port 0
// (any free port) is refused: nobody could scrape a port nobody knows.
func checkListen(addr string) string {
	_, port, err := net.SplitHostPort(strings.TrimSpace(addr))
	if err != nil {
		return "is not host:port"
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return fmt.Sprintf("has the port %q, not a number from 1 to 65535", port)
	}
	return ""
}

// parseBytes reads a size the way postgresql.conf writes one: a number
// with an optional unit B, kB, MB, GB or TB (powers of 1024).
func parseBytes(s string) (int64, error) {
	s = strings.TrimSpace(s)
	units := []struct {
		suffix string
		mult   int64
	}{{"TB", 1 << 40}, {"GB", 1 << 30}, {"MB", 1 << 20}, {"kB", 1 << 10}, {"B", 1}}
	mult := int64(1)
	for _, u := range units {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSpace(strings.TrimSuffix(s, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 || n > math.MaxInt64/mult {
		return 0, fmt.Errorf("invalid size")
	}
	return n * mult, nil
}

func (p *parser) state(s section) State {
	v, ok := p.optional(s, "dir", state.DefaultDir)
	if !ok {
		return State{}
	}
	if strings.HasPrefix(v.text, "~") {
		p.fail(v.line, s.keyOf("dir"), v.show()+" starts with ~, which is not expanded", "write the full path, or ${HOME}/...")
	}
	return State{Dir: p.resolveDir(v.text)}
}

// resolveDir makes a relative state directory relative to the config file,
// so that `--config /etc/pgpilot.yaml` finds the same checkpoint whatever
// the working directory.
func (p *parser) resolveDir(dir string) string {
	if filepath.IsAbs(dir) {
		return filepath.Clean(dir)
	}
	return filepath.Join(filepath.Dir(p.file), dir)
}

// defaultDelivery is the delivery section when the file leaves keys out.
func defaultDelivery() Delivery {
	return Delivery{MaxRetainedWAL: delivery.DefaultMaxRetainedWAL, OutboxAfter: delivery.DefaultOutboxAfter,
		WarnRetainedWAL: metrics.DefaultWarnRetainedWAL, SnapshotChunkRows: snapshot.DefaultChunkRows, StallAfter: liveness.DefaultAfter}
}

// defaultHTTP is the http section when the file leaves keys out.
func defaultHTTP() HTTP {
	return HTTP{UnreadyAfter: metrics.DefaultUnreadyAfter}
}
