package related

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/pgpilot/pgpilot/row"
)

// whereSQL evaluates companies.where on rows the stream (or a snapshot)
// carries, not on the table: each row version is judged by its own values,
// so a row that changed again since is judged again when that change
// arrives. The rows are passed as one text array per column (written by
// appendArray) and cast to the column's type; the derived table is named
// as the companies table, so the condition reads exactly as it does in a
// chunk query. It returns the ordinals (from 0) of the rows that match.
func (p *Plan) whereSQL(rel *row.Relation) string {
	var from, sel, names []string
	for i, c := range rel.Columns {
		from = append(from, fmt.Sprintf("unnest($%d::text::text[])", i+1))
		names = append(names, "p"+strconv.Itoa(i))
		sel = append(sel, fmt.Sprintf("u.p%d::%s AS %s", i, c.TypeName, pgx.Identifier{c.Name}.Sanitize()))
	}
	names = append(names, "o")
	sel = append(sel, `u.o - 1 AS "pgpilot ord"`)
	return fmt.Sprintf(`SELECT "pgpilot ord" FROM (SELECT %s FROM ROWS FROM (%s) WITH ORDINALITY AS u(%s)) AS %s WHERE (%s)`,
		strings.Join(sel, ", "), strings.Join(from, ", "), strings.Join(names, ", "), pgx.Identifier{p.companies.Name}.Sanitize(), p.where)
}

// matches reports, for each of rows (values of rel's columns), whether it
// matches companies.where. A value Postgres did not send (an unchanged
// TOASTed one) is NULL here: the stage fills it from the old row first.
func (p *Plan) matches(ctx context.Context, q Querier, rel *row.Relation, rows [][]row.Value) ([]bool, error) {
	out := make([]bool, len(rows))
	// A few hundred rows per query: the arguments of one are encoded
	// whole, three or four times over while it is sent (each value a
	// string, pgx's buffer for the parameters with every smaller one it
	// outgrew, the message).
	for lo := 0; lo < len(rows); lo += whereRowsPerQuery {
		hi := min(lo+whereRowsPerQuery, len(rows))
		if err := p.matchesInto(ctx, q, rel, rows[lo:hi], out[lo:hi]); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// whereRowsPerQuery bounds the rows one companies.where query judges:
// 2,000 rows (a thousand updates of users, old row and new, eight
// columns) took 8.9 MB while their query was sent, the largest part of
// the live heap at the peak of the overlap with users; a query of 500
// rows is a few more round trips in a read of a few thousand changes.
const whereRowsPerQuery = 500

// matchesInto judges rows (at most whereRowsPerQuery) into out. Each
// column goes as one text value, an array literal written straight from
// the rows' bytes: as []*string, pgx boxed every value and encoded it
// again, and the judging of users' updates was a third of what the
// overlap with users allocated.
func (p *Plan) matchesInto(ctx context.Context, q Querier, rel *row.Relation, rows [][]row.Value, out []bool) error {
	// One buffer for every column's literal, sized once: the columns are
	// slices of it (pgx writes a []byte as text), not a string each.
	size := 0
	for _, r := range rows {
		for _, v := range r {
			size += len(v.Text) + 8
		}
	}
	buf := make([]byte, 0, size+len(rel.Columns)*(2+5*len(rows)))
	args := make([]any, len(rel.Columns))
	for j := range rel.Columns {
		start := len(buf)
		buf = appendArray(buf, rows, j)
		args[j] = buf[start:len(buf):len(buf)]
	}
	res, err := q.Query(ctx, p.whereSQL(rel), args...)
	if err != nil {
		return fmt.Errorf("evaluate companies.where on %d rows: %w", len(rows), err)
	}
	defer res.Close()
	for res.Next() {
		var o int32
		if err := res.Scan(&o); err != nil {
			return err
		}
		if o >= 0 && int(o) < len(out) {
			out[o] = true
		}
	}
	if err := res.Err(); err != nil {
		return fmt.Errorf("evaluate companies.where on %d rows: %w", len(rows), err)
	}
	return nil
}

// appendArray appends column j of rows as a Postgres array literal of
// text: each value double-quoted, a double quote or a backslash in it
// escaped by a backslash; a NULL, a value Postgres did not send (an unchanged TOASTed
// one: the stage fills it from the old row first) or a missing column is
// NULL.
func appendArray(buf []byte, rows [][]row.Value, j int) []byte {
	buf = append(buf, '{')
	for i, r := range rows {
		if i > 0 {
			buf = append(buf, ',')
		}
		if j >= len(r) || r[j].Null || r[j].Unchanged {
			buf = append(buf, "NULL"...)
			continue
		}
		buf = append(buf, '"')
		for _, c := range r[j].Text {
			if c == '"' || c == '\\' {
				buf = append(buf, '\\')
			}
			buf = append(buf, c)
		}
		buf = append(buf, '"')
	}
	return append(buf, '}')
}
