package delivery_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/delivery"
	"github.com/pgpilot/pgpilot/mapping"
	"github.com/pgpilot/pgpilot/row"
	"github.com/pgpilot/pgpilot/state"
	"github.com/pgpilot/pgpilot/userpilot"
	"github.com/pgpilot/pgpilot/userpilot/userpilottest"
)

// The pipeline is tested with the real stand-in, the real client and a real
// state directory; the transactions are built by hand, as replication
// emits them.

var rel = &row.Relation{
	Table: row.Table{Schema: "public", Name: "companies"},
	Columns: []row.Column{
		{Name: "id", TypeOID: pgtype.Int8OID, TypeName: "bigint"},
		{Name: "plan", TypeOID: pgtype.TextOID, TypeName: "text"},
		{Name: "notes", TypeOID: pgtype.TextOID, TypeName: "text"},
	},
}

var companies = mapping.Companies{Table: "public.companies", Schema: "public", Name: "companies", CompanyID: "id",
	Metadata: []mapping.Field{{Key: "plan", Column: "plan"}, {Key: "notes", Column: "notes"}}}

// update is an update of company id; notes nil means "unchanged TOAST".
func update(id, plan string, notes *string) row.Change {
	n := row.Value{Unchanged: true}
	if notes != nil {
		n = row.Value{Text: []byte(*notes)}
	}
	return row.Change{Op: row.Update, Relation: rel,
		Values: []row.Value{{Text: []byte(id)}, {Text: []byte(plan)}, n}}
}

func ptr(s string) *string { return &s }

// compile is the mapping for a description of the table, as the daemon
// hands it to the pipeline.
func compile(rel *row.Relation) (delivery.Mapper, error) {
	m, err := mapping.Compile(companies, rel.Table.String(), rel.Columns)
	if err != nil {
		return nil, err
	}
	return m, nil
}

type harness struct {
	up          *userpilottest.Server
	dir         *state.Dir
	store       *state.Store
	statuses    []state.Status
	mu          sync.Mutex
	checkpoints []pglogrepl.LSN
	// acceptedAt records how many records Userpilot had applied when each
	// checkpoint was written.
	acceptedAt []int
	pipe       *delivery.Pipeline
	opts       delivery.Options // what pipe was made with, for restart
}

// restart makes a new pipeline on the same state directory and store, as a
// new process would.
func (h *harness) restart() { h.pipe = delivery.New(h.opts) }

type setup struct {
	standin  userpilottest.Options
	rate     float64 // client real-time rate limit; 0 → 1000
	delivery delivery.Options
}

func newHarness(t *testing.T, s setup) *harness {
	s.standin.APIKey = "k"
	h := &harness{up: userpilottest.NewServer(s.standin)}
	t.Cleanup(h.up.Close)
	var err error
	h.dir, err = state.Open(t.TempDir())
	require.NoError(t, err)
	t.Cleanup(func() { h.dir.Close() })
	index, err := h.dir.OpenStore()
	require.NoError(t, err)
	t.Cleanup(func() { index.Close() })
	h.store = index
	if s.rate == 0 {
		s.rate = 1000
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	client, err := userpilot.New(userpilot.Options{Endpoint: h.up.URL(), APIKey: "k", RateLimit: s.rate,
		MinBackoff: time.Millisecond, MaxBackoff: 20 * time.Millisecond, Logger: quiet})
	require.NoError(t, err)
	o := s.delivery
	o.Mapping, o.Sender, o.DeadLetters, o.Index, o.Outbox, o.InFlight, o.Logger = compile, client, h.dir, index, index, index, quiet
	o.Estimates = index
	o.RealtimeRate = s.rate
	o.NoBulk = o.BulkRate == 0 // real time only, unless a test asks for bulk
	o.Status = func(st state.Status) {
		h.mu.Lock()
		defer h.mu.Unlock()
		h.statuses = append(h.statuses, st)
	}
	o.Checkpoint = func(lsn pglogrepl.LSN, _ any) error {
		h.mu.Lock()
		defer h.mu.Unlock()
		h.checkpoints = append(h.checkpoints, lsn)
		h.acceptedAt = append(h.acceptedAt, h.up.Accepted())
		return nil
	}
	h.opts = o
	h.pipe = delivery.New(o)
	return h
}

// run feeds txns through the pipeline and waits until all is delivered.
func (h *harness) run(ctx context.Context, txns ...row.Transaction) error {
	in := make(chan row.Transaction, len(txns))
	for _, txn := range txns {
		in <- txn
	}
	close(in)
	return h.pipe.Run(ctx, in)
}

func (h *harness) lastCheckpoint() pglogrepl.LSN {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.checkpoints) == 0 {
		return 0
	}
	return h.checkpoints[len(h.checkpoints)-1]
}

