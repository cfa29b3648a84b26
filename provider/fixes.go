package provider

import (
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/pgpilot/pgpilot/internal/fix"
)

// LogicalDecodingFix says how to turn on logical decoding (wal_level =
// logical) where the server runs.
func (s Server) LogicalDecodingFix() string {
	now := ""
	if s.Setting != "" && s.SettingValue != "" {
		now = fmt.Sprintf(" (now %s = %s)", s.Setting, s.SettingValue)
	}
	switch s.Provider {
	case RDS:
		return "set rds.logical_replication = 1" + now + " in the DB instance's custom DB parameter group " +
			"(the default group cannot be changed: create one and associate it with the instance), then reboot the instance: " +
			"the parameter is static, and the reboot sets wal_level = logical"
	case Aurora:
		return "set rds.logical_replication = 1" + now + " in the DB cluster's custom DB cluster parameter group, then reboot the writer instance: " +
			"the parameter is static, and the reboot sets wal_level = logical"
	case CloudSQL:
		return "set the database flag cloudsql.logical_decoding = on" + now + " (console: the instance → Edit → Flags; or " +
			"gcloud sql instances patch INSTANCE --database-flags=cloudsql.logical_decoding=on, listing every flag already set, since the command replaces them); " +
			"the instance restarts to apply it"
	case Azure:
		return "set the server parameter wal_level = logical (portal: the server → Server parameters; or " +
			"az postgres flexible-server parameter set --resource-group RG --server-name SERVER --name wal_level --value logical), then restart the server"
	case Supabase:
		return "Supabase projects run with wal_level = logical: check that postgres.url names your project's database " +
			"(the direct connection, db.<project-ref>.supabase.co:5432), and ask Supabase support if it does"
	case Neon:
		return "enable logical replication for the Neon project (Neon Console → the project → Settings → Logical replication → Enable): " +
			"it restarts the project's computes, and cannot be turned off again"
	default:
		return "run ALTER SYSTEM SET wal_level = logical; and restart Postgres"
	}
}

// SetParameter says how to set a server parameter where the server runs;
// restart tells whether the parameter takes effect only at a restart.
func (p Provider) SetParameter(name, value string, restart bool) string {
	switch p {
	case RDS, Aurora:
		group, reboot := "the DB instance's custom DB parameter group", "reboot the instance (a static parameter)"
		if p == Aurora {
			group, reboot = "the DB cluster's custom DB cluster parameter group", "reboot the writer instance (a static parameter)"
		}
		if !restart {
			return fmt.Sprintf("set %s = %s in %s (a dynamic parameter: no reboot)", name, value, group)
		}
		return fmt.Sprintf("set %s = %s in %s, then %s", name, value, group, reboot)
	case CloudSQL:
		s := fmt.Sprintf("set the database flag %s = %s (console: the instance → Edit → Flags; or gcloud sql instances patch INSTANCE --database-flags=…, "+
			"listing every flag already set)", name, value)
		if restart {
			s += "; the instance restarts to apply it"
		}
		return s
	case Azure:
		s := fmt.Sprintf("set the server parameter %s = %s (portal: the server → Server parameters; or "+
			"az postgres flexible-server parameter set --resource-group RG --server-name SERVER --name %s --value %s)", name, value, name, value)
		if restart {
			s += ", then restart the server"
		}
		return s
	case Supabase:
		return fmt.Sprintf("set %s = %s with the Supabase CLI (supabase postgres-config update --config %s=%s; it restarts the database)", name, value, name, value)
	case Neon:
		return fmt.Sprintf("ask Neon support to set %s = %s (Neon sets it for the compute; the project cannot)", name, value)
	default:
		if restart {
			return fmt.Sprintf("run ALTER SYSTEM SET %s = %s; and restart Postgres", name, value)
		}
		return fmt.Sprintf("run ALTER SYSTEM SET %s = %s; SELECT pg_reload_conf();", name, value)
	}
}

// ReplicationRoles are the roles whose members may stream changes without
// the REPLICATION attribute (which the service does not let anyone set).
func (p Provider) ReplicationRoles() []string {
	if p == RDS || p == Aurora {
		return []string{"rds_replication"}
	}
	return nil
}

// GrantReplication says how to let role stream changes (open a replication
// connection, create and use a logical slot).
func (p Provider) GrantReplication(role string) string {
	r := pgx.Identifier{role}.Sanitize()
	switch p {
	case RDS, Aurora:
		// RDS refuses ALTER ROLE … REPLICATION even to rds_superuser: the
		// right comes with membership of rds_replication.
		return "run as the master user (rds_superuser): GRANT rds_replication TO " + r + ";"
	case CloudSQL:
		return "run as a cloudsqlsuperuser member (the postgres user): ALTER ROLE " + r + " WITH REPLICATION;"
	case Azure:
		return "run as the server admin (azure_pg_admin): ALTER ROLE " + r + " WITH REPLICATION;"
	case Supabase:
		return "run as postgres (the SQL Editor): ALTER ROLE " + r + " WITH REPLICATION;"
	case Neon:
		return "run as a neon_superuser member (the project's owner role): ALTER ROLE " + r + " WITH REPLICATION;"
	default:
		return "run on the primary, as a superuser: ALTER ROLE " + r + " REPLICATION;"
	}
}

// ReplicaProblem says why logical decoding cannot run on this server, a
// read replica (standby) at server_version_num version, or returns nil.
// Postgres decodes on a standby from 16; each service allows it from its
// own version, or not at all.
func (p Provider) ReplicaProblem(version int) error {
	major := version / 10000
	switch p {
	case RDS:
		if version < 160001 {
			return fix.With(fmt.Errorf("this server is a read replica running %s: RDS for PostgreSQL decodes on a read replica from 16.1", versionString(version)),
				"point postgres.url at the primary (source) instance's endpoint, or upgrade both to 16.1 or later with rds.logical_replication = 1 in both instances' parameter groups")
		}
	case Aurora:
		return fix.With(errors.New("this server is an Aurora Replica: Aurora serves logical replication from the writer instance only"),
			"point postgres.url at the cluster endpoint (the writer), not the reader endpoint or a replica's instance endpoint")
	case Supabase:
		if major < 17 {
			return fix.With(fmt.Errorf("this server is a read replica running Postgres %d: Supabase read replicas serve logical replication from Postgres 17", major),
				"point postgres.url at the primary database's direct connection (db.<project-ref>.supabase.co:5432)")
		}
	case SelfRun:
		if major < 16 {
			// Self-run: the fix is part of the message, as it always was.
			return fmt.Errorf("this server is a standby running Postgres %d: logical decoding on a standby needs Postgres 16 or later; "+
				"point postgres.url at the primary, or upgrade the standby to 16+", major)
		}
	default:
		if major < 16 {
			return fix.With(fmt.Errorf("this server is a read replica running Postgres %d: logical decoding on a standby needs Postgres 16 or later", major),
				"point postgres.url at the primary"+p.writerHint()+", or upgrade the replica (and its primary) to 16 or later")
		}
	}
	return nil
}

// writerHint names the primary the way the provider's console does.
func (p Provider) writerHint() string {
	switch p {
	case CloudSQL:
		return " instance"
	case Azure:
		return " server"
	case Neon:
		return " (the branch's read-write compute)"
	}
	return ""
}

func versionString(v int) string {
	if v >= 100000 {
		return fmt.Sprintf("%d.%d", v/10000, v%10000)
	}
	return fmt.Sprintf("%d.%d.%d", v/10000, v/100%100, v%100)
}
