package main

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgpilot/pgpilot/internal/fix"
	"github.com/pgpilot/pgpilot/provider"
	"github.com/pgpilot/pgpilot/replication"
)

// checkRoute says where the server runs (the fixes below are worded for
// it) and that nothing in the way answers for Postgres.
func checkRoute(p provider.Server, route replication.Route, c *checker) {
	if p.Provider.Managed() {
		c.report(fmt.Sprintf("runs on %s (recognised by its %s; see %s)", p.Provider, p.Evidence, p.Provider.Doc()), nil)
	} else {
		c.report("runs on self-run Postgres (no managed service recognised; see docs/providers/README.md)", nil)
	}
	switch {
	case route.Answered() && p.Provider == provider.Neon:
		// Neon's proxy answers every connection (it routes cancel
		// requests itself) and carries replication: a direct connection.
		c.report("postgres.url reaches Postgres directly (Neon's proxy, not its pooler)", nil)
	case route.Answered():
		c.warn("postgres.url may not reach Postgres directly", fix.With(fmt.Errorf(
			"the connection's cancel key names process %d, but the server process serving it is %d: something between pgpilot and Postgres answers for it "+
				"(a connection pooler, or a proxy that speaks Postgres's protocol)", route.KeyPID, route.BackendPID),
			"if it is a connection pooler, "+strings.TrimPrefix(p.Provider.DirectConnection(), "use ")))
	default:
		c.report("postgres.url reaches Postgres directly (no connection pooler in the way)", nil)
	}
}

// checkStreamingRight checks that the role may stream changes, and says
// how to grant it where the server runs.
func checkStreamingRight(ctx context.Context, conn *pgx.Conn, p provider.Provider, c *checker) (user string, ok bool) {
	via := p.ReplicationRoles()
	user, ok, err := replication.StreamingRight(ctx, conn, via)
	if err == nil && !ok {
		why := "it has neither the REPLICATION attribute nor superuser"
		if len(via) > 0 {
			why = fmt.Sprintf("it is not a member of %s, which %s grants instead of the REPLICATION attribute", strings.Join(via, " or "), p)
		}
		err = fix.With(errors.New(why), p.GrantReplication(user))
	}
	name := "REPLICATION"
	if len(via) > 0 {
		name = strings.Join(via, ", ")
	}
	c.report(fmt.Sprintf("role %q may stream changes (%s)", user, name), err)
	return user, err == nil
}

// checkReplicationConnection reports whether a replication connection
// opened and answered IDENTIFY_SYSTEM, which the role's right alone does
// not prove (pg_hba.conf has lines of its own for replication).
func checkReplicationConnection(p provider.Provider, user string, route replication.Route, c *checker) {
	const name = "a replication connection opens (IDENTIFY_SYSTEM)"
	err := route.ReplicationErr
	var pgErr *pgconn.PgError
	switch {
	case err == nil:
	case errors.As(err, &pgErr) && pgErr.Code == "28000" && strings.Contains(pgErr.Message, "pg_hba.conf") && !p.Managed():
		err = fix.With(err, fmt.Sprintf("add a line for replication connections to pg_hba.conf, e.g. host replication %s <pgpilot's address>/32 scram-sha-256, "+
			"then SELECT pg_reload_conf(); (a line for \"all\" databases does not cover replication)", pgx.Identifier{user}.Sanitize()))
	case errors.As(err, &pgErr) && pgErr.Code == "42501":
		err = fix.With(err, p.GrantReplication(user))
	}
	c.report(name, err)
}
