// Package metrics is how an operator watches a running pgpilot: Prometheus
// metrics on /metrics, liveness on /healthz and readiness on /readyz (see
// server.go), and the warning when the slot holds back too much WAL.
//
// A Metrics lives as long as the process; the daemon's replication sessions
// come and go under it and report to it through its nil-safe methods
// (SessionStarted, Streaming, Checkpointed, Read, …), made where things
// happen. The delivery engine's and the Userpilot client's counters are not
// copied: they are read when Prometheus scrapes, by a custom collector
// (collector.go), through the functions the daemon attaches. It imports no
// other pgpilot package: what it is told are plain values of its own.
//
// Definitions an alert depends on:
//
//   - Replication lag in bytes is the server's WAL position (measured every
//     few seconds, as for the retained WAL) minus the checkpoint: how much
//     WAL has been written that pgpilot has not durably dealt with.
//   - Replication lag in seconds is 0 when every transaction received has
//     been checkpointed, and otherwise the age (now − commit time) of the
//     oldest transaction received but not yet checkpointed. So it grows from
//     0 when delivery stalls, rather than jumping to the age of the last
//     commit after an idle spell.
//   - Userpilot is failing when requests keep failing (network errors,
//     timeouts, 401, 403, 408, 429, 5xx) and none succeeds, while companies
//     are pending; a success or an empty backlog ends it. /readyz answers 503
//     once it has lasted longer than Options.UnreadyAfter.
package metrics

