package daemon

// Starting over without losing anything, when what the slot can stream is
// gone: the slot was dropped, or the publication it decodes through was
// (Postgres 15 to 17 then fail on every change after the DROP, even once a
// publication of that name exists again; 18 skips them without a word), or
// store.db was damaged and set aside.
//
// A start over keeps what the state directory knows. It makes a new slot
// (unless the old one still serves), reads every row of the table again as
// an initial sync does, sending those whose values the no-op index does not
// hold, and, before the stream's first change, hands delivery a DELETE of
// every company the state directory knows Userpilot holds that has no row
// left: those are marked or deleted as on_delete says, as if the stream had
// carried their deletion. The deletions are owed until the re-read is
// delivered (the checkpoint carries the start over until then), and a
// restart hands them over again: a set of companies without a row, read at
// any moment after the stream's start and put before its first change, is
// right whatever the stream carries after (a company whose row comes back
// is inserted again by the stream; one deleted meanwhile is deleted again).

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgpilot/pgpilot/config"
	"github.com/pgpilot/pgpilot/delivery"
	"github.com/pgpilot/pgpilot/internal/fix"
	"github.com/pgpilot/pgpilot/mapping"
	"github.com/pgpilot/pgpilot/metrics"
	"github.com/pgpilot/pgpilot/replication"
	"github.com/pgpilot/pgpilot/row"
	"github.com/pgpilot/pgpilot/state"
)

// Plan is what a start over will do, told before it does it (by the
// refusal that asks for one, by `pgpilot recover` and `pgpilot check`).
type Plan struct {
	Table row.Table
	Slot  string
	// NewSlot: a new slot is made; else the stream goes on from the
	// checkpoint on the slot it has.
	NewSlot bool
	// Rows is the planner's estimate of the table's rows (-1: unknown).
	Rows int64
	// Known is how many companies the state directory knows Userpilot
	// holds; Gone those of them with no row left.
	Known int
	Gone  []string
	// OnDelete is the mapping's policy for the Gone.
	OnDelete string
	// IndexLost: the no-op index is lost (a damaged store set aside), so
	// every row is sent, none skipped; Unreadable counts the pages of the
	// damaged store that could not be read.
	IndexLost  bool
	Unreadable int
}

// PlanStartOver works out what a start over of cfg's table would do: known
// are the companies the state directory knows (sorted).
func PlanStartOver(ctx context.Context, conn *pgx.Conn, cfg *config.Config, known []string, newSlot bool) (Plan, error) {
	spec := cfg.Entities()[0]
	t := row.Table{Schema: spec.Schema, Name: spec.Name}
	gone, err := replication.CompaniesWithoutRow(ctx, conn, t, spec.CompanyID, knownOf(spec.Kind, known))
	if err != nil {
		return Plan{}, err
	}
	return Plan{Table: t, Slot: cfg.Postgres.Slot, NewSlot: newSlot, Rows: estimateRows(ctx, conn, t), Known: len(knownOf(spec.Kind, known)),
		Gone: gone, OnDelete: spec.OnDelete}, nil
}

// knownOf are the ids of entity among the state directory's known keys
// (delivery.KeyOf: users' keys are in a space of their own), in order.
func knownOf(entity mapping.Entity, keys []string) []string {
	var ids []string
	for _, k := range keys {
		if e, id := delivery.SubjectOf(k); e == entity {
			ids = append(ids, id)
		}
	}
	return ids
}

// String tells the plan in a few sentences: what is sent again, what
// becomes of the companies without a row, and what cannot be known.
func (p Plan) String() string {
	var b strings.Builder
	if p.NewSlot {
		fmt.Fprintf(&b, "a new replication slot %q is made and streamed from its start; ", p.Slot)
	}
	rows := "every row"
	if p.Rows >= 0 {
		rows = fmt.Sprintf("every row (about %d)", p.Rows)
	}
	if p.IndexLost {
		fmt.Fprintf(&b, "%s of %s is read again and sent (the no-op index is lost, so none is skipped)", rows, p.Table)
	} else {
		fmt.Fprintf(&b, "%s of %s is read again and sent where Userpilot does not hold it already (the no-op index knows %d companies)",
			rows, p.Table, p.Known)
	}
	if len(p.Gone) > 0 {
		const show = 10
		list := strings.Join(p.Gone[:min(show, len(p.Gone))], ", ")
		if len(p.Gone) > show {
			list += fmt.Sprintf(", and %d more", len(p.Gone)-show)
		}
		var what string
		switch p.OnDelete {
		case mapping.OnDeleteMark:
			what = "they are marked deleted (on_delete: mark)"
		case mapping.OnDeleteDelete:
			what = "they are deleted in Userpilot (on_delete: delete)"
		default:
			what = "they are left as they are in Userpilot (on_delete: ignore)"
		}
		fmt.Fprintf(&b, "; %d companies Userpilot holds have no row left (%s): %s", len(p.Gone), list, what)
	} else {
		b.WriteString("; every company Userpilot holds still has its row")
	}
	b.WriteString(". What cannot be known: the values rows held in between (only the current ones are sent, all Userpilot keeps), " +
		"and whether a row went by DELETE or by TRUNCATE (a TRUNCATE is never mirrored, but here a known company without a row counts as deleted)")
	if p.Unreadable > 0 {
		fmt.Fprintf(&b, "; %d pages of the damaged store could not be read: a company only they knew, whose row is gone too, is not marked", p.Unreadable)
	}
	return b.String()
}

