// Package snapshot sends a table's current rows alongside the live stream,
// for the initial sync and for a re-sync, so that a snapshot never holds a
// transaction (or the slot) for its whole length, resumes after a crash
// where it stopped, and never overwrites a newer streamed value with an
// older row.
//
// The table is read in chunks, in key order (keyset pagination). Each chunk
// is read in a short transaction of its own, and noted with the position H
// the stream must pass before every change the chunk saw has been streamed
// (see replication.ReadChunk). The chunk then waits, in memory, between the
// stream and the pipeline:
//
//   - a streamed change to a row the chunk holds brings that row up to date:
//     it takes the streamed values (for an UPDATE that left TOASTed columns
//     out, only the columns it carried), a DELETE takes it out;
//   - the chunk goes into the pipeline just before the first streamed
//     transaction ending after H (or at a position marker at or past H):
//     every transaction the chunk saw is then ahead of it, and every one it
//     did not see but that touched its rows brought those rows up to date.
//
// So what the chunk sends is never older than what the stream sent before
// it, and it still sends every row it read (a re-sync must: the no-op
// index would skip a streamed change to a profile Userpilot has lost).
//
// A transaction streamed before the chunk reached the stage, but that the
// chunk's snapshot did not see (it committed while the chunk was being
// read, or its commit was written but not yet visible, as under
// synchronous replication), escapes the first rule. So the stage keeps the
// last transactions it passed on, and applies to an arriving chunk those
// its snapshot did not see (by transaction id); should one of them be too
// large to have been kept, it reads the chunk again.
//
// This is the watermark scheme of Netflix's DBLog and Debezium's incremental
// snapshots, with the server's own positions as watermarks, so it writes
// nothing to the database and works on a read replica.
//
// Each chunk carries a Progress mark; once the pipeline has delivered the
// chunk and everything before it, the mark reaches the checkpoint, which is
// where a restart resumes: at most the chunks in flight are sent again.
//
// A chunk that cannot be read never ends the stream. A re-sync whose
// condition Postgres refuses at run time (a cast that fails on some row, a
// statement_timeout) ends: a last mark, Done with Job.Error and Job.Fix,
// follows the chunks read before, and the checkpoint records the job as
// failed. Anything else, and any failure of the initial sync (which must
// finish, and whose query is pgpilot's own), is read again with backoff.
// Cancel ends a re-sync the same way, dropping its waiting chunks.
package snapshot

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgpilot/pgpilot/replication"
	"github.com/pgpilot/pgpilot/row"
	"github.com/pgpilot/pgpilot/state"
)

// pieceRows is how many of a chunk's rows go on in one transaction (the
// stream's pieces of a large transaction are as large: replication's
// ChunkChanges).
const pieceRows = 250

// DefaultChunkRows is how many rows a chunk reads at a time
// (delivery.snapshot_chunk_rows).
const DefaultChunkRows = 2000

// Progress is the Mark a chunk carries: the job as it stands once the chunk
// is delivered.
type Progress struct {
	Job state.Snapshot
	// Done: the job ended with this mark: it was its last chunk, or (with
	// Job.Error set) the job failed or was cancelled, as far as Job says.
	Done bool
}

// Options configure a Stage.
type Options struct {
	// URL is the database; the stage reads chunks on a connection of its own.
	URL string
	// Start is where the stream starts: everything before it was streamed
	// (and delivered) already.
	Start pglogrepl.LSN
	Table row.Table
	// Columns are read for each row (the mapped ones, the key and the
	// identity); Key names the key columns, in key order.
	Columns []row.Column
	Key     []string
	// Identity names the replica identity's columns when they are not the
	// key (REPLICA IDENTITY USING INDEX on another unique index): a
	// streamed DELETE carries only them, so streamed changes are matched
	// to chunk rows by them. Nil: by the key.
	Identity []string
	// CompanyID is the company id column, for a one-company re-sync.
	CompanyID string
	// Where is companies.where: every job reads only the rows it selects
	// ("" for all).
	Where string
	// ChunkRows is how many rows a chunk holds; 0 → 2,000.
	ChunkRows int
	// Backlog, if set, is how many companies wait in the pipeline: no new
	// chunk is taken while it is at MaxBacklog or more, so a snapshot's
	// memory stays flat however large the table (Userpilot's limits, not
	// Postgres, set its pace). MaxBacklog 0 → 20,000 (two bulk jobs).
	Backlog    func() int64
	MaxBacklog int64
	// RetryWait is the first wait before a chunk that could not be read
	// is read again (doubling to 30 s); 0 → 1 s.
	RetryWait time.Duration
	// Read, if set, replaces replication.ReadChunk (tests).
	Read   func(ctx context.Context, conn *pgx.Conn, q replication.ChunkQuery) (replication.Chunk, error)
	Logger *slog.Logger
}

