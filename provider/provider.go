// Package provider knows where production Postgres runs: self-run, or a
// managed service (Amazon RDS and Aurora, Google Cloud SQL, Azure Database
// for PostgreSQL flexible server, Supabase, Neon). It recognises the
// service from what the server shows (its custom settings, its roles, the
// host name pgpilot connects to) and words each fix the way that service
// is administered: a parameter group and a reboot instead of ALTER SYSTEM,
// GRANT rds_replication instead of the REPLICATION attribute, the direct
// connection string instead of the pooled one. It also tells a connection
// pooler from Postgres (see Pooler).
//
// It opens no connection itself: callers hand it a connection's answers or
// errors. What each fix rests on is written in docs/providers/.
package provider

import (
	"context"
	"fmt"
	"net"
	"strings"

	"github.com/jackc/pgx/v5"
)

// Provider is where a Postgres server runs.
type Provider int

// The providers pgpilot recognises. SelfRun is also what an unrecognised
// server is taken for: its fixes are plain Postgres.
const (
	SelfRun Provider = iota
	RDS
	Aurora
	CloudSQL
	Azure
	Supabase
	Neon
)

// String names the provider as its operator knows it.
func (p Provider) String() string {
	switch p {
	case RDS:
		return "Amazon RDS for PostgreSQL"
	case Aurora:
		return "Amazon Aurora PostgreSQL"
	case CloudSQL:
		return "Cloud SQL for PostgreSQL"
	case Azure:
		return "Azure Database for PostgreSQL flexible server"
	case Supabase:
		return "Supabase"
	case Neon:
		return "Neon"
	default:
		return "self-run Postgres"
	}
}

// Managed reports whether a service runs the server (no ALTER SYSTEM, no
// postgresql.conf, no pg_hba.conf for the operator).
func (p Provider) Managed() bool { return p != SelfRun }

// Doc is the page of docs/providers that explains the provider's setup.
func (p Provider) Doc() string {
	page := map[Provider]string{RDS: "rds.md", Aurora: "rds.md", CloudSQL: "cloudsql.md", Azure: "azure.md", Supabase: "supabase.md", Neon: "neon.md"}[p]
	if page == "" {
		page = "README.md"
	}
	return "docs/providers/" + page
}

// Server is what a server shows of its provider.
type Server struct {
	Provider Provider
	// Evidence says what gave the provider away ("role rds_superuser",
	// "host *.neon.tech"); "" for SelfRun.
	Evidence string
	// Setting is the provider's switch for logical decoding as the server
	// reports it (rds.logical_replication, cloudsql.logical_decoding), ""
	// when the provider has none or the server does not show it.
	Setting, SettingValue string
}

// Querier is the one method Detect needs of a connection.
type Querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// signs is one query's worth of what a server shows of its provider.
type signs struct {
	rdsLogical, cloudsqlLogical, azureExtensions *string
	roles                                        []string
	aurora                                       bool
}

// Detect recognises the provider of the server q is connected to, host
// being the host name the connection was opened with. The server's own
// catalog (its custom settings and the roles a service creates) decides;
// the host name decides only when the catalog says nothing, so a tunnel
// or a proxy in front changes nothing.
func Detect(ctx context.Context, q Querier, host string) (Server, error) {
	var s signs
	// current_setting(…, true) is NULL for a setting the server does not
	// know: a custom setting exists only where the service defines it.
	err := q.QueryRow(ctx, `SELECT current_setting('rds.logical_replication', true),
		current_setting('cloudsql.logical_decoding', true), current_setting('azure.extensions', true),
		ARRAY(SELECT rolname::text FROM pg_roles WHERE rolname = ANY($1) ORDER BY rolname),
		EXISTS (SELECT 1 FROM pg_proc WHERE proname = 'aurora_version')`, serviceRoles).
		Scan(&s.rdsLogical, &s.cloudsqlLogical, &s.azureExtensions, &s.roles, &s.aurora)
	if err != nil {
		return Server{}, fmt.Errorf("read the server's provider settings and roles: %w", err)
	}
	return s.decide(host), nil
}

// serviceRoles are roles each service creates in every server it runs.
var serviceRoles = []string{"rds_superuser", "rds_replication", "cloudsqlsuperuser", "azure_pg_admin", "supabase_admin", "neon_superuser"}

func (s signs) decide(host string) Server {
	has := func(role string) bool {
		for _, r := range s.roles {
			if r == role {
				return true
			}
		}
		return false
	}
	rds := func(p Provider, evidence string) Server {
		srv := Server{Provider: p, Evidence: evidence, Setting: "rds.logical_replication"}
		if s.rdsLogical != nil {
			srv.SettingValue = *s.rdsLogical
		}
		return srv
	}
	switch {
	case s.aurora:
		return rds(Aurora, "function aurora_version()")
	case s.rdsLogical != nil:
		return rds(RDS, "setting rds.logical_replication")
	case has("rds_superuser"), has("rds_replication"):
		return rds(RDS, "role rds_superuser")
	case s.cloudsqlLogical != nil:
		return Server{Provider: CloudSQL, Evidence: "setting cloudsql.logical_decoding", Setting: "cloudsql.logical_decoding", SettingValue: *s.cloudsqlLogical}
	case has("cloudsqlsuperuser"):
		return Server{Provider: CloudSQL, Evidence: "role cloudsqlsuperuser", Setting: "cloudsql.logical_decoding"}
	case s.azureExtensions != nil:
		return Server{Provider: Azure, Evidence: "setting azure.extensions"}
	case has("azure_pg_admin"):
		return Server{Provider: Azure, Evidence: "role azure_pg_admin"}
	case has("supabase_admin"):
		return Server{Provider: Supabase, Evidence: "role supabase_admin"}
	case has("neon_superuser"):
		return Server{Provider: Neon, Evidence: "role neon_superuser"}
	}
	if p, pattern := FromHost(host); p != SelfRun {
		srv := Server{Provider: p, Evidence: "host " + pattern}
		switch p {
		case RDS:
			srv.Setting = "rds.logical_replication"
		case CloudSQL:
			srv.Setting = "cloudsql.logical_decoding"
		}
		return srv
	}
	return Server{Provider: SelfRun}
}

// FromHost recognises a provider from the host name a connection string
// names, and returns the pattern that matched. An IP address, a private
// DNS name or a tunnel on localhost says nothing: SelfRun.
func FromHost(host string) (Provider, string) {
	h := strings.TrimSuffix(strings.ToLower(host), ".")
	if net.ParseIP(h) != nil {
		return SelfRun, ""
	}
	switch {
	case strings.HasSuffix(h, ".rds.amazonaws.com") || strings.HasSuffix(h, ".rds.amazonaws.com.cn"):
		// Aurora's endpoints look like RDS Multi-AZ DB clusters' (both
		// .cluster-): only the catalog's aurora_version() tells them apart.
		return RDS, "*.rds.amazonaws.com"
	case strings.HasSuffix(h, ".postgres.database.azure.com"):
		return Azure, "*.postgres.database.azure.com"
	case strings.HasSuffix(h, ".supabase.co") || strings.HasSuffix(h, ".supabase.com"):
		return Supabase, "*.supabase.co"
	case strings.HasSuffix(h, ".neon.tech"):
		return Neon, "*.neon.tech"
	case strings.HasSuffix(h, ".sql.goog"):
		return CloudSQL, "*.sql.goog"
	}
	return SelfRun, ""
}
