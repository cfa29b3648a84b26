package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/internal/workload"
	"github.com/pgpilot/pgpilot/userpilot/userpilottest"
)

// TestMetricsHealthAndReadinessOfTheRunningBinary scrapes a running pgpilot:
// the counters follow the changes made, lag and checkpoint are there,
// /healthz answers while it runs, and /readyz turns 503 while Userpilot
// fails for longer than http.unready_after, and 200 again once it is back.
func TestMetricsHealthAndReadinessOfTheRunningBinary(t *testing.T) {
	t.Parallel()
	const seeded = 300
	e := newEnv(t, userpilottest.Options{})
	addr := freeAddr(t)
	cfg := workload.Config(e.url, workload.SlotName(e.url), e.up.URL(), apiKey, e.stateDir, 2000)
	e.writeConfig(strings.Replace(cfg, "companies:\n", "http:\n  listen: "+addr+"\n  unready_after: 2s\ncompanies:\n", 1))
	ctx := context.Background()
	require.NoError(t, workload.Seed(ctx, e.conn, seeded))
	base := "http://" + addr
	// The suite's Postgres has 20 slots for all its tests: give this one
	// back (once pgpilot, stopped by the cleanup registered after this one,
	// has let go of it).
	t.Cleanup(func() { dropSlot(t, e.conn, workload.SlotName(e.url)) })

	p := e.run()
	require.Eventually(t, func() bool { code, _ := httpGet(base + "/healthz"); return code == http.StatusOK },
		30*time.Second, 20*time.Millisecond, "/healthz answers while pgpilot runs")
	e.waitInitialSync()
	require.Eventually(t, func() bool { code, _ := httpGet(base + "/readyz"); return code == http.StatusOK },
		30*time.Second, 50*time.Millisecond, "/readyz is 200 once streaming")

	_, err := e.conn.Exec(ctx, `UPDATE companies SET plan = 'changed' WHERE id <= 20`)
	require.NoError(t, err)
	_, err = e.conn.Exec(ctx, `INSERT INTO companies (id, name) SELECT g, 'New ' || g FROM generate_series(1001, 1005) g`)
	require.NoError(t, err)
	e.converge(60 * time.Second)
	_, err = e.conn.Exec(ctx, `DELETE FROM companies WHERE id = 1005`)
	require.NoError(t, err)

	// The stand-in has the records a moment before the pipeline counts
	// them, and the delete is read a moment after it commits.
	var fams map[string]*dto.MetricFamily
	delivered := func() float64 {
		return metricValue(fams, "pgpilot_records_delivered_total", "path", "realtime") + metricValue(fams, "pgpilot_records_delivered_total", "path", "bulk")
	}
	require.Eventually(t, func() bool {
		fams = scrape(t, base)
		return metricValue(fams, "pgpilot_changes_read_total", "op", "delete") >= 1 && delivered() >= seeded+25
	}, 30*time.Second, 100*time.Millisecond, "the delete is read; the snapshot, 20 updates and 5 inserts are delivered")
	assert.Equal(t, 20.0, metricValue(fams, "pgpilot_changes_read_total", "op", "update"))
	assert.Equal(t, 5.0, metricValue(fams, "pgpilot_changes_read_total", "op", "insert"))
	assert.Equal(t, float64(seeded), metricValue(fams, "pgpilot_snapshot_rows_read_total"))
	assert.GreaterOrEqual(t, metricValue(fams, "pgpilot_userpilot_requests_total", "code", "202"), 1.0)
	assert.Positive(t, metricValue(fams, "pgpilot_checkpoint_lsn"))
	assert.Positive(t, metricValue(fams, "pgpilot_server_wal_lsn"))
	assert.Positive(t, metricValue(fams, "pgpilot_retained_wal_bytes"))
	assert.InDelta(t, float64(time.Now().Unix()), metricValue(fams, "pgpilot_last_delivery_timestamp_seconds"), 120)
	for _, name := range []string{"pgpilot_replication_lag_bytes", "pgpilot_replication_lag_seconds", "pgpilot_pending_companies",
		"pgpilot_delivery_mode", "pgpilot_outbox_companies", "pgpilot_retained_wal_warning", "go_goroutines", "process_resident_memory_bytes"} {
		assert.Contains(t, fams, name)
	}
	assert.Equal(t, 1.0, metricValue(fams, "pgpilot_streaming"))
	assert.Equal(t, 1.0, metricValue(fams, "pgpilot_ready"))
	assert.Zero(t, metricValue(fams, "pgpilot_initial_sync_in_progress"))

	// Userpilot down: 503 to every identify, for longer than unready_after.
	e.up.SetFault(&userpilottest.Fault{Status: 503})
	_, err = e.conn.Exec(ctx, `UPDATE companies SET plan = 'during the outage' WHERE id = 1`)
	require.NoError(t, err)
	var body string
	require.Eventually(t, func() bool {
		var code int
		code, body = httpGet(base + "/readyz")
		return code == http.StatusServiceUnavailable
	}, 30*time.Second, 50*time.Millisecond, "/readyz turns 503 while Userpilot fails")
	assert.Contains(t, body, "Userpilot failing for")
	assert.Equal(t, 1, strings.Count(body, "\n"), "one line: %q", body)
	code, _ := httpGet(base + "/healthz")
	assert.Equal(t, http.StatusOK, code, "still alive")
	fams = scrape(t, base)
	assert.GreaterOrEqual(t, metricValue(fams, "pgpilot_userpilot_requests_total", "code", "503"), 1.0)
	assert.Zero(t, metricValue(fams, "pgpilot_ready"))

	e.up.SetFault(nil)
	require.Eventually(t, func() bool { code, _ := httpGet(base + "/readyz"); return code == http.StatusOK },
		60*time.Second, 50*time.Millisecond, "/readyz is 200 again once Userpilot accepts")
	require.Eventually(t, func() bool { md, _ := e.up.Company("1"); return md["plan"] == "during the outage" },
		60*time.Second, 50*time.Millisecond, "the change made during the outage is delivered")

	code, _ = p.stop(t)
	assert.Equal(t, 0, code)
	_, err = http.Get(base + "/healthz")
	assert.Error(t, err, "the server stops with the process")
}

