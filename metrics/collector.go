package metrics

import (
	"sort"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc("pgpilot_"+name, help, labels, nil)
}

// The metrics, each described once. docs/operate.md has the same list as a table.
var (
	changesReadDesc = desc("changes_read_total",
		"Row changes read from the replication stream, by operation (insert, update, delete, truncate). The initial sync's rows are pgpilot_snapshot_rows_read_total.", "op")
	snapshotRowsDesc = desc("snapshot_rows_read_total",
		"Rows read by initial syncs (the table's rows sent on first start).")
	syncReadDesc = desc("initial_sync_rows_read",
		"Rows read so far by the current (or last) initial sync.")
	syncEstimateDesc = desc("initial_sync_rows_estimate",
		"The table's row count as the planner estimates it (pg_class.reltuples) when the current (or last) initial sync started; absent when unknown.")
	syncingDesc = desc("initial_sync_in_progress",
		"1 while the initial sync runs (its snapshot job is not delivered yet), else 0.")
	snapDoneDesc = desc("snapshot_rows_done",
		"Rows of the running snapshot (initial sync or re-sync) delivered and checkpointed.")
	snapTotalDesc = desc("snapshot_rows_total",
		"Rows the running snapshot will read, as estimated when it began; absent when unknown.")
	snapActiveDesc = desc("snapshot_in_progress",
		"1 while a snapshot (initial sync or re-sync) runs, else 0.")
	deliveredDesc = desc("records_delivered_total",
		"Records Userpilot accepted, by path (realtime, bulk) and entity (company, user).", "path", "entity")
	coalescedDesc = desc("changes_coalesced_total",
		"Changes merged into a company's pending state instead of making a call of their own.")
	skippedDesc = desc("records_skipped_total",
		"Records finished without a call: Userpilot already held these values (no-op), by entity (company, user).", "entity")
	deadLetteredDesc = desc("records_dead_lettered_total",
		"Records set aside in the dead-letter file (rows that cannot be mapped, records Userpilot refused), by entity (company, user).", "entity")
	bulkJobsDesc = desc("bulk_jobs_completed_total",
		"Bulk identify jobs that completed.")
	requestsDesc = desc("userpilot_requests_total",
		"HTTP requests to Userpilot by answer: the status code, or \"error\" for a network error or timeout.", "code")
	retriesDesc = desc("userpilot_retries_total",
		"Userpilot requests that were retries of an earlier attempt.")
	rateLimitedDesc = desc("userpilot_rate_limited_total",
		"Userpilot answers 429 (rate limited): the client pauses.")
	realtimeLimitDesc = desc("userpilot_realtime_rate_limit",
		"The real-time rate the client allows now, in requests/s: userpilot.rate_limit, or less while it backs off after 429s (halved at each, climbing back while calls succeed).")
	bulkRateDesc = desc("bulk_rate_estimate",
		"Userpilot's bulk speed as measured from completed jobs, in records/s, smoothed; userpilot.bulk_rate until a job has completed (pgpilot_bulk_estimate_jobs 0); absent when bulk is off.")
	bulkOverheadDesc = desc("bulk_job_overhead_estimate_seconds",
		"What a bulk job costs beyond its records (submission, queueing, validation), as measured, smoothed; absent when bulk is off.")
	bulkJobsLearnedDesc = desc("bulk_estimate_jobs",
		"Completed bulk jobs the bulk estimate was learned from, kept across restarts; 0 while it is the configured start.")
	realtimeRateDesc = desc("realtime_rate_estimate",
		"The real-time throughput bulk jobs are sized against, in requests/s: the client's current limit, or what the real-time path achieved while busy if less.")
	backlogETADesc = desc("backlog_eta_seconds",
		"How long the pending companies should take to deliver at the estimated bulk and real-time rates; 0 when nothing is pending.")
	lagBytesDesc = desc("replication_lag_bytes",
		"The server's WAL position minus the checkpoint (during the initial sync: minus the slot's consistent point); absent until the position is first measured.")
	lagSecondsDesc = desc("replication_lag_seconds",
		"Age (now minus commit time) of the oldest transaction received and not yet checkpointed; 0 when everything received is checkpointed.")
	checkpointDesc = desc("checkpoint_lsn",
		"The durable checkpoint (what the slot is confirmed up to) as a number: the LSN's 64 bits.")
	serverLSNDesc = desc("server_wal_lsn",
		"The server's WAL position as a number (the insert position on a primary, the replayed one on a standby), as last measured.")
	lastDeliveryDesc = desc("last_delivery_timestamp_seconds",
		"When Userpilot last accepted a record (unix seconds, to within a second); absent until the first since pgpilot started.")
	retainedDesc = desc("retained_wal_bytes",
		"WAL the slot holds back on the server (its restart_lsn to the server's position), as last measured.")
	warningDesc = desc("retained_wal_warning",
		"1 when the retained WAL is above delivery.warn_retained_wal, else 0.")
	warnThresholdDesc = desc("retained_wal_warning_threshold_bytes",
		"delivery.warn_retained_wal in bytes (0: never warns).")
	modeDesc = desc("delivery_mode",
		"Delivery mode: 0 hold (the slot waits for Userpilot), 1 outbox (pending changes kept on disk, the slot moves on).")
	outboxCompaniesDesc = desc("outbox_companies",
		"Companies whose pending state is in the outbox.")
	outboxBytesDesc = desc("outbox_bytes",
		"Size of the outbox's records.")
	pendingDesc = desc("pending_companies",
		"Companies with changes not yet delivered.")
	oldestPendingDesc = desc("oldest_pending_seconds",
		"How long the oldest undelivered change has waited; 0 when nothing is pending.")
	streamingDesc = desc("streaming",
		"1 while the replication stream is connected, else 0.")
	standingByDesc = desc("standing_by",
		"1 while this pgpilot waits for another to release the state directory (an HA standby), else 0.")
	readyDesc = desc("ready",
		"1 when /readyz answers 200 (streaming, initial sync done, Userpilot not failing too long), else 0.")
	faultDesc = desc("fault",
		"1 while pgpilot is stuck on a fault of this kind that an operator must end (publication_missing, state_dir_unwritable, …), else 0; /readyz and the log's ERROR line say what to do.", "kind")
	stalledDesc = desc("stalled",
		"1 while delivery is stalled: work is owed (companies pending, outbox records, snapshot rows, held jobs), nothing has moved for the liveness bound, and nothing outside pgpilot explains it (Userpilot failing, the breaker tripped); else 0.")
	failingDesc = desc("userpilot_failing_seconds",
		"How long Userpilot has been failing (requests failing, none accepted, companies pending); 0 when it is not.")
)

