package replication

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// SnapshotOptions configure ReadSnapshot.
type SnapshotOptions struct {
	URL string
	// SnapshotName is the snapshot the slot exported; reading in it is what
	// makes the snapshot and the stream meet without a gap or an overlap.
	SnapshotName string
	Table        Table
	// Columns are the columns to read, in the order the consumer expects
	// the values.
	Columns []Column
	// ChunkRows is how many rows go into one Transaction; 0 → 1000.
	ChunkRows int
}

// ReadSnapshot reads every row of the table as of the exported snapshot and
// sends them to out as Transactions with EndLSN 0 (they move no position:
// the caller marks the end of the snapshot with the slot's consistent
// point). Values are read in text format, the same output functions
// pgoutput uses, so a row maps identically from the snapshot and the stream.
func ReadSnapshot(ctx context.Context, opts SnapshotOptions, out chan<- Transaction) (rows int, err error) {
	if opts.ChunkRows <= 0 {
		opts.ChunkRows = 1000
	}
	conn, err := ConnectSQL(ctx, opts.URL)
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.Background())
	pg := conn.PgConn()
	setup := "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT " + quoteLiteral(opts.SnapshotName)
	if err := pg.Exec(ctx, setup).Close(); err != nil {
		return 0, fmt.Errorf("import the slot's snapshot %q: %w", opts.SnapshotName, err)
	}
	rel := &Relation{Table: opts.Table, Columns: opts.Columns}
	chunk := make([]Change, 0, opts.ChunkRows)
	flush := func() error {
		if len(chunk) == 0 {
			return nil
		}
		select {
		case out <- Transaction{Changes: chunk}:
		case <-ctx.Done():
			return ctx.Err()
		}
		chunk = make([]Change, 0, opts.ChunkRows)
		return nil
	}
	err = QueryRows(ctx, pg, SelectColumns(opts.Table, opts.Columns, "", 0), func(vals []Value) error {
		chunk = append(chunk, Change{Op: Insert, Relation: rel, Values: vals})
		rows++
		if len(chunk) == opts.ChunkRows {
			return flush()
		}
		return nil
	})
	if err != nil {
		return rows, fmt.Errorf("read snapshot of %s: %w", opts.Table, err)
	}
	if err := flush(); err != nil {
		return rows, err
	}
	if err := pg.Exec(ctx, "COMMIT").Close(); err != nil {
		return rows, fmt.Errorf("end snapshot transaction: %w", err)
	}
	return rows, nil
}

// SelectColumns builds the query that reads cols of t, with an optional
// WHERE clause (the operator's own SQL, for preview) and LIMIT (0: none).
func SelectColumns(t Table, cols []Column, where string, limit int) string {
	names := make([]string, len(cols))
	for i, c := range cols {
		names[i] = pgx.Identifier{c.Name}.Sanitize()
	}
	q := fmt.Sprintf("SELECT %s FROM %s", strings.Join(names, ", "), t.Quoted())
	if where != "" {
		q += " WHERE " + where
	}
	if limit > 0 {
		q += fmt.Sprintf(" LIMIT %d", limit)
	}
	return q
}

// QueryRows runs query and calls fn with each row's values in text format:
// the types' output functions, exactly what pgoutput sends, so a row maps
// the same whether it came from a query or from the stream. The values are
// fn's to keep. As in the stream, a row costs two allocations: its Values,
// and one buffer shared by its columns' text (each Text capped at its own
// length); an empty text is nil.
func QueryRows(ctx context.Context, pg *pgconn.PgConn, query string, fn func([]Value) error) error {
	rr := pg.ExecParams(ctx, query, nil, nil, nil, []int16{pgx.TextFormatCode})
	for rr.NextRow() {
		if err := fn(textValues(rr.Values())); err != nil {
			rr.Close()
			return err
		}
	}
	_, err := rr.Close()
	return err
}

// textValues copies a row's text values out of the connection's buffer,
// which the next row reuses: into one allocation for the row, not one per
// value.
func textValues(raw [][]byte) []Value {
	size := 0
	for _, b := range raw {
		size += len(b)
	}
	buf := make([]byte, 0, size)
	vals := make([]Value, len(raw))
	for i, b := range raw {
		switch {
		case b == nil:
			vals[i].Null = true
		case len(b) > 0:
			start := len(buf)
			buf = append(buf, b...)
			vals[i].Text = buf[start:len(buf):len(buf)]
		}
	}
	return vals
}