// dropSlot drops slot, waiting up to 10 s for its walsender to let go.
func dropSlot(t *testing.T, conn *pgx.Conn, slot string) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := conn.Exec(context.Background(), `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1`, slot)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Logf("slot %s not dropped: %v", slot, err)
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// freeAddr is a loopback address with a port nobody listens on now.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	return ln.Addr().String()
}

// httpGet returns the status and body; 0 when nothing answers.
func httpGet(url string) (int, string) {
	client := http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// scrape reads /metrics with Prometheus's own text parser.
func scrape(t *testing.T, base string) map[string]*dto.MetricFamily {
	t.Helper()
	fams, err := scrapeErr(base)
	require.NoError(t, err)
	return fams
}

// scrapeErr is scrape for a goroutine: it returns what went wrong.
func scrapeErr(base string) (map[string]*dto.MetricFamily, error) {
	client := http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get(base + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("/metrics answered %d", resp.StatusCode)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	return parser.TextToMetricFamilies(resp.Body)
}

// value is the sample of name whose labels include labels (name, value
// pairs); 0 when there is none.
func metricValue(fams map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	f, ok := fams[name]
	if !ok {
		return 0
	}
next:
	for _, m := range f.GetMetric() {
		for i := 0; i+1 < len(labels); i += 2 {
			if !metricHasLabel(m, labels[i], labels[i+1]) {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue()
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		case m.Untyped != nil:
			return m.Untyped.GetValue()
		}
	}
	return 0
}

func metricHasLabel(m *dto.Metric, name, val string) bool {
	for _, l := range m.GetLabel() {
		if l.GetName() == name && l.GetValue() == val {
			return true
		}
	}
	return false
}
