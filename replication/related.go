package replication

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"

	"github.com/pgpilot/pgpilot/row"
)

// What a related table (companies.related) must offer the stream and the
// re-reads, read from the catalog.

// RelatedIdentityProblem says why a DELETE in t, or an UPDATE that moves a
// row to another company, would not carry the old row's column (the
// company id), or returns "" when it would: REPLICA IDENTITY FULL, or an
// identity (the primary key under DEFAULT, or the USING INDEX one) that
// includes column. The fix is an ALTER TABLE, to run on the primary.
func RelatedIdentityProblem(ctx context.Context, conn *pgx.Conn, t row.Table, column string) (string, error) {
	return RelatedIdentityProblemOf(ctx, conn, t, column, "company")
}

// RelatedIdentityProblemOf is RelatedIdentityProblem for the rows of owner
// ("company", or "user" for a users.related table), which the message
// names.
func RelatedIdentityProblemOf(ctx context.Context, conn *pgx.Conn, t row.Table, column, owner string) (string, error) {
	var ident string
	var cols []string
	err := conn.QueryRow(ctx, `
		SELECT c.relreplident::text,
		       coalesce((SELECT array_agg(a.attname::text) FROM pg_index i
		                 JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY(i.indkey::int2[])
		                 WHERE i.indrelid = c.oid AND CASE c.relreplident WHEN 'i' THEN i.indisreplident ELSE i.indisprimary END),
		                '{}')
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relname = $2`, t.Schema, t.Name).Scan(&ident, &cols)
	if err != nil {
		return "", fmt.Errorf("read replica identity of %s: %w", t, err)
	}
	if ident == "f" || ((ident == "d" || ident == "i") && slices.Contains(cols, column)) {
		return "", nil
	}
	what := map[string]string{"n": "REPLICA IDENTITY NOTHING", "d": "a replica identity (its primary key)", "i": "a replica identity index"}[ident]
	if ident == "d" && len(cols) == 0 {
		what = "no primary key"
	}
	fix, err := IdentityFix(ctx, conn, t, column)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%s has %s without %q: a DELETE there, or an UPDATE that moves a row to another %s, would not say which %s "+
		"it belonged to, and that %s's related keys would stay stale; %s", t, what, column, owner, owner, owner, fix), nil
}

// IdentityFix is the cheapest replica identity that makes every DELETE
// and UPDATE of t carry column (any key, when column is ""), as the
// statement to run: REPLICA IDENTITY USING INDEX when a unique index that
// is neither partial nor on expressions, over NOT NULL columns only,
// holds column (the old row's key is logged, not the whole old row), else
// FULL (every column of the old row, in every UPDATE's and DELETE's WAL).
func IdentityFix(ctx context.Context, conn *pgx.Conn, t row.Table, column string) (string, error) {
	var index string
	err := conn.QueryRow(ctx, `
		SELECT ic.relname
		FROM pg_index i
		JOIN pg_class c ON c.oid = i.indrelid
		JOIN pg_namespace n ON n.oid = c.relnamespace
		JOIN pg_class ic ON ic.oid = i.indexrelid
		WHERE n.nspname = $1 AND c.relname = $2
		  AND i.indisunique AND i.indimmediate AND i.indisvalid AND i.indpred IS NULL AND i.indexprs IS NULL
		  AND NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum = ANY(i.indkey::int2[]) AND NOT a.attnotnull)
		  AND ($3 = '' OR EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = $3
		                          AND a.attnum = ANY((i.indkey::int2[])[0:i.indnkeyatts - 1])))
		ORDER BY i.indnatts, i.indisprimary DESC, ic.relname
		LIMIT 1`, t.Schema, t.Name, column).Scan(&index)
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Sprintf("run on the primary: ALTER TABLE %s REPLICA IDENTITY FULL;", t.Quoted()), nil
	}
	if err != nil {
		return "", fmt.Errorf("read the indexes of %s: %w", t, err)
	}
	return fmt.Sprintf("run on the primary: ALTER TABLE %s REPLICA IDENTITY USING INDEX %s; "+
		"(the unique index %s holds only NOT NULL columns: an UPDATE or DELETE then logs the old row's key, where FULL logs every column of it)",
		t.Quoted(), pgx.Identifier{index}.Sanitize(), index), nil
}

// HasIndexOn reports whether an index of t starts with column, so that
// the re-read of one company's rows is an index scan, not a scan of t.
func HasIndexOn(ctx context.Context, conn *pgx.Conn, t row.Table, column string) (bool, error) {
	var ok bool
	err := conn.QueryRow(ctx, `
		SELECT EXISTS (SELECT 1 FROM pg_index i
		  JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace
		  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = i.indkey[0]
		  WHERE n.nspname = $1 AND c.relname = $2 AND a.attname = $3 AND i.indpred IS NULL)`, t.Schema, t.Name, column).Scan(&ok)
	if err != nil {
		return false, fmt.Errorf("read the indexes of %s: %w", t, err)
	}
	return ok, nil
}

// UniqueOn reports whether a unique index (or primary key) of t has column
// as its only key: then t holds at most one row per value of column.
func UniqueOn(ctx context.Context, conn *pgx.Conn, t row.Table, column string) (bool, error) {
	var ok bool
	err := conn.QueryRow(ctx, `
		SELECT EXISTS (SELECT 1 FROM pg_index i
		  JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace
		  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = i.indkey[0]
		  WHERE n.nspname = $1 AND c.relname = $2 AND a.attname = $3 AND i.indisunique AND i.indnkeyatts = 1
		    AND i.indpred IS NULL AND i.indexprs IS NULL)`, t.Schema, t.Name, column).Scan(&ok)
	if err != nil {
		return false, fmt.Errorf("read the indexes of %s: %w", t, err)
	}
	return ok, nil
}

// ReplicaIdentityFull reports whether t has REPLICA IDENTITY FULL.
func ReplicaIdentityFull(ctx context.Context, conn *pgx.Conn, t row.Table) (bool, error) {
	var ident string
	err := conn.QueryRow(ctx, `SELECT c.relreplident::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relname = $2`, t.Schema, t.Name).Scan(&ident)
	if err != nil {
		return false, fmt.Errorf("read replica identity of %s: %w", t, err)
	}
	return ident == "f", nil
}
