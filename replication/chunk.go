package replication

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/pgpilot/pgpilot/internal/sqltext"
	"github.com/pgpilot/pgpilot/row"
)

// ErrNoKey is wrapped when the table has no key to read it by in chunks.
var ErrNoKey = errors.New("table has no primary key or replica identity index")

// KeyColumns returns the columns that identify a row of t, in index order:
// the primary key, or else the unique index chosen as replica identity
// (REPLICA IDENTITY USING INDEX). The snapshot reads the table in chunks
// ordered by them, and matches streamed changes to snapshot rows with them.
func KeyColumns(ctx context.Context, conn *pgx.Conn, t row.Table) ([]string, error) {
	var names []string
	err := conn.QueryRow(ctx, `
		SELECT array_agg(a.attname ORDER BY k.ord)
		FROM pg_index i
		JOIN pg_class c ON c.oid = i.indrelid
		JOIN pg_namespace n ON n.oid = c.relnamespace
		CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
		JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
		WHERE n.nspname = $1 AND c.relname = $2
		  AND (i.indisprimary OR (i.indisreplident AND i.indisunique))
		  AND i.indexprs IS NULL AND i.indpred IS NULL
		GROUP BY i.indexrelid, i.indisprimary
		ORDER BY i.indisprimary DESC
		LIMIT 1`, t.Schema, t.Name).Scan(&names)
	if errors.Is(err, pgx.ErrNoRows) || (err == nil && len(names) == 0) {
		return nil, fmt.Errorf("%w: %s; pgpilot reads the table in chunks ordered by a unique key, so that a snapshot can resume "+
			"where it stopped. Add one: ALTER TABLE %s ADD PRIMARY KEY (...); or, with a unique index on NOT NULL columns, "+
			"ALTER TABLE %s REPLICA IDENTITY USING INDEX index_name;", ErrNoKey, t, t.Quoted(), t.Quoted())
	}
	if err != nil {
		return nil, fmt.Errorf("read the key of %s: %w", t, err)
	}
	return names, nil
}

// IdentityColumns returns the columns of t's replica identity index when
// the table has one (REPLICA IDENTITY USING INDEX), in index order; nil
// when its identity is the primary key (DEFAULT) or every column (FULL),
// which carry the key. A streamed DELETE (and the old row of an UPDATE
// that changed them) carries only these columns: the snapshot matches
// streamed changes to its rows by them, whatever key it pages by.
func IdentityColumns(ctx context.Context, conn *pgx.Conn, t row.Table) ([]string, error) {
	var names []string
	err := conn.QueryRow(ctx, `
		SELECT array_agg(a.attname ORDER BY k.ord)
		FROM pg_class c
		JOIN pg_namespace n ON n.oid = c.relnamespace
		JOIN pg_index i ON i.indrelid = c.oid AND i.indisreplident
		CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
		JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
		WHERE n.nspname = $1 AND c.relname = $2 AND c.relreplident = 'i'
		GROUP BY i.indexrelid`, t.Schema, t.Name).Scan(&names)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read the replica identity of %s: %w", t, err)
	}
	return names, nil
}

// ChunkQuery is one chunk of a keyset read: the rows after After (nil: from
// the start), in key order, at most Limit of them.
type ChunkQuery struct {
	Table row.Table
	// Columns are read in this order; Key indexes the key columns in it.
	Columns []row.Column
	Key     []int
	// Where is an optional filter (the operator's own SQL, for a partial
	// re-sync); Args are its parameters, numbered from $1.
	Where string
	Args  []any
	After []row.Value
	Limit int
	// Taken, if set, is told the chunk's snapshot as soon as it is taken,
	// before its rows are read: whoever keeps streamed transactions for a
	// chunk that may not see them can let go of those it does see.
	Taken func(Snapshot)
}

// Chunk is what ReadChunk read.
type Chunk struct {
	Rows [][]row.Value
	// Snapshot is the MVCC snapshot the rows were read in.
	Snapshot Snapshot
	// High is a WAL position at or after the commit of every transaction
	// the rows reflect: once the stream has passed it, every change the
	// chunk saw has been streamed.
	High pglogrepl.LSN
}

