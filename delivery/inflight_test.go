package delivery_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/delivery"
	"github.com/pgpilot/pgpilot/row"
	"github.com/pgpilot/pgpilot/state"
	"github.com/pgpilot/pgpilot/userpilot"
	"github.com/pgpilot/pgpilot/userpilot/userpilottest"
)

// client is a second Userpilot client on the harness's stand-in: what an
// earlier pgpilot process sent.
func (h *harness) client(t *testing.T) *userpilot.Client {
	c, err := userpilot.New(userpilot.Options{Endpoint: h.up.URL(), APIKey: "k", MinBackoff: time.Millisecond, MaxBackoff: 20 * time.Millisecond})
	require.NoError(t, err)
	return c
}

// An earlier run sent company 1's state B and died before recording it in
// the no-op index (which still says A); while it was down the company went
// back to A. Streamed again, B and A merge into A: the index must not be
// trusted to call that unchanged, or Userpilot keeps B for good.
func TestAStateSentButNotRecordedBeforeARestartIsNotTrusted(t *testing.T) {
	h := newHarness(t, setup{})
	ctx := context.Background()
	require.NoError(t, h.run(ctx, txn(10, update("1", "A", nil))))
	// The earlier run marks company 1 as being sent, sends B, and dies
	// before recording it.
	require.NoError(t, h.store.MarkSending([]string{"1"}))
	require.NoError(t, h.client(t).IdentifyCompany(ctx, userpilot.Company{CompanyID: "1",
		Metadata: userpilottest.Metadata(map[string]any{"plan": "B"})}))
	got, _ := h.up.Company("1")
	require.Equal(t, "B", got["plan"])

	h.restart() // a new process: the checkpoint was before B's change
	require.NoError(t, h.run(ctx, txn(20, update("1", "B", nil)), txn(30, update("1", "A", nil))))
	got, _ = h.up.Company("1")
	assert.Equal(t, "A", got["plan"], "the merged state was sent, not skipped as unchanged")
}

// A bulk job the earlier run submitted is still running at Userpilot after
// the restart, carrying company 1's older state. The newer state streamed
// now must wait for that job to end, on every path; sent at once, it would
// be overwritten when the old job completes.
func TestABulkJobFromBeforeTheRestartHoldsItsCompanies(t *testing.T) {
	h := newHarness(t, setup{standin: userpilottest.Options{BulkRecordsPerSecond: 2},
		delivery: delivery.Options{PollInterval: 20 * time.Millisecond}})
	ctx := context.Background()
	old := []userpilot.Company{
		{CompanyID: "1", Metadata: userpilottest.Metadata(map[string]any{"plan": "old"})},
		{CompanyID: "2", Metadata: userpilottest.Metadata(map[string]any{"plan": "old"})},
		{CompanyID: "3", Metadata: userpilottest.Metadata(map[string]any{"plan": "old"})},
	}
	c := h.client(t)
	key, err := h.store.BeginJob(old)
	require.NoError(t, err)
	job, err := c.BulkIdentifyCompanies(ctx, old) // about 1.5 s at Userpilot
	require.NoError(t, err)
	require.NoError(t, h.store.JobSubmitted(key, job.ID))

	h.restart()
	require.NoError(t, h.run(ctx, txn(10, update("1", "new", nil))))
	require.Eventually(t, func() bool {
		j, err := c.BackgroundJob(ctx, job.ID)
		return err == nil && j.Status == userpilot.JobCompleted
	}, 10*time.Second, 20*time.Millisecond, "the old job ends")
	got, _ := h.up.Company("1")
	assert.Equal(t, "new", got["plan"], "the newer state went after the old job, not under it")
	jobs, err := h.store.Jobs()
	require.NoError(t, err)
	assert.Empty(t, jobs, "the job's end was seen: its record is gone")
}

