package delivery_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/delivery"
	"github.com/pgpilot/pgpilot/mapping"
	"github.com/pgpilot/pgpilot/row"
	"github.com/pgpilot/pgpilot/state"
	"github.com/pgpilot/pgpilot/userpilot/userpilottest"
)

// feed runs the pipeline on an unbuffered channel the test writes to.
func (h *harness) feed(ctx context.Context) (chan<- row.Transaction, <-chan error) {
	in := make(chan row.Transaction)
	done := make(chan error, 1)
	go func() { done <- h.pipe.Run(ctx, in) }()
	return in, done
}

func (h *harness) lastStatus() state.Status {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.statuses) == 0 {
		return state.Status{}
	}
	return h.statuses[len(h.statuses)-1]
}

func TestOutageMovesPendingStateToTheOutboxAndConfirmsIt(t *testing.T) {
	h := newHarness(t, setup{delivery: delivery.Options{OutboxAfter: 300 * time.Millisecond}})
	h.up.SetFault(&userpilottest.Fault{Status: 503}) // Userpilot is down
	in, done := h.feed(context.Background())
	// 5 rounds of updates to the same 40 companies.
	lsn := pglogrepl.LSN(0)
	for round := range 5 {
		for id := 1; id <= 40; id++ {
			lsn += 10
			in <- txn(lsn, update(fmt.Sprint(id), fmt.Sprintf("plan-%d", round), nil))
		}
	}
	require.Eventually(t, func() bool { return h.lastCheckpoint() == lsn }, 10*time.Second, 10*time.Millisecond,
		"with nothing delivered, the checkpoint still reaches the last change: it is in the outbox")
	assert.Zero(t, h.up.Accepted())
	recs, err := h.store.Outbox()
	require.NoError(t, err)
	assert.Len(t, recs, 40, "one record per company, not per change")
	for _, r := range recs {
		assert.Equal(t, "plan-4", r.Metadata.Values()["plan"], "the record holds the newest state")
	}
	assert.Equal(t, state.ModeOutbox, h.lastStatus().Mode)

	h.up.SetFault(nil) // Userpilot is back
	close(in)
	require.NoError(t, <-done)
	for id := 1; id <= 40; id++ {
		got, _ := h.up.Company(fmt.Sprint(id))
		assert.Equal(t, "plan-4", got["plan"])
	}
	recs, err = h.store.Outbox()
	require.NoError(t, err)
	assert.Empty(t, recs, "delivered companies leave the outbox")
	assert.Equal(t, state.ModeHold, h.lastStatus().Mode, "an empty outbox returns to hold mode")
}

func TestWhatTheOutboxOwesIsDeliveredAfterARestart(t *testing.T) {
	h := newHarness(t, setup{})
	require.NoError(t, h.store.WriteOutbox([]state.OutboxRecord{
		{CompanyID: "1", Metadata: userpilottest.Metadata(map[string]any{"plan": "owed"}), LSN: 50},
		{CompanyID: "2", Metadata: userpilottest.Metadata(map[string]any{"plan": "owed too"}), LSN: 60},
	}, nil))
	// The stream resumes after the checkpoint; a newer change to company 2
	// arrives while its owed state is pending.
	require.NoError(t, h.run(context.Background(), txn(100, update("2", "newer", nil))))
	got1, _ := h.up.Company("1")
	got2, _ := h.up.Company("2")
	assert.Equal(t, "owed", got1["plan"])
	assert.Equal(t, "newer", got2["plan"], "a newer change is never overtaken by an older owed state")
	recs, err := h.store.Outbox()
	require.NoError(t, err)
	assert.Empty(t, recs)
}

func TestRetainedWALAboveLimitSwitchesToOutboxEvenWhenUserpilotIsUp(t *testing.T) {
	h := newHarness(t, setup{delivery: delivery.Options{MaxRetainedWAL: 1 << 20,
		RetainedWAL: func() int64 { return 1 << 30 }}})
	h.up.SetFault(&userpilottest.Fault{Delay: 2 * time.Second, Apply: true, Status: 202}) // slow, not down
	in, done := h.feed(context.Background())
	in <- txn(10, update("1", "pro", nil))
	require.Eventually(t, func() bool { return h.lastCheckpoint() == 10 }, 5*time.Second, 10*time.Millisecond,
		"confirmed while the call is still in flight, because it is in the outbox")
	assert.Zero(t, h.up.Accepted())
	assert.Contains(t, h.lastStatus().Reason, "max_retained_wal")
	close(in)
	require.NoError(t, <-done)
}

