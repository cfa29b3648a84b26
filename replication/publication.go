package replication

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/pgpilot/pgpilot/row"
)

// publicationComment marks publications pgpilot created, so teardown drops
// only those and never one an operator made for something else.
const publicationComment = "created by pgpilot"

// Publication is a publication as found in pg_publication.
type Publication struct {
	Name string
	// CreatedByPgpilot is true when the publication carries pgpilot's comment.
	CreatedByPgpilot bool
}

// EnsurePublication makes sure publication name exists and publishes inserts
// and updates of t. It creates it when missing, unless the server is a
// standby (which cannot write): then it returns the statement to run on the
// primary. A publication that exists but misses t is not altered behind the
// operator's back: the error says what to run.
func EnsurePublication(ctx context.Context, conn *pgx.Conn, name string, t row.Table, srv Server) (created bool, err error) {
	var allTables, pubInsert, pubUpdate bool
	err = conn.QueryRow(ctx, `SELECT puballtables, pubinsert, pubupdate FROM pg_publication WHERE pubname = $1`, name).
		Scan(&allTables, &pubInsert, &pubUpdate)
	createSQL := fmt.Sprintf("CREATE PUBLICATION %s FOR TABLE %s;", pgx.Identifier{name}.Sanitize(), t.Quoted())
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		if srv.InRecovery {
			return false, fmt.Errorf("publication %q does not exist and this server is a standby, which cannot create it; run on the primary:\n  %s", name, createSQL)
		}
		problem, err := ReplicaIdentityProblem(ctx, conn, t)
		if err != nil {
			return false, err
		}
		if problem != "" {
			return false, fmt.Errorf("not creating publication %q: %s", name, problem)
		}
		if err := createPublication(ctx, conn, name, t); err != nil {
			var pgErr *pgconn.PgError
			if errors.As(err, &pgErr) && pgErr.Code == "42501" {
				return false, fmt.Errorf("create publication %q: this role may not (%s); run as a privileged role:\n  %s", name, pgErr.Message, createSQL)
			}
			return false, fmt.Errorf("create publication %q: %w", name, err)
		}
		return true, nil
	case err != nil:
		return false, fmt.Errorf("read publication %q: %w", name, err)
	}
	if !pubInsert || !pubUpdate {
		return false, fmt.Errorf("publication %q does not publish inserts and updates; run:\n  ALTER PUBLICATION %s SET (publish = 'insert, update, delete, truncate');",
			name, pgx.Identifier{name}.Sanitize())
	}
	if allTables {
		return false, nil
	}
	var covers bool
	err = conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_publication_tables WHERE pubname = $1 AND schemaname = $2 AND tablename = $3)`,
		name, t.Schema, t.Name).Scan(&covers)
	if err != nil {
		return false, fmt.Errorf("read tables of publication %q: %w", name, err)
	}
	if !covers {
		return false, fmt.Errorf("publication %q exists but does not include %s; run on the primary:\n  ALTER PUBLICATION %s ADD TABLE %s;",
			name, t, pgx.Identifier{name}.Sanitize(), t.Quoted())
	}
	return false, nil
}

func createPublication(ctx context.Context, conn *pgx.Conn, name string, t row.Table) error {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx)
	ident := pgx.Identifier{name}.Sanitize()
	if _, err := tx.Exec(ctx, fmt.Sprintf("CREATE PUBLICATION %s FOR TABLE %s", ident, t.Quoted())); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, fmt.Sprintf("COMMENT ON PUBLICATION %s IS %s", ident, quoteLiteral(publicationComment))); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

// ReadPublication reads publication name; ok is false when it does not exist.
func ReadPublication(ctx context.Context, conn *pgx.Conn, name string) (p Publication, ok bool, err error) {
	var comment *string
	err = conn.QueryRow(ctx, `SELECT p.pubname, obj_description(p.oid, 'pg_publication') FROM pg_publication p WHERE p.pubname = $1`, name).
		Scan(&p.Name, &comment)
	if errors.Is(err, pgx.ErrNoRows) {
		return Publication{}, false, nil
	}
	if err != nil {
		return Publication{}, false, fmt.Errorf("read publication %q: %w", name, err)
	}
	p.CreatedByPgpilot = comment != nil && *comment == publicationComment
	return p, true, nil
}

// DropPublication drops publication name.
func DropPublication(ctx context.Context, conn *pgx.Conn, name string) error {
	if _, err := conn.Exec(ctx, "DROP PUBLICATION IF EXISTS "+pgx.Identifier{name}.Sanitize()); err != nil {
		return fmt.Errorf("drop publication %q: %w", name, err)
	}
	return nil
}