// Stage is the snapshot's place between the stream and the pipeline. Use
// New, then Run; Start gives it a job.
type Stage struct {
	opts Options
	log  *slog.Logger
	rel  *row.Relation
	key  []int // positions of the key columns in rel
	// ident: positions of the columns streamed changes are matched by
	// (the replica identity; the key unless Options.Identity says).
	ident []int

	want    atomic.Uint64 // the front chunk's H, for the stream
	start   chan state.Snapshot
	cancels chan string
	// taken is the snapshot of the chunk being read, the newest only (see
	// recent.forget).
	taken chan replication.Snapshot

	mu     sync.Mutex
	read   int64 // rows read by the current job
	active bool

	// keysOf caches, per streamed description of the table, where the key
	// columns are and how its columns map onto the chunk's.
	keysOf row.PerRelation[relMap]
	recent recent
	// sent is the running job as far as its chunks were passed on (Run's
	// goroutine only).
	sent state.Snapshot
	// backfillRel describes the rows of the backfill job backfillJob
	// (Run's goroutine only).
	backfillRel *row.Relation
	backfillJob string

	// readConn opens the connection chunks are read on (tests replace it).
	readConn func(context.Context) (*pgx.Conn, error)
}

type relMap struct {
	key []int // positions of the identity columns in the streamed relation
	col []int // for each streamed column, its position in the chunk (or -1)
}