// StoreDamaged is the refusal to run on a damaged store.db: what it held,
// as far as it can be read, and the way out.
func StoreDamaged(cfg *config.Config, damage *state.StoreDamage) error {
	held := "nothing of it can be read"
	if h := damage.Held; h.Readable {
		held = fmt.Sprintf("it held the no-op index (%d companies Userpilot holds, as far as it can be read) and the outbox (%d companies owed an update Userpilot has not had)",
			h.Indexed, h.Owed)
		if h.Unreadable > 0 {
			held += fmt.Sprintf("; %d of its pages cannot be read", h.Unreadable)
		}
	}
	return fix.With(fmt.Errorf("%w; %s", damage, held), fmt.Sprintf(
		"run `pgpilot recover --config %s`: it sets the damaged file aside and writes what its outbox owed beside it; the next `pgpilot run` "+
			"then reads every row again and sends it (the index is lost), and treats the companies the damaged file still names with no row left as deleted (on_delete). "+
			"`pgpilot check` shows the plan; `pgpilot teardown` starts from scratch instead", cfg.Path))
}

// knownCompanies are the companies the state directory knows: the store's,
// and those of stores set aside for this start over.
func (s *session) knownCompanies(rec *state.Recovery) ([]string, error) {
	known, err := s.store.KnownCompanies()
	if err != nil {
		return nil, err
	}
	if rec == nil {
		return known, nil
	}
	for _, f := range rec.KnownFrom {
		more, err := state.KnownInStoreFile(s.dir.Path(), f)
		if err != nil {
			return nil, err
		}
		known = append(known, more...)
	}
	return sortedUnique(known), nil
}

// slotGone is the refusal when the slot was dropped under a checkpoint: it
// says what `pgpilot recover` will do, counted now.
func (s *session) slotGone(ctx context.Context, conn *pgx.Conn, cp state.Checkpoint) error {
	err := fmt.Errorf("replication slot %q is gone (dropped by hand or by another tool) but the checkpoint is at %s: "+
		"the changes since cannot be streamed from it", s.cfg.Postgres.Slot, cp.LSN)
	plan := "a new slot, every row read again, and the companies Userpilot holds with no row left treated as deleted (on_delete)"
	if known, kerr := s.knownCompanies(nil); kerr == nil {
		if p, perr := PlanStartOver(ctx, conn, s.cfg, known, true); perr == nil {
			plan = p.String()
		}
	}
	return fix.With(err, fmt.Sprintf("run `pgpilot recover --config %s` to start over keeping what %s knows, then `pgpilot run`: %s",
		s.cfg.Path, s.dir.Path(), plan))
}

// publicationGone is a session's end when the publication the checkpoint
// streams through is missing. It is no configuration problem, and not
// permanent: the daemon waits, unready, for someone to create it again.
type publicationGone struct {
	name  string
	slot  string
	since state.LSN
	// kept: the slot could not be dropped (it holds WAL until the start
	// over drops it).
	kept bool
	// create is the statement that makes it again.
	create string
}

func (e *publicationGone) Error() string {
	slot := fmt.Sprintf("dropped its slot %q, which could never decode past the DROP", e.slot)
	if e.kept {
		slot = fmt.Sprintf("could not drop its slot %q, which can never decode past the DROP and holds WAL until the start over drops it", e.slot)
	}
	return fmt.Sprintf("publication %q is gone: it was dropped, so the changes since %s cannot be decoded; "+
		"pgpilot does not create it again over a DBA's head, and %s (nothing is lost)", e.name, e.since, slot)
}