// A re-sync asks for rows to be sent even where the no-op index says
// Userpilot holds them; that request must survive in the outbox across a
// restart, or the re-sent rows are skipped as unchanged.
func TestAReSyncWaitingInTheOutboxIsStillSentAfterARestart(t *testing.T) {
	h := newHarness(t, setup{delivery: delivery.Options{OutboxAfter: 100 * time.Millisecond}})
	require.NoError(t, h.run(context.Background(), txn(10, update("1", "pro", nil))))
	require.Equal(t, 1, h.up.IdentifyRequests())

	h.up.SetFault(&userpilottest.Fault{Status: 503}) // Userpilot is down while the re-sync runs
	ctx, cancel := context.WithCancel(context.Background())
	in, done := h.feed(ctx)
	in <- row.Transaction{Kind: row.Chunk, Resend: true, Changes: []row.Change{update("1", "pro", nil)}}
	require.Eventually(t, func() bool {
		recs, err := h.store.Outbox()
		return err == nil && len(recs) == 1
	}, 10*time.Second, 10*time.Millisecond, "the re-sent row waits in the outbox")
	cancel() // pgpilot stops
	require.ErrorIs(t, <-done, context.Canceled)

	h.up.SetFault(nil)
	before := h.up.IdentifyRequests()
	h.restart()
	require.NoError(t, h.run(context.Background()))
	assert.Greater(t, h.up.IdentifyRequests(), before, "the re-sync's row is sent, not skipped as unchanged")
}

// A bulk job that Userpilot is visibly working through is progress: it must
// not count as "Userpilot has accepted nothing" and send pgpilot to its
// outbox while the job runs.
func TestAHealthyLongBulkJobIsNotAnOutage(t *testing.T) {
	h := newHarness(t, setup{standin: userpilottest.Options{BulkRecordsPerSecond: 200},
		delivery: delivery.Options{OutboxAfter: 300 * time.Millisecond, BulkRate: 1_000_000_000, MinBulk: 10,
			BulkOverhead: 100 * time.Microsecond, PollInterval: 50 * time.Millisecond}})
	var changes []row.Change
	for i := range 400 { // a job of ~400 records at 200/s: about 2 s
		changes = append(changes, update(fmt.Sprint(i+1), "pro", nil))
	}
	require.NoError(t, h.run(context.Background(), txn(10, changes...)))
	require.Positive(t, h.pipe.Stats().BulkJobs.Load(), "the backlog went in a job")
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, st := range h.statuses {
		assert.NotEqual(t, state.ModeOutbox, st.Mode, "outbox mode during a healthy job: %s", st.Reason)
	}
}

// readCounter is the store, counting how many outbox records are read at
// once: the most a pipeline holds of what is owed.
type readCounter struct {
	*state.Store
	mu      sync.Mutex
	maxRead int
}

func (r *readCounter) ReadOutbox(ids []string) ([]state.OutboxRecord, error) {
	r.mu.Lock()
	r.maxRead = max(r.maxRead, len(ids))
	r.mu.Unlock()
	return r.Store.ReadOutbox(ids)
}