// ReadChunk reads one chunk in a REPEATABLE READ transaction of its own, so
// that the rows, the snapshot they were read in and the high position
// belong together. It never holds a transaction open between chunks: a
// snapshot of a large table costs the server no more than one chunk does.
func ReadChunk(ctx context.Context, conn *pgx.Conn, q ChunkQuery) (Chunk, error) {
	var c Chunk
	err := pgx.BeginTxFunc(ctx, conn, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		// The first statement fixes the transaction's snapshot.
		var snap string
		if err := tx.QueryRow(ctx, `SELECT pg_current_snapshot()::text`).Scan(&snap); err != nil {
			return fmt.Errorf("read the snapshot: %w", err)
		}
		var err error
		if c.Snapshot, err = ParseSnapshot(snap); err != nil {
			return err
		}
		if q.Taken != nil {
			q.Taken(c.Snapshot)
		}
		sql, args := chunkSQL(q)
		// Text results: the types' output functions, as pgoutput sends.
		params := append([]any{pgx.QueryResultFormats{pgx.TextFormatCode}}, q.Args...)
		rows, err := tx.Query(ctx, sql, append(params, args...)...)
		if err != nil {
			return err
		}
		c.Rows, err = collectText(rows, q.Limit)
		if err != nil {
			return err
		}
		// Read after the rows: every transaction they reflect committed
		// before this (a visible transaction's commit record was inserted
		// before the snapshot was taken).
		c.High, err = highPosition(ctx, tx)
		return err
	})
	if err != nil {
		return Chunk{}, fmt.Errorf("read a chunk of %s: %w", q.Table, err)
	}
	return c, nil
}

func chunkSQL(q ChunkQuery) (string, []any) {
	names := make([]string, len(q.Columns))
	for i, c := range q.Columns {
		names[i] = pgx.Identifier{c.Name}.Sanitize()
	}
	keys := make([]string, len(q.Key))
	for i, k := range q.Key {
		keys[i] = names[k]
	}
	var conds []string
	var args []any
	if q.Where != "" {
		conds = append(conds, "("+q.Where+")")
	}
	if q.After != nil {
		ph := make([]string, len(q.Key))
		for i, k := range q.Key {
			args = append(args, string(q.After[i].Text))
			// The key's own type, so that comparison and ORDER BY agree.
			ph[i] = fmt.Sprintf("$%d::%s", len(q.Args)+len(args), q.Columns[k].TypeName)
		}
		conds = append(conds, fmt.Sprintf("(%s) > (%s)", strings.Join(keys, ", "), strings.Join(ph, ", ")))
	}
	sql := fmt.Sprintf("SELECT %s FROM %s", strings.Join(names, ", "), q.Table.Quoted())
	if len(conds) > 0 {
		sql += " WHERE " + strings.Join(conds, " AND ")
	}
	sql += fmt.Sprintf(" ORDER BY %s LIMIT %d", strings.Join(keys, ", "), q.Limit)
	return sql, args
}

// collectText reads rows as text, the types' output functions: exactly what
// pgoutput sends, so a row maps the same from a chunk and from the stream.
// limit is how many rows the query may return: the list is sized once.
// The rows' values and text are copied into blocks of an arena of the
// chunk's own, as the stream copies its rows: two allocations for each
// row (its values, its text) and the list grown from nothing were a
// third of what reading a chunk cost in an initial sync's profile,
// and the rows of a chunk live and go together. As in textValues, an
// empty text is nil.
func collectText(rows pgx.Rows, limit int) ([][]row.Value, error) {
	defer rows.Close()
	out := make([][]row.Value, 0, max(0, min(limit, maxPresized)))
	var a arena
	for rows.Next() {
		raw := rows.RawValues()
		vals := a.values(len(raw))
		for i, b := range raw {
			switch {
			case b == nil:
				vals[i].Null = true
			case len(b) > 0:
				vals[i].Text = a.copy(b)
			}
		}
		out = append(out, vals)
	}
	return out, rows.Err()
}

// maxPresized bounds the room collectText takes for rows before reading
// them (a chunk of a million rows is allowed, if not wise).
const maxPresized = 10_000

// highPosition is the position the stream must pass before a chunk read now
// may be sent: on a primary the WAL insert position, on a standby the
// replay position (a standby's snapshot sees exactly what was replayed).
func highPosition(ctx context.Context, tx pgx.Tx) (pglogrepl.LSN, error) {
	var s string
	var block, segment int64
	err := tx.QueryRow(ctx, `
		SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_insert_lsn() END)::text,
		       current_setting('wal_block_size')::bigint,
		       pg_size_bytes(current_setting('wal_segment_size'))`).Scan(&s, &block, &segment)
	if err != nil {
		return 0, fmt.Errorf("read the WAL position: %w", err)
	}
	lsn, err := pglogrepl.ParseLSN(s)
	if err != nil {
		return 0, err
	}
	return recordBoundary(lsn, block, segment), nil
}

