package config

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseStateDirIsRelativeToTheConfigFile(t *testing.T) {
	tests := []struct{ path, dir, want string }{
		{"/etc/pgpilot.yaml", "./state", "/etc/state"},
		{"/etc/pgpilot/pgpilot.yaml", "../lib/pgpilot", "/etc/lib/pgpilot"},
		{"pgpilot.yaml", "state", "state"},
		{"/etc/pgpilot.yaml", "/var/lib/pgpilot/", "/var/lib/pgpilot"},
		{"/etc/pgpilot.yaml", "${EMPTY}", "/etc/pgpilot-state"},
	}
	for _, tt := range tests {
		t.Run(tt.path+" "+tt.dir, func(t *testing.T) {
			vars := baseEnv()
			vars["EMPTY"] = ""
			cfg, err := Parse(tt.path, []byte(minimal+"state:\n  dir: "+tt.dir+"\n"), env(vars))
			require.NoError(t, err)
			assert.Equal(t, tt.want, cfg.State.Dir)
		})
	}
}

func TestDeliverySection(t *testing.T) {
	tests := []struct {
		name, section string
		want          Delivery
		err           problem
	}{
		{"sizes in postgresql.conf units", "delivery:\n  max_retained_wal: 1GB\n  outbox_after: 90s\n  warn_retained_wal: 512MB\n",
			Delivery{MaxRetainedWAL: 1 << 30, OutboxAfter: 90 * time.Second, WarnRetainedWAL: 512 << 20, SnapshotChunkRows: 2000, StallAfter: time.Minute}, problem{}},
		{"plain bytes, default duration", "delivery:\n  max_retained_wal: 1048576\n", Delivery{MaxRetainedWAL: 1 << 20, OutboxAfter: 5 * time.Minute, WarnRetainedWAL: 1 << 30, SnapshotChunkRows: 2000, StallAfter: time.Minute}, problem{}},
		{"zero never switches for WAL", "delivery:\n  max_retained_wal: 0\n", Delivery{OutboxAfter: 5 * time.Minute, WarnRetainedWAL: 1 << 30, SnapshotChunkRows: 2000, StallAfter: time.Minute}, problem{}},
		{"zero never warns", "delivery:\n  warn_retained_wal: 0\n", Delivery{MaxRetainedWAL: 256 << 20, OutboxAfter: 5 * time.Minute, SnapshotChunkRows: 2000, StallAfter: time.Minute}, problem{}},
		{"snapshot chunk size", "delivery:\n  snapshot_chunk_rows: 200\n", Delivery{MaxRetainedWAL: 256 << 20, OutboxAfter: 5 * time.Minute, WarnRetainedWAL: 1 << 30, SnapshotChunkRows: 200, StallAfter: time.Minute}, problem{}},
		{"bad chunk size", "delivery:\n  snapshot_chunk_rows: 0\n", Delivery{}, problem{`p.yaml:11: delivery.snapshot_chunk_rows: "0" is not a row count from 1 to 100000`, `write e.g. snapshot_chunk_rows: 5000`}},
		{"bad size", "delivery:\n  max_retained_wal: lots\n", Delivery{}, problem{`p.yaml:11: delivery.max_retained_wal: "lots" is not a size`, `write e.g. max_retained_wal: 256MB (units B, kB, MB, GB, TB), or 0 to never switch for WAL`}},
		{"bad warning size", "delivery:\n  warn_retained_wal: 1 GiB\n", Delivery{}, problem{`p.yaml:11: delivery.warn_retained_wal: "1 GiB" is not a size`, `write e.g. warn_retained_wal: 1GB (units B, kB, MB, GB, TB), or 0 to never warn`}},
		{"stall bound", "delivery:\n  stall_after: 2m\n", Delivery{MaxRetainedWAL: 256 << 20, OutboxAfter: 5 * time.Minute, WarnRetainedWAL: 1 << 30, SnapshotChunkRows: 2000, StallAfter: 2 * time.Minute}, problem{}},
		{"a stall bound too short to mean anything", "delivery:\n  stall_after: 1s\n", Delivery{}, problem{`p.yaml:11: delivery.stall_after: "1s" is not a duration of 10s or more`, `write e.g. stall_after: 1m`}},
		{"bad duration", "delivery:\n  outbox_after: soon\n", Delivery{}, problem{`p.yaml:11: delivery.outbox_after: "soon" is not a positive duration`, `write e.g. outbox_after: 5m`}},
		{"unknown key", "delivery:\n  mode: outbox\n", Delivery{}, problem{`p.yaml:11: delivery.mode: unknown key "mode"; allowed: max_retained_wal, outbox_after, warn_retained_wal, snapshot_chunk_rows, stall_after`, ""}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := Parse("p.yaml", []byte(minimal+tt.section), env(baseEnv()))
			if tt.err != (problem{}) {
				assert.Equal(t, []problem{tt.err}, fixedProblems(t, err))
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, cfg.Delivery)
		})
	}
}