// During an outage memory is a window over what is owed: past it, changes
// to companies not in memory are folded into their outbox records on disk,
// and the checkpoint still reaches the last change; a restart loads no more
// than the window; once Userpilot is back, all of it is delivered, newest
// values winning.
func TestMemoryIsAWindowOverWhatIsOwed(t *testing.T) {
	const window, companies = 50, 500
	h := newHarness(t, setup{delivery: delivery.Options{MaxPending: window, OutboxAfter: 100 * time.Millisecond}})
	h.up.SetFault(&userpilottest.Fault{Status: 503})
	ctx, cancel := context.WithCancel(context.Background())
	in, done := h.feed(ctx)
	lsn := pglogrepl.LSN(0)
	for round := range 2 {
		for id := 1; id <= companies; id++ {
			lsn += 10
			in <- txn(lsn, update(fmt.Sprint(id), fmt.Sprintf("plan-%d", round), nil))
		}
	}
	require.Eventually(t, func() bool { return h.lastCheckpoint() == lsn }, 20*time.Second, 10*time.Millisecond,
		"every change is owed durably: the checkpoint reaches the last")
	assert.LessOrEqual(t, h.pipe.Stats().InMemory.Load(), int64(window), "memory holds the window, the rest is on disk")
	recs, err := h.store.Outbox()
	require.NoError(t, err)
	require.Len(t, recs, companies)
	for _, r := range recs {
		require.Equal(t, "plan-1", r.Metadata.Values()["plan"], "company %s: the record holds the newest state", r.CompanyID)
	}
	assert.Equal(t, int64(companies), h.pipe.Stats().Pending.Load(), "those only on disk count as pending")
	cancel()
	require.ErrorIs(t, <-done, context.Canceled)

	// A restart with that backlog on disk loads a window of it at a time.
	counter := &readCounter{Store: h.store}
	h.opts.Outbox = counter
	h.restart()
	in, done = h.feed(context.Background())
	require.Eventually(t, func() bool { return h.pipe.Stats().Pending.Load() == companies }, 10*time.Second, time.Millisecond)
	assert.LessOrEqual(t, h.pipe.Stats().InMemory.Load(), int64(window), "a restart loads a window of the backlog, not all of it")
	h.up.SetFault(nil)
	close(in)
	require.NoError(t, <-done)
	assert.LessOrEqual(t, counter.maxRead, window, "never more than the window read into memory")
	assert.Len(t, h.up.Companies(), companies)
	for id := 1; id <= companies; id++ {
		got, _ := h.up.Company(fmt.Sprint(id))
		assert.Equal(t, "plan-1", got["plan"])
	}
	recs, err = h.store.Outbox()
	require.NoError(t, err)
	assert.Empty(t, recs)
}

// What the outbox owes is refilled oldest first (by when it was first
// owed, not by company id), a window at a time.
func TestTheOutboxIsRefilledOldestFirst(t *testing.T) {
	const window, companies = 5, 40
	h := newHarness(t, setup{delivery: delivery.Options{MaxPending: window, Workers: 1, NoBulk: true}})
	var recs []state.OutboxRecord
	began := time.Now().Add(-time.Hour)
	for i := range companies {
		// Company ids sort the other way from their age.
		recs = append(recs, state.OutboxRecord{CompanyID: fmt.Sprintf("c%03d", companies-i),
			Metadata: userpilottest.Metadata(map[string]any{"plan": "owed"}), LSN: 50, Since: began.Add(time.Duration(i) * time.Second)})
	}
	require.NoError(t, h.store.WriteOutbox(recs, nil))
	require.NoError(t, h.run(context.Background()))
	var order []string
	for _, a := range h.up.Applied() {
		order = append(order, a.CompanyID)
	}
	want := make([]string, companies)
	for i := range companies {
		want[i] = fmt.Sprintf("c%03d", companies-i)
	}
	assert.Equal(t, want, order, "delivered in the order they were owed")
}

// sleepyIndex takes its time over the first write of a job's part.
type sleepyIndex struct {
	delivery.Index
	once  sync.Once
	slept bool
}

func (x *sleepyIndex) RecordProfiles(ps state.Profiles) error {
	if ps.Len() >= 100 {
		x.once.Do(func() { time.Sleep(1500 * time.Millisecond); x.slept = true })
	}
	return x.Index.RecordProfiles(ps)
}

// Writing a completed job to the index is pgpilot's own work, however long
// it takes: Userpilot applied the job, and that is no outage.
func TestRecordingACompletedJobIsNotAnOutage(t *testing.T) {
	h := newHarness(t, setup{standin: userpilottest.Options{BulkRecordsPerSecond: 1_000_000},
		delivery: delivery.Options{OutboxAfter: 300 * time.Millisecond, BulkRate: 1_000_000, MinBulk: 10,
			BulkOverhead: 100 * time.Microsecond, PollInterval: 50 * time.Millisecond}})
	idx := &sleepyIndex{Index: h.opts.Index}
	h.opts.Index = idx
	h.restart()
	var changes []row.Change
	for i := range 400 {
		changes = append(changes, update(fmt.Sprint(i+1), "pro", nil))
	}
	require.NoError(t, h.run(context.Background(), txn(10, changes...)))
	require.Positive(t, h.pipe.Stats().BulkJobs.Load(), "the backlog went in a job")
	require.True(t, idx.slept, "the job's index write took its time")
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, st := range h.statuses {
		assert.NotEqual(t, state.ModeOutbox, st.Mode, "outbox mode while a completed job was recorded: %s", st.Reason)
	}
}