// fix is what to do about it.
func (e *publicationGone) fix() string {
	return fmt.Sprintf("create it again, on the primary: %s pgpilot then starts over by itself on a new slot: every row is read again "+
		"and sent where Userpilot does not hold it, and the companies Userpilot holds with no row left are treated as deleted (on_delete); "+
		"`pgpilot check` shows the plan. To stop syncing instead, run `pgpilot teardown`", e.create)
}

// waitingForPublication says, as an ERROR (at most every ten minutes after
// the first), as the fault and in /readyz, that the publication is gone.
func (s *session) waitingForPublication(err *publicationGone) {
	s.opts.Metrics.SetFault(metrics.FaultPublicationMissing, err.Error()+"; fix: "+err.fix())
	if time.Since(s.saidPublicationGone) < 10*time.Minute {
		return
	}
	s.saidPublicationGone = time.Now()
	s.log.Error("publication gone: waiting for it to be created again; nothing is confirmed to Postgres meanwhile",
		"publication", err.name, "error", err.Error(), "fix", err.fix())
}

// ensurePublication checks the publication before a session streams
// through it. Only on the first setup is it created (and said so). Missing
// under a checkpoint, it was dropped: a start over is asked for (the slot
// cannot decode past the DROP, so it is dropped too), and the session ends
// with a *publicationGone. Created again since the checkpoint (another
// oid), or refused by the last stream, it asks for the start over and
// goes on.
func (s *session) ensurePublication(ctx context.Context, src *source) error {
	cfg := s.cfg
	name := cfg.Postgres.Publication
	pub, have, err := replication.ReadPublication(ctx, src.sqlConn, name)
	if err != nil {
		return err
	}
	cp, haveCP, err := s.checkpointNow()
	if err != nil {
		return permanent(err)
	}
	established := haveCP && cp.InitialSync == state.InitialSyncDone
	switch {
	case !have && established:
		return s.publicationDropped(ctx, src, cp)
	case !have:
		first, rest := src.tables()
		created, err := replication.EnsurePublication(ctx, src.sqlConn, name, first, src.srv, rest...)
		if err != nil {
			return permanent(fmt.Errorf("%w: %w", ErrConfig, err))
		}
		if created {
			s.log.Info("created the publication (first setup: pgpilot never creates it again by itself; if it is dropped, pgpilot waits for it)",
				"publication", name, "tables", tableNames(append([]row.Table{first}, rest...)))
		}
		if pub, _, err = replication.ReadPublication(ctx, src.sqlConn, name); err != nil {
			return err
		}
	case established && (s.pubRefused || cp.Publication != nil && cp.Publication.OID != pub.OID):
		why := fmt.Sprintf("publication %q was dropped and created again since the checkpoint (oid %d, was %d)", name, pub.OID, oidOf(cp.Publication))
		if s.pubRefused {
			why = fmt.Sprintf("the stream refused publication %q (it was dropped after the checkpoint)", name)
		}
		if _, err := s.dir.RequestRecovery(state.Recovery{Reason: state.RecoverPublicationRecreated, NewSlot: true}); err != nil {
			return err
		}
		s.log.Warn(why+": the slot cannot decode the changes made while it was missing, so pgpilot starts over on a new slot, losing nothing",
			"publication", name, "slot", cfg.Postgres.Slot, "checkpoint", cp.LSN.String())
	}
	s.opts.Metrics.ClearFault(metrics.FaultPublicationMissing)
	s.saidPublicationGone = time.Time{}
	s.pubRefused = false
	if have {
		// Tables added to the config are added to pgpilot's own
		// publication; an operator's is not altered (the error says what
		// to run).
		first, rest := src.tables()
		if _, err := replication.EnsurePublication(ctx, src.sqlConn, name, first, src.srv, rest...); err != nil {
			return permanent(fmt.Errorf("%w: %w", ErrConfig, err))
		}
	}
	s.pub = state.Publication{Name: name, OID: pub.OID}
	return nil
}

