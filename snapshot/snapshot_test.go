package snapshot

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/replication"
	"github.com/pgpilot/pgpilot/row"
	"github.com/pgpilot/pgpilot/state"
)

// These tests drive the stage with scripted chunks and transactions: the
// ordering rules are the whole point, and here each one is pinned to an
// exact interleaving. The real-database tests are in the daemon and e2e
// packages.

var (
	table = row.Table{Schema: "public", Name: "companies"}
	cols  = []row.Column{{Name: "id"}, {Name: "name"}, {Name: "notes"}}
	// The stream describes the table itself, with its own Relation.
	streamRel = &row.Relation{ID: 1, Table: table, Columns: cols}
)

func values(id int, name, notes string) []row.Value {
	return []row.Value{{Text: []byte(strconv.Itoa(id))}, {Text: []byte(name)}, {Text: []byte(notes)}}
}

func change(op row.Op, vals []row.Value) row.Change {
	return row.Change{Op: op, Relation: streamRel, Values: vals}
}

// script is a fake chunk source: each Read returns the next chunk, after
// failing with each of fail first.
type script struct {
	mu     sync.Mutex
	chunks []replication.Chunk
	reads  int
	fail   []error
	// failFrom: the failures come once this many chunks were read.
	failFrom int
	// block, if set, holds every read after the first until it is closed.
	block chan struct{}
}

func (s *script) read(ctx context.Context, _ *pgx.Conn, q replication.ChunkQuery) (replication.Chunk, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.fail) > 0 && s.reads >= s.failFrom {
		err := s.fail[0]
		s.fail = s.fail[1:]
		return replication.Chunk{}, err
	}
	if s.block != nil && s.reads > 0 {
		s.mu.Unlock()
		select {
		case <-s.block:
		case <-ctx.Done():
		}
		s.mu.Lock()
		if ctx.Err() != nil {
			return replication.Chunk{}, ctx.Err()
		}
	}
	if s.reads >= len(s.chunks) {
		return replication.Chunk{}, nil
	}
	c := s.chunks[s.reads]
	s.reads++
	if q.Taken != nil {
		q.Taken(c.Snapshot)
	}
	return c, nil
}

// run starts a stage on the script with chunks of limit rows, and returns
// its input, its output and a stop function.
func run(t *testing.T, sc *script, limit int) (chan<- row.Transaction, <-chan row.Transaction, *Stage) {
	t.Helper()
	st, err := New(Options{Table: table, Columns: cols, Key: []string{"id"}, ChunkRows: limit, Read: sc.read,
		Start: 10, RetryWait: time.Millisecond})
	require.NoError(t, err)
	st.readConn = func(context.Context) (*pgx.Conn, error) { return nil, nil }
	src, dst := make(chan row.Transaction), make(chan row.Transaction, 100)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- st.Run(ctx, src, dst) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return src, dst, st
}

func next(t *testing.T, dst <-chan row.Transaction) row.Transaction {
	t.Helper()
	select {
	case txn := <-dst:
		return txn
	case <-time.After(10 * time.Second):
		t.Fatal("nothing came out of the stage")
		return row.Transaction{}
	}
}

// rows shows a transaction's rows as id=name/notes.
func rows(txn row.Transaction) []string {
	var out []string
	for _, ch := range txn.Changes {
		v := ch.Values
		out = append(out, string(v[0].Text)+"="+string(v[1].Text)+"/"+string(v[2].Text))
	}
	return out
}

// waitPending waits until the stage holds n chunks waiting for the stream.
func waitWant(t *testing.T, st *Stage, want pglogrepl.LSN) {
	t.Helper()
	require.Eventually(t, func() bool { return st.WantPosition() == want }, 10*time.Second, time.Millisecond)
}

