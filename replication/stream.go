package replication

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgpilot/pgpilot/row"
)

// StreamOptions configure Stream.
type StreamOptions struct {
	Slot        string
	Publication string
	// Table is the mapped table; changes to other tables in the publication
	// are dropped.
	Table row.Table
	// Related are other tables whose changes are passed on too (the
	// tables companies.related reads: package related turns their changes
	// into re-reads of the companies they belong to).
	Related []row.Table
	// Start is the durable checkpoint. Transactions ending at or before it
	// were delivered already and are skipped if the server sends them again.
	Start pglogrepl.LSN
	// Confirmed returns the durable checkpoint. It is the only position ever
	// reported to Postgres as flushed, so the slot never passes it.
	Confirmed func() pglogrepl.LSN
	// Types resolves column types; it needs an ordinary connection of its own.
	Types *TypeResolver
	// ChunkChanges bounds memory for large transactions: after this many
	// changes the open transaction's changes are sent on as a piece with
	// EndLSN 0 (which moves no position); 0 → 250: the stages between the
	// stream and delivery buffer a few dozen pieces, and pieces of 1,000
	// were most of the heap draining one large transaction. pgoutput v1
	// sends only committed transactions, so a piece is never rolled back.
	ChunkChanges int
	// StatusInterval is the longest time between two status updates; 0 →
	// 10s. Use Server.StatusInterval: it stays inside wal_sender_timeout.
	StatusInterval time.Duration
	// ReceiveTimeout is how long the server may stay silent, even when asked
	// to reply, before the connection is taken for dead (see liveness.go);
	// 0 → six StatusIntervals, between 5s and 60s.
	ReceiveTimeout time.Duration
	// WantPosition, if set, returns a position the consumer is waiting to
	// see passed (a snapshot chunk waits for it; 0: none). Once the stream
	// knows everything up to it was sent, it offers a marker at once, and
	// until then it answers every keepalive at once, so that the walsender
	// reports its position again as soon as it moves.
	WantPosition func() pglogrepl.LSN
	// Budget, if set, bounds the bytes of the changes handed on and not
	// yet taken in by delivery: each transaction (or piece) carries its
	// charge, which delivery releases.
	Budget *row.Budget
	Logger *slog.Logger
}

// receiveWake is the longest a receive waits before the loop looks at its
// timers (status updates, liveness); a variable so that a test can stretch
// it and see that a stop does not wait for it.
var receiveWake = time.Second

// markerInterval bounds how often an idle position is offered for
// checkpointing: each one costs the consumer an fsync.
const markerInterval = time.Second