// New makes a Stage.
func New(opts Options) (*Stage, error) {
	if opts.ChunkRows <= 0 {
		opts.ChunkRows = DefaultChunkRows
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Read == nil {
		opts.Read = replication.ReadChunk
	}
	if opts.MaxBacklog <= 0 {
		opts.MaxBacklog = 20_000
	}
	s := &Stage{opts: opts, log: opts.Logger, start: make(chan state.Snapshot, 1), cancels: make(chan string),
		taken: make(chan replication.Snapshot, 1),
		rel:   &row.Relation{Table: opts.Table, Columns: opts.Columns}}
	s.readConn = func(ctx context.Context) (*pgx.Conn, error) { return replication.ConnectSQL(ctx, opts.URL) }
	for _, k := range opts.Key {
		i := columnIndex(opts.Columns, k)
		if i < 0 {
			return nil, fmt.Errorf("snapshot of %s: key column %q is not read", opts.Table, k)
		}
		s.key = append(s.key, i)
	}
	s.ident = s.key
	if len(opts.Identity) > 0 {
		s.ident = nil
		for _, k := range opts.Identity {
			i := columnIndex(opts.Columns, k)
			if i < 0 {
				return nil, fmt.Errorf("snapshot of %s: replica identity column %q is not read", opts.Table, k)
			}
			s.ident = append(s.ident, i)
		}
	}
	return s, nil
}

func columnIndex(cols []row.Column, name string) int {
	for i, c := range cols {
		if c.Name == name {
			return i
		}
	}
	return -1
}

// WantPosition is the position the front chunk waits for (0: none): give it
// to replication.StreamOptions.WantPosition.
func (s *Stage) WantPosition() pglogrepl.LSN { return pglogrepl.LSN(s.want.Load()) }

// Start gives the stage a job to run (a new one, or one to resume). One job
// runs at a time: start the next once the last one's Done mark is
// checkpointed.
func (s *Stage) Start(ctx context.Context, job state.Snapshot) error {
	select {
	case s.start <- job:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Cancel ends the running job if its ID is id: it reads no further, its
// waiting chunks are dropped, and a last mark, with the job as far as it
// was passed on and Error saying it was cancelled, ends it (the rows
// already passed on are delivered). Any other id is ignored.
func (s *Stage) Cancel(ctx context.Context, id string) error {
	select {
	case s.cancels <- id:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Cancelled is the Error of a cancelled job.
const Cancelled = "cancelled by `pgpilot resync --cancel`"

// Busy reports whether a job is running in the stage.
func (s *Stage) Busy() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.active
}

// RowsRead is how many rows the running job has read so far, its resumed
// start included.
func (s *Stage) RowsRead() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.read
}

// pending is a chunk waiting for the stream to pass its High position.
type pending struct {
	replication.Chunk
	// index maps a row's replica identity to its place in Rows (a row
	// taken out is nil); nil until a streamed change of the table needs
	// it: most chunks of an initial sync meet none, and indexing every
	// row was a fortieth of what a row cost.
	index map[string]int
	mark  *Progress
}

// arrival is a chunk handed from the reader to the stage, which answers
// whether to keep it or read it again.
type arrival struct {
	chunk   replication.Chunk
	mark    *Progress
	verdict chan bool
}

// maxPending bounds memory: chunks waiting for the stream, beyond the one
// being read.
const maxPending = 2

// Run passes src on to dst, putting each chunk of the running job in its
// place, until src is closed (chunks not passed on yet are read again
// after a restart: their marks were not delivered) or ctx is done.
func (s *Stage) Run(ctx context.Context, src <-chan row.Transaction, dst chan<- row.Transaction) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	arrivals := make(chan arrival)
	readerDone := make(chan error, 1)
	var queue []*pending
	reading := false
	// The running job (nil: none, or it ended), and what stops its reader.
	var running *state.Snapshot
	stopReading := func() {}
	// passed is the newest position the stream has shown all of.
	passed := s.opts.Start
	// While the pipeline is full, the backlog is looked at again now and
	// then: nothing else wakes the loop when it drains.
	recheck := time.NewTicker(50 * time.Millisecond)
	defer recheck.Stop()
	defer func() {
		cancel()
		stopReading()
		if reading {
			<-readerDone
		}
	}()
	// end closes the running job with a last mark after the chunks queued
	// (nil: dropped): failed or cancelled, as far as job says.
	end := func(job state.Snapshot, keep bool) error {
		if !keep {
			queue = nil
		}
		s.log.Debug("snapshot job ends early", "job", job.ID, "error", job.Error)
		queue = append(queue, &pending{mark: &Progress{Job: job, Done: true}})
		var err error
		queue, err = s.emitDue(ctx, queue, dst, func(h pglogrepl.LSN) bool { return h <= passed })
		return err
	}
	for {
		s.want.Store(0)
		if len(queue) > 0 {
			s.want.Store(uint64(queue[0].High))
		}
		var arrCh <-chan arrival
		backlogged := s.opts.Backlog != nil && s.opts.Backlog() >= s.opts.MaxBacklog
		if len(queue) < maxPending && !backlogged {
			arrCh = arrivals
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-recheck.C:
		case snap := <-s.taken:
			s.recent.forget(snap)
		case job := <-s.start:
			if reading {
				return fmt.Errorf("snapshot: job %s started while another runs", job.ID)
			}
			reading = true
			s.mu.Lock()
			s.active, s.read = true, job.Rows
			s.mu.Unlock()
			running, s.sent = &job, job
			jobCtx, stop := context.WithCancel(ctx)
			stopReading = stop
			go func() { readerDone <- s.readJob(jobCtx, job, arrivals) }()
		case id := <-s.cancels:
			if running == nil || running.ID != id || !s.Busy() {
				continue // not this job, or every chunk of it passed on already
			}
			stopReading()
			if reading {
				<-readerDone
				reading = false
			}
			// As far as its chunks were passed on: the waiting ones are
			// dropped.
			job := s.sent
			job.Error, job.Fix = Cancelled, "request the re-sync again to send the rows it did not reach"
			running = nil
			if err := end(job, false); err != nil {
				return err
			}
		case err := <-readerDone:
			reading = false
			var failed *jobError
			if errors.As(err, &failed) {
				// Its condition fails at run time: that job ends, the
				// stream goes on. The chunks read before go out first.
				running = nil
				s.log.Error("re-sync failed: its condition fails at run time; the stream goes on", "job", failed.job.ID,
					"where", failed.job.Where, "rows_read", failed.job.Rows, "error", failed.job.Error, "fix", failed.job.Fix)
				if err := end(failed.job, true); err != nil {
					return err
				}
				continue
			}
			if err != nil {
				return err
			}
		case a := <-arrCh:
			p := pendingOf(a)
			// Passed on before the chunk got here, yet not seen by it: the
			// chunk may hold rows older than these.
			unseen, complete := s.recent.unseen(a.chunk.Snapshot)
			if !complete {
				s.log.Debug("a large transaction raced a snapshot chunk; reading the chunk again")
				a.verdict <- false
				continue
			}
			for _, txn := range unseen {
				s.takeOut(p, txn)
			}
			a.verdict <- true
			s.log.Debug("snapshot chunk read", "rows", len(p.Rows), "high", p.High.String())
			queue = append(queue, p)
			// Already passed: it goes now.
			var err error
			if queue, err = s.emitDue(ctx, queue, dst, func(h pglogrepl.LSN) bool { return h <= passed }); err != nil {
				return err
			}
		case txn, ok := <-src:
			if !ok {
				return nil
			}
			// Few changes are kept while no job runs: enough for a job
			// starting now, whose first snapshot may not yet see what the
			// stream just passed (a commit is decoded before it is visible);
			// a chunk that misses one is read again.
			//
			// Nor while the pipeline's backlog holds chunks back: no chunk
			// arrives then, however long (a Userpilot outage during the
			// initial sync: minutes), and 20,000 changes kept for it were
			// a fifth of the heap. The chunk read before the wait may then
			// find one of them let go, and is read again.
			s.recent.bound = recentIdle
			if (running != nil || reading || len(queue) > 0) && !backlogged {
				s.recent.bound = recentChanges
			}
			var err error
			if queue, err = s.pass(ctx, txn, queue, dst); err != nil {
				return err
			}
			passed = max(passed, txn.EndLSN)
		}
	}
}

// pass forwards one streamed transaction, with the chunks due before and
// after it.
func (s *Stage) pass(ctx context.Context, txn row.Transaction, queue []*pending, dst chan<- row.Transaction) ([]*pending, error) {
	var err error
	if txn.EndLSN != 0 {
		// It ends after the chunks' H: it is newer than anything they saw.
		if queue, err = s.emitDue(ctx, queue, dst, func(h pglogrepl.LSN) bool { return h < txn.EndLSN }); err != nil {
			return queue, err
		}
	}
	for _, p := range queue {
		s.takeOut(p, txn)
	}
	// Before it goes: the stages after this one may fill its values in.
	kept := s.forRecent(txn)
	if err := send(ctx, dst, txn); err != nil {
		return queue, err
	}
	if len(kept.Changes) > 0 {
		s.recent.add(kept)
	}
	if txn.EndLSN != 0 {
		queue, err = s.emitDue(ctx, queue, dst, func(h pglogrepl.LSN) bool { return h <= txn.EndLSN })
	}
	return queue, err
}

func (s *Stage) emitDue(ctx context.Context, queue []*pending, dst chan<- row.Transaction, due func(pglogrepl.LSN) bool) ([]*pending, error) {
	for len(queue) > 0 && due(queue[0].High) {
		p := queue[0]
		// A re-sync re-sends what Userpilot is believed to hold: that
		// belief is what the operator doubts. A resumed initial sync
		// skips what it delivered before the restart, and a backfill what
		// Userpilot holds already (a key defined anew whose value is the
		// same).
		resend := !p.mark.Job.Initial() && p.mark.Job.Backfill == nil
		rel := s.relationOf(p.mark.Job)
		// In pieces, as the stream sends a large transaction: each stage
		// after this one buffers a few transactions, and a buffer of
		// whole chunks held 40,000 rows (20 MB) per stage. Each piece
		// carries a mark of the job's progress up to its last row, which
		// reaches the checkpoint once every row before it is delivered:
		// progress is counted as rows are delivered, not a chunk at a time
		// (at Userpilot's limits a chunk takes minutes), and a restart
		// resumes after the last piece delivered. The last piece's mark is
		// the chunk's own.
		changes := make([]row.Change, 0, min(len(p.Rows), pieceRows))
		last := -1 // the last row of the piece still in the chunk
		for i, vals := range p.Rows {
			if vals != nil {
				changes = append(changes, row.Change{Op: row.Insert, Relation: rel, Values: vals})
				last = i
			}
			if len(changes) == pieceRows && i < len(p.Rows)-1 {
				txn := row.Transaction{Kind: row.Chunk, Changes: changes, Resend: resend, Mark: s.pieceMark(p, i, last)}
				if err := send(ctx, dst, txn); err != nil {
					return queue, err
				}
				changes = make([]row.Change, 0, min(len(p.Rows)-i-1, pieceRows))
			}
		}
		if err := send(ctx, dst, row.Transaction{Kind: row.Chunk, Changes: changes, Mark: p.mark, Resend: resend}); err != nil {
			return queue, err
		}
		queue[0] = nil
		queue = queue[1:]
		s.sent = p.mark.Job
		s.log.Debug("snapshot chunk sent", "rows", len(changes), "high", p.High.String())
		if p.mark.Done {
			s.mu.Lock()
			s.active = false
			s.mu.Unlock()
		}
	}
	return queue, nil
}

// pieceMark is the job's progress once the chunk's rows up to end are
// delivered: the rows read so far, and the key of last, the last row
// still in the chunk (a row taken out since has no values to key by;
// resuming after an earlier key reads a few rows again, nothing more).
func (s *Stage) pieceMark(p *pending, end, last int) *Progress {
	job := p.mark.Job
	job.Rows -= int64(len(p.Rows) - end - 1)
	job.After = make([]string, len(s.key))
	for i, k := range s.key {
		job.After[i] = string(p.Rows[last][k].Text)
	}
	return &Progress{Job: job}
}

// relationOf describes the rows of job: the table, or, for a backfill,
// the table narrowed to the backfill's keys (one description per job, so
// that delivery compiles its mapping once).
func (s *Stage) relationOf(job state.Snapshot) *row.Relation {
	if job.Backfill == nil {
		return s.rel
	}
	if s.backfillRel == nil || s.backfillJob != job.ID {
		s.backfillJob = job.ID
		s.backfillRel = &row.Relation{Table: s.rel.Table, Columns: s.rel.Columns,
			Keys: &row.KeySet{Set: job.Backfill.Keys, Clear: job.Backfill.Clear}}
	}
	return s.backfillRel
}

func send(ctx context.Context, dst chan<- row.Transaction, txn row.Transaction) error {
	select {
	case dst <- txn:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// pendingOf makes an arrived chunk a pending one (indexed when a
// streamed change needs it: indexed).
func pendingOf(a arrival) *pending {
	return &pending{Chunk: a.chunk, mark: a.mark}
}

// indexed is p's index, made on first use from the rows p still holds.
func (s *Stage) indexed(p *pending) map[string]int {
	if p.index == nil {
		p.index = make(map[string]int, len(p.Rows))
		for i, row := range p.Rows {
			if row != nil {
				p.index[keyOf(row, s.ident)] = i
			}
		}
	}
	return p.index
}

// takeOut brings p's rows up to what txn streams anew: a streamed change
// to a row the chunk holds is newer than, or as new as, the chunk's copy,
// so the row takes the streamed values (for an UPDATE that left unchanged
// TOASTed columns out, only the columns it carried; the chunk's copy of
// the others is current), and a deleted row, or the old key of a row that
// moved, leaves the chunk. The chunk is then never older than the stream
// before it, and still carries every row it read: a re-sync re-sends each
// of them, even those the stream touched but the no-op index would skip.
// Rows are matched by the replica identity, the columns every streamed
// change carries (a DELETE, and the old row of an UPDATE that changed
// them, carry only those): with REPLICA IDENTITY USING INDEX on another
// index than the one the snapshot pages by, matching by the paging key
// would miss every delete.
func (s *Stage) takeOut(p *pending, txn row.Transaction) {
	for _, ch := range txn.Changes {
		if ch.Op == row.Truncate {
			if ch.Relation.Table == s.opts.Table {
				clear(p.Rows)
			}
			continue
		}
		m, ok := s.mapFor(ch.Relation)
		if !ok {
			continue
		}
		index := s.indexed(p)
		key := keyOf(ch.Values, m.key)
		if ch.Old != nil {
			// An UPDATE that changed the key: the old row is gone.
			if old := keyOf(ch.Old, m.key); old != key {
				if i, ok := index[old]; ok {
					p.Rows[i] = nil
				}
			}
		}
		i, ok := index[key]
		if !ok || p.Rows[i] == nil {
			continue
		}
		if ch.Op == row.Delete {
			p.Rows[i] = nil
			continue
		}
		row := p.Rows[i]
		for j, v := range ch.Values {
			if !v.Unchanged && m.col[j] >= 0 {
				row[m.col[j]] = v
			}
		}
	}
}

// took hands the snapshot a chunk is read in to Run (the reader's
// goroutine), replacing one Run has not taken yet: a newer snapshot sees
// all an older one saw.
func (s *Stage) took(snap replication.Snapshot) {
	select {
	case <-s.taken:
	default:
	}
	select {
	case s.taken <- snap:
	default:
	}
}

// forRecent is what the recent transactions keep of txn: its changes to
// the stage's table, the only ones a chunk takes out (takeOut). They are
// kept as they came while they are all of the transaction's changes and
// carry no old row; otherwise they are copied out of the stream's blocks,
// without an old row whose key is the new one's: users' updates under
// REPLICA IDENTITY FULL, interleaved with companies', kept every block of
// the stream they touched, old rows included, and 20,000 of them were the
// largest part of the heap while an initial sync of users ran beside
// them.
func (s *Stage) forRecent(txn row.Transaction) row.Transaction {
	out := row.Transaction{Kind: txn.Kind, Xid: txn.Xid}
	own, old := 0, false
	for _, ch := range txn.Changes {
		if ch.Relation.Table == s.opts.Table {
			own++
			old = old || ch.Old != nil
		}
	}
	switch {
	case own == 0:
		return out
	case own == len(txn.Changes) && !old:
		out.Changes = txn.Changes
		return out
	}
	out.Changes = make([]row.Change, 0, own)
	var c valueCopier
	for _, ch := range txn.Changes {
		if ch.Relation.Table != s.opts.Table {
			continue
		}
		if m, ok := s.mapFor(ch.Relation); ch.Old != nil && ok && sameKey(ch.Old, ch.Values, m.key) {
			ch.Old = nil
		}
		c.size(ch.Values)
		c.size(ch.Old)
		out.Changes = append(out.Changes, ch)
	}
	for i := range out.Changes {
		ch := &out.Changes[i]
		ch.Values, ch.Old = c.copy(ch.Values), c.copy(ch.Old)
	}
	return out
}

// valueCopier copies rows into two allocations, sized first (size), then
// filled (copy).
type valueCopier struct {
	nvals, ntext int
	vals         []row.Value
	text         []byte
}

func (c *valueCopier) size(vals []row.Value) {
	c.nvals += len(vals)
	for _, v := range vals {
		c.ntext += len(v.Text)
	}
}

func (c *valueCopier) copy(vals []row.Value) []row.Value {
	if vals == nil {
		return nil
	}
	if c.vals == nil {
		c.vals, c.text = make([]row.Value, 0, c.nvals), make([]byte, 0, c.ntext)
	}
	i := len(c.vals)
	for _, v := range vals {
		if v.Text != nil {
			j := len(c.text)
			c.text = append(c.text, v.Text...)
			v.Text = c.text[j:len(c.text):len(c.text)]
		}
		c.vals = append(c.vals, v)
	}
	return c.vals[i:len(c.vals):len(c.vals)]
}

// sameKey reports whether rows a and b hold the same key (columns key).
func sameKey(a, b []row.Value, key []int) bool {
	for _, i := range key {
		if i >= len(a) || i >= len(b) || a[i].Null != b[i].Null || a[i].Unchanged != b[i].Unchanged || !bytes.Equal(a[i].Text, b[i].Text) {
			return false
		}
	}
	return true
}

// mapFor finds the key and the columns of a streamed description of the
// table in the chunk's columns (they may differ after a schema change).
func (s *Stage) mapFor(rel *row.Relation) (relMap, bool) {
	m, _ := s.keysOf.Get(rel, s.relMapOf)
	return m, m.key != nil
}

func (s *Stage) relMapOf(rel *row.Relation) (relMap, error) {
	var m relMap
	if rel.Table == s.opts.Table {
		m.col = make([]int, len(rel.Columns))
		for j, c := range rel.Columns {
			m.col[j] = columnIndex(s.opts.Columns, c.Name)
		}
		for _, c := range s.ident {
			i := columnIndex(rel.Columns, s.opts.Columns[c].Name)
			if i < 0 {
				m.key = nil
				break
			}
			m.key = append(m.key, i)
		}
	}
	return m, nil
}

// keyOf joins a row's key values; text output never holds a NUL byte.
func keyOf(row []row.Value, key []int) string {
	var b strings.Builder
	for n, i := range key {
		if n > 0 {
			b.WriteByte(0)
		}
		if i < len(row) {
			b.Write(row[i].Text)
		}
	}
	return b.String()
}

// Filter is the SQL condition (with its parameters, numbered from $1) that
// selects a job's rows: one company's (by the company id column, as text),
// the operator's WHERE, or "" for every row.
func Filter(job state.Snapshot, companyIDColumn string) (where string, args []any) {
	switch {
	case job.CompanyID != "":
		return pgx.Identifier{companyIDColumn}.Sanitize() + "::text = $1", []any{job.CompanyID}
	case job.Where != "":
		return job.Where, nil
	}
	return "", nil
}

// readJob reads the job's chunks in key order and hands them to Run, until
// the table (or the job's subset) is exhausted. A chunk that cannot be read
// never ends the stream: a re-sync whose condition fails at run time ends
// with a *jobError; anything else (Postgres restarting, a recovery conflict
// on a standby, a lost connection, and every failure of the initial sync,
// which must finish: it is no operator's condition) is tried again with
// backoff, on a new connection when the old one broke.
func (s *Stage) readJob(ctx context.Context, job state.Snapshot, arrivals chan<- arrival) error {
	var conn *pgx.Conn
	connected := false
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	q := s.query(job)
	q.Taken = s.took
	if job.After != nil {
		s.log.Info("resuming the snapshot where it stopped", "job", job.ID, "rows_done", job.Rows)
	}
	verdict := make(chan bool)
	wait := s.retryMin()
	retry := func(err error) error {
		s.log.Error("a snapshot chunk could not be read; trying again, the stream goes on", "job", job.ID, "error", err,
			"fix", readFix(err), "retry_in", wait.String())
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, maxRetryWait)
		return nil
	}
	for {
		if !connected {
			var err error
			if conn, err = s.readConn(ctx); err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				if err := retry(err); err != nil {
					return err
				}
				continue
			}
			connected = true
		}
		c, err := s.opts.Read(ctx, conn, q)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if !job.Initial() && conditionFails(err) {
				failed := job
				failed.Error, failed.Fix = err.Error(), conditionFix(failed, err)
				return &jobError{job: failed}
			}
			var pgErr *pgconn.PgError
			if conn != nil && (!errors.As(err, &pgErr) || conn.IsClosed()) {
				conn.Close(context.Background())
				conn, connected = nil, false
			}
			if err := retry(fmt.Errorf("snapshot %s: %w", job.ID, err)); err != nil {
				return err
			}
			continue
		}
		wait = s.retryMin()
		next := job
		next.Rows += int64(len(c.Rows))
		done := len(c.Rows) < q.Limit
		if n := len(c.Rows); n > 0 {
			last := c.Rows[n-1]
			next.After = make([]string, len(s.key))
			for i, k := range s.key {
				next.After[i] = string(last[k].Text)
			}
		}
		select {
		case arrivals <- arrival{chunk: c, mark: &Progress{Job: next, Done: done}, verdict: verdict}:
		case <-ctx.Done():
			return ctx.Err()
		}
		if !<-verdict {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(20 * time.Millisecond):
			}
			continue
		}
		s.mu.Lock()
		s.read = next.Rows
		s.mu.Unlock()
		if done {
			return nil
		}
		job = next
		q.After = make([]row.Value, len(s.key))
		for i, t := range next.After {
			q.After[i] = row.Value{Text: []byte(t)}
		}
	}
}