func txn(end pglogrepl.LSN, changes ...row.Change) row.Transaction {
	return row.Transaction{Kind: row.Commit, CommitLSN: end - 1, EndLSN: end, Changes: changes}
}

func TestChangesArrivingWhileCompanyIsInFlightAreMergedKeyByKey(t *testing.T) {
	// Company 1's first state is held in flight (a slow answer) while the
	// next two arrive: they wait behind it, merged.
	h := newHarness(t, setup{})
	h.up.FailNext(1, userpilottest.Fault{Delay: 300 * time.Millisecond, Apply: true, Status: 202})
	in := make(chan row.Transaction)
	done := make(chan error, 1)
	go func() { done <- h.pipe.Run(context.Background(), in) }()
	in <- txn(100, update("1", "free", ptr("first note")))
	require.Eventually(t, func() bool { return h.up.IdentifyRequests() == 1 }, 10*time.Second, time.Millisecond, "the first state is in flight")
	in <- txn(200, update("1", "pro", ptr("long note")))
	in <- txn(300, update("1", "enterprise", nil)) // notes: unchanged TOAST
	close(in)
	require.NoError(t, <-done)
	applied := h.up.Applied()
	require.Len(t, applied, 2, "the two changes that waited behind the first made one call")
	assert.Equal(t, map[string]any{"plan": "free", "notes": "first note"}, applied[0].Metadata)
	assert.Equal(t, map[string]any{"plan": "enterprise", "notes": "long note"}, applied[1].Metadata,
		"the newer plan wins, and the key the newest change left out keeps the pending value")
	assert.Equal(t, int64(1), h.pipe.Stats().Coalesced.Load())
	assert.Equal(t, pglogrepl.LSN(300), h.lastCheckpoint())
}

func TestUpdateChangingNothingMappedSendsNothing(t *testing.T) {
	h := newHarness(t, setup{})
	require.NoError(t, h.run(context.Background(), txn(100, update("1", "pro", ptr("n")))))
	require.Equal(t, 1, h.up.IdentifyRequests())
	// Only an unmapped column changed: the mapped values are the same.
	require.NoError(t, h.run(context.Background(), txn(200, update("1", "pro", ptr("n")))))
	assert.Equal(t, 1, h.up.IdentifyRequests(), "a no-op update makes no call")
	assert.Equal(t, int64(1), h.pipe.Stats().Skipped.Load())
	assert.Equal(t, pglogrepl.LSN(200), h.lastCheckpoint(), "a skipped change still moves the checkpoint")
	// An unchanged TOAST value with the same plan is a no-op too.
	require.NoError(t, h.run(context.Background(), txn(300, update("1", "pro", nil))))
	assert.Equal(t, 1, h.up.IdentifyRequests())
	require.NoError(t, h.run(context.Background(), txn(400, update("1", "free", nil))))
	assert.Equal(t, 2, h.up.IdentifyRequests())
}