// Stream starts replication from opts.Start and sends each committed
// transaction touching opts.Table to out, in commit order, until ctx is
// done or the connection fails. It owns conn while it runs. While out is
// full it keeps the connection alive with status updates: back-pressure
// never makes the walsender time out.
//
// When it is between transactions it also offers keepalive positions as
// empty Transactions (without blocking), so that a quiet table on a busy
// server lets the slot advance.
func Stream(ctx context.Context, conn *pgconn.PgConn, opts StreamOptions, out chan<- row.Transaction) error {
	if opts.StatusInterval <= 0 {
		opts.StatusInterval = 10 * time.Second
	}
	if opts.ReceiveTimeout <= 0 {
		opts.ReceiveTimeout = defaultReceiveTimeout(opts.StatusInterval)
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.ChunkChanges <= 0 {
		opts.ChunkChanges = 250
	}
	s := &streamer{conn: conn, opts: opts, out: out, relations: map[uint32]*row.Relation{}, lastEmitted: opts.Start}
	pubNames := quoteLiteral(pgx.Identifier{opts.Publication}.Sanitize())
	err := pglogrepl.StartReplication(ctx, conn, opts.Slot, opts.Start, pglogrepl.StartReplicationOptions{
		PluginArgs: []string{"proto_version '1'", "publication_names " + pubNames},
	})
	if err != nil {
		return fmt.Errorf("start replication from slot %q at %s: %w", opts.Slot, opts.Start, err)
	}
	opts.Logger.Info("streaming", "slot", opts.Slot, "from", opts.Start.String())
	s.heard(time.Now())
	return s.loop(ctx)
}

type streamer struct {
	conn      *pgconn.PgConn
	opts      StreamOptions
	out       chan<- row.Transaction
	relations map[uint32]*row.Relation
	// kept is the relation the last row kept was of, and keptID its id:
	// most rows are of the table the last one was, so a row costs no map
	// look-up and no comparison of its table's names with the tables
	// wanted. A new description of a relation forgets it.
	kept   *row.Relation
	keptID uint32

	cur          row.Transaction // the open transaction, when open
	open         bool            // a transaction is open (a value, not a pointer: no allocation per transaction)
	curPieces    bool            // pieces of cur were sent on already (a large transaction)
	skipping     bool            // the open transaction was delivered before (resent after a restart)
	lastEmitted  pglogrepl.LSN
	lastChanges  int // how many changes the last transaction emitted had (its last piece's, if in pieces)
	lastMarker   time.Time
	lastStatus   time.Time
	lastReported pglogrepl.LSN
	// known is the newest position up to which everything was received;
	// offered the last wanted position a marker was offered for.
	known, offered pglogrepl.LSN
	live           liveness
	arena          arena // where the values of rows read are copied
	// curBytes is what the changes of cur not yet sent on take (see
	// row.Budget).
	curBytes int64
}

func (s *streamer) loop(ctx context.Context) error {
	// The loop must wake at least once a second for status updates, and
	// when a liveness check is due. A read deadline on the socket, renewed
	// when it passes, does that; a context per receive would cost a timer,
	// a registration and a channel for every message of the stream. A stop
	// moves the deadline to now, so it is heard at once.
	netConn := s.conn.Conn()
	defer linger(netConn)()
	var wake sync.Mutex
	returned := false
	stopWaking := context.AfterFunc(ctx, func() {
		wake.Lock()
		defer wake.Unlock()
		if !returned {
			_ = netConn.SetReadDeadline(time.Now())
		}
	})
	defer func() {
		// A stop that comes as the loop returns must not leave a deadline
		// in the past behind it on a connection the caller still uses
		// (the final status update): mark the loop gone first, then clear.
		stopWaking()
		wake.Lock()
		returned = true
		wake.Unlock()
		_ = netConn.SetReadDeadline(time.Time{})
	}()
	var deadline time.Time
	// now is read once per message, after it is handled (see heard):
	// reading the clock for each check was a measurable part of a
	// change's CPU in a catch-up.
	now := time.Now()
	for {
		if err := s.maybeSendStatus(ctx, now, false); err != nil {
			return err
		}
		if err := s.checkAlive(ctx, now); err != nil {
			return err
		}
		if err := s.offerWanted(ctx); err != nil {
			return err
		}
		every := min(receiveWake, s.opts.StatusInterval)
		if s.wanting() {
			// A chunk waits for a position: look again soon.
			every = 20 * time.Millisecond
			if soon := now.Add(every); soon.Before(deadline) {
				deadline = soon
				if err := netConn.SetReadDeadline(deadline); err != nil {
					return fmt.Errorf("receive from replication stream: %w", err)
				}
				if ctx.Err() != nil {
					return ctx.Err() // a stop overwritten by this deadline
				}
			}
		}
		if !now.Before(deadline) {
			deadline = now.Add(every)
			if c := s.nextCheck(); c.After(now) && c.Before(deadline) {
				deadline = c
			}
			if err := netConn.SetReadDeadline(deadline); err != nil {
				return fmt.Errorf("receive from replication stream: %w", err)
			}
			// A stop that came before this deadline was set has been
			// overwritten by it: look for it here.
			if ctx.Err() != nil {
				return ctx.Err()
			}
		}
		msg, err := s.conn.ReceiveMessage(context.Background())
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if pgconn.Timeout(err) {
				now = time.Now()
				continue
			}
			return fmt.Errorf("receive from replication stream: %w", err)
		}
		switch msg := msg.(type) {
		case *pgproto3.CopyData:
			if err := s.handleCopyData(ctx, msg.Data); err != nil {
				return err
			}
			// After handling: handing a transaction on may have blocked,
			// and that time is not the server's silence.
			now = time.Now()
			s.heard(now)
		case *pgproto3.ErrorResponse:
			return fmt.Errorf("replication stream: %w", pgconn.ErrorResponseToPgError(msg))
		case *pgproto3.CopyDone:
			return errors.New("replication stream: the server ended it (is Postgres shutting down?)")
		}
	}
}

func (s *streamer) handleCopyData(ctx context.Context, data []byte) error {
	if len(data) == 0 {
		return nil
	}
	switch data[0] {
	case pglogrepl.PrimaryKeepaliveMessageByteID:
		ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(data[1:])
		if err != nil {
			return fmt.Errorf("parse keepalive: %w", err)
		}
		// Between transactions, everything up to the server's position
		// has been sent to us: offer it, so an idle table lets WAL go.
		if !s.open {
			s.known = max(s.known, ka.ServerWALEnd)
			s.offerMarker(ka.ServerWALEnd)
		}
		if ka.ReplyRequested || (s.wanting() && time.Since(s.lastStatus) >= 10*time.Millisecond) {
			return s.maybeSendStatus(ctx, time.Now(), true)
		}
	case pglogrepl.XLogDataByteID:
		xld, err := pglogrepl.ParseXLogData(data[1:])
		if err != nil {
			return fmt.Errorf("parse XLogData: %w", err)
		}
		return s.handleMessage(ctx, xld.WALData)
	}
	return nil
}