import (
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Defaults of the settings the config file names after them.
const (
	// DefaultUnreadyAfter is how long Userpilot may fail before /readyz
	// says 503 (http.unready_after).
	DefaultUnreadyAfter = 5 * time.Minute
	// DefaultWarnRetainedWAL is the slot's retained WAL, in bytes, above
	// which pgpilot warns, in the log and a metric
	// (delivery.warn_retained_wal).
	DefaultWarnRetainedWAL = 1 << 30
)

// warnEvery bounds how often the retained-WAL warning is logged.
const warnEvery = time.Minute

// maxMarks bounds the commit times kept for the lag in seconds; see mark.
const maxMarks = 10_000

// Options configure a Metrics.
type Options struct {
	Logger *slog.Logger
	// Slot is the replication slot's name, for the warning's log line.
	Slot string
	// UnreadyAfter is how long Userpilot may keep failing before /readyz
	// answers 503; 0 → 5 minutes.
	UnreadyAfter time.Duration
	// WarnRetainedWAL is the slot's retained WAL, in bytes, above which a
	// warning is logged (at most once a minute) and the warning gauge is 1;
	// 0: never.
	WarnRetainedWAL int64
}

// UserpilotCounts is what the Userpilot client has counted.
type UserpilotCounts struct {
	Retries      int64         // attempts that were retries of an earlier one
	StatusCounts map[int]int64 // answers by HTTP status; 0 counts network errors and timeouts
	RateLimited  int64         // 429 answers
	// RealtimeLimit is the real-time rate the client allows now
	// (requests/s): rate_limit, or less while it backs off after 429s.
	RealtimeLimit float64
}

// Estimates is what delivery has measured of Userpilot.
type Estimates struct {
	// BulkRate is the estimated bulk speed (records/s; 0: bulk is off),
	// BulkOverhead a job's estimated cost beyond its records, BulkJobs
	// the completed jobs they were learned from (0: still the configured
	// start).
	BulkRate     float64
	BulkOverhead time.Duration
	BulkJobs     int
	// RealtimeRate is the real-time throughput jobs are sized against
	// (requests/s).
	RealtimeRate float64
	// BacklogETA is how long the pending companies should take at those
	// rates; 0 when nothing is pending.
	BacklogETA time.Duration
}

// DeliveryCounts is what one delivery engine has counted since it started.
type DeliveryCounts struct {
	Changes, Coalesced, Skipped, Realtime, Bulk, BulkJobs, DeadLettered int64
	Pending                                                             int64 // companies (and users) undelivered now
	// Users are, of Skipped, Realtime, Bulk and DeadLettered, those of
	// users (labelled entity="user"; the rest entity="company").
	UserSkipped, UserRealtime, UserBulk, UserDeadLettered int64
}

// SnapshotJob is the running snapshot job, as checkpointed.
type SnapshotJob struct {
	Initial     bool  // the initial sync (pgpilot is not ready until it is done), not a re-sync
	Rows, Total int64 // rows delivered; the planner's estimate of all (< 0 unknown)
}

// DeliveryStatus is the delivery engine's mode and outbox figures.
type DeliveryStatus struct {
	Outbox          bool // in outbox mode
	OutboxCompanies int
	OutboxBytes     int64
	Pending         int
	OldestPending   time.Time
}

// Read is what one transaction taken in by delivery carried.
type Read struct {
	// ChunkRows is a snapshot chunk's rows (read, not changed).
	ChunkRows int
	// Inserts, Updates, Deletes and Truncates count a transaction's changes.
	Inserts, Updates, Deletes, Truncates int64
	// Deliverable is set for a committed transaction or a piece of one (not a
	// position marker, not a chunk): its commit time counts in the lag until
	// the checkpoint reaches End.
	Deliverable bool
	// Commit is where the transaction's commit record starts; End is its
	// end, 0 for a piece of a large transaction still arriving.
	Commit, End pglogrepl.LSN
	CommitTime  time.Time
}

// Metrics gathers what a pgpilot process does. Use New; a nil *Metrics
// accepts every report and does nothing.
type Metrics struct {
	opts Options
	log  *slog.Logger
	reg  *prometheus.Registry
	now  func() time.Time // tests move the clock

	mu sync.Mutex

	// faults are the states an operator must end (see SetFault): kind →
	// reason; faultKinds every kind ever set, for the gauge.
	faults     map[string]string
	faultKinds []string

	// Counters of pipelines that have finished (one per session), so the
	// process's totals never go back when a session starts over.
	base      DeliveryCounts
	pipeline  func() DeliveryCounts
	client    func() UserpilotCounts
	estimates func() Estimates
	// why answers /why/{company} (see why.go).
	why atomic.Pointer[WhyFunc]

	// Changes read from the stream.
	inserts, updates, deletes, truncates int64
	snapshotRows                         int64 // rows read by initial syncs, all of them

	// The current session.
	standingBy   string // the pid of the pgpilot holding the state directory, while this one waits
	stopped      string // why delivery is stopped until a restart (the breaker tripped), or ""
	stalled      string // what is owed and waited for while delivery is stalled, or ""
	started      bool   // a session has started at least once
	connected    bool   // streaming (replication connected)
	syncing      bool   // an initial sync is in progress
	syncRead     int64  // rows read by the current (or last) initial sync
	syncEstimate int64  // the planner's row estimate of the table; < 0 unknown
	checkpoint   pglogrepl.LSN
	haveCP       bool
	// The running snapshot job, as checkpointed.
	snapActive          bool
	snapDone, snapTotal int64
	marks               []mark // transactions received and not yet checkpointed, oldest first

	status     DeliveryStatus
	haveStatus bool

	serverLSN    pglogrepl.LSN
	haveServer   bool
	retained     int64
	haveRetained bool
	warnedAt     time.Time

	// Sampled (see sample): when the counters last moved.
	sampledDelivered int64
	lastDelivery     time.Time
	sampledOK        int64
	sampledFailed    int64
	failingSince     time.Time
	failedInEpisode  int64
	lastAccepted     time.Time
}

// mark is a transaction whose changes are not all checkpointed yet: done once
// the checkpoint reaches lsn.
type mark struct {
	commitLSN, lsn pglogrepl.LSN
	commit         time.Time
}

// counts reads the attached engine's counters (zero: none attached).
func (m *Metrics) counts() DeliveryCounts {
	if m.pipeline == nil {
		return DeliveryCounts{}
	}
	return m.pipeline()
}

// plus adds b's counters that only grow to a's.
func (a DeliveryCounts) plus(b DeliveryCounts) DeliveryCounts {
	return DeliveryCounts{Changes: a.Changes + b.Changes, Coalesced: a.Coalesced + b.Coalesced, Skipped: a.Skipped + b.Skipped,
		Realtime: a.Realtime + b.Realtime, Bulk: a.Bulk + b.Bulk, BulkJobs: a.BulkJobs + b.BulkJobs,
		DeadLettered: a.DeadLettered + b.DeadLettered, UserSkipped: a.UserSkipped + b.UserSkipped,
		UserRealtime: a.UserRealtime + b.UserRealtime, UserBulk: a.UserBulk + b.UserBulk, UserDeadLettered: a.UserDeadLettered + b.UserDeadLettered}
}

// New makes a Metrics with its own registry, holding pgpilot's collector
// and the Go runtime and process collectors.
func New(opts Options) *Metrics {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.UnreadyAfter <= 0 {
		opts.UnreadyAfter = DefaultUnreadyAfter
	}
	m := &Metrics{opts: opts, log: opts.Logger, reg: prometheus.NewRegistry(), now: time.Now, syncEstimate: -1}
	m.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		&collector{m: m})
	return m
}

// Registry is where the metrics are registered: /metrics serves it.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// SetUserpilot sets how the Userpilot client's counters are read.
func (m *Metrics) SetUserpilot(c func() UserpilotCounts) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.client = c
}

