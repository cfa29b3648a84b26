package metrics

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// clock is a settable time for Metrics.now.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// fakeClient is a Userpilot client's counters.
type fakeClient struct {
	mu sync.Mutex
	st UserpilotCounts
}

func (f *fakeClient) counts() UserpilotCounts {
	f.mu.Lock()
	defer f.mu.Unlock()
	counts := map[int]int64{}
	for k, v := range f.st.StatusCounts {
		counts[k] = v
	}
	st := f.st
	st.StatusCounts = counts
	return st
}

func (f *fakeClient) answered(status int, n int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.st.StatusCounts == nil {
		f.st.StatusCounts = map[int]int64{}
	}
	f.st.StatusCounts[status] += n
}

func newTestMetrics(t *testing.T, opts Options) (*Metrics, *clock) {
	t.Helper()
	m := New(opts)
	c := &clock{t: time.Date(2025, 3, 1, 9, 30, 0, 0, time.UTC)}
	m.now = c.now
	return m, c
}

// value is the metric name{labels} as gathered; ok is false when absent.
func value(t *testing.T, m *Metrics, name string, labels ...string) (float64, bool) {
	t.Helper()
	fams, err := m.Registry().Gather()
	require.NoError(t, err)
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
		for _, mt := range f.GetMetric() {
			if !hasLabels(mt, labels) {
				continue
			}
			switch {
			case mt.Counter != nil:
				return mt.Counter.GetValue(), true
			case mt.Gauge != nil:
				return mt.Gauge.GetValue(), true
			}
		}
	}
	return 0, false
}

func hasLabels(mt *dto.Metric, kv []string) bool {
	for i := 0; i+1 < len(kv); i += 2 {
		found := false
		for _, l := range mt.GetLabel() {
			if l.GetName() == kv[i] && l.GetValue() == kv[i+1] {
				found = true
			}
		}
		if !found {
			return false
		}
	}
	return true
}

func must(t *testing.T, m *Metrics, name string, labels ...string) float64 {
	t.Helper()
	v, ok := value(t, m, name, labels...)
	require.True(t, ok, "metric %s%v absent", name, labels)
	return v
}

// txn is what delivery reports of a committed transaction (end 0: a piece
// of one still arriving) with changes of the given operations.
func txn(commit pglogrepl.LSN, end pglogrepl.LSN, at time.Time, ops ...string) Read {
	r := Read{Deliverable: true, Commit: commit, End: end, CommitTime: at}
	for _, op := range ops {
		switch op {
		case "insert":
			r.Inserts++
		case "update":
			r.Updates++
		case "delete":
			r.Deletes++
		case "truncate":
			r.Truncates++
		}
	}
	return r
}

// observe reports reads in order.
func observe(m *Metrics, reads ...Read) {
	for _, r := range reads {
		m.Read(r)
	}
}

// stats is a delivery engine's counters.
type stats struct {
	Changes, Coalesced, Skipped, Realtime, Bulk, BulkJobs, DeadLettered, Pending atomic.Int64
}

func (s *stats) counts() DeliveryCounts {
	return DeliveryCounts{Changes: s.Changes.Load(), Coalesced: s.Coalesced.Load(), Skipped: s.Skipped.Load(),
		Realtime: s.Realtime.Load(), Bulk: s.Bulk.Load(), BulkJobs: s.BulkJobs.Load(), DeadLettered: s.DeadLettered.Load(),
		Pending: s.Pending.Load()}
}