// query is the chunk query of job, from where it stands.
func (s *Stage) query(job state.Snapshot) replication.ChunkQuery {
	q := replication.ChunkQuery{Table: s.opts.Table, Columns: s.opts.Columns, Key: s.key, Limit: s.opts.ChunkRows}
	q.Where, q.Args = Filter(job, s.opts.CompanyID)
	if s.opts.Where != "" {
		// companies.where holds for every job; a re-sync's own condition
		// narrows it further.
		if q.Where == "" {
			q.Where = s.opts.Where
		} else {
			q.Where = "(" + s.opts.Where + ") AND (" + q.Where + ")"
		}
	}
	if job.After != nil {
		q.After = make([]row.Value, len(job.After))
		for i, t := range job.After {
			q.After[i] = row.Value{Text: []byte(t)}
		}
	}
	return q
}

// Check has Postgres plan exactly the chunk queries job would run (see
// replication.CheckChunkQuery), on conn.
func (s *Stage) Check(ctx context.Context, conn *pgx.Conn, job state.Snapshot) error {
	return replication.CheckChunkQuery(ctx, conn, s.query(job))
}

// maxRetryWait caps the wait between attempts to read a chunk.
const maxRetryWait = 30 * time.Second

func (s *Stage) retryMin() time.Duration {
	if s.opts.RetryWait > 0 {
		return s.opts.RetryWait
	}
	return time.Second
}