// recordBoundary turns an insert position just past a page header into the
// page boundary, the form in which the walsender reports a record's end:
// otherwise, on an idle server, the stream would never report a position
// as high as the insert position and a chunk would wait for ever.
func recordBoundary(lsn pglogrepl.LSN, block, segment int64) pglogrepl.LSN {
	const shortHeader, longHeader = 24, 40 // MAXALIGNed XLogPageHeaderData, XLogLongPageHeaderData
	switch {
	case segment > 0 && int64(lsn)%segment == longHeader:
		return lsn - longHeader
	case block > 0 && int64(lsn)%block == shortHeader:
		return lsn - shortHeader
	}
	return lsn
}

// Snapshot is an MVCC snapshot as pg_current_snapshot() shows it.
type Snapshot struct {
	Xmin, Xmax uint64
	Xip        []uint64
}

// ParseSnapshot parses pg_current_snapshot()'s text, "xmin:xmax:xip,...".
func ParseSnapshot(s string) (Snapshot, error) {
	parts := strings.Split(s, ":")
	if len(parts) != 3 {
		return Snapshot{}, fmt.Errorf("unexpected snapshot %q", s)
	}
	var snap Snapshot
	var err error
	if snap.Xmin, err = strconv.ParseUint(parts[0], 10, 64); err != nil {
		return Snapshot{}, fmt.Errorf("unexpected snapshot %q: %w", s, err)
	}
	if snap.Xmax, err = strconv.ParseUint(parts[1], 10, 64); err != nil {
		return Snapshot{}, fmt.Errorf("unexpected snapshot %q: %w", s, err)
	}
	if parts[2] != "" {
		for _, x := range strings.Split(parts[2], ",") {
			v, err := strconv.ParseUint(x, 10, 64)
			if err != nil {
				return Snapshot{}, fmt.Errorf("unexpected snapshot %q: %w", s, err)
			}
			snap.Xip = append(snap.Xip, v)
		}
	}
	return snap, nil
}

// Sees reports whether a transaction with the 32-bit id xid (as pgoutput's
// BEGIN carries it) had committed as far as the snapshot can tell. The
// epoch is the one that puts xid nearest Xmax: a transaction the stream
// delivers is never 2³¹ transactions away from a snapshot taken while it
// streams.
func (s Snapshot) Sees(xid uint32) bool {
	full := s.Xmax&^0xffffffff | uint64(xid)
	switch {
	case full > s.Xmax && full-s.Xmax > 1<<31 && full >= 1<<32:
		full -= 1 << 32
	case full < s.Xmax && s.Xmax-full > 1<<31:
		full += 1 << 32
	}
	switch {
	case full >= s.Xmax:
		return false
	case full < s.Xmin:
		return true
	}
	return !slices.Contains(s.Xip, full)
}

// ErrCondition is wrapped when a WHERE condition is not one plain SQL
// condition that chunk queries can hold.
var ErrCondition = sqltext.ErrCondition

// CheckCondition refuses a WHERE condition that would change the chunk
// query's shape rather than filter its rows (see sqltext.Check).
func CheckCondition(where string) error { return sqltext.Check(where) }

// CheckChunkQuery has Postgres plan exactly the queries a snapshot's
// chunks run, the first one and those after a key (EXPLAIN of chunkSQL's
// text, nothing executed), in a read-only transaction, after
// CheckCondition. What only running it can find (a cast that fails on
// some row, a statement_timeout) fails the job at run time instead.
func CheckChunkQuery(ctx context.Context, conn *pgx.Conn, q ChunkQuery) error {
	if err := CheckCondition(q.Where); err != nil {
		return err
	}
	return pgx.BeginTxFunc(ctx, conn, pgx.TxOptions{AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		for _, after := range [][]row.Value{nil, make([]row.Value, len(q.Key))} {
			q.After = after
			sql, args := chunkSQL(q)
			// The bound's value does not matter to the plan's validity.
			for i := range args {
				args[i] = nil
			}
			if _, err := tx.Exec(ctx, "EXPLAIN "+sql, append(append([]any{}, q.Args...), args...)...); err != nil {
				return err
			}
		}
		return nil
	})
}