// TestLookedUpAheadThenChangedIsSent: the no-op index is read for the
// entries behind the front too, in one read; a change merged into one of
// them before it reaches the front must make it be looked up again.
func TestLookedUpAheadThenChangedIsSent(t *testing.T) {
	h := newHarness(t, setup{delivery: delivery.Options{Workers: 1}})
	require.NoError(t, h.run(context.Background(), txn(100, update("1", "pro", ptr("n")))))
	h.up.FailNext(1, userpilottest.Fault{Delay: 300 * time.Millisecond, Apply: true, Status: 202})
	in := make(chan row.Transaction)
	done := make(chan error, 1)
	go func() { done <- h.pipe.Run(context.Background(), in) }()
	// 3 goes out (slowly), 4 waits for the one worker, and 1, looked up
	// with them, holds what Userpilot has.
	in <- txn(200, update("3", "x", ptr("n")), update("4", "y", ptr("n")), update("1", "pro", ptr("n")))
	require.Eventually(t, func() bool { return h.up.IdentifyRequests() == 2 }, 10*time.Second, time.Millisecond, "3 is in flight")
	in <- txn(300, update("1", "free", ptr("n")))
	close(in)
	require.NoError(t, <-done)
	got, _ := h.up.Company("1")
	assert.Equal(t, "free", got["plan"])
	assert.Equal(t, 4, h.up.IdentifyRequests())
}

func TestValueChangedBackWhileInFlightIsStillSent(t *testing.T) {
	// A → B → A, with A arriving while B is in flight. A no-op check that
	// compared with the record of the first A (not yet replaced by B's)
	// would skip it and leave Userpilot at B.
	h := newHarness(t, setup{})
	require.NoError(t, h.run(context.Background(), txn(100, update("1", "A", ptr("n")))))
	h.up.FailNext(1, userpilottest.Fault{Delay: 300 * time.Millisecond, Apply: true, Status: 202})
	in := make(chan row.Transaction)
	done := make(chan error, 1)
	go func() { done <- h.pipe.Run(context.Background(), in) }()
	in <- txn(200, update("1", "B", ptr("n")))
	require.Eventually(t, func() bool { return h.up.IdentifyRequests() == 2 }, 10*time.Second, time.Millisecond, "B is in flight")
	in <- txn(300, update("1", "A", ptr("n")))
	close(in)
	require.NoError(t, <-done)
	got, _ := h.up.Company("1")
	assert.Equal(t, "A", got["plan"])
	assert.Equal(t, 3, h.up.IdentifyRequests())
}

func TestCheckpointComesOnlyAfterEveryCompanyWasAccepted(t *testing.T) {
	h := newHarness(t, setup{})
	h.up.SetFault(&userpilottest.Fault{Delay: 20 * time.Millisecond, Apply: true, Status: 202})
	var changes []row.Change
	for i := 1; i <= 12; i++ {
		changes = append(changes, update(fmt.Sprint(i), "pro", nil))
	}
	require.NoError(t, h.run(context.Background(), txn(300, changes...)))
	require.Equal(t, []pglogrepl.LSN{300}, h.checkpoints)
	assert.Equal(t, []int{12}, h.acceptedAt, "all 12 records were applied before the checkpoint was written")
}

func TestFailedDeliveryIsNotCheckpointed(t *testing.T) {
	h := newHarness(t, setup{})
	h.up.SetFault(&userpilottest.Fault{Status: 503})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	err := h.run(ctx, txn(400, update("1", "pro", nil)))
	require.Error(t, err)
	assert.Empty(t, h.checkpoints, "nothing is checkpointed while Userpilot has not accepted it")
}

func TestSnapshotPiecesMoveNoPositionButTheirEndMarkerDoes(t *testing.T) {
	h := newHarness(t, setup{})
	require.NoError(t, h.run(context.Background(),
		row.Transaction{Changes: []row.Change{update("1", "pro", nil)}}, // EndLSN 0: a piece
	))
	assert.Empty(t, h.checkpoints)
	require.NoError(t, h.run(context.Background(), row.Transaction{EndLSN: 500}))
	assert.Equal(t, []pglogrepl.LSN{500}, h.checkpoints, "a position marker with no changes is checkpointed")
}

