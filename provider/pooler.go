package provider

import (
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgpilot/pgpilot/internal/fix"
)

// Pooler is a connection pooler standing between pgpilot and Postgres.
// Logical replication needs one server session for as long as it streams,
// with the replication protocol: a pooler hands sessions out per
// transaction (or refuses the protocol), so pgpilot needs a direct
// connection.
type Pooler struct {
	// Name is the pooler as its operator knows it.
	Name string
	// Evidence is how it showed itself.
	Evidence string
	// Direct says where the direct connection string is.
	Direct string
}

// PoolerError is the error of a postgres.url that goes through a pooler.
type PoolerError struct{ Pooler Pooler }

func (e *PoolerError) Error() string {
	return fmt.Sprintf("postgres.url goes through a connection pooler (%s: %s); logical replication needs a direct connection to Postgres",
		e.Pooler.Name, e.Pooler.Evidence)
}

// Err is the pooler as an error, with where the direct connection string
// is as its fix.
func (p Pooler) Err() error { return fix.With(&PoolerError{Pooler: p}, p.Direct) }

// Endpoint is one host a connection string names.
type Endpoint struct {
	Host string
	Port uint16
	User string
}

// PoolerAt recognises the poolers whose address gives them away: Neon's
// pooled host names (-pooler), Supabase's Supavisor (*.pooler.supabase.com)
// and its PgBouncer (port 6543 of the database host), Azure's built-in
// PgBouncer (port 6432) and RDS Proxy endpoints (*.proxy-*.rds.amazonaws.com).
func PoolerAt(e Endpoint) (Pooler, bool) {
	h := strings.TrimSuffix(strings.ToLower(e.Host), ".")
	label, _, _ := strings.Cut(h, ".")
	switch {
	case strings.HasSuffix(h, ".neon.tech") && strings.HasSuffix(label, "-pooler"):
		direct := strings.Replace(h, "-pooler.", ".", 1)
		return Pooler{Name: "Neon's pooler (PgBouncer in transaction mode)", Evidence: fmt.Sprintf("the host %s is a pooled endpoint (-pooler)", e.Host),
			Direct: fmt.Sprintf("use the same host without -pooler: %s (Neon Console → Connect, with Connection pooling off)", direct)}, true
	case strings.HasSuffix(h, ".pooler.supabase.com"):
		return Pooler{Name: "Supavisor (Supabase's pooler)", Evidence: fmt.Sprintf("the host %s is Supabase's shared pooler", e.Host),
			Direct: supabaseDirect(e.User)}, true
	case strings.HasSuffix(h, ".supabase.co") && e.Port == 6543:
		return Pooler{Name: "Supabase's PgBouncer", Evidence: "port 6543 of the database host is its transaction-mode pooler",
			Direct: fmt.Sprintf("use port 5432 of the same host (%s:5432): Supabase Dashboard → Connect → Direct connection", e.Host)}, true
	case strings.HasSuffix(h, ".postgres.database.azure.com") && e.Port == 6432:
		return Pooler{Name: "Azure's built-in PgBouncer", Evidence: "port 6432 of the server is its PgBouncer",
			Direct: fmt.Sprintf("use port 5432 of the same host (%s:5432)", e.Host)}, true
	case strings.Contains(h, ".proxy-") && (strings.HasSuffix(h, ".rds.amazonaws.com") || strings.HasSuffix(h, ".rds.amazonaws.com.cn")):
		return Pooler{Name: "RDS Proxy", Evidence: fmt.Sprintf("the host %s is an RDS Proxy endpoint, and RDS Proxy does not carry replication connections", e.Host),
			Direct: "use the DB instance's endpoint (for Aurora, the cluster endpoint) instead of the proxy's: RDS console → Databases → the database → Connectivity & security"}, true
	}
	return Pooler{}, false
}

// supabaseDirect says where Supabase's direct connection is; the pooler's
// user is postgres.<project-ref>, which names the direct host.
func supabaseDirect(user string) string {
	const where = "Supabase Dashboard → Connect → Direct connection"
	if role, ref, ok := strings.Cut(user, "."); ok && ref != "" {
		return fmt.Sprintf("use the direct connection: host db.%s.supabase.co, port 5432, user %s (%s; it is IPv6 unless the project has the IPv4 add-on)", ref, role, where)
	}
	return "use the direct connection: host db.<project-ref>.supabase.co, port 5432 (" + where + "; it is IPv6 unless the project has the IPv4 add-on)"
}

// PoolerRefusal recognises a pooler in the error of a connection attempt:
// PgBouncer refuses, with SQLSTATE 08P01, every startup parameter it does
// not know ("unsupported startup parameter: replication", or
// extra_float_digits, which pgpilot sets and Postgres accepts). Postgres
// never words a refusal so.
func PoolerRefusal(err error, e Endpoint) (Pooler, bool) {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "08P01" {
		return Pooler{}, false
	}
	param, ok := strings.CutPrefix(pgErr.Message, "unsupported startup parameter: ")
	if !ok {
		return Pooler{}, false
	}
	return Pooler{Name: "PgBouncer", Evidence: fmt.Sprintf("it refused the startup parameter %q, which Postgres accepts", param),
		Direct: directAt(e)}, true
}

// PoolerDroppedReplication recognises a pooler in the answer to
// IDENTIFY_SYSTEM on a replication connection: a syntax error means the
// command reached an ordinary session, so something between dropped the
// replication startup parameter (PgBouncer with replication in
// ignore_startup_parameters does).
func PoolerDroppedReplication(err error, e Endpoint) (Pooler, bool) {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "42601" {
		return Pooler{}, false
	}
	return Pooler{Name: "PgBouncer or another pooler", Evidence: "IDENTIFY_SYSTEM reached an ordinary session: the replication startup parameter was dropped on the way",
		Direct: directAt(e)}, true
}

// directAt says where the direct connection is, for a pooler found by its
// behaviour rather than its address.
func directAt(e Endpoint) string {
	if p, _ := FromHost(e.Host); p != SelfRun {
		return p.DirectConnection()
	}
	return "point postgres.url at Postgres itself: the host and port the pooler forwards to (for PgBouncer, the database's line in the [databases] section of pgbouncer.ini), with the same database and role"
}

// DirectConnection says where the provider shows the connection string
// that reaches Postgres itself.
func (p Provider) DirectConnection() string {
	switch p {
	case RDS, Aurora:
		return "use the DB instance's endpoint (for Aurora, the cluster endpoint), port 5432: RDS console → Databases → the database → Connectivity & security; not an RDS Proxy endpoint"
	case CloudSQL:
		return "use the instance's IP address (or the Cloud SQL Auth Proxy) on port 5432: Cloud SQL console → the instance → Connections"
	case Azure:
		return "use port 5432 of the server's host (the built-in PgBouncer listens on 6432)"
	case Supabase:
		return supabaseDirect("")
	case Neon:
		return "use the connection string Neon Console → Connect shows with Connection pooling off (the host without -pooler)"
	default:
		return directAt(Endpoint{})
	}
}
