package metrics

import (
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(body)
}

func TestServerServesMetricsHealthAndReadiness(t *testing.T) {
	m := New(Options{})
	stats := &stats{}
	m.AttachPipeline(stats.counts)
	m.SetUserpilot((&fakeClient{}).counts)
	srv, err := Listen("127.0.0.1:0", m)
	require.NoError(t, err)
	base := "http://" + srv.Addr().String()

	code, body := get(t, base+"/healthz")
	assert.Equal(t, http.StatusOK, code)
	assert.Equal(t, "ok\n", body)

	code, body = get(t, base+"/readyz")
	assert.Equal(t, http.StatusServiceUnavailable, code)
	assert.Equal(t, "starting: not connected to Postgres yet\n", body)
	m.SessionStarted()
	m.Checkpointed(0x16B3748)
	m.Streaming()
	code, body = get(t, base+"/readyz")
	assert.Equal(t, http.StatusOK, code)
	assert.Equal(t, "ok: streaming\n", body)

	stats.Realtime.Add(3)
	resp, err := http.Get(base + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	require.NoError(t, err, "the exposition parses as Prometheus text")
	for _, name := range []string{"go_goroutines", "process_cpu_seconds_total", "pgpilot_records_delivered_total",
		"pgpilot_checkpoint_lsn", "pgpilot_ready", "pgpilot_changes_read_total"} {
		assert.Contains(t, fams, name)
	}
	assert.Equal(t, float64(0x16B3748), fams["pgpilot_checkpoint_lsn"].GetMetric()[0].GetGauge().GetValue())
	for _, mt := range fams["pgpilot_records_delivered_total"].GetMetric() {
		if mt.GetLabel()[0].GetValue() == "realtime" {
			assert.Equal(t, 3.0, mt.GetCounter().GetValue())
		}
	}

	code, _ = get(t, base+"/nope")
	assert.Equal(t, http.StatusNotFound, code)

	require.NoError(t, srv.Close())
	_, err = http.Get(base + "/healthz")
	assert.Error(t, err, "closed")
}

func TestServerSamplesEverySecond(t *testing.T) {
	m := New(Options{})
	stats := &stats{}
	m.AttachPipeline(stats.counts)
	srv, err := Listen("127.0.0.1:0", m)
	require.NoError(t, err)
	defer srv.Close()
	stats.Realtime.Add(1)
	before := time.Now()
	require.Eventually(t, func() bool {
		m.mu.Lock()
		defer m.mu.Unlock()
		return !m.lastDelivery.IsZero()
	}, 10*time.Second, 10*time.Millisecond, "sampled without a scrape")
	m.mu.Lock()
	defer m.mu.Unlock()
	assert.False(t, m.lastDelivery.Before(before))
}

func TestListenOnABusyPortSaysWhichAddressAndWhy(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	_, err = Listen(ln.Addr().String(), New(Options{}))
	require.Error(t, err)
	assert.True(t, strings.HasPrefix(err.Error(), "serve metrics and health checks on http.listen "+ln.Addr().String()+": "), err.Error())
	assert.ErrorIs(t, err, syscall.EADDRINUSE, "the daemon tells a port in use from other failures")
}
