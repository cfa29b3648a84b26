package replication

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/pgpilot/pgpilot/internal/fix"
	"github.com/pgpilot/pgpilot/row"
)

// StreamingRight reports whether the connection's role may open a
// replication connection and use a logical slot: the REPLICATION
// attribute, superuser, or membership of one of viaRoles (a service's
// stand-in for the attribute, such as RDS's rds_replication).
func StreamingRight(ctx context.Context, conn *pgx.Conn, viaRoles []string) (role string, ok bool, err error) {
	err = conn.QueryRow(ctx, `SELECT current_user::text, rolreplication OR rolsuper
		OR EXISTS (SELECT 1 FROM pg_roles g WHERE g.rolname = ANY($1) AND pg_has_role(current_user, g.oid, 'MEMBER'))
		FROM pg_roles WHERE rolname = current_user`, viaRoles).Scan(&role, &ok)
	if err != nil {
		return "", false, fmt.Errorf("read the role's replication right: %w", err)
	}
	return role, ok, nil
}

// ReadRightError names the rights a role lacks to read the tables pgpilot
// reads.
type ReadRightError struct {
	Role string
	// Missing are the rights, e.g. "SELECT on public.users".
	Missing []string
	// Consequence says what cannot be done without them.
	Consequence string
}

func (e *ReadRightError) Error() string {
	return fmt.Sprintf("it lacks %s, %s", strings.Join(e.Missing, " and "), e.Consequence)
}

// ReadRight says which rights role lacks to read t (USAGE on its schema,
// SELECT on the table), why that matters (consequence), and, as the fix,
// the statements that grant them; nil when it lacks none, or when t does
// not exist (another check says so).
func ReadRight(ctx context.Context, conn *pgx.Conn, t row.Table, role, consequence string) error {
	return ReadRights(ctx, conn, []row.Table{t}, role, consequence)
}

// ReadRights is ReadRight for several tables at once: one error naming
// every missing right, with every GRANT.
func ReadRights(ctx context.Context, conn *pgx.Conn, tables []row.Table, role, consequence string) error {
	grantee := pgx.Identifier{role}.Sanitize()
	var missing, grants []string
	schemaDone := map[string]bool{}
	for _, t := range tables {
		var usage, sel *bool
		err := conn.QueryRow(ctx, `SELECT has_schema_privilege(n.oid, 'USAGE'), has_table_privilege(c.oid, 'SELECT')
			FROM pg_namespace n LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = $2
			WHERE n.nspname = $1`, t.Schema, t.Name).Scan(&usage, &sel)
		if errors.Is(err, pgx.ErrNoRows) {
			continue
		}
		if err != nil {
			return fmt.Errorf("read the rights of role %q on %s: %w", role, t, err)
		}
		if usage != nil && !*usage && !schemaDone[t.Schema] {
			schemaDone[t.Schema] = true
			missing = append(missing, "USAGE on schema "+t.Schema)
			grants = append(grants, fmt.Sprintf("GRANT USAGE ON SCHEMA %s TO %s;", pgx.Identifier{t.Schema}.Sanitize(), grantee))
		}
		if sel != nil && !*sel {
			missing = append(missing, "SELECT on "+t.String())
			grants = append(grants, fmt.Sprintf("GRANT SELECT ON %s TO %s;", t.Quoted(), grantee))
		}
	}
	if len(missing) == 0 {
		return nil
	}
	return fix.With(&ReadRightError{Role: role, Missing: missing, Consequence: consequence},
		"run on the primary, as the tables' owner or a superuser: "+strings.Join(grants, " "))
}
