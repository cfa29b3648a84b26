package related

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgpilot/pgpilot/replication"
	"github.com/pgpilot/pgpilot/row"
)

// Stats count the stage's re-reads, for status and metrics. They outlive
// a session: the daemon owns them.
type Stats struct {
	Reads     atomic.Int64 // batches read (each one snapshot)
	Queries   atomic.Int64 // related queries run
	Companies atomic.Int64 // companies re-read
	Rows      atomic.Int64 // related rows those queries covered
	Nanos     atomic.Int64 // time spent reading
	Filtered  atomic.Int64 // companies rows companies.where kept out
	Stopped   atomic.Int64 // companies that stopped matching companies.where
}

// Options configure a Stage.
type Options struct {
	// URL is the database: the stage reads on a connection of its own (a
	// standby's is fine: it only reads).
	URL  string
	Plan *Plan
	// Window is the least time between the starts of two reads while
	// changes keep coming: what arrives meanwhile is read together. A read
	// also waits, after the last one ended, as long as that one took, so
	// the stage reads at most half of the time however busy the stream.
	// A change arriving after a quiet spell is read at once. 0 → 5 ms.
	Window time.Duration
	// MaxCompanies bounds one read (and what the stage holds): 0 → 10,000.
	MaxCompanies int
	// Keep are tables whose changes stay in the transactions although the
	// plan reads them: another stage after this one needs them too (the
	// other entity's table, or a table related to both companies and
	// users).
	Keep   []row.Table
	Stats  *Stats
	Logger *slog.Logger
	// Connect, if set, replaces replication.ConnectSQL (tests).
	Connect func(ctx context.Context, url string) (*pgx.Conn, error)
}

// Stage sits between the snapshot stage and delivery. It takes changes to
// the related tables out of the transactions, and puts in their place the
// affected companies' related values, re-read from the database; it
// applies companies.where to companies rows. See the package comment.
type Stage struct {
	opts  Options
	plan  *Plan
	log   *slog.Logger
	conn  *pgx.Conn
	stats *Stats
	// per description of a table: where its company id column is (the
	// companies table), or its company id columns are (a related table).
	idCols  row.PerRelation[int]
	relCols row.PerRelation[[]int]

	held    []held
	wanted  map[string]want // company id → what the last transaction asking for it wants
	changes int
	bytes   int // what the held changes' rows take (row.Change.Bytes)
	// narrowed is the related Relation narrowed to a backfill's keys, per
	// KeySet (one at a time runs).
	narrowed map[*row.KeySet]*row.Relation
	// lastRead is when the last read began, lastTook how long it took.
	lastRead time.Time
	lastTook time.Duration
}

type held struct {
	txn row.Transaction
}

// want is a company's read: the index in held of the last transaction
// that asks for it, and the keys it asks for (nil: every related key; a
// backfill's rows ask for its keys only, unless something else asks for
// the company too).
type want struct {
	txn  int
	keys *row.KeySet
}