func TestPipelineCountersKeepGrowingAcrossSessions(t *testing.T) {
	m, _ := newTestMetrics(t, Options{})
	first := &stats{}
	m.AttachPipeline(first.counts)
	first.Realtime.Add(5)
	first.Bulk.Add(100)
	first.BulkJobs.Add(1)
	first.Coalesced.Add(7)
	first.Skipped.Add(3)
	first.DeadLettered.Add(2)
	assert.Equal(t, 5.0, must(t, m, "pgpilot_records_delivered_total", "path", "realtime"))

	second := &stats{} // the next session's pipeline starts from zero
	m.AttachPipeline(second.counts)
	second.Realtime.Add(1)
	second.Coalesced.Add(1)

	for _, tt := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"pgpilot_records_delivered_total", []string{"path", "realtime"}, 6},
		{"pgpilot_records_delivered_total", []string{"path", "bulk"}, 100},
		{"pgpilot_bulk_jobs_completed_total", nil, 1},
		{"pgpilot_changes_coalesced_total", nil, 8},
		{"pgpilot_records_skipped_total", nil, 3},
		{"pgpilot_records_dead_lettered_total", nil, 2},
	} {
		assert.Equal(t, tt.want, must(t, m, tt.name, tt.labels...), "%s%v", tt.name, tt.labels)
	}
}

func TestReadCountsChangesByOperationAndSnapshotRowsApart(t *testing.T) {
	m, c := newTestMetrics(t, Options{})
	at := c.now()
	observe(m,
		Read{ChunkRows: 3}, // a snapshot chunk
		txn(0x100, 0x110, at, "insert", "update", "update"),
		txn(0x200, 0x210, at, "delete"),
		txn(0x300, 0x310, at, "truncate"),
		Read{End: 0x400}, // a keepalive's position
	)
	for op, want := range map[string]float64{"insert": 1, "update": 2, "delete": 1, "truncate": 1} {
		assert.Equal(t, want, must(t, m, "pgpilot_changes_read_total", "op", op), op)
	}
	assert.Equal(t, 3.0, must(t, m, "pgpilot_snapshot_rows_read_total"), "snapshot rows are not changes")
}

func TestLagInSecondsIsTheAgeOfTheOldestTransactionNotCheckpointed(t *testing.T) {
	m, c := newTestMetrics(t, Options{})
	m.SessionStarted()
	m.Checkpointed(0x100)
	assert.Zero(t, must(t, m, "pgpilot_replication_lag_seconds"), "nothing received: caught up")

	t0 := c.now()
	observe(m,
		txn(0x200, 0x210, t0, "update"),
		// a large transaction in pieces: only the last carries EndLSN
		txn(0x300, 0, t0.Add(10*time.Second), "update"),
		txn(0x300, 0x320, t0.Add(10*time.Second), "update"),
		txn(0x400, 0x410, t0.Add(20*time.Second), "update"),
	)
	c.advance(30 * time.Second)
	assert.Equal(t, 30.0, must(t, m, "pgpilot_replication_lag_seconds"))

	m.Checkpointed(0x210)
	assert.Equal(t, 20.0, must(t, m, "pgpilot_replication_lag_seconds"), "the next oldest")
	m.Checkpointed(0x31f) // short of the large transaction's end: not delivered yet
	assert.Equal(t, 20.0, must(t, m, "pgpilot_replication_lag_seconds"))
	m.Checkpointed(0x320)
	assert.Equal(t, 10.0, must(t, m, "pgpilot_replication_lag_seconds"))
	m.Checkpointed(0x410)
	assert.Zero(t, must(t, m, "pgpilot_replication_lag_seconds"), "everything checkpointed: caught up")
	assert.Equal(t, float64(0x410), must(t, m, "pgpilot_checkpoint_lsn"))

	observe(m, txn(0x500, 0x510, c.now(), "update"))
	c.advance(5 * time.Second)
	assert.Equal(t, 5.0, must(t, m, "pgpilot_replication_lag_seconds"), "after an idle spell the lag grows from 0")
	m.SessionStarted() // the stream starts again from the checkpoint
	assert.Zero(t, must(t, m, "pgpilot_replication_lag_seconds"))
}