// jobError ends a re-sync whose chunk query fails at run time; job is as
// far as it got (every chunk before the failing one), with Error and Fix.
type jobError struct{ job state.Snapshot }

func (e *jobError) Error() string { return "snapshot " + e.job.ID + ": " + e.job.Error }

// SQLSTATEs the stage tells apart.
const (
	queryCanceled         = "57014" // a statement_timeout, or pg_cancel_backend
	insufficientPrivilege = "42501"
)

// conditionFails reports whether Postgres refused the chunk query itself
// (a value its condition cannot take, a statement_timeout, a missing
// privilege, an error a function raised): reading it again fails again.
// Connection failures and the classes a retry cures (transaction rollback,
// such as a recovery conflict on a standby; insufficient resources; an
// object in use; an operator or crash shutdown; an I/O error) are not.
func conditionFails(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return false
	}
	switch pgErr.Code[:2] {
	case "08", "40", "53", "55", "58":
		return false
	case "57":
		return pgErr.Code == queryCanceled
	}
	return true
}

// conditionFix says what to do about a re-sync that failed at run time.
func conditionFix(job state.Snapshot, err error) string {
	var pgErr *pgconn.PgError
	errors.As(err, &pgErr)
	sent := "the rows before it were sent"
	if job.After != nil {
		sent = fmt.Sprintf("the %d rows up to key (%s) were sent", job.Rows, strings.Join(job.After, ", "))
	}
	switch {
	case pgErr != nil && pgErr.Code == queryCanceled:
		return "the condition is slower than statement_timeout: chunks are read in key order with a LIMIT, so a selective " +
			"condition no index serves scans far for each chunk; index what it tests, or raise statement_timeout for pgpilot's role, " +
			"then run `pgpilot resync` again (" + sent + ")"
	case pgErr != nil && pgErr.Code == insufficientPrivilege:
		return "grant pgpilot's role SELECT on what the condition reads, then run `pgpilot resync` again (" + sent + ")"
	case pgErr != nil && strings.HasPrefix(pgErr.Code, "22"):
		return "the condition fails on some rows' values (e.g. a cast of a column that does not always hold a number): " +
			"guard it (e.g. plan ~ '^[0-9]+$' AND plan::int > 0), then run `pgpilot resync` again (" + sent + ")"
	}
	return "fix the condition, then run `pgpilot resync` again (" + sent + ")"
}

