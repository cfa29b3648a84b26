package replication

import (
	"context"
	"errors"
	"fmt"
	"strings"

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
	// OID is its pg_publication.oid: a publication dropped and created
	// again under the same name has another.
	OID uint32
	// CreatedByPgpilot is true when the publication carries pgpilot's comment.
	CreatedByPgpilot bool
	// Owner is the role that owns it: only it (or a superuser) may drop
	// or alter it.
	Owner string
}

// EnsurePublication makes sure publication name exists and publishes inserts
// and updates of t (and of the related tables companies.related reads). It
// creates it when missing, unless the server is a standby (which cannot
// write): then it returns the statement to run on the primary. A
// publication pgpilot created that misses a table (related tables added
// to the config) gets it added, on a primary; one an operator made is not
// altered behind the operator's back: the error says what to run.
func EnsurePublication(ctx context.Context, conn *pgx.Conn, name string, t row.Table, srv Server, related ...row.Table) (created bool, err error) {
	tables := append([]row.Table{t}, related...)
	var allTables, pubInsert, pubUpdate bool
	err = conn.QueryRow(ctx, `SELECT puballtables, pubinsert, pubupdate FROM pg_publication WHERE pubname = $1`, name).
		Scan(&allTables, &pubInsert, &pubUpdate)
	ident := pgx.Identifier{name}.Sanitize()
	createSQL := fmt.Sprintf("CREATE PUBLICATION %s FOR TABLE %s;", ident, quotedList(tables))
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		if srv.InRecovery {
			return false, fmt.Errorf("publication %q does not exist and this server is a standby, which cannot create it; run on the primary:\n  %s", name, createSQL)
		}
		for _, t := range tables {
			problem, err := ReplicaIdentityProblem(ctx, conn, t)
			if err != nil {
				return false, err
			}
			if problem != "" {
				return false, fmt.Errorf("not creating publication %q: %s", name, problem)
			}
		}
		if err := createPublication(ctx, conn, name, tables); err != nil {
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
		return false, publishProblem(name)
	}
	if allTables {
		return false, nil
	}
	missing, err := MissingFromPublication(ctx, conn, name, tables)
	if err != nil || len(missing) == 0 {
		return false, err
	}
	alterSQL := fmt.Sprintf("ALTER PUBLICATION %s ADD TABLE %s;", ident, quotedList(missing))
	pub, _, err := ReadPublication(ctx, conn, name)
	if err != nil {
		return false, err
	}
	if !pub.CreatedByPgpilot || srv.InRecovery {
		return false, fmt.Errorf("publication %q exists but does not include %s; run on the primary:\n  %s", name, tableList(missing), alterSQL)
	}
	for _, t := range missing {
		problem, err := ReplicaIdentityProblem(ctx, conn, t)
		if err != nil {
			return false, err
		}
		if problem != "" {
			return false, fmt.Errorf("not adding %s to publication %q: %s", t, name, problem)
		}
	}
	if _, err := conn.Exec(ctx, strings.TrimSuffix(alterSQL, ";")); err != nil {
		return false, fmt.Errorf("add %s to publication %q (run it as a privileged role: %s): %w", tableList(missing), name, alterSQL, err)
	}
	return false, nil
}

// PublishesChanges says why publication name does not carry the changes
// pgpilot streams (inserts and updates), or returns nil.
func PublishesChanges(ctx context.Context, conn *pgx.Conn, name string) error {
	var pubInsert, pubUpdate bool
	err := conn.QueryRow(ctx, `SELECT pubinsert, pubupdate FROM pg_publication WHERE pubname = $1`, name).Scan(&pubInsert, &pubUpdate)
	if err != nil {
		return fmt.Errorf("read publication %q: %w", name, err)
	}
	if !pubInsert || !pubUpdate {
		return publishProblem(name)
	}
	return nil
}

func publishProblem(name string) error {
	return fmt.Errorf("publication %q does not publish inserts and updates; run:\n  ALTER PUBLICATION %s SET (publish = 'insert, update, delete, truncate');",
		name, pgx.Identifier{name}.Sanitize())
}

// MissingFromPublication returns the tables publication name does not
// publish (none for FOR ALL TABLES).
func MissingFromPublication(ctx context.Context, conn *pgx.Conn, name string, tables []row.Table) ([]row.Table, error) {
	var missing []row.Table
	for _, t := range tables {
		var covers bool
		err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_publication_tables WHERE pubname = $1 AND schemaname = $2 AND tablename = $3)
			OR coalesce((SELECT puballtables FROM pg_publication WHERE pubname = $1), false)`,
			name, t.Schema, t.Name).Scan(&covers)
		if err != nil {
			return nil, fmt.Errorf("read tables of publication %q: %w", name, err)
		}
		if !covers {
			missing = append(missing, t)
		}
	}
	return missing, nil
}

func quotedList(tables []row.Table) string {
	q := make([]string, len(tables))
	for i, t := range tables {
		q[i] = t.Quoted()
	}
	return strings.Join(q, ", ")
}

func tableList(tables []row.Table) string {
	q := make([]string, len(tables))
	for i, t := range tables {
		q[i] = t.String()
	}
	return strings.Join(q, ", ")
}

func createPublication(ctx context.Context, conn *pgx.Conn, name string, tables []row.Table) error {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx)
	ident := pgx.Identifier{name}.Sanitize()
	if _, err := tx.Exec(ctx, fmt.Sprintf("CREATE PUBLICATION %s FOR TABLE %s", ident, quotedList(tables))); err != nil {
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
	err = conn.QueryRow(ctx, `SELECT p.pubname, p.oid, obj_description(p.oid, 'pg_publication'), pg_get_userbyid(p.pubowner)::text
		FROM pg_publication p WHERE p.pubname = $1`, name).
		Scan(&p.Name, &p.OID, &comment, &p.Owner)
	if errors.Is(err, pgx.ErrNoRows) {
		return Publication{}, false, nil
	}
	if err != nil {
		return Publication{}, false, fmt.Errorf("read publication %q: %w", name, err)
	}
	p.CreatedByPgpilot = comment != nil && *comment == publicationComment
	return p, true, nil
}

// IsPublicationMissing reports whether err is the stream saying that the
// publication it decodes through does not exist (undefined_object): it was
// dropped. Postgres 15 to 17 read the catalog as it was at each change they
// decode, so every change after the DROP fails so, even once a publication
// of that name exists again. (A missing slot is undefined_object too: the
// message tells them apart.)
func IsPublicationMissing(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "42704" && strings.Contains(pgErr.Message, "publication")
}

// DropPublication drops publication name.
func DropPublication(ctx context.Context, conn *pgx.Conn, name string) error {
	if _, err := conn.Exec(ctx, "DROP PUBLICATION IF EXISTS "+pgx.Identifier{name}.Sanitize()); err != nil {
		return fmt.Errorf("drop publication %q: %w", name, err)
	}
	return nil
}