func TestLagMemoryIsBoundedAndKeepsTheOldest(t *testing.T) {
	m, c := newTestMetrics(t, Options{})
	t0 := c.now()
	var txns []Read
	for i := range 3 * maxMarks {
		lsn := pglogrepl.LSN(0x1000 + 0x10*i)
		txns = append(txns, txn(lsn, lsn+8, t0.Add(time.Duration(i)*time.Millisecond), "update"))
	}
	observe(m, txns...)
	m.mu.Lock()
	n := len(m.marks)
	m.mu.Unlock()
	assert.LessOrEqual(t, n, maxMarks)
	c.advance(time.Hour)
	assert.Equal(t, time.Hour.Seconds(), must(t, m, "pgpilot_replication_lag_seconds"))
}

func TestLagInBytesIsTheServerPositionMinusTheCheckpoint(t *testing.T) {
	m, _ := newTestMetrics(t, Options{})
	m.SessionStarted()
	m.Checkpointed(0)
	_, ok := value(t, m, "pgpilot_replication_lag_bytes")
	assert.False(t, ok, "absent until the server's position is measured")

	m.Checkpointed(0x1000) // the slot's consistent point, checkpointed when the slot is made
	m.SnapshotProgress(&SnapshotJob{Initial: true, Total: 500})
	m.ServerPosition(0x1800)
	assert.Equal(t, float64(0x800), must(t, m, "pgpilot_replication_lag_bytes"), "during the initial sync: from the consistent point")
	m.Checkpointed(0x1400)
	assert.Equal(t, float64(0x400), must(t, m, "pgpilot_replication_lag_bytes"))
	assert.Equal(t, float64(0x1800), must(t, m, "pgpilot_server_wal_lsn"))
	m.Checkpointed(0x2000) // a keepalive's position, newer than the last measurement
	assert.Zero(t, must(t, m, "pgpilot_replication_lag_bytes"), "never negative")
}

func TestUserpilotRequestsAreCountedByStatusCode(t *testing.T) {
	m, _ := newTestMetrics(t, Options{})
	client := &fakeClient{}
	m.SetUserpilot(client.counts)
	client.answered(202, 40)
	client.answered(503, 3)
	client.answered(429, 1)
	client.answered(0, 2)
	client.mu.Lock()
	client.st.Retries, client.st.RateLimited = 6, 1
	client.mu.Unlock()

	assert.Equal(t, 40.0, must(t, m, "pgpilot_userpilot_requests_total", "code", "202"))
	assert.Equal(t, 3.0, must(t, m, "pgpilot_userpilot_requests_total", "code", "503"))
	assert.Equal(t, 2.0, must(t, m, "pgpilot_userpilot_requests_total", "code", "error"), "network errors")
	assert.Equal(t, 6.0, must(t, m, "pgpilot_userpilot_retries_total"))
	assert.Equal(t, 1.0, must(t, m, "pgpilot_userpilot_rate_limited_total"))
}

func TestWhatDeliveryMeasuredIsExposed(t *testing.T) {
	m, _ := newTestMetrics(t, Options{})
	_, ok := value(t, m, "pgpilot_bulk_rate_estimate")
	assert.False(t, ok, "nothing attached yet")
	client := &fakeClient{}
	m.SetUserpilot(client.counts)
	client.mu.Lock()
	client.st.RealtimeLimit = 42.5
	client.mu.Unlock()
	est := Estimates{BulkRate: 310, BulkOverhead: 1500 * time.Millisecond, BulkJobs: 7, RealtimeRate: 40, BacklogETA: 90 * time.Second}
	m.AttachEstimates(func() Estimates { return est })

	assert.Equal(t, 42.5, must(t, m, "pgpilot_userpilot_realtime_rate_limit"))
	assert.Equal(t, 310.0, must(t, m, "pgpilot_bulk_rate_estimate"))
	assert.Equal(t, 1.5, must(t, m, "pgpilot_bulk_job_overhead_estimate_seconds"))
	assert.Equal(t, 7.0, must(t, m, "pgpilot_bulk_estimate_jobs"))
	assert.Equal(t, 40.0, must(t, m, "pgpilot_realtime_rate_estimate"))
	assert.Equal(t, 90.0, must(t, m, "pgpilot_backlog_eta_seconds"))

	est = Estimates{RealtimeRate: 10} // bulk_rate: 0
	_, ok = value(t, m, "pgpilot_bulk_rate_estimate")
	assert.False(t, ok, "no bulk estimate while bulk is off")
}