// AttachPipeline makes counts how the current delivery engine's counters
// are read. The previous engine must have stopped: its final counts are
// kept in the totals.
func (m *Metrics) AttachPipeline(counts func() DeliveryCounts) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.base = m.base.plus(m.counts())
	m.pipeline = counts
}

// AttachEstimates makes est how the current delivery engine's estimates
// are read.
func (m *Metrics) AttachEstimates(est func() Estimates) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.estimates = est
}

// StandingBy says another pgpilot (process holder) holds the state
// directory and this one waits to take over.
func (m *Metrics) StandingBy(holder string) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.standingBy = holder
}

// DeliveryStopped says delivery stopped for reason until pgpilot restarts:
// the Userpilot endpoint refuses every record (a wrong base URL, a proxy).
// /readyz answers 503 with the reason from then on.
func (m *Metrics) DeliveryStopped(reason string) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.stopped = reason
}

// Stalled says delivery is stalled (liveness.Alarm): work is owed and
// nothing moves, with what is owed and what each part waits for. /readyz
// answers 503 with it, and pgpilot_stalled is 1, until Moving.
func (m *Metrics) Stalled(reason string) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.stalled = reason
}

// Moving says delivery moves again after a stall (liveness.Alarm).
func (m *Metrics) Moving() {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.stalled = ""
}

// SessionStarted says a replication session is setting up: not streaming
// yet. The stream resumes from the checkpoint, so what the last session
// received and did not checkpoint is forgotten (it comes again).
func (m *Metrics) SessionStarted() {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.started, m.connected, m.standingBy = true, false, ""
	m.marks = m.marks[:0]
}

// SessionEnded says the session is over (pgpilot reconnects, or stops).
func (m *Metrics) SessionEnded() {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.connected = false
}

// SnapshotProgress reports the running snapshot job as checkpointed (nil:
// none runs). pgpilot is not ready until the initial sync is done.
func (m *Metrics) SnapshotProgress(job *SnapshotJob) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if job == nil {
		m.snapActive, m.syncing = false, false
		return
	}
	m.snapActive, m.snapDone, m.snapTotal = true, job.Rows, job.Total
	if job.Initial {
		if !m.syncing {
			m.syncRead = job.Rows
		}
		m.syncing, m.syncEstimate = true, job.Total
	}
}

// Streaming says the replication stream is starting.
func (m *Metrics) Streaming() {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.connected = true
}

// Checkpointed says everything up to lsn is durably delivered or set aside.
func (m *Metrics) Checkpointed(lsn pglogrepl.LSN) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.checkpoint, m.haveCP = lsn, true
	i := 0
	for i < len(m.marks) && m.marks[i].lsn <= lsn {
		i++
	}
	m.marks = append(m.marks[:0], m.marks[i:]...)
}

// Status keeps the pipeline's latest mode and outbox figures.
func (m *Metrics) Status(st DeliveryStatus) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.status, m.haveStatus = st, true
}

// ServerPosition records the server's WAL position (the insert position on
// a primary, the replayed one on a standby).
func (m *Metrics) ServerPosition(lsn pglogrepl.LSN) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.serverLSN, m.haveServer = lsn, true
}

// RetainedWAL records the slot's retained WAL in bytes, and warns when it
// is above Options.WarnRetainedWAL: the database's disk is what fills.
func (m *Metrics) RetainedWAL(n int64) {
	if m == nil {
		return
	}
	m.mu.Lock()
	m.retained, m.haveRetained = n, true
	warn := m.warning() && m.now().Sub(m.warnedAt) >= warnEvery
	if warn {
		m.warnedAt = m.now()
	}
	m.mu.Unlock()
	if warn {
		m.log.Warn("the replication slot holds back more WAL than delivery.warn_retained_wal: Postgres keeps it on disk until pgpilot "+
			"confirms it; check that Userpilot accepts deliveries (/readyz, pgpilot status) and that no long transaction is open on the database",
			"slot", m.opts.Slot, "retained_wal_mb", n>>20, "warn_retained_wal_mb", m.opts.WarnRetainedWAL>>20)
	}
}

// warning reports whether the retained WAL is above the threshold. m.mu is
// held.
func (m *Metrics) warning() bool {
	return m.opts.WarnRetainedWAL > 0 && m.haveRetained && m.retained > m.opts.WarnRetainedWAL
}