func TestChunkWaitsForItsHighPositionAndTakesNewerStreamedValues(t *testing.T) {
	sc := &script{chunks: []replication.Chunk{{
		Rows: [][]row.Value{values(1, "a", "x"), values(2, "b", "x"), values(3, "c", "x"), values(4, "d", "x"),
			values(5, "e", "x"), values(6, "f", "x")},
		Snapshot: replication.Snapshot{Xmin: 100, Xmax: 100},
		High:     50,
	}}}
	src, dst, st := run(t, sc, 10)
	require.NoError(t, st.Start(context.Background(), state.Snapshot{ID: state.InitialSnapshot}))
	waitWant(t, st, 50)

	// Ends before H: row 2's new values replace the chunk's; row 3's
	// UPDATE left its TOASTed notes out: only its name is replaced; row 5
	// is deleted; row 6 moves to key 60.
	toast := values(3, "c2", "")
	toast[2] = row.Value{Unchanged: true}
	moved := change(row.Update, values(60, "f", "x"))
	moved.Old = values(6, "f", "x")
	src <- row.Transaction{Xid: 90, EndLSN: 40, Changes: []row.Change{
		change(row.Update, values(2, "b2", "y")), change(row.Update, toast),
		change(row.Delete, values(5, "", "")), moved}}
	got := next(t, dst)
	assert.Equal(t, []string{"2=b2/y", "3=c2/", "5=/", "60=f/x"}, rows(got), "the streamed transaction passes first")
	// Ends after H: the chunk goes before it, with row 4's older copy.
	src <- row.Transaction{Xid: 120, EndLSN: 60, Changes: []row.Change{change(row.Update, values(4, "d2", "x"))}}
	chunk := next(t, dst)
	assert.Equal(t, []string{"1=a/x", "2=b2/y", "3=c2/x", "4=d/x"}, rows(chunk),
		"every row it read and still exists, none older than the stream before it; row 3 keeps its untouched TOAST column")
	require.NotNil(t, chunk.Mark)
	p := chunk.Mark.(*Progress)
	assert.True(t, p.Done, "6 rows of a 10-row chunk: the last chunk")
	assert.Equal(t, int64(6), p.Job.Rows)
	assert.Equal(t, []string{"6"}, p.Job.After)
	assert.False(t, chunk.Resend, "the initial sync lets the no-op index skip what it sent before a restart")
	assert.Equal(t, []string{"4=d2/x"}, rows(next(t, dst)), "then the newer change to row 4")
}

func TestChunkGoesAtAMarkerAtItsHighPosition(t *testing.T) {
	sc := &script{chunks: []replication.Chunk{{
		Rows: [][]row.Value{values(1, "a", "x")}, Snapshot: replication.Snapshot{Xmin: 100, Xmax: 100}, High: 50,
	}}}
	src, dst, st := run(t, sc, 10)
	st.Start(context.Background(), state.Snapshot{ID: "resync-1"})
	waitWant(t, st, 50)
	src <- row.Transaction{EndLSN: 49} // a marker short of H: nothing yet
	assert.Empty(t, next(t, dst).Changes)
	src <- row.Transaction{EndLSN: 50}
	assert.Empty(t, next(t, dst).Changes, "the marker passes")
	chunk := next(t, dst)
	assert.Equal(t, []string{"1=a/x"}, rows(chunk))
	assert.True(t, chunk.Resend, "a re-sync sends even what the no-op index says Userpilot holds")
}

func TestChunkAlreadyPassedGoesAtOnce(t *testing.T) {
	// H at or before where the stream started: nothing to wait for.
	sc := &script{chunks: []replication.Chunk{{
		Rows: [][]row.Value{values(1, "a", "x")}, Snapshot: replication.Snapshot{Xmin: 100, Xmax: 100}, High: 10,
	}}}
	_, dst, st := run(t, sc, 10)
	st.Start(context.Background(), state.Snapshot{ID: state.InitialSnapshot})
	assert.Equal(t, []string{"1=a/x"}, rows(next(t, dst)))
}