var allDescs = []*prometheus.Desc{changesReadDesc, snapshotRowsDesc, snapDoneDesc, snapTotalDesc, snapActiveDesc, syncReadDesc, syncEstimateDesc, syncingDesc,
	deliveredDesc, coalescedDesc, skippedDesc, deadLetteredDesc, bulkJobsDesc, requestsDesc, retriesDesc, rateLimitedDesc,
	realtimeLimitDesc, bulkRateDesc, bulkOverheadDesc, bulkJobsLearnedDesc, realtimeRateDesc, backlogETADesc,
	lagBytesDesc, lagSecondsDesc, checkpointDesc, serverLSNDesc, lastDeliveryDesc, retainedDesc, warningDesc,
	warnThresholdDesc, modeDesc, outboxCompaniesDesc, outboxBytesDesc, pendingDesc, oldestPendingDesc, streamingDesc,
	readyDesc, failingDesc, standingByDesc, stalledDesc, faultDesc}

// collector reads the figures when Prometheus scrapes, so nothing on the
// delivery path does extra work for metrics.
type collector struct{ m *Metrics }

// Describe sends every metric's description.
func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range allDescs {
		ch <- d
	}
}

// Collect sends every metric's current value.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	ready, _ := c.m.Ready() // samples, too
	m := c.m
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	counter := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	bit := func(b bool) float64 {
		if b {
			return 1
		}
		return 0
	}

	for _, op := range []struct {
		n    int64
		name string
	}{{m.inserts, "insert"}, {m.updates, "update"}, {m.deletes, "delete"}, {m.truncates, "truncate"}} {
		counter(changesReadDesc, op.n, op.name)
	}
	counter(snapshotRowsDesc, m.snapshotRows)
	gauge(stalledDesc, bit(m.stalled != ""))
	gauge(syncReadDesc, float64(m.syncRead))
	if m.syncEstimate >= 0 {
		gauge(syncEstimateDesc, float64(m.syncEstimate))
	}
	gauge(syncingDesc, bit(m.syncing))
	gauge(snapActiveDesc, bit(m.snapActive))
	gauge(snapDoneDesc, float64(m.snapDone))
	if m.snapActive && m.snapTotal >= 0 {
		gauge(snapTotalDesc, float64(m.snapTotal))
	}

	p := m.base.plus(m.counts())
	counter(deliveredDesc, p.Realtime-p.UserRealtime, "realtime", "company")
	counter(deliveredDesc, p.Bulk-p.UserBulk, "bulk", "company")
	counter(deliveredDesc, p.UserRealtime, "realtime", "user")
	counter(deliveredDesc, p.UserBulk, "bulk", "user")
	counter(coalescedDesc, p.Coalesced)
	counter(skippedDesc, p.Skipped-p.UserSkipped, "company")
	counter(skippedDesc, p.UserSkipped, "user")
	counter(deadLetteredDesc, p.DeadLettered-p.UserDeadLettered, "company")
	counter(deadLetteredDesc, p.UserDeadLettered, "user")
	counter(bulkJobsDesc, p.BulkJobs)

	if m.client != nil {
		st := m.client()
		codes := make([]int, 0, len(st.StatusCounts))
		for code := range st.StatusCounts {
			codes = append(codes, code)
		}
		sort.Ints(codes)
		for _, code := range codes {
			label := strconv.Itoa(code)
			if code == 0 {
				label = "error"
			}
			counter(requestsDesc, st.StatusCounts[code], label)
		}
		counter(retriesDesc, st.Retries)
		counter(rateLimitedDesc, st.RateLimited)
		if st.RealtimeLimit > 0 {
			gauge(realtimeLimitDesc, st.RealtimeLimit)
		}
	}
	if m.estimates != nil {
		est := m.estimates()
		if est.BulkRate > 0 {
			gauge(bulkRateDesc, est.BulkRate)
			gauge(bulkOverheadDesc, est.BulkOverhead.Seconds())
		}
		gauge(bulkJobsLearnedDesc, float64(est.BulkJobs))
		gauge(realtimeRateDesc, est.RealtimeRate)
		gauge(backlogETADesc, est.BacklogETA.Seconds())
	}

	if m.haveServer {
		base := m.checkpoint
		// The position is measured every few seconds and the checkpoint
		// may have passed it since: never a negative lag.
		gauge(lagBytesDesc, float64(max(0, int64(m.serverLSN)-int64(base))))
		gauge(serverLSNDesc, float64(m.serverLSN))
	}
	lag := 0.0
	if len(m.marks) > 0 {
		lag = max(0, now.Sub(m.marks[0].commit).Seconds())
	}
	gauge(lagSecondsDesc, lag)
	if m.haveCP {
		gauge(checkpointDesc, float64(m.checkpoint))
	}
	if !m.lastDelivery.IsZero() {
		gauge(lastDeliveryDesc, float64(m.lastDelivery.UnixNano())/1e9)
	}
	if m.haveRetained {
		gauge(retainedDesc, float64(m.retained))
	}
	gauge(warningDesc, bit(m.warning()))
	gauge(warnThresholdDesc, float64(m.opts.WarnRetainedWAL))

	gauge(modeDesc, bit(m.haveStatus && m.status.Outbox))
	gauge(outboxCompaniesDesc, float64(m.status.OutboxCompanies))
	gauge(outboxBytesDesc, float64(m.status.OutboxBytes))
	pending := float64(m.status.Pending)
	if m.pipeline != nil {
		pending = float64(m.pipeline().Pending) // live, where the status is up to 2 s old
	}
	gauge(pendingDesc, pending)
	oldest := 0.0
	if !m.status.OldestPending.IsZero() && pending > 0 {
		oldest = max(0, now.Sub(m.status.OldestPending).Seconds())
	}
	gauge(oldestPendingDesc, oldest)
	gauge(streamingDesc, bit(m.connected))
	gauge(standingByDesc, bit(m.standingBy != ""))
	gauge(readyDesc, bit(ready))
	for _, kind := range m.exportedFaults() {
		_, set := m.faults[kind]
		gauge(faultDesc, bit(set), kind)
	}
	failing := 0.0
	if !m.failingSince.IsZero() {
		failing = now.Sub(m.failingSince).Seconds()
	}
	gauge(failingDesc, failing)
}