func TestUnmappableRowIsDeadLetteredAndTheRestDelivered(t *testing.T) {
	h := newHarness(t, setup{})
	nullID := row.Change{Op: row.Insert, Relation: rel,
		Values: []row.Value{{Null: true}, {Text: []byte("pro")}, {Null: true}}}
	require.NoError(t, h.run(context.Background(), txn(600, nullID, update("2", "free", nil))))
	n, err := state.CountDeadLetters(h.dir.Path())
	require.NoError(t, err)
	assert.Equal(t, 1, n)
	_, ok := h.up.Company("2")
	assert.True(t, ok)
	assert.Equal(t, pglogrepl.LSN(600), h.lastCheckpoint())
	assert.Equal(t, int64(1), h.pipe.Stats().DeadLettered.Load())
}

func TestDeleteAndTruncateAreCountedNotMirrored(t *testing.T) {
	h := newHarness(t, setup{})
	require.NoError(t, h.run(context.Background(), txn(700,
		row.Change{Op: row.Delete, Relation: rel, Values: []row.Value{{Text: []byte("1")}, {Null: true}, {Null: true}}},
		row.Change{Op: row.Truncate, Relation: rel},
	)))
	assert.Zero(t, h.up.IdentifyRequests())
	assert.Empty(t, h.up.Deleted())
	assert.Equal(t, int64(1), h.pipe.Stats().Deletes.Load())
	assert.Equal(t, int64(1), h.pipe.Stats().Truncates.Load())
	assert.Equal(t, pglogrepl.LSN(700), h.lastCheckpoint())
}

// backlog is one transaction updating companies 1..n.
func backlog(end pglogrepl.LSN, n int, plan string) row.Transaction {
	changes := make([]row.Change, n)
	for i := range changes {
		changes[i] = update(fmt.Sprint(i+1), plan, nil)
	}
	return txn(end, changes...)
}

var bulkSetup = setup{
	standin: userpilottest.Options{BulkRecordsPerSecond: 2000},
	rate:    20, // a slow real-time budget, so a backlog of 600 is worth a job
	delivery: delivery.Options{BulkRate: 2000, BulkOverhead: 100 * time.Millisecond, MinBulk: 10,
		PollInterval: 20 * time.Millisecond},
}

func TestBacklogGoesMostlyToABulkJobAndCheckpointsOnlyWhenItCompleted(t *testing.T) {
	h := newHarness(t, bulkSetup)
	require.NoError(t, h.run(context.Background(), backlog(900, 600, "pro")))
	assert.Len(t, h.up.Companies(), 600)
	st := h.pipe.Stats()
	assert.GreaterOrEqual(t, st.BulkJobs.Load(), int64(1))
	assert.Greater(t, st.Bulk.Load(), int64(500), "most of the backlog went in a job")
	assert.Less(t, h.up.IdentifyRequests(), 100, "far fewer real-time calls than companies")
	require.Equal(t, pglogrepl.LSN(900), h.lastCheckpoint())
	h.mu.Lock()
	defer h.mu.Unlock()
	assert.Equal(t, 600, h.acceptedAt[len(h.acceptedAt)-1], "the job had completed (records applied) when the backlog was checkpointed")
}

func TestBulkConflictStormAndFailedJobLoseNothing(t *testing.T) {
	h := newHarness(t, bulkSetup)
	h.up.FailNextBulk(5, userpilottest.Fault{Status: 409})
	h.up.FailNextJob()
	require.NoError(t, h.run(context.Background(), backlog(900, 600, "enterprise")))
	got := h.up.Companies()
	require.Len(t, got, 600)
	for id, md := range got {
		require.Equal(t, "enterprise", md["plan"], "company %s", id)
	}
	assert.GreaterOrEqual(t, h.pipe.Stats().BulkJobs.Load(), int64(1))
}