// readFix says what to do about a chunk that cannot be read and is tried
// again, if the operator can do anything.
func readFix(err error) string {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return "none needed if Postgres is restarting; otherwise check that it is reachable"
	}
	switch {
	case pgErr.Code == queryCanceled:
		return "the initial sync must finish: raise statement_timeout for pgpilot's role (a chunk is one keyset read of delivery.snapshot_chunk_rows rows)"
	case pgErr.Code == insufficientPrivilege:
		return "the initial sync must finish: grant pgpilot's role SELECT on the table"
	case conditionFails(err):
		return "the initial sync must finish: fix what Postgres says"
	}
	return "none needed: it is tried again"
}

// recent keeps the last transactions passed on, with their changes while
// they are few.
type recent struct {
	txns    []kept // oldest first
	changes int    // changes held
	bound   int    // changes kept at most (0: recentChanges)
	// held is the first of txns whose changes are still held: they are
	// let go oldest first, and a scan from the start went over a thousand
	// let go already at every transaction.
	held int
}

type kept struct {
	xid     uint32
	changes []row.Change
	lost    bool // changes let go to bound memory
}

const (
	recentTxns    = 1024
	recentChanges = 20_000
	// recentIdle is the bound while no job runs: the stream's changes are
	// mostly kept for nothing then, and at 20,000 they were a sixth of the
	// heap during an outage.
	recentIdle = 2_000
)