// A bulk job the earlier run submitted and died before hearing the answer
// to has no id to poll: it holds its companies for as long as such a job
// would take with the slack of an overdue one, not for the estimate alone.
// The estimate here says a millisecond; the stand-in (no speed) completes a
// job nobody polls a second after its submission, and a newer state sent
// before that is overwritten by the old one.
func TestABulkJobWhoseAnswerWasLostHoldsItsCompaniesPastTheEstimate(t *testing.T) {
	h := newHarness(t, setup{delivery: delivery.Options{PollInterval: 1500 * time.Millisecond,
		BulkRate: 1_000_000, BulkOverhead: time.Millisecond}})
	ctx := context.Background()
	old := []userpilot.Company{
		{CompanyID: "1", Metadata: userpilottest.Metadata(map[string]any{"plan": "old"})},
		{CompanyID: "2", Metadata: userpilottest.Metadata(map[string]any{"plan": "old"})},
	}
	_, err := h.store.BeginJob(old)
	require.NoError(t, err)
	submitted := time.Now()
	_, err = h.client(t).BulkIdentifyCompanies(ctx, old) // its answer never recorded
	require.NoError(t, err)

	h.restart()
	require.NoError(t, h.run(ctx, txn(10, update("1", "new", nil))))
	time.Sleep(time.Until(submitted.Add(1200 * time.Millisecond))) // the old job has completed by now
	got, _ := h.up.Company("1")
	assert.Equal(t, "new", got["plan"], "the newer state went under the old job, which overwrote it")
	jobs, err := h.store.Jobs()
	require.NoError(t, err)
	assert.Empty(t, jobs)
}

// Every job the pipeline submits is recorded before it is, and forgotten
// once its end is seen.
func TestABulkJobIsRecordedUntilItsEndIsSeen(t *testing.T) {
	// (Told that bulk is far the faster, the first job is a probe of at
	// least MinBulk.)
	h := newHarness(t, setup{standin: userpilottest.Options{BulkRecordsPerSecond: 200},
		delivery: delivery.Options{BulkRate: 1_000_000_000, MinBulk: 150, BulkOverhead: 100 * time.Microsecond, PollInterval: 10 * time.Millisecond}})
	in, done := h.feed(context.Background())
	var changes = make([]row.Change, 0, 300)
	for i := range 300 {
		changes = append(changes, update(fmt.Sprint(i+1), "pro", nil))
	}
	in <- txn(10, changes...)
	require.Eventually(t, func() bool {
		jobs, err := h.store.Jobs()
		return err == nil && len(jobs) == 1 && jobs[0].ID != "" && len(jobs[0].Companies) > 100
	}, 10*time.Second, time.Millisecond, "the running job is on record, with its id and companies")
	close(in)
	require.NoError(t, <-done)
	jobs, err := h.store.Jobs()
	require.NoError(t, err)
	assert.Empty(t, jobs)
}

// The earlier run was in outbox mode: company 1's job was running at
// Userpilot and its newer state was owed in the outbox when it died. After
// the restart the job holds company 1 in memory; the outbox record must
// wait behind it and go once it ends, not be forgotten with the job.
func TestWhatTheOutboxOwesBehindAJobFromBeforeTheRestartIsSentAfterIt(t *testing.T) {
	h := newHarness(t, setup{standin: userpilottest.Options{BulkRecordsPerSecond: 2},
		delivery: delivery.Options{PollInterval: 20 * time.Millisecond}})
	ctx := context.Background()
	old := []userpilot.Company{
		{CompanyID: "1", Metadata: userpilottest.Metadata(map[string]any{"plan": "old"})},
		{CompanyID: "2", Metadata: userpilottest.Metadata(map[string]any{"plan": "old"})},
	}
	c := h.client(t)
	key, err := h.store.BeginJob(old)
	require.NoError(t, err)
	job, err := c.BulkIdentifyCompanies(ctx, old) // about a second at Userpilot
	require.NoError(t, err)
	require.NoError(t, h.store.JobSubmitted(key, job.ID))
	require.NoError(t, h.store.WriteOutbox([]state.OutboxRecord{
		{CompanyID: "1", Metadata: userpilottest.Metadata(map[string]any{"plan": "newest"}), LSN: 50},
	}, nil))

	h.restart()
	runCtx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	require.NoError(t, h.run(runCtx), "everything owed is delivered, and the run ends")
	got, _ := h.up.Company("1")
	assert.Equal(t, "newest", got["plan"], "the owed state went after the old job")
	recs, err := h.store.Outbox()
	require.NoError(t, err)
	assert.Empty(t, recs)
}