func TestTransactionPassedBeforeTheChunkArrivedButUnseenByItWins(t *testing.T) {
	// Transaction 150 commits while the chunk is being read: the stream
	// passes it on before the chunk reaches the stage, and the chunk's
	// snapshot (xmax 150) did not see it. Its row must not be overwritten
	// by the chunk's older copy.
	sc := &script{chunks: []replication.Chunk{{
		Rows:     [][]row.Value{values(1, "a-seen", "x"), values(2, "b", "x")},
		Snapshot: replication.Snapshot{Xmin: 140, Xmax: 150},
		High:     50,
	}}}
	src, dst, st := run(t, sc, 10)
	src <- row.Transaction{Xid: 150, EndLSN: 45, Changes: []row.Change{change(row.Update, values(2, "b-new", "x"))}}
	next(t, dst)
	src <- row.Transaction{Xid: 130, EndLSN: 46, Changes: []row.Change{change(row.Update, values(1, "a-seen", "x"))}}
	next(t, dst)
	st.Start(context.Background(), state.Snapshot{ID: state.InitialSnapshot})
	waitWant(t, st, 50)
	src <- row.Transaction{EndLSN: 55}
	chunk := next(t, dst)
	assert.Equal(t, []string{"1=a-seen/x", "2=b-new/x"}, rows(chunk),
		"row 2 takes the newer streamed value it did not see; row 1 the one it saw (as new as its copy)")
	assert.Equal(t, pglogrepl.LSN(55), next(t, dst).EndLSN, "then the marker past H")
}

// TestAnUnseenTransactionMixingTablesIsKeptByWhatItChangesInTheTable: the
// same race with a transaction that also changes another table and
// carries old rows (REPLICA IDENTITY FULL): what the stage keeps of it is
// its changes to the table, copied, so that neither what the stages after
// it do to the values nor the other table's changes matter; an update that
// moved a row to another key still takes the old key's row out.
func TestAnUnseenTransactionMixingTablesIsKeptByWhatItChangesInTheTable(t *testing.T) {
	sc := &script{chunks: []replication.Chunk{{
		Rows:     [][]row.Value{values(1, "a", "x"), values(2, "b", "x"), values(3, "c", "x")},
		Snapshot: replication.Snapshot{Xmin: 140, Xmax: 150},
		High:     50,
	}}}
	src, dst, st := run(t, sc, 10)
	other := &row.Relation{ID: 2, Table: row.Table{Schema: "public", Name: "users"}, Columns: cols}
	moved := change(row.Update, values(7, "a-moved", "x"))
	moved.Old = values(1, "a", "x")
	renamed := change(row.Update, values(2, "b-new", "x"))
	renamed.Old = values(2, "b", "x")
	txn := row.Transaction{Xid: 150, EndLSN: 45, Changes: []row.Change{
		{Op: row.Update, Relation: other, Values: values(2, "user", "x"), Old: values(2, "user", "x")},
		moved, renamed,
	}}
	src <- txn
	passed := next(t, dst)
	// A stage after this one fills values in, in place.
	for _, ch := range passed.Changes {
		for _, v := range ch.Values {
			copy(v.Text, "zzzzzzzzzz")
		}
	}
	st.Start(context.Background(), state.Snapshot{ID: state.InitialSnapshot})
	waitWant(t, st, 50)
	src <- row.Transaction{EndLSN: 55}
	chunk := next(t, dst)
	assert.Equal(t, []string{"2=b-new/x", "3=c/x"}, rows(chunk),
		"row 1 moved to key 7 after the chunk's snapshot: gone from it; row 2 takes the newer value")
}

func TestSnapshotSees(t *testing.T) {
	snap := replication.Snapshot{Xmin: 100, Xmax: 110, Xip: []uint64{103, 105}}
	wrapped := replication.Snapshot{Xmin: 1<<32 - 5, Xmax: 1<<32 + 5, Xip: []uint64{1<<32 + 2}}
	tests := []struct {
		name string
		snap replication.Snapshot
		xid  uint32
		sees bool
	}{
		{"before xmin", snap, 99, true},
		{"in progress", snap, 103, false},
		{"committed between", snap, 104, true},
		{"at xmax", snap, 110, false},
		{"after xmax", snap, 200, false},
		{"previous epoch, just before the wrap", wrapped, 1<<32 - 3, true},
		{"this epoch, committed", wrapped, 1, true},
		{"this epoch, in progress", wrapped, 2, false},
		{"this epoch, after xmax", wrapped, 9, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.sees, tt.snap.Sees(tt.xid))
		})
	}
}