func (r *recent) add(txn row.Transaction) {
	if txn.Xid == 0 {
		return
	}
	bound := cmp.Or(r.bound, recentChanges)
	k := kept{xid: txn.Xid, changes: txn.Changes}
	if len(k.changes) > bound {
		k.changes, k.lost = nil, true
	}
	r.txns = append(r.txns, k)
	r.changes += len(k.changes)
	if len(r.txns) > recentTxns {
		r.changes -= len(r.txns[0].changes)
		r.txns = r.txns[1:]
		r.held = max(0, r.held-1)
	}
	for ; r.changes > bound; r.held++ {
		r.changes -= len(r.txns[r.held].changes)
		r.txns[r.held].changes, r.txns[r.held].lost = nil, true
	}
}

// forget lets go of the transactions snap sees: the chunk read in it
// needs none of them, nor does any read after it (a later snapshot sees
// what an earlier one saw). What stays is what was passed on after the
// snapshot was taken, as long as a chunk takes to read, not a fixed count
// of the newest changes (20,000 of them, kept for as long as a job ran,
// were a fifth of the heap in an overlap).
func (r *recent) forget(snap replication.Snapshot) {
	kept := r.txns[:0]
	r.changes = 0
	for _, t := range r.txns {
		if snap.Sees(t.xid) {
			continue
		}
		kept = append(kept, t)
		r.changes += len(t.changes)
	}
	clear(r.txns[len(kept):])
	r.txns = kept
	r.held = 0
	for r.held < len(r.txns) && r.txns[r.held].lost {
		r.held++
	}
}

// unseen returns the changes of the kept transactions snap did not see;
// complete is false when one of them was let go.
func (r *recent) unseen(snap replication.Snapshot) (txns []row.Transaction, complete bool) {
	for _, t := range r.txns {
		if snap.Sees(t.xid) {
			continue
		}
		if t.lost {
			return nil, false
		}
		txns = append(txns, row.Transaction{Kind: row.Commit, Xid: t.xid, Changes: t.changes})
	}
	return txns, true
}