// New makes a Stage.
func New(opts Options) *Stage {
	if opts.Window <= 0 {
		opts.Window = 5 * time.Millisecond
	}
	if opts.MaxCompanies <= 0 {
		opts.MaxCompanies = 10_000
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Stats == nil {
		opts.Stats = &Stats{}
	}
	if opts.Connect == nil {
		opts.Connect = replication.ConnectSQL
	}
	return &Stage{opts: opts, plan: opts.Plan, log: opts.Logger, stats: opts.Stats, wanted: map[string]want{}, narrowed: map[*row.KeySet]*row.Relation{}}
}

// maxHeldChanges bounds what the stage holds while it gathers a read: the
// rows themselves (with FULL replica identity, old and new), which wait in
// memory until the read. Ten thousand is a read's worth of companies
// (MaxCompanies) and a few megabytes; five times that, a burst of
// changes to users with a where held 12 MB of rows and 13 MB of query
// arguments.
const maxHeldChanges = 10_000

// maxHeldBytes bounds the same by what the rows take (row.Change.Bytes): ten
// thousand updates of users under REPLICA IDENTITY FULL, old row and new,
// are 7 MB, and their read (the where's verdicts and arguments) as much
// again, while delivery, backlogged, holds the stage up. Two megabytes is
// still thousands of such changes a read, and ten thousand small ones.
const maxHeldBytes = 2 << 20

// Run passes src on to dst, in order, until src is closed or ctx is done.
// A transaction that asks for no re-read passes at once when nothing is
// held; otherwise it waits with those before it for the next read, which
// starts when src has nothing more to give and Window has passed since the
// last one began, and as long as that one took since it ended (or the
// batch is full). Transactions still held when src
// closes are dropped: they never reached delivery, so nothing past them
// was checkpointed, and the next session streams them again.
func (s *Stage) Run(ctx context.Context, src <-chan row.Transaction, dst chan<- row.Transaction) error {
	defer func() {
		if s.conn != nil {
			s.conn.Close(context.Background())
		}
	}()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		var txn row.Transaction
		var ok bool
		if len(s.held) == 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case txn, ok = <-src:
			}
		} else {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case txn, ok = <-src:
			default:
				wait := max(s.opts.Window-time.Since(s.lastRead), s.lastTook-time.Since(s.lastRead.Add(s.lastTook)))
				if wait <= 0 {
					if err := s.flush(ctx, dst); err != nil {
						return err
					}
					continue
				}
				timer.Reset(wait)
				select {
				case <-ctx.Done():
					return ctx.Err()
				case txn, ok = <-src:
				case <-timer.C:
					if err := s.flush(ctx, dst); err != nil {
						return err
					}
					continue
				}
			}
		}
		if !ok {
			return nil
		}
		asks, err := s.take(&txn)
		if err != nil {
			return err
		}
		if !asks && len(s.held) == 0 {
			if err := send(ctx, dst, txn); err != nil {
				return err
			}
			continue
		}
		s.held = append(s.held, held{txn: txn})
		s.changes += len(txn.Changes)
		for _, ch := range txn.Changes {
			s.bytes += ch.Bytes()
		}
		if len(s.wanted) >= s.opts.MaxCompanies || s.changes >= maxHeldChanges || s.bytes >= maxHeldBytes || len(s.held) >= maxHeldChanges {
			if err := s.flush(ctx, dst); err != nil {
				return err
			}
		}
	}
}