// A backlog larger than memory, delivered at Userpilot's pace: once the
// window has held the input back for ReadAheadAfter without a window's
// worth of changes going in, the rest is read ahead into the outbox, where
// a company's later changes merge. Each company then goes out about once,
// not once per change, and the checkpoint reaches the last change while
// most of it is still owed (the slot's WAL is freed).
func TestABacklogLargerThanMemoryIsReadAheadAndMerged(t *testing.T) {
	const window, companies, rounds = 20, 200, 3
	h := newHarness(t, setup{rate: 50, delivery: delivery.Options{MaxPending: window, Workers: 1, ReadAheadAfter: 300 * time.Millisecond}})
	var txns []row.Transaction
	lsn := pglogrepl.LSN(0)
	for round := range rounds {
		for id := 1; id <= companies; id++ {
			lsn += 10
			txns = append(txns, txn(lsn, update(fmt.Sprint(id), fmt.Sprintf("plan-%d", round), nil)))
		}
	}
	require.NoError(t, h.run(context.Background(), txns...))

	for id := 1; id <= companies; id++ {
		got, _ := h.up.Company(fmt.Sprint(id))
		require.Equal(t, fmt.Sprintf("plan-%d", rounds-1), got["plan"], "company %d ends at its last change", id)
	}
	// Held back in memory, every change would go out: 600 calls. Read
	// ahead, the companies sent before it started go twice, the rest once.
	assert.Less(t, h.up.IdentifyRequests(), companies+companies/2,
		"a company's later changes merged into what was owed (%d calls for %d companies × %d changes)", h.up.IdentifyRequests(), companies, rounds)
	h.mu.Lock()
	defer h.mu.Unlock()
	var readAhead bool
	for _, st := range h.statuses {
		readAhead = readAhead || (st.Mode == state.ModeOutbox && strings.Contains(st.Reason, "outgrew memory"))
	}
	assert.True(t, readAhead, "outbox mode, for the backlog that outgrew memory")
	early := false
	for i, cp := range h.checkpoints {
		early = early || (cp == lsn && h.acceptedAt[i] < companies)
	}
	assert.True(t, early, "the checkpoint reached the last change while most companies were still owed")
}

// A catch-up that fills the window at once, on a slow real-time path with
// bulk jobs allowed but none measured yet, is not read ahead: until a job
// is measured the bulk path's pace is the configured bulk_rate, and the
// first real-time calls alone make the window look like far more than
// ReadAheadAfter's work.
func TestACatchUpIsNotReadAheadByTheFirstRealTimeCallsAlone(t *testing.T) {
	const window, companies = 200, 2000
	h := newHarness(t, setup{rate: 20,
		standin:  userpilottest.Options{BulkRecordsPerSecond: 100_000},
		delivery: delivery.Options{MaxPending: window, BulkRate: 1000, MinBulk: 10, ReadAheadAfter: 300 * time.Millisecond}})
	var txns []row.Transaction
	for id := 1; id <= companies; id++ {
		txns = append(txns, txn(pglogrepl.LSN(10*id), update(fmt.Sprint(id), "pro", nil)))
	}
	require.NoError(t, h.run(context.Background(), txns...))
	require.Len(t, h.up.Companies(), companies)
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, st := range h.statuses {
		require.False(t, st.Mode == state.ModeOutbox && strings.Contains(st.Reason, "outgrew memory"),
			"read ahead by the real-time path's pace alone: %+v", st)
	}
	assert.Positive(t, h.pipe.Stats().BulkJobs.Load())
}