func TestInitialSyncRetriesAChunkItCannotReadAndNeverEndsTheStream(t *testing.T) {
	sc := &script{chunks: []replication.Chunk{{Rows: [][]row.Value{values(1, "a", "x")}, High: 5}},
		fail: []error{&pgconn.PgError{Code: "57014", Message: "canceling statement due to statement timeout"},
			&pgconn.PgError{Code: "40001", Message: "canceling statement due to conflict with recovery"}}}
	_, dst, st := run(t, sc, 10)
	require.NoError(t, st.Start(context.Background(), state.Snapshot{ID: state.InitialSnapshot}))
	chunk := next(t, dst)
	assert.Equal(t, []string{"1=a/x"}, rows(chunk))
	p := chunk.Mark.(*Progress)
	assert.True(t, p.Done)
	assert.Empty(t, p.Job.Error, "the initial sync finished, after two failed reads")
}

func TestResyncWhoseConditionFailsEndsItsJobAndTheStreamGoesOn(t *testing.T) {
	sc := &script{chunks: []replication.Chunk{{Rows: [][]row.Value{values(1, "a", "x"), values(2, "b", "x")}, High: 5}, {}},
		failFrom: 1, fail: []error{&pgconn.PgError{Code: "22P02", Message: `invalid input syntax for type integer: "pro"`}}}
	src, dst, st := run(t, sc, 2)
	require.NoError(t, st.Start(context.Background(), state.Snapshot{ID: "resync-1", Where: "plan::int > 0"}))
	first := next(t, dst)
	assert.Equal(t, []string{"1=a/x", "2=b/x"}, rows(first), "the chunk read before the failure goes out")
	last := next(t, dst)
	p := last.Mark.(*Progress)
	require.True(t, p.Done, "a last mark ends the job")
	assert.Empty(t, last.Changes)
	assert.Contains(t, p.Job.Error, "invalid input syntax")
	assert.Contains(t, p.Job.Fix, "guard it")
	assert.Equal(t, int64(2), p.Job.Rows, "as far as it got")
	// The stage says it is idle just after it passed the job's last mark on.
	require.Eventually(t, func() bool { return !st.Busy() }, 5*time.Second, time.Millisecond, "the job has ended")
	src <- row.Transaction{Xid: 200, EndLSN: 70, Changes: []row.Change{change(row.Update, values(3, "c", "x"))}}
	assert.Equal(t, []string{"3=c/x"}, rows(next(t, dst)), "the stream goes on")
}

func TestCancelledJobDropsItsWaitingChunksAndEnds(t *testing.T) {
	sc := &script{block: make(chan struct{}), chunks: []replication.Chunk{
		{Rows: [][]row.Value{values(1, "a", "x"), values(2, "b", "x")}, High: 50},
		{Rows: [][]row.Value{values(3, "c", "x"), values(4, "d", "x")}, High: 50}}}
	defer close(sc.block)
	src, dst, st := run(t, sc, 2)
	require.NoError(t, st.Start(context.Background(), state.Snapshot{ID: "resync-2"}))
	waitWant(t, st, 50) // the first chunk waits for the stream; the second read hangs
	require.NoError(t, st.Cancel(context.Background(), "other"))
	require.NoError(t, st.Cancel(context.Background(), "resync-2"))
	last := next(t, dst)
	p := last.Mark.(*Progress)
	require.True(t, p.Done)
	assert.Empty(t, last.Changes, "the waiting chunk is dropped")
	assert.Equal(t, Cancelled, p.Job.Error)
	assert.Zero(t, p.Job.Rows, "as far as it was passed on")
	// The stage says it is idle just after it passed the job's last mark on.
	require.Eventually(t, func() bool { return !st.Busy() }, 5*time.Second, time.Millisecond, "the job has ended")
	src <- row.Transaction{Xid: 200, EndLSN: 70, Changes: []row.Change{change(row.Update, values(3, "c", "x"))}}
	assert.Equal(t, []string{"3=c/x"}, rows(next(t, dst)), "the stream goes on")
}