func TestHTTPSection(t *testing.T) {
	const fix = "write host:port, e.g. listen: 127.0.0.1:9187 (or :9187 for every interface)"
	tests := []struct {
		name, section string
		env           map[string]string
		want          HTTP
		err           problem
	}{
		{"absent: no server, default threshold", "", nil, HTTP{UnreadyAfter: 5 * time.Minute}, problem{}},
		{"empty section", "http:\n", nil, HTTP{UnreadyAfter: 5 * time.Minute}, problem{}},
		{"loopback and a threshold", "http:\n  listen: 127.0.0.1:9187\n  unready_after: 90s\n", nil, HTTP{Listen: "127.0.0.1:9187", UnreadyAfter: 90 * time.Second}, problem{}},
		{"every interface", "http:\n  listen: ':9187'\n", nil, HTTP{Listen: ":9187", UnreadyAfter: 5 * time.Minute}, problem{}},
		{"IPv6", "http:\n  listen: '[::1]:9187'\n", nil, HTTP{Listen: "[::1]:9187", UnreadyAfter: 5 * time.Minute}, problem{}},
		{"from the environment", "http:\n  listen: ${METRICS_ADDR}\n", map[string]string{"METRICS_ADDR": "localhost:9100"}, HTTP{Listen: "localhost:9100", UnreadyAfter: 5 * time.Minute}, problem{}},
		{"variable set to empty: no server", "http:\n  listen: ${METRICS_ADDR}\n", map[string]string{"METRICS_ADDR": ""}, HTTP{UnreadyAfter: 5 * time.Minute}, problem{}},
		{"no port", "http:\n  listen: 127.0.0.1\n", nil, HTTP{}, problem{`p.yaml:11: http.listen: "127.0.0.1" is not host:port`, fix}},
		{"port zero", "http:\n  listen: 127.0.0.1:0\n", nil, HTTP{}, problem{`p.yaml:11: http.listen: "127.0.0.1:0" has the port "0", not a number from 1 to 65535`, fix}},
		{"named port", "http:\n  listen: 'localhost:http'\n", nil, HTTP{}, problem{`p.yaml:11: http.listen: "localhost:http" has the port "http", not a number from 1 to 65535`, fix}},
		{"bad threshold", "http:\n  unready_after: 0s\n", nil, HTTP{}, problem{`p.yaml:11: http.unready_after: "0s" is not a positive duration`, `write e.g. unready_after: 5m`}},
		{"unknown key", "http:\n  port: 9187\n", nil, HTTP{}, problem{`p.yaml:11: http.port: unknown key "port"; allowed: listen, unready_after`, ""}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			vars := baseEnv()
			for k, v := range tt.env {
				vars[k] = v
			}
			cfg, err := Parse("p.yaml", []byte(minimal+tt.section), env(vars))
			if tt.err != (problem{}) {
				assert.Equal(t, []problem{tt.err}, fixedProblems(t, err))
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, cfg.HTTP)
		})
	}
}