func TestStatusFiguresAreExposed(t *testing.T) {
	m, c := newTestMetrics(t, Options{})
	assert.Zero(t, must(t, m, "pgpilot_delivery_mode"))
	m.Status(DeliveryStatus{Outbox: true, OutboxCompanies: 12, OutboxBytes: 3400, Pending: 15,
		OldestPending: c.now().Add(-90 * time.Second)})
	assert.Equal(t, 1.0, must(t, m, "pgpilot_delivery_mode"))
	assert.Equal(t, 12.0, must(t, m, "pgpilot_outbox_companies"))
	assert.Equal(t, 3400.0, must(t, m, "pgpilot_outbox_bytes"))
	assert.Equal(t, 15.0, must(t, m, "pgpilot_pending_companies"))
	assert.Equal(t, 90.0, must(t, m, "pgpilot_oldest_pending_seconds"))

	stats := &stats{}
	m.AttachPipeline(stats.counts)
	stats.Pending.Store(4)
	assert.Equal(t, 4.0, must(t, m, "pgpilot_pending_companies"), "the pipeline's live count wins over the status")
	m.Status(DeliveryStatus{})
	assert.Zero(t, must(t, m, "pgpilot_delivery_mode"))
}

func TestLastDeliveryIsWhenTheDeliveredCountLastMoved(t *testing.T) {
	m, c := newTestMetrics(t, Options{})
	stats := &stats{}
	m.AttachPipeline(stats.counts)
	_, ok := value(t, m, "pgpilot_last_delivery_timestamp_seconds")
	assert.False(t, ok, "absent before the first delivery")

	stats.Realtime.Add(1)
	m.Sample()
	at := c.now()
	c.advance(time.Minute)
	assert.Equal(t, float64(at.Unix()), must(t, m, "pgpilot_last_delivery_timestamp_seconds"), "nothing since")

	stats.Bulk.Add(10)
	assert.Equal(t, float64(c.now().Unix()), must(t, m, "pgpilot_last_delivery_timestamp_seconds"), "a scrape samples too")
}

func TestSnapshotProgress(t *testing.T) {
	m, _ := newTestMetrics(t, Options{})
	m.SessionStarted()
	m.Checkpointed(0)
	_, ok := value(t, m, "pgpilot_initial_sync_rows_estimate")
	assert.False(t, ok, "absent when unknown")
	m.SnapshotProgress(&SnapshotJob{Initial: true, Total: 1000})
	observe(m, Read{ChunkRows: 250})
	assert.Equal(t, 1.0, must(t, m, "pgpilot_initial_sync_in_progress"))
	assert.Equal(t, 1.0, must(t, m, "pgpilot_snapshot_in_progress"))
	assert.Equal(t, 250.0, must(t, m, "pgpilot_initial_sync_rows_read"))
	assert.Equal(t, 1000.0, must(t, m, "pgpilot_initial_sync_rows_estimate"))
	assert.Equal(t, 1000.0, must(t, m, "pgpilot_snapshot_rows_total"))
	m.SnapshotProgress(&SnapshotJob{Initial: true, Rows: 200, Total: 1000})
	assert.Equal(t, 200.0, must(t, m, "pgpilot_snapshot_rows_done"), "delivered and checkpointed")
	m.SnapshotProgress(nil)
	assert.Zero(t, must(t, m, "pgpilot_initial_sync_in_progress"), "done once the job is delivered")
	assert.Zero(t, must(t, m, "pgpilot_snapshot_in_progress"))

	m.SnapshotProgress(&SnapshotJob{Total: 10})
	assert.Equal(t, 1.0, must(t, m, "pgpilot_snapshot_in_progress"))
	assert.Zero(t, must(t, m, "pgpilot_initial_sync_in_progress"), "a re-sync is not the initial sync: still ready")
}