func (s *streamer) handleMessage(ctx context.Context, data []byte) error {
	if isRow(data) {
		if s.open && s.skipping {
			return nil // delivered before: not even decoded
		}
		r, err := decodeRow(data, &s.arena)
		if err != nil {
			return err
		}
		return s.add(ctx, r)
	}
	// Begin and Commit come with every transaction: read in place, as
	// rows are, rather than by pglogrepl (a message object and a decoder
	// each). An empty message goes on to decodeMessage, which says so.
	switch {
	case len(data) == 0:
	case data[0] == 'B':
		m, err := decodeBegin(data)
		if err != nil {
			return err
		}
		s.begin(&m)
		return nil
	case data[0] == 'C':
		m, err := decodeCommit(data)
		if err != nil {
			return err
		}
		return s.commit(ctx, &m)
	}
	m, err := decodeMessage(data)
	if err != nil {
		return err
	}
	switch m := m.(type) {
	case *pglogrepl.RelationMessage:
		rel, err := decodeRelation(ctx, m, s.opts.Types)
		if err != nil {
			return err
		}
		s.describe(m.RelationID, rel)
	case *pglogrepl.TruncateMessage:
		for _, id := range m.RelationIDs {
			if err := s.add(ctx, rowMessage{op: row.Truncate, relation: id}); err != nil {
				return err
			}
		}
	}
	return nil
}

// begin opens the transaction m begins.
func (s *streamer) begin(m *pglogrepl.BeginMessage) {
	s.cur, s.open, s.curPieces, s.curBytes = row.Transaction{Kind: row.Commit, CommitLSN: m.FinalLSN, CommitTime: m.CommitTime, Xid: m.Xid}, true, false, 0
	// FinalLSN is where the commit record starts. A checkpoint is the
	// end of a commit record or a record boundary, so the transaction
	// was delivered before exactly when its commit starts before the
	// checkpoint: drop it without holding its changes.
	s.skipping = m.FinalLSN < s.opts.Start
}

// commit closes the open transaction and hands it on.
func (s *streamer) commit(ctx context.Context, m *pglogrepl.CommitMessage) error {
	if !s.open {
		return fmt.Errorf("replication stream: commit at %s without begin", m.CommitLSN)
	}
	txn := s.cur
	s.cur, s.open = row.Transaction{}, false
	txn.CommitLSN, txn.EndLSN, txn.CommitTime = m.CommitLSN, m.TransactionEndLSN, m.CommitTime
	s.known = max(s.known, txn.EndLSN)
	if s.skipping || txn.EndLSN <= s.opts.Start {
		// Delivered before the restart; the server may send it again.
		return nil
	}
	if len(txn.Changes) == 0 && !s.curPieces {
		s.offerMarker(txn.EndLSN)
		return nil
	}
	if err := s.emit(ctx, txn); err != nil {
		return err
	}
	s.lastEmitted, s.lastChanges = txn.EndLSN, len(txn.Changes)
	return nil
}

// describe takes rel as relation id's description from now on.
func (s *streamer) describe(id uint32, rel *row.Relation) {
	s.relations[id] = rel
	s.kept = nil
}

func (s *streamer) add(ctx context.Context, r rowMessage) error {
	if !s.open {
		return fmt.Errorf("replication stream: %s outside a transaction", r.op)
	}
	if s.skipping {
		return nil
	}
	rel := s.kept
	if rel == nil || s.keptID != r.relation {
		var ok bool
		if rel, ok = s.relations[r.relation]; !ok {
			return fmt.Errorf("replication stream: %s on relation %d before its description", r.op, r.relation)
		}
		if rel.Table != s.opts.Table && !slices.Contains(s.opts.Related, rel.Table) {
			return nil
		}
		s.kept, s.keptID = rel, r.relation
	}
	if s.cur.Changes == nil {
		// Sized as the last transaction was: grown from nothing, a
		// transaction of 100 rows allocated 2.5 times its changes.
		s.cur.Changes = make([]row.Change, 0, min(max(s.lastChanges, 1), s.opts.ChunkChanges))
	}
	ch := r.change(rel)
	s.cur.Changes = append(s.cur.Changes, ch)
	s.curBytes += int64(ch.Bytes())
	if len(s.cur.Changes) >= s.opts.ChunkChanges {
		// Send the piece on: a large transaction never sits whole in memory.
		if err := s.emit(ctx, row.Transaction{Kind: row.Piece, CommitLSN: s.cur.CommitLSN, CommitTime: s.cur.CommitTime, Xid: s.cur.Xid, Changes: s.cur.Changes}); err != nil {
			return err
		}
		// The next piece fills as this one did: sized at once, not grown.
		s.cur.Changes = make([]row.Change, 0, s.opts.ChunkChanges)
		s.curPieces, s.curBytes = true, 0
	}
	return nil
}