// publicationDropped handles a publication missing under a checkpoint:
// the start over is asked for, the slot (useless from the DROP on, and
// holding WAL) dropped, and the session ends with a *publicationGone.
func (s *session) publicationDropped(ctx context.Context, src *source, cp state.Checkpoint) error {
	cfg := s.cfg
	if req, ok, err := state.ReadRecovery(s.dir.Path()); err != nil {
		return err
	} else if !ok || !req.NewSlot {
		if _, err := s.dir.RequestRecovery(state.Recovery{Reason: state.RecoverPublicationMissing, NewSlot: true}); err != nil {
			return err
		}
	}
	slot, haveSlot, err := replication.ReadSlot(ctx, src.sqlConn, cfg.Postgres.Slot)
	if err != nil {
		return err
	}
	kept := false
	if haveSlot {
		if err := replication.DropSlot(ctx, src.sqlConn, slot.Name); err != nil {
			kept = true
			// The start over drops it anyway; until then it holds WAL.
			s.log.Warn("could not drop the slot, which cannot decode past the publication's DROP: it holds WAL until the start over drops it",
				"slot", slot.Name, "error", err)
		} else {
			s.log.Warn("dropped the slot: it cannot decode past the publication's DROP, and held WAL back for nothing",
				"slot", slot.Name, "checkpoint", cp.LSN.String())
		}
	}
	first, rest := src.tables()
	tables := append([]row.Table{first}, rest...)
	quoted := make([]string, len(tables))
	for i, t := range tables {
		quoted[i] = t.Quoted()
	}
	return &publicationGone{name: cfg.Postgres.Publication, slot: cfg.Postgres.Slot, since: cp.LSN, kept: kept,
		create: fmt.Sprintf("CREATE PUBLICATION %s FOR TABLE %s;", pgx.Identifier{cfg.Postgres.Publication}.Sanitize(), strings.Join(quoted, ", "))}
}

// checkpointNow is the checkpoint as it stands: the engine's, in memory,
// while one runs (never an older read of the file over it).
func (s *session) checkpointNow() (state.Checkpoint, bool, error) {
	if s.eng != nil {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.cp, true, nil
	}
	return s.dir.Checkpoint()
}

// startOver carries out the start over req asks for: the engine of the
// old stream delivers what it holds and stops, the slot is made anew if
// req says so, and the checkpoint takes the re-read of every row (the
// initial job) and the start over, whose deletions the session hands
// delivery before streaming (handDeletions).
func (s *session) startOver(ctx context.Context, sqlConn *pgx.Conn, rconn *pgconn.PgConn, cp state.Checkpoint,
	slot replication.Slot, haveSlot bool, req state.Recovery) (start, error) {
	cfg := s.cfg
	if s.eng != nil {
		// What it read of the old stream goes out first; what it cannot
		// deliver now is read again by the start over.
		if err := s.eng.stop(s.opts.ShutdownGrace); err != nil && !errors.Is(err, context.Canceled) {
			s.log.Warn("delivery stopped before starting over; the start over sends it again", "error", err)
		}
		s.eng = nil
		s.watched.set(nil)
		s.mu.Lock()
		cp = s.cp
		s.mu.Unlock()
	}
	if req.NewSlot {
		if haveSlot {
			if err := replication.DropSlot(ctx, sqlConn, slot.Name); err != nil {
				return start{}, err
			}
			s.log.Info("dropped the old slot to start over", "slot", slot.Name)
		}
		created, err := replication.CreateSlot(ctx, rconn, cfg.Postgres.Slot, replication.SlotOptions{Failover: cfg.Postgres.FailoverSlot})
		if err != nil {
			return start{}, err
		}
		cp.LSN = state.LSN(created.ConsistentPoint)
	}
	job := s.initialJob(ctx, sqlConn)
	cp.InitialSync, cp.Snapshot, cp.Recovery = state.InitialSyncDone, job, &req
	cp.Publication = &s.pub
	if err := s.dir.SaveCheckpoint(cp); err != nil {
		return start{}, permanent(err)
	}
	s.mu.Lock()
	s.cp = cp
	s.mu.Unlock()
	if err := s.dir.TakeRecovery(); err != nil {
		return start{}, err
	}
	s.log.Warn("starting over, keeping what the state directory knows: every row is read again, "+
		"and the companies Userpilot holds with no row left are treated as deleted before the stream's first change",
		"reason", req.Reason, "new_slot", req.NewSlot, "slot", cfg.Postgres.Slot, "from", cp.LSN.String(), "rows_estimate", job.Total)
	return start{lsn: pglogrepl.LSN(cp.LSN), job: job}, nil
}

// handDeletions gives delivery, before the session streams, a DELETE of
// every company the state directory knows Userpilot holds that has no row
// left, while a start over is in progress: once per engine (a new engine
// starts from the checkpoint, before they were delivered).
func (s *session) handDeletions(ctx context.Context, src *source) error {
	s.mu.Lock()
	rec := s.cp.Recovery
	s.mu.Unlock()
	if rec == nil || (s.deletionsFor.eng == s.eng && s.deletionsFor.id == rec.ID) {
		return nil
	}
	known, err := s.knownCompanies(rec)
	if err != nil {
		return err
	}
	s.deletionsFor.eng, s.deletionsFor.id = s.eng, rec.ID
	for _, es := range src.ents {
		if err := s.handDeletionsOf(ctx, src, es, knownOf(es.spec.Kind, known)); err != nil {
			return err
		}
	}
	return nil
}