// While a backlog larger than memory is read ahead, a bulk job waits for
// the input to pause: sized from the window as it filled, a job would carry
// states that the changes behind it replace, and those companies would go
// again. Each company changes three times, in order; the window holds a
// fifth of them, and Userpilot's measured pace makes the window take longer
// than ReadAheadAfter to deliver.
func TestABulkJobWaitsForTheReadAheadAndCarriesTheLastStates(t *testing.T) {
	const window, companies, rounds = 60, 300, 3
	h := newHarness(t, setup{rate: 20,
		standin:  userpilottest.Options{BulkRecordsPerSecond: 100, JobOverhead: 50 * time.Millisecond},
		delivery: delivery.Options{MaxPending: window, Workers: 1, BulkRate: 100, MinBulk: 10, ReadAheadAfter: 300 * time.Millisecond}})
	// A first company, alone, so that the bulk path is measured before the
	// backlog comes.
	var txns []row.Transaction
	lsn := pglogrepl.LSN(10)
	for id := 1; id <= 20; id++ {
		lsn += 10
		txns = append(txns, txn(lsn, update(fmt.Sprint(-id), "warm-up", nil)))
	}
	require.NoError(t, h.run(context.Background(), txns...))
	txns = txns[:0]
	for round := range rounds {
		for id := 1; id <= companies; id++ {
			lsn += 10
			txns = append(txns, txn(lsn, update(fmt.Sprint(id), fmt.Sprintf("plan-%d", round), nil)))
		}
	}
	require.NoError(t, h.run(context.Background(), txns...))

	stale, bulk := 0, 0
	for _, a := range h.up.Applied() {
		if a.Kind != "bulk identify" || strings.HasPrefix(a.CompanyID, "-") {
			continue
		}
		bulk++
		if a.Metadata["plan"] != fmt.Sprintf("plan-%d", rounds-1) {
			stale++
		}
	}
	for id := 1; id <= companies; id++ {
		got, _ := h.up.Company(fmt.Sprint(id))
		require.Equal(t, fmt.Sprintf("plan-%d", rounds-1), got["plan"], "company %d ends at its last change", id)
	}
	require.Positive(t, bulk, "the backlog went in bulk jobs too")
	assert.LessOrEqual(t, stale, window/2, "bulk jobs carried %d states that later changes replaced (of %d bulk records)", stale, bulk)
}

// A user owed in the outbox carries its company under
// mapping.MembershipKey. After a restart, a bulk job can be sized from the
// outbox before any row of the users table is mapped in the new process
// (the stream has not brought one yet): the job must still send the
// company as each record's company_id, never as a metadata key named
// users.company_id (Userpilot would keep that key on every such user, and
// the job would not set their company).
func TestAUserOwedInTheOutboxGoesInBulkWithItsCompanyAfterARestart(t *testing.T) {
	// A slow real-time path, so that what the outbox owes goes in jobs.
	h := newHarness(t, setup{rate: 10, delivery: delivery.Options{BulkRate: 1000, MinBulk: 10}})
	const users = 300
	var recs []state.OutboxRecord
	for i := 1; i <= users; i++ {
		recs = append(recs, state.OutboxRecord{CompanyID: delivery.KeyOf(mapping.User, fmt.Sprint(i)), LSN: 50,
			Metadata: userpilottest.Metadata(map[string]any{mapping.MembershipKey: fmt.Sprint(i % 7), "name": fmt.Sprint("user ", i)})})
	}
	require.NoError(t, h.store.WriteOutbox(recs, nil))
	require.NoError(t, h.run(context.Background()))

	var bulk int
	var asKey []string
	for _, a := range h.up.AppliedUsers() {
		if a.Kind == "bulk identify" {
			bulk++
		}
		if _, ok := a.Metadata[mapping.MembershipKey]; ok {
			asKey = append(asKey, fmt.Sprintf("user %s (%s, company %q)", a.UserID, a.Kind, a.Company))
		}
	}
	require.Positive(t, bulk, "some users went in a bulk job")
	assert.Empty(t, asKey[:min(len(asKey), 5)], "%d users sent with their company as a metadata key", len(asKey))
	for i := 1; i <= users; i++ {
		u, ok := h.up.User(fmt.Sprint(i))
		require.True(t, ok, "user %d", i)
		assert.Equal(t, fmt.Sprint(i%7), u.Company, "user %d's company", i)
		assert.Equal(t, fmt.Sprint("user ", i), u.Metadata["name"])
	}
}