// TestAFailedJobIsSubmittedAgainFromItsRecord: a job's goroutine lets go
// of the body once Userpilot took the job; when the job fails, the body is
// read back from the job's record and the same records go again in a job,
// not one by one.
func TestAFailedJobIsSubmittedAgainFromItsRecord(t *testing.T) {
	h := newHarness(t, bulkSetup)
	h.up.FailNextJob()
	require.NoError(t, h.run(context.Background(), backlog(900, 600, "enterprise")))
	require.Len(t, h.up.Companies(), 600)
	var accepted, refused int
	for _, r := range h.up.Requests() {
		if r.Path != "/v1/companies/bulk_identify" {
			continue
		}
		if r.Status/100 == 2 {
			accepted++
		} else {
			refused++
		}
	}
	assert.Zero(t, refused, "every submission was a well-formed body")
	assert.GreaterOrEqual(t, accepted, 2, "the failed job, then the same records again in a job")
	assert.Less(t, h.up.IdentifyRequests(), 100, "not sent one by one")
}

func TestRejectedBulkFallsBackToRealtimeAndSetsAsideOnlyTheBadRecord(t *testing.T) {
	s := bulkSetup
	s.rate = 500 // the fallback sends the job's records one by one
	h := newHarness(t, s)
	h.up.RejectCompany("999", 400) // the job takes the newest companies
	require.NoError(t, h.run(context.Background(), backlog(900, 1000, "pro")))
	assert.Len(t, h.up.Companies(), 999)
	refused := 0
	for _, r := range h.up.Requests() {
		if r.Path == "/v1/companies/bulk_identify" && r.Status == 400 {
			refused++
		}
	}
	assert.GreaterOrEqual(t, refused, 1, "the job was refused, then sent record by record")
	n, err := state.CountDeadLetters(h.dir.Path())
	require.NoError(t, err)
	assert.Equal(t, 1, n)
}

func TestPendingStateIsBoundedByApplyingBackPressure(t *testing.T) {
	h := newHarness(t, setup{rate: 200, delivery: delivery.Options{MaxPending: 5}})
	h.up.SetFault(&userpilottest.Fault{Delay: 5 * time.Millisecond, Apply: true, Status: 202})
	in := make(chan row.Transaction) // unbuffered: the pipeline pulls
	done := make(chan error, 1)
	go func() { done <- h.pipe.Run(context.Background(), in) }()
	maxSeen := int64(0)
	for i := 1; i <= 200; i++ {
		in <- txn(pglogrepl.LSN(i*10), update(fmt.Sprint(i), "pro", nil))
		maxSeen = max(maxSeen, h.pipe.Stats().Pending.Load())
	}
	close(in)
	require.NoError(t, <-done)
	assert.LessOrEqual(t, maxSeen, int64(5+1), "never more than MaxPending companies held (one may be mid-add)")
	assert.Len(t, h.up.Companies(), 200)
}

// The pending count is what is undelivered, not what the checkpoint's
// order still holds: companies delivered behind a slow one are not pending.
func TestPendingCountsOnlyWhatIsUndelivered(t *testing.T) {
	h := newHarness(t, setup{delivery: delivery.Options{Workers: 4}})
	h.up.FailNext(1, userpilottest.Fault{Delay: 2 * time.Second, Apply: true, Status: 202}) // company 1 is slow
	in, done := h.feed(context.Background())
	in <- txn(10, update("1", "pro", nil))
	require.Eventually(t, func() bool { return h.pipe.Stats().Pending.Load() == 1 }, 5*time.Second, time.Millisecond)
	for i := 2; i <= 11; i++ {
		in <- txn(pglogrepl.LSN(10*i), update(fmt.Sprint(i), "pro", nil))
	}
	require.Eventually(t, func() bool { return h.up.Accepted() >= 10 }, 5*time.Second, time.Millisecond)
	time.Sleep(300 * time.Millisecond) // a few ticks
	assert.Equal(t, int64(1), h.pipe.Stats().Pending.Load(), "only company 1 is still on its way")
	close(in)
	require.NoError(t, <-done)
	assert.Zero(t, h.pipe.Stats().Pending.Load())
}