// handDeletionsOf hands delivery the deletions of one section's known
// companies (or users) that have no row left.
func (s *session) handDeletionsOf(ctx context.Context, src *source, es *entitySource, known []string) error {
	spec := es.spec
	gone, err := replication.CompaniesWithoutRow(ctx, src.sqlConn, es.table, spec.CompanyID, known)
	if err != nil {
		return err
	}
	what := spec.Kind.Section()
	if len(gone) == 0 || spec.OnDelete == mapping.OnDeleteIgnore {
		s.log.Info("start over: "+what+" Userpilot holds with no row left", what, len(gone), "known", len(known),
			"on_delete", spec.OnDelete)
		return nil
	}
	idCol := -1
	for i, c := range es.readCols {
		if c.Name == spec.CompanyID {
			idCol = i
		}
	}
	if idCol < 0 {
		return fmt.Errorf("start over: the %s column %q is not read", spec.Kind.IDKey(), spec.CompanyID)
	}
	rel := &row.Relation{Table: es.table, Columns: es.readCols}
	changes := make([]row.Change, 0, min(len(gone), deletionPiece))
	send := func() error {
		// A chunk: rows as read now, positioned before the stream's first
		// change, moving no position.
		txn := row.Transaction{Kind: row.Chunk, Changes: changes}
		select {
		case s.eng.in <- txn:
		case <-ctx.Done():
			return ctx.Err()
		}
		changes = make([]row.Change, 0, deletionPiece)
		return nil
	}
	for _, id := range gone {
		vals := make([]row.Value, len(es.readCols))
		for i := range vals {
			vals[i].Null = true
		}
		vals[idCol] = row.Value{Text: []byte(id)}
		changes = append(changes, row.Change{Op: row.Delete, Relation: rel, Values: vals})
		if len(changes) == deletionPiece {
			if err := send(); err != nil {
				return err
			}
		}
	}
	if len(changes) > 0 {
		if err := send(); err != nil {
			return err
		}
	}
	s.log.Warn("start over: "+what+" Userpilot holds have no row left; treating them as deleted", what, len(gone),
		"known", len(known), "on_delete", spec.OnDelete, "first", gone[:min(10, len(gone))])
	return nil
}

// deletionPiece is how many deletions go in one transaction, as many as a
// snapshot chunk's piece.
const deletionPiece = 250

// watchPublication checks, every few seconds while the session streams,
// that the publication it decodes through is the one it began with: on
// Postgres 18 a dropped publication is not an error in the stream (its
// changes are skipped with a warning in the server's log), and on any
// version a quiet table would not say so. It returns when ctx is done, or
// with the reason to end the session.
func (s *session) watchPublication(ctx context.Context) error {
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(publicationCheckEvery):
		}
		if conn == nil {
			c, err := replication.ConnectSQL(ctx, s.cfg.Postgres.URL)
			if err != nil {
				continue // the stream notices a dead server itself
			}
			conn = c
		}
		pub, have, err := replication.ReadPublication(ctx, conn, s.cfg.Postgres.Publication)
		switch {
		case err != nil:
			conn.Close(context.Background())
			conn = nil
		case !have:
			return fmt.Errorf("publication %q was dropped while streaming", s.cfg.Postgres.Publication)
		case pub.OID != s.pub.OID:
			return &publicationChanged{fmt.Errorf("publication %q was dropped and created again while streaming (oid %d, was %d)",
				s.cfg.Postgres.Publication, pub.OID, s.pub.OID)}
		}
	}
}

// publicationChanged ends a session whose publication was made anew: the
// next one starts over (see ensurePublication).
type publicationChanged struct{ error }

func (e *publicationChanged) Unwrap() error { return e.error }

// publicationCheckEvery is how often watchPublication looks.
const publicationCheckEvery = 2 * time.Second

func oidOf(p *state.Publication) uint32 {
	if p == nil {
		return 0
	}
	return p.OID
}

func tableNames(ts []row.Table) string {
	names := make([]string, len(ts))
	for i, t := range ts {
		names[i] = t.String()
	}
	return strings.Join(names, ", ")
}

func sortedUnique(ids []string) []string {
	slices.Sort(ids)
	return slices.Compact(ids)
}