func TestReadiness(t *testing.T) {
	type step struct {
		do     func(m *Metrics, c *clock, client *fakeClient, stats *stats)
		ready  bool
		reason string // a part of it
	}
	start := func(m *Metrics, _ *clock, _ *fakeClient, _ *stats) {
		m.SessionStarted()
		m.Checkpointed(0x100)
		m.Streaming()
	}
	fail := func(status int) func(*Metrics, *clock, *fakeClient, *stats) {
		return func(m *Metrics, _ *clock, client *fakeClient, stats *stats) {
			stats.Pending.Store(3)
			client.answered(status, 1)
			m.Sample()
		}
	}
	wait := func(d time.Duration) func(*Metrics, *clock, *fakeClient, *stats) {
		return func(m *Metrics, c *clock, _ *fakeClient, _ *stats) {
			c.advance(d)
			m.Sample()
		}
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"not started", []step{{func(*Metrics, *clock, *fakeClient, *stats) {}, false, "starting"}}},
		{"standing by", []step{{func(m *Metrics, _ *clock, _ *fakeClient, _ *stats) { m.StandingBy("4242") }, false, "standing by: pgpilot process 4242"}}},
		{"initial sync", []step{{func(m *Metrics, _ *clock, _ *fakeClient, _ *stats) {
			m.SessionStarted()
			m.SnapshotProgress(&SnapshotJob{Initial: true, Total: 2000})
			m.Streaming()
			observe(m, Read{ChunkRows: 10})
		}, false, "initial sync in progress: 10 rows read of about 2000"}}},
		{"streaming", []step{{start, true, "ok"}}},
		{"reconnecting", []step{
			{start, true, "ok"},
			{func(m *Metrics, _ *clock, _ *fakeClient, _ *stats) { m.SessionEnded() }, false, "not streaming"},
			{func(m *Metrics, _ *clock, _ *fakeClient, _ *stats) { m.SessionStarted() }, false, "not streaming"},
		}},
		{"Userpilot failing, under the threshold", []step{
			{start, true, "ok"},
			{fail(503), true, "ok"},
			{wait(4 * time.Minute), true, "ok"},
		}},
		{"Userpilot failing, over the threshold, then back", []step{
			{start, true, "ok"},
			{fail(503), true, "ok"},
			{wait(3 * time.Minute), true, "ok"},
			{fail(0), true, "ok"},
			{wait(3 * time.Minute), false, "Userpilot failing for 6m0s, over http.unready_after (5m0s): 2 failed requests, none accepted; nothing accepted since pgpilot started"},
			{fail(202), true, "ok"},
		}},
		{"refusals are Userpilot working", []step{
			{start, true, "ok"},
			{fail(400), true, "ok"},
			{wait(10 * time.Minute), true, "ok"},
		}},
		{"nothing pending ends the episode", []step{
			{start, true, "ok"},
			{fail(401), true, "ok"},
			{func(m *Metrics, c *clock, _ *fakeClient, stats *stats) {
				stats.Pending.Store(0)
				m.Sample()
				c.advance(10 * time.Minute)
			}, true, "ok"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, c := newTestMetrics(t, Options{})
			client, stats := &fakeClient{}, &stats{}
			m.SetUserpilot(client.counts)
			m.AttachPipeline(stats.counts)
			for i, s := range tt.steps {
				s.do(m, c, client, stats)
				ready, reason := m.Ready()
				assert.Equal(t, s.ready, ready, "step %d: %s", i, reason)
				assert.Contains(t, reason, s.reason, "step %d", i)
				assert.NotContains(t, reason, "\n")
				want := 0.0
				if s.ready {
					want = 1
				}
				assert.Equal(t, want, must(t, m, "pgpilot_ready"), "step %d", i)
			}
		})
	}
}