func send(ctx context.Context, dst chan<- row.Transaction, txn row.Transaction) error {
	select {
	case dst <- txn:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// take strips txn of its related tables' changes, noting the companies
// they belong to, and notes the companies whose rows it inserts (or moves
// to another id, or a snapshot chunk carries): those are sent whole, with
// their related values. A change of a companies row is kept, and asks
// for a read of the companies whose values it may change when the
// companies table is read by the plan (sql: keys, or a related entry over
// it): those must be current on every change of the row. It reports
// whether txn needs a read (of related values, or of companies.where).
func (s *Stage) take(txn *row.Transaction) (bool, error) {
	asks := false
	idx := len(s.held)
	ask := func(id string, keys *row.KeySet) {
		if id == "" {
			return
		}
		w, seen := s.wanted[id]
		switch {
		case !seen:
			w.keys = keys
		case w.keys != keys:
			w.keys = nil // asked for two things: read everything
		}
		w.txn = idx
		s.wanted[id] = w
		asks = true
	}
	kept := txn.Changes[:0:0]
	for _, ch := range txn.Changes {
		if IsRelated(ch.Relation) {
			// Another stage's values (the other entity's): they pass.
			kept = append(kept, ch)
			continue
		}
		t := ch.Relation.Table
		cols, read := s.plan.CompanyColumns(t)
		if read && t != s.plan.companies && ch.Op == row.Truncate {
			s.log.Warn("TRUNCATE of a related table: the related keys of its companies are not re-read; run `pgpilot resync` to send them again",
				"table", t.String(), "commit_lsn", txn.CommitLSN.String())
			if !slices.Contains(s.opts.Keep, t) {
				continue
			}
		}
		if read && ch.Op != row.Truncate {
			at, err := s.relCols.Get(ch.Relation, func(rel *row.Relation) ([]int, error) {
				var at []int
				for _, col := range cols {
					i := slices.IndexFunc(rel.Columns, func(c row.Column) bool { return c.Name == col })
					if i < 0 {
						return nil, fmt.Errorf("%w: column %q of %s, a related company_id, is gone; fix companies.related and restart pgpilot: nothing is lost, the slot keeps the changes",
							ErrSchema, col, t)
					}
					at = append(at, i)
				}
				return at, nil
			})
			if err != nil {
				return false, err
			}
			// A backfill's row asks only for its keys, and only if the
			// plan reads any of them.
			keys := ch.Relation.Keys
			if keys == nil || s.plan.reads(keys) {
				for _, i := range at {
					// A DELETE's values are its old row's (key).
					ask(textAt(ch.Values, i), keys)
					if ch.Old != nil {
						ask(textAt(ch.Old, i), nil)
					}
				}
			}
			if t != s.plan.companies && !slices.Contains(s.opts.Keep, t) {
				continue
			}
		}
		kept = append(kept, ch)
		if t != s.plan.companies || ch.Op == row.Truncate {
			continue
		}
		if s.plan.where != "" {
			asks = true // judged at the read (a DELETE by its old row)
		}
		if !s.plan.HasRelated() {
			continue
		}
		i, _ := s.idCols.Get(ch.Relation, func(rel *row.Relation) (int, error) {
			for i, c := range rel.Columns {
				if c.Name == s.plan.idCol {
					return i, nil
				}
			}
			return -1, nil // delivery stops on it, with the mapping's message
		})
		if i < 0 {
			continue
		}
		switch keys := ch.Relation.Keys; {
		case ch.Op == row.Insert && (keys == nil || s.plan.reads(keys)):
			// A new company, or a snapshot's row: sent whole.
			ask(textAt(ch.Values, i), keys)
		case ch.Op == row.Update && ch.Old != nil && textAt(ch.Old, i) != textAt(ch.Values, i):
			// A company that took another id is new under it.
			ask(textAt(ch.Values, i), nil)
		}
	}
	txn.Changes = kept
	return asks, nil
}

func textAt(vals []row.Value, i int) string {
	if i < 0 || i >= len(vals) || vals[i].Null || vals[i].Unchanged {
		return ""
	}
	return string(vals[i].Text)
}

// errNotYetVisible: a transaction the stream passed on is not visible yet
// to a new snapshot (its commit was written but not yet made visible, as
// under synchronous replication); the read waits for it.
var errNotYetVisible = errors.New("a streamed transaction is not visible yet")

// flush reads what the held transactions ask for, in one snapshot that
// sees every one of them, and passes them on, each company's related
// values in the last transaction that asked for them. So a read is never
// older than a change before it, and the slot is never confirmed past a
// related change before the values it caused are in delivery: an earlier
// transaction that asked for the same company may be checkpointed first,
// but the later one, which carries them, is not, and a restart streams it
// (and so reads them) again.
func (s *Stage) flush(ctx context.Context, dst chan<- row.Transaction) error {
	s.lastRead = time.Now()
	wait := 10 * time.Millisecond
	var vals map[string][]row.Value
	for {
		var err error
		vals, err = s.read(ctx)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if stop := permanentRead(err); stop != nil {
			return stop
		}
		if !errors.Is(err, errNotYetVisible) {
			s.log.Error("could not re-read related values; trying again, nothing is confirmed past them meanwhile", "error", err, "retry_in", wait.String())
			if s.conn != nil && (s.conn.IsClosed() || !isPgError(err)) {
				s.conn.Close(context.Background())
				s.conn = nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, 30*time.Second)
	}
	took := time.Since(s.lastRead)
	s.lastTook = took
	s.stats.Nanos.Add(int64(took))
	s.log.Debug("related values re-read", "transactions", len(s.held), "companies", len(s.wanted), "found", len(vals),
		"duration", took.Round(time.Microsecond).String())
	last := make([][]string, len(s.held))
	for id, w := range s.wanted {
		if _, ok := vals[id]; ok {
			last[w.txn] = append(last[w.txn], id)
		}
	}
	for i, h := range s.held {
		txn := h.txn
		for _, id := range last[i] {
			txn.Changes = append(txn.Changes, row.Change{Op: row.Insert, Relation: s.relation(s.wanted[id].keys), Values: vals[id]})
		}
		if err := send(ctx, dst, txn); err != nil {
			return err
		}
		s.held[i] = held{}
	}
	s.held = s.held[:0]
	clear(s.wanted)
	s.changes, s.bytes = 0, 0
	return nil
}

// relation describes the rows of related values a read makes: narrowed
// to a backfill's keys, or whole (keys nil).
func (s *Stage) relation(keys *row.KeySet) *row.Relation {
	if keys == nil {
		return s.plan.Relation()
	}
	rel, ok := s.narrowed[keys]
	if !ok {
		clear(s.narrowed) // a job at a time: the last one's is done with
		whole := s.plan.Relation()
		rel = &row.Relation{ID: whole.ID, Kind: whole.Kind, Table: whole.Table, Columns: whole.Columns, Keys: keys}
		s.narrowed[keys] = rel
	}
	return rel
}

func isPgError(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr)
}

// permanentRead says whether a failed read is the config's to fix: a
// column or table gone (the schema changed under a running pgpilot), a
// privilege missing, companies.where failing on a row's values.
func permanentRead(err error) error {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return nil
	}
	switch pgErr.Code[:2] {
	case "42":
		return fmt.Errorf("%w: %w; fix companies.related (or the table, or pgpilot's privileges) and restart pgpilot: nothing is lost, the slot keeps the changes", ErrSchema, err)
	case "22":
		return fmt.Errorf("%w: %w; companies.where or an aggregate fails on some row's values: guard the expression, and restart pgpilot: nothing is lost, the slot keeps the changes", ErrSchema, err)
	}
	return nil
}

// read applies companies.where to the held companies rows and reads the
// related values of the wanted companies, in one REPEATABLE READ
// transaction whose snapshot sees every held transaction.
func (s *Stage) read(ctx context.Context) (map[string][]row.Value, error) {
	if s.conn == nil {
		c, err := s.opts.Connect(ctx, s.opts.URL)
		if err != nil {
			return nil, err
		}
		s.conn = c
	}
	var vals map[string][]row.Value
	err := pgx.BeginTxFunc(ctx, s.conn, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		var text string
		if err := tx.QueryRow(ctx, `SELECT pg_current_snapshot()::text`).Scan(&text); err != nil {
			return fmt.Errorf("read the snapshot: %w", err)
		}
		snap, err := replication.ParseSnapshot(text)
		if err != nil {
			return err
		}
		for _, h := range s.held {
			if h.txn.Xid != 0 && (h.txn.Kind == row.Commit || h.txn.Kind == row.Piece) && !snap.Sees(h.txn.Xid) {
				return errNotYetVisible
			}
		}
		wanted := s.wanted
		var verdicts map[[2]int]verdict
		if s.plan.where != "" {
			var started map[string]int
			if verdicts, started, err = s.judge(ctx, tx); err != nil {
				return err
			}
			if len(started) > 0 && s.plan.HasRelated() {
				wanted = maps.Clone(s.wanted)
				for id, i := range started {
					// Started matching: sent whole.
					if w, ok := wanted[id]; !ok || w.txn <= i {
						wanted[id] = want{txn: i}
					} else {
						w.keys = nil
						wanted[id] = w
					}
				}
			}
		}
		ids := make([]string, 0, len(wanted))
		for id := range wanted {
			ids = append(ids, id)
		}
		var n Counts
		vals, n, err = s.plan.Read(ctx, tx, ids)
		if err != nil {
			return err
		}
		// Read: what the verdicts say may now be done to what is held.
		s.apply(verdicts)
		s.wanted = wanted
		s.stats.Reads.Add(1)
		s.stats.Queries.Add(n.Queries)
		s.stats.Companies.Add(n.Companies)
		s.stats.Rows.Add(n.Rows)
		return nil
	})
	return vals, err
}