// A new replication session streams again from the durable checkpoint,
// which may be behind what the pipeline (which outlives sessions) already
// received: those transactions are dropped, or an older value would be
// merged over a newer pending one.
func TestTransactionsReceivedBeforeAreNotMergedAgain(t *testing.T) {
	h := newHarness(t, setup{})
	h.up.SetFault(&userpilottest.Fault{Status: 503}) // nothing is delivered: all stays pending
	in, done := h.feed(context.Background())
	in <- txn(10, update("1", "old", nil))
	in <- txn(20, update("1", "new", nil))
	// The session ends and the next one streams from the checkpoint (0).
	in <- txn(10, update("1", "old", nil))
	in <- row.Transaction{Kind: row.Piece, CommitLSN: 15, Changes: []row.Change{update("1", "old", nil)}}
	in <- txn(20, update("1", "new", nil))
	in <- txn(30, update("2", "pro", nil)) // new: taken
	h.up.SetFault(nil)
	close(in)
	require.NoError(t, <-done)
	got, _ := h.up.Company("1")
	assert.Equal(t, "new", got["plan"])
	assert.Equal(t, int64(3), h.pipe.Stats().Changes.Load(), "the three repeats were dropped")
	assert.Equal(t, pglogrepl.LSN(30), h.lastCheckpoint())
}

// A bulk job's write trusts the look-up that found no record of a company
// (state.KnownAbsent) only where it did: a company the index holds keeps
// the keys an update left out (an unchanged TOAST value), so the same
// values later are skipped, not sent again.
func TestABulkJobKeepsTheKeysAnUpdateLeftOutOfARecordedCompany(t *testing.T) {
	h := newHarness(t, bulkSetup)
	const n = 600
	rows := func(plan string, notes *string) row.Transaction {
		changes := make([]row.Change, n)
		for i := range changes {
			changes[i] = update(fmt.Sprint(i+1), plan, notes)
		}
		return txn(900, changes...)
	}
	require.NoError(t, h.run(context.Background(), rows("pro", ptr("n"))))
	h.restart()
	require.NoError(t, h.run(context.Background(), rows("free", nil))) // notes unchanged: left out
	bulk := h.pipe.Stats().Bulk.Load()
	require.Greater(t, bulk, int64(n/2), "most went in bulk jobs")
	sent := len(h.up.Requests())
	h.restart()
	require.NoError(t, h.run(context.Background(), rows("free", ptr("n"))))
	assert.Equal(t, int64(n), h.pipe.Stats().Skipped.Load(), "Userpilot holds these values already")
	assert.Equal(t, sent, len(h.up.Requests()), "nothing was sent")
}

// When the input pauses, the dispatcher wakes on its own to size the job
// the pause allows: with its housekeeping tick an hour long and the
// real-time calls held, nothing else happens that would wake it, and the
// job goes all the same (before, the end of every backlog waited for the
// next tick).
func TestTheInputsPauseWakesTheDispatcherForItsJob(t *testing.T) {
	s := bulkSetup
	s.delivery.Tick = time.Hour
	s.delivery.Workers = 2
	h := newHarness(t, s)
	h.up.FailNext(2, userpilottest.Fault{Delay: time.Minute}) // both workers' calls hang
	ctx, cancel := context.WithCancel(context.Background())
	in := make(chan row.Transaction, 1)
	done := make(chan error, 1)
	go func() { done <- h.pipe.Run(ctx, in) }()
	in <- backlog(900, 600, "pro") // and then nothing: the input stays open
	jobs := func() int {
		n := 0
		for _, r := range h.up.Requests() {
			if r.Path == "/v1/companies/bulk_identify" {
				n++
			}
		}
		return n
	}
	assert.Eventually(t, func() bool { return jobs() > 0 }, 10*time.Second, 10*time.Millisecond,
		"no bulk job was submitted while nothing but the input's pause could wake the dispatcher")
	cancel()
	<-done
}