func TestUnreadyAfterIsConfigurable(t *testing.T) {
	m, c := newTestMetrics(t, Options{UnreadyAfter: 2 * time.Second})
	client, stats := &fakeClient{}, &stats{}
	m.SetUserpilot(client.counts)
	m.AttachPipeline(stats.counts)
	m.SessionStarted()
	m.Streaming()
	stats.Pending.Store(1)
	client.answered(503, 1)
	m.Sample()
	c.advance(3 * time.Second)
	ready, reason := m.Ready()
	assert.False(t, ready)
	assert.Contains(t, reason, "Userpilot failing for 3s")
	assert.Equal(t, 3.0, must(t, m, "pgpilot_userpilot_failing_seconds"))
}

func TestRetainedWALWarningIsLoggedAtMostOnceAMinute(t *testing.T) {
	var logs bytes.Buffer
	var mu sync.Mutex
	m, c := newTestMetrics(t, Options{Slot: "pgpilot_prod", WarnRetainedWAL: 1 << 30,
		Logger: slog.New(slog.NewTextHandler(&lockedWriter{w: &logs, mu: &mu}, nil))})
	warnings := func() int {
		mu.Lock()
		defer mu.Unlock()
		return strings.Count(logs.String(), "level=WARN")
	}

	m.RetainedWAL(512 << 20)
	assert.Zero(t, warnings())
	assert.Zero(t, must(t, m, "pgpilot_retained_wal_warning"))
	assert.Equal(t, float64(512<<20), must(t, m, "pgpilot_retained_wal_bytes"))
	assert.Equal(t, float64(1<<30), must(t, m, "pgpilot_retained_wal_warning_threshold_bytes"))

	m.RetainedWAL(2 << 30)
	assert.Equal(t, 1, warnings())
	assert.Equal(t, 1.0, must(t, m, "pgpilot_retained_wal_warning"))
	for range 11 { // measured every 5 s for 55 s
		c.advance(5 * time.Second)
		m.RetainedWAL(2 << 30)
	}
	assert.Equal(t, 1, warnings(), "at most once a minute")
	c.advance(5 * time.Second)
	m.RetainedWAL(2 << 30)
	assert.Equal(t, 2, warnings())
	mu.Lock()
	assert.Contains(t, logs.String(), "slot=pgpilot_prod retained_wal_mb=2048 warn_retained_wal_mb=1024")
	mu.Unlock()

	m.RetainedWAL(1 << 20)
	assert.Zero(t, must(t, m, "pgpilot_retained_wal_warning"), "back under the threshold")
}

func TestRetainedWALThresholdZeroNeverWarns(t *testing.T) {
	var logs bytes.Buffer
	m, _ := newTestMetrics(t, Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	m.RetainedWAL(1 << 40)
	assert.Empty(t, logs.String())
	assert.Zero(t, must(t, m, "pgpilot_retained_wal_warning"))
}

func TestNilMetricsAcceptsEveryReport(t *testing.T) {
	var m *Metrics
	assert.NotPanics(t, func() {
		m.SetUserpilot((&fakeClient{}).counts)
		m.AttachPipeline((&stats{}).counts)
		m.StandingBy("1")
		m.SessionStarted()
		m.SnapshotProgress(&SnapshotJob{})
		m.Streaming()
		m.Checkpointed(1)
		m.Status(DeliveryStatus{})
		m.ServerPosition(1)
		m.RetainedWAL(1)
		m.Sample()
		m.SessionEnded()
	})
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// BenchmarkRead is the cost metrics add to each transaction delivery
// takes in.
func BenchmarkRead(b *testing.B) {
	m := New(Options{})
	at := time.Now()
	for i := range b.N {
		lsn := pglogrepl.LSN(0x1000 + 0x100*i)
		m.Read(txn(lsn, lsn+0x10, at, "update", "update"))
		if i%64 == 0 {
			m.Checkpointed(lsn)
		}
	}
}