// emit hands txn to the consumer, keeping the connection alive while the
// consumer is busy: first the bytes of its changes from the budget (txn's
// changes are the open transaction's sent on: curBytes), then a place in
// the channel.
func (s *streamer) emit(ctx context.Context, txn row.Transaction) error {
	var tick *time.Ticker
	defer func() {
		if tick != nil {
			tick.Stop()
		}
	}()
	wait := func(ready <-chan struct{}) error {
		if tick == nil {
			tick = time.NewTicker(min(time.Second, s.opts.StatusInterval))
		}
		select {
		case <-ready:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
			return s.maybeSendStatus(ctx, time.Now(), false)
		}
	}
	if len(txn.Changes) > 0 {
		for {
			charge, ok := s.opts.Budget.TryTake(s.curBytes)
			if ok {
				txn.Charge = charge
				break
			}
			if err := wait(s.opts.Budget.Freed()); err != nil {
				return err
			}
		}
	}
	select {
	case s.out <- txn: // the usual case, without a ticker
		return nil
	default:
	}
	if tick == nil {
		tick = time.NewTicker(min(time.Second, s.opts.StatusInterval))
	}
	for {
		select {
		case s.out <- txn:
			return nil
		case <-ctx.Done():
			txn.Charge.Release()
			return ctx.Err()
		case <-tick.C:
			if err := s.maybeSendStatus(ctx, time.Now(), false); err != nil {
				txn.Charge.Release()
				return err
			}
		}
	}
}

// offerMarker offers pos for checkpointing without blocking: if the
// consumer is busy, a later marker or transaction will carry the position.
func (s *streamer) offerMarker(pos pglogrepl.LSN) {
	if pos <= s.lastEmitted || time.Since(s.lastMarker) < markerInterval {
		return
	}
	select {
	case s.out <- row.Transaction{Kind: row.Marker, EndLSN: pos}:
		s.lastEmitted = pos
		s.lastMarker = time.Now()
	default:
	}
}

// wanting reports whether the consumer waits for a position not known yet.
func (s *streamer) wanting() bool {
	if s.opts.WantPosition == nil {
		return false
	}
	want := s.opts.WantPosition()
	return want > 0 && (s.known < want || want != s.offered)
}

// offerWanted sends, between transactions, a marker for the known position
// when the consumer waits for it; unlike offerMarker it waits for the
// consumer to take it.
func (s *streamer) offerWanted(ctx context.Context) error {
	if s.opts.WantPosition == nil || s.open {
		return nil
	}
	want := s.opts.WantPosition()
	if want == 0 || s.known < want || want == s.offered {
		return nil
	}
	// Even a position sent before (the start, a transaction's end): the
	// consumer may have begun waiting after it went by.
	if err := s.emit(ctx, row.Transaction{Kind: row.Marker, EndLSN: s.known}); err != nil {
		return err
	}
	s.lastEmitted, s.offered = s.known, want
	return nil
}

// maybeSendStatus reports the durable checkpoint as written, flushed and
// applied: when it moved (at most once a second), when the server asked, or
// at least every StatusInterval. now is the time.
func (s *streamer) maybeSendStatus(ctx context.Context, now time.Time, force bool) error {
	confirmed := s.opts.Confirmed()
	since := now.Sub(s.lastStatus)
	if !force && since < s.opts.StatusInterval && (confirmed == s.lastReported || since < min(time.Second, s.opts.StatusInterval)) {
		return nil
	}
	err := pglogrepl.SendStandbyStatusUpdate(ctx, s.conn, pglogrepl.StandbyStatusUpdate{
		WALWritePosition: confirmed, WALFlushPosition: confirmed, WALApplyPosition: confirmed,
	})
	if err != nil {
		return fmt.Errorf("send standby status update: %w", err)
	}
	s.lastStatus, s.lastReported = now, confirmed
	return nil
}

// SendFinalStatus reports lsn once more before the connection is closed, so
// a clean shutdown leaves the slot exactly at the checkpoint.
func SendFinalStatus(ctx context.Context, conn *pgconn.PgConn, lsn pglogrepl.LSN) error {
	return pglogrepl.SendStandbyStatusUpdate(ctx, conn, pglogrepl.StandbyStatusUpdate{
		WALWritePosition: lsn, WALFlushPosition: lsn, WALApplyPosition: lsn,
	})
}
