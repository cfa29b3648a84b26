package delivery_test

import (
	"context"
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
	"github.com/pgpilot/pgpilot/replication"
	"github.com/pgpilot/pgpilot/state"
	"github.com/pgpilot/pgpilot/userpilot"
	"github.com/pgpilot/pgpilot/userpilot/userpilottest"
)

// The pipeline is tested with the real stand-in and a real state directory;
// the transactions are built by hand, as replication would emit them.

var rel = &replication.Relation{
	Table: replication.Table{Schema: "public", Name: "companies"},
	Columns: []replication.Column{
		{Name: "id", TypeOID: pgtype.Int8OID, TypeName: "bigint"},
		{Name: "plan", TypeOID: pgtype.TextOID, TypeName: "text"},
		{Name: "notes", TypeOID: pgtype.TextOID, TypeName: "text"},
	},
}

var companies = mapping.Companies{Table: "public.companies", Schema: "public", Name: "companies", CompanyID: "id",
	Metadata: []mapping.Field{{Key: "plan", Column: "plan"}, {Key: "notes", Column: "notes"}}}

func row(id, plan string, notes *string) replication.Change {
	n := replication.Value{Unchanged: true}
	if notes != nil {
		n = replication.Value{Text: []byte(*notes)}
	}
	return replication.Change{Op: replication.Update, Relation: rel,
		Values: []replication.Value{{Text: []byte(id)}, {Text: []byte(plan)}, n}}
}

type harness struct {
	up          *userpilottest.Server
	dir         *state.Dir
	mu          sync.Mutex
	checkpoints []pglogrepl.LSN
	// acceptedAt records how many records Userpilot had applied when each
	// checkpoint was written.
	acceptedAt []int
	pipe       *delivery.Pipeline
}

func newHarness(t *testing.T) *harness {
	h := &harness{up: userpilottest.NewServer(userpilottest.Options{APIKey: "k"})}
	t.Cleanup(h.up.Close)
	var err error
	h.dir, err = state.Open(t.TempDir())
	require.NoError(t, err)
	t.Cleanup(func() { h.dir.Close() })
	client, err := userpilot.New(userpilot.Options{Endpoint: h.up.URL(), APIKey: "k", RateLimit: 1000,
		MinBackoff: time.Millisecond, MaxBackoff: 20 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	require.NoError(t, err)
	h.pipe = delivery.New(delivery.Options{
		Companies: companies, Sender: client, DeadLetters: h.dir,
		Checkpoint: func(lsn pglogrepl.LSN) error {
			h.mu.Lock()
			defer h.mu.Unlock()
			h.checkpoints = append(h.checkpoints, lsn)
			h.acceptedAt = append(h.acceptedAt, h.up.Accepted())
			return nil
		},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	return h
}

// run feeds txns through the pipeline in one go (so they form one flush)
// and waits for it to finish.
func (h *harness) run(t *testing.T, ctx context.Context, txns ...replication.Transaction) error {
	in := make(chan replication.Transaction, len(txns))
	for _, txn := range txns {
		in <- txn
	}
	close(in)
	return h.pipe.Run(ctx, in)
}

func ptr(s string) *string { return &s }

func TestNewerChangeWinsKeyByKeyAndOmittedKeyKeepsPendingValue(t *testing.T) {
	h := newHarness(t)
	err := h.run(t, context.Background(),
		replication.Transaction{EndLSN: 100, Changes: []replication.Change{row("1", "free", ptr("long note"))}},
		replication.Transaction{EndLSN: 200, Changes: []replication.Change{row("1", "pro", nil)}}, // notes: unchanged TOAST
	)
	require.NoError(t, err)
	applied := h.up.Applied()
	require.Len(t, applied, 1, "two changes to one company in one flush make one call")
	assert.Equal(t, map[string]any{"plan": "pro", "notes": "long note"}, applied[0].Metadata)
	assert.Equal(t, []pglogrepl.LSN{200}, h.checkpoints)
}

func TestCheckpointComesOnlyAfterEveryCompanyWasAccepted(t *testing.T) {
	h := newHarness(t)
	h.up.SetFault(&userpilottest.Fault{Delay: 20 * time.Millisecond})
	var changes []replication.Change
	for _, id := range []string{"1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12"} {
		changes = append(changes, row(id, "pro", nil))
	}
	require.NoError(t, h.run(t, context.Background(), replication.Transaction{EndLSN: 300, Changes: changes}))
	require.Equal(t, []pglogrepl.LSN{300}, h.checkpoints)
	assert.Equal(t, []int{12}, h.acceptedAt, "all 12 records were applied before the checkpoint was written")
}

func TestFailedDeliveryIsNotCheckpointed(t *testing.T) {
	h := newHarness(t)
	h.up.SetFault(&userpilottest.Fault{Status: 503})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	err := h.run(t, ctx, replication.Transaction{EndLSN: 400, Changes: []replication.Change{row("1", "pro", nil)}})
	require.Error(t, err)
	assert.Empty(t, h.checkpoints, "nothing is checkpointed while Userpilot has not accepted it")
}

func TestSnapshotChunksMoveNoPositionButTheirEndMarkerDoes(t *testing.T) {
	h := newHarness(t)
	require.NoError(t, h.run(t, context.Background(),
		replication.Transaction{Changes: []replication.Change{row("1", "pro", nil)}}, // EndLSN 0: a snapshot chunk
	))
	assert.Empty(t, h.checkpoints)
	require.NoError(t, h.run(t, context.Background(), replication.Transaction{EndLSN: 500}))
	assert.Equal(t, []pglogrepl.LSN{500}, h.checkpoints, "a position marker with no changes is checkpointed")
}

func TestUnmappableRowIsDeadLetteredAndTheRestDelivered(t *testing.T) {
	h := newHarness(t)
	nullID := replication.Change{Op: replication.Insert, Relation: rel,
		Values: []replication.Value{{Null: true}, {Text: []byte("pro")}, {Null: true}}}
	require.NoError(t, h.run(t, context.Background(), replication.Transaction{EndLSN: 600,
		Changes: []replication.Change{nullID, row("2", "free", nil)}}))
	n, err := state.CountDeadLetters(h.dir.Path())
	require.NoError(t, err)
	assert.Equal(t, 1, n)
	_, ok := h.up.Company("2")
	assert.True(t, ok)
	assert.Equal(t, []pglogrepl.LSN{600}, h.checkpoints)
	assert.Equal(t, int64(1), h.pipe.Stats().DeadLettered.Load())
}

func TestDeleteAndTruncateAreCountedNotMirrored(t *testing.T) {
	h := newHarness(t)
	require.NoError(t, h.run(t, context.Background(), replication.Transaction{EndLSN: 700, Changes: []replication.Change{
		{Op: replication.Delete, Relation: rel, Values: []replication.Value{{Text: []byte("1")}, {Null: true}, {Null: true}}},
		{Op: replication.Truncate, Relation: rel},
	}}))
	assert.Zero(t, h.up.IdentifyRequests())
	assert.Empty(t, h.up.Deleted())
	assert.Equal(t, int64(1), h.pipe.Stats().Deletes.Load())
	assert.Equal(t, int64(1), h.pipe.Stats().Truncates.Load())
	assert.Equal(t, []pglogrepl.LSN{700}, h.checkpoints)
}