// A chunk goes on in pieces of pieceRows, as the stream's large
// transactions do, so the stages after this one never buffer whole chunks.
// Each piece carries a mark of the job's progress up to its last row (the
// rows so far, the last one's key), so progress is counted as rows are
// delivered; the last piece carries the chunk's own mark.
func TestAChunkGoesOnInPiecesEachMarkingItsProgress(t *testing.T) {
	n := 2*pieceRows + 7
	var vals [][]row.Value
	for i := range n {
		vals = append(vals, values(i+1, "a", "x"))
	}
	sc := &script{chunks: []replication.Chunk{{Rows: vals, Snapshot: replication.Snapshot{Xmin: 100, Xmax: 100}, High: 10}}}
	_, dst, st := run(t, sc, n)
	st.Start(context.Background(), state.Snapshot{ID: state.InitialSnapshot})
	var sizes []int
	for total := 0; total < n; {
		txn := next(t, dst)
		require.Equal(t, row.Chunk, txn.Kind)
		sizes = append(sizes, len(txn.Changes))
		total += len(txn.Changes)
		require.NotNil(t, txn.Mark, "every piece marks the job's progress")
		p := txn.Mark.(*Progress)
		assert.Equal(t, int64(total), p.Job.Rows, "rows up to this piece's last")
		assert.Equal(t, []string{fmt.Sprint(total)}, p.Job.After, "after this piece's last row")
		if total < n {
			assert.False(t, p.Done, "a piece before the last never ends the job")
		}
	}
	assert.Equal(t, []int{pieceRows, pieceRows, 7}, sizes)
}

// A waiting chunk is indexed by its rows' keys only once a streamed change
// of its table comes: most chunks of an initial sync meet none, and each
// of their rows cost a key and a map entry for nothing. Rows a TRUNCATE
// took out before are not indexed; the others take the streamed values.
func TestAChunkIsIndexedWhenAChangeOfItsTableComesNotBefore(t *testing.T) {
	st, err := New(Options{Table: table, Columns: cols, Key: []string{"id"}})
	require.NoError(t, err)
	p := pendingOf(arrival{chunk: replication.Chunk{Rows: [][]row.Value{values(1, "a", "x"), values(2, "b", "x")}}})
	other := &row.Relation{ID: 2, Table: row.Table{Schema: "public", Name: "subscriptions"}, Columns: cols}
	st.takeOut(p, row.Transaction{Changes: []row.Change{{Op: row.Update, Relation: other, Values: values(1, "s", "s")}}})
	assert.Nil(t, p.index, "a change of another table indexed the chunk")

	st.takeOut(p, row.Transaction{Changes: []row.Change{change(row.Update, values(2, "b2", "y"))}})
	assert.Equal(t, map[string]int{"1": 0, "2": 1}, p.index)
	assert.Equal(t, []string{"1=a/x", "2=b2/y"}, rows(row.Transaction{Changes: []row.Change{{Values: p.Rows[0]}, {Values: p.Rows[1]}}}))

	truncated := pendingOf(arrival{chunk: replication.Chunk{Rows: [][]row.Value{values(1, "a", "x")}}})
	st.takeOut(truncated, row.Transaction{Changes: []row.Change{{Op: row.Truncate, Relation: streamRel}, change(row.Insert, values(1, "new", "y"))}})
	assert.Equal(t, [][]row.Value{nil}, truncated.Rows, "the row the TRUNCATE took out stays out")
	assert.Empty(t, truncated.index)
}