// verdict is what companies.where makes of one held companies change.
type verdict uint8

const (
	keep     verdict = iota
	drop             // it does not match, and did not before: not synced
	asDelete         // it stopped matching: the on_delete policy, for its old row
)

// judge evaluates companies.where on the held companies rows (new and old
// versions, one query per description of the table) and says what becomes
// of each change, and which companies started matching (sent whole, with
// their related values). Nothing held is changed: the read may be tried
// again.
func (s *Stage) judge(ctx context.Context, q Querier) (map[[2]int]verdict, map[string]int, error) {
	type ref struct {
		txn, ch int
		old     bool
	}
	byRel := map[*row.Relation][]ref{}
	rows := map[*row.Relation][][]row.Value{}
	for i, h := range s.held {
		for j, ch := range h.txn.Changes {
			if ch.Relation.Table != s.plan.companies || ch.Op == row.Truncate {
				continue
			}
			if ch.Op == row.Delete && !s.plan.fullIdentity {
				continue // only the key: nothing to judge by
			}
			vals := ch.Values
			if ch.Op == row.Update && ch.Old != nil {
				vals = fillUnchanged(ch.Values, ch.Old)
				byRel[ch.Relation] = append(byRel[ch.Relation], ref{i, j, true})
				rows[ch.Relation] = append(rows[ch.Relation], ch.Old)
			}
			byRel[ch.Relation] = append(byRel[ch.Relation], ref{i, j, false})
			rows[ch.Relation] = append(rows[ch.Relation], vals)
		}
	}
	type both struct{ cur, old, hasOld bool }
	judged := map[[2]int]*both{}
	for rel, refs := range byRel {
		m, err := s.plan.matches(ctx, q, rel, rows[rel])
		if err != nil {
			return nil, nil, err
		}
		for k, r := range refs {
			b := judged[[2]int{r.txn, r.ch}]
			if b == nil {
				b = &both{}
				judged[[2]int{r.txn, r.ch}] = b
			}
			if r.old {
				b.old, b.hasOld = m[k], true
			} else {
				b.cur = m[k]
			}
		}
	}
	verdicts := map[[2]int]verdict{}
	started := map[string]int{}
	for at, b := range judged {
		ch := s.held[at[0]].txn.Changes[at[1]]
		switch {
		case ch.Op == row.Delete:
			// The old row (REPLICA IDENTITY FULL): a row that never
			// matched was never synced.
			if !b.cur {
				verdicts[at] = drop
			}
		case b.cur && b.hasOld && !b.old, b.cur && ch.Op == row.Update && !b.hasOld:
			// Started matching (or cannot tell): sent whole.
			if i, _ := s.idCols.Get(ch.Relation, s.companyIDIndex); i >= 0 {
				if id := textAt(ch.Values, i); id != "" && started[id] <= at[0] {
					started[id] = at[0]
				}
			}
		case b.cur:
		case b.hasOld && b.old, ch.Op == row.Update && !b.hasOld:
			verdicts[at] = asDelete
		default:
			verdicts[at] = drop
		}
	}
	return verdicts, started, nil
}

