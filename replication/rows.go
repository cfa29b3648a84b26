package replication

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/pgpilot/pgpilot/row"
)

// SelectColumns builds the query that reads cols of t, with an optional
// WHERE clause (the operator's own SQL, for preview) and LIMIT (0: none).
func SelectColumns(t row.Table, cols []row.Column, where string, limit int) string {
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
func QueryRows(ctx context.Context, pg *pgconn.PgConn, query string, fn func([]row.Value) error) error {
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
func textValues(raw [][]byte) []row.Value {
	size := 0
	for _, b := range raw {
		size += len(b)
	}
	buf := make([]byte, 0, size)
	vals := make([]row.Value, len(raw))
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

// CompaniesWithoutRow returns those of known (sorted, bytewise, as Go
// sorts strings) that no row of t holds in column, as its text: the
// companies Userpilot was sent whose row is gone. The table's ids are read
// once, in the same order (COLLATE "C" is bytewise), and merged with known,
// so neither side is held in memory whole on the database's side or
// looked up one by one.
func CompaniesWithoutRow(ctx context.Context, conn *pgx.Conn, t row.Table, column string, known []string) ([]string, error) {
	if len(known) == 0 {
		return nil, nil
	}
	col := pgx.Identifier{column}.Sanitize()
	rows, err := conn.Query(ctx, fmt.Sprintf(`SELECT %s::text COLLATE "C" FROM %s WHERE %s IS NOT NULL ORDER BY 1`, col, t.Quoted(), col))
	if err != nil {
		return nil, fmt.Errorf("read the company ids of %s: %w", t, err)
	}
	defer rows.Close()
	var gone []string
	i := 0
	for rows.Next() && i < len(known) {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, fmt.Errorf("read the company ids of %s: %w", t, err)
		}
		for i < len(known) && known[i] < id {
			gone = append(gone, known[i])
			i++
		}
		if i < len(known) && known[i] == id {
			i++
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read the company ids of %s: %w", t, err)
	}
	return append(gone, known[i:]...), nil
}