// Read counts a transaction delivery took in from the stream or a
// snapshot.
func (m *Metrics) Read(r Read) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if r.ChunkRows > 0 {
		// A piece of a snapshot: rows, not changes.
		m.snapshotRows += int64(r.ChunkRows)
		m.syncRead += int64(r.ChunkRows)
	}
	m.inserts += r.Inserts
	m.updates += r.Updates
	m.deletes += r.Deletes
	m.truncates += r.Truncates
	if !r.Deliverable {
		return
	}
	// Pieces of a large transaction come with End 0; its commit record
	// starts at Commit, and no checkpoint reaches past it before the whole
	// transaction is delivered.
	lsn := r.End
	if lsn == 0 {
		lsn = r.Commit + 1
	}
	if n := len(m.marks); n > 0 && m.marks[n-1].commitLSN == r.Commit {
		m.marks[n-1].lsn = max(m.marks[n-1].lsn, lsn) // another piece: the transaction's end is what counts
		return
	}
	if len(m.marks) >= maxMarks {
		// Thin out rather than grow without bound (hold mode during an
		// outage), keeping the oldest: once it is checkpointed the lag
		// may read a little low, never high.
		kept := m.marks[:0]
		for i, mk := range m.marks {
			if i%2 == 0 || i == len(m.marks)-1 {
				kept = append(kept, mk)
			}
		}
		m.marks = kept
	}
	m.marks = append(m.marks, mark{commitLSN: r.Commit, lsn: lsn, commit: r.CommitTime})
}

// sample notes when the counters read at scrape time last moved: the last
// delivery, and whether Userpilot is failing. m.mu is held.
func (m *Metrics) sample() {
	now := m.now()
	p := m.base.plus(m.counts())
	if d := p.Realtime + p.Bulk; d > m.sampledDelivered {
		m.sampledDelivered, m.lastDelivery = d, now
	}
	if m.client == nil {
		return
	}
	ok, failed := classify(m.client().StatusCounts)
	switch {
	case ok > m.sampledOK:
		m.failingSince, m.failedInEpisode, m.lastAccepted = time.Time{}, 0, now
	case failed > m.sampledFailed:
		if m.failingSince.IsZero() {
			m.failingSince = now
		}
		m.failedInEpisode += failed - m.sampledFailed
	case m.pipeline != nil && m.pipeline().Pending == 0:
		// Nothing is owed, so nothing is failing: an episode without
		// a success (a session that ended mid-retry) is over.
		m.failingSince, m.failedInEpisode = time.Time{}, 0
	}
	m.sampledOK, m.sampledFailed = ok, failed
}

// classify sums the answers that show Userpilot working (2xx) and those
// that show it failing. Other answers (400, 404, 409, 413, 422) are
// Userpilot working and refusing one request.
func classify(counts map[int]int64) (ok, failed int64) {
	for status, n := range counts {
		switch {
		case status >= 200 && status < 300:
			ok += n
		case status == 0, status == 401, status == 403, status == 408, status == 429, status >= 500:
			failed += n
		}
	}
	return ok, failed
}

// Sample brings the sampled figures up to date; the server calls it every
// second, and every scrape and readiness check does too.
func (m *Metrics) Sample() {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.sample()
}

// Ready reports whether pgpilot is doing its job: no fault set (see
// SetFault), streaming (connected, the initial sync done) and Userpilot not
// failing for longer than Options.UnreadyAfter. When not, reason says why in
// one line.
func (m *Metrics) Ready() (ready bool, reason string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.sample()
	switch {
	case m.stopped != "":
		// Before the initial sync's reason: it will not move either.
		return false, "delivery stopped: " + m.stopped
	case len(m.faults) > 0:
		// Before a stall: a fault says why nothing moves, and what to do.
		return false, "fault: " + m.faultReason()
	case m.stalled != "":
		return false, "delivery stalled: nothing moves while work is owed: " + m.stalled
	case m.standingBy != "":
		return false, fmt.Sprintf("standing by: pgpilot process %s holds the state directory; this one takes over when it stops", m.standingBy)
	case !m.started:
		return false, "starting: not connected to Postgres yet"
	case m.syncing:
		return false, initialSyncReason(m.syncRead, m.syncEstimate)
	case !m.connected:
		return false, "not streaming: connecting to Postgres (reconnecting after a failure, or setting up)"
	}
	if !m.failingSince.IsZero() {
		if d := m.now().Sub(m.failingSince); d > m.opts.UnreadyAfter {
			last := "nothing accepted since pgpilot started"
			if !m.lastAccepted.IsZero() {
				last = fmt.Sprintf("last request accepted %s ago", m.now().Sub(m.lastAccepted).Round(time.Second))
			}
			return false, fmt.Sprintf("Userpilot failing for %s, over http.unready_after (%s): %d failed requests, none accepted; %s",
				d.Round(time.Second), m.opts.UnreadyAfter, m.failedInEpisode, last)
		}
	}
	return true, "ok: streaming"
}

func initialSyncReason(read, estimate int64) string {
	s := fmt.Sprintf("initial sync in progress: %d rows read", read)
	if estimate >= 0 {
		s += fmt.Sprintf(" of about %d", estimate)
	}
	return s
}