func (s *Stage) companyIDIndex(rel *row.Relation) (int, error) {
	for i, c := range rel.Columns {
		if c.Name == s.plan.idCol {
			return i, nil
		}
	}
	return -1, nil
}

// apply makes the verdicts so: a dropped change is taken out, one that
// stopped matching becomes the DELETE of its old row (delivery applies
// on_delete to it).
func (s *Stage) apply(verdicts map[[2]int]verdict) {
	if len(verdicts) == 0 {
		return
	}
	for i := range s.held {
		txn := &s.held[i].txn
		out := txn.Changes[:0:0]
		for j, ch := range txn.Changes {
			switch verdicts[[2]int{i, j}] {
			case drop:
				s.stats.Filtered.Add(1)
				continue
			case asDelete:
				s.stats.Stopped.Add(1)
				old := ch.Old
				if old == nil {
					old = ch.Values
				}
				ch = row.Change{Op: row.Delete, Relation: ch.Relation, Values: old}
			}
			out = append(out, ch)
		}
		txn.Changes = out
	}
}

// fillUnchanged is cur with each value Postgres did not send (an unchanged
// TOASTed one) taken from old (REPLICA IDENTITY FULL sends it whole).
func fillUnchanged(cur, old []row.Value) []row.Value {
	var out []row.Value
	for i, v := range cur {
		if v.Unchanged && i < len(old) && !old[i].Unchanged {
			if out == nil {
				out = append([]row.Value(nil), cur...)
			}
			out[i] = old[i]
		}
	}
	if out == nil {
		return cur
	}
	return out
}
