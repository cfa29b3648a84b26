package provider

import (
	"errors"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/assert"

	"github.com/pgpilot/pgpilot/internal/fix"
)

func ptr(s string) *string { return &s }

func TestTheCatalogDecidesAndTheHostOnlyWhenItIsSilent(t *testing.T) {
	tests := []struct {
		name     string
		signs    signs
		host     string
		want     Provider
		evidence string
	}{
		{"nothing", signs{}, "10.0.0.5", SelfRun, ""},
		{"aurora_version wins over rds settings", signs{aurora: true, rdsLogical: ptr("off")}, "db.example.internal", Aurora, "function aurora_version()"},
		{"rds setting", signs{rdsLogical: ptr("on")}, "localhost", RDS, "setting rds.logical_replication"},
		{"rds role", signs{roles: []string{"rds_superuser"}}, "127.0.0.1", RDS, "role rds_superuser"},
		{"cloudsql setting", signs{cloudsqlLogical: ptr("off")}, "127.0.0.1", CloudSQL, "setting cloudsql.logical_decoding"},
		{"cloudsql role", signs{roles: []string{"cloudsqlsuperuser"}}, "127.0.0.1", CloudSQL, "role cloudsqlsuperuser"},
		{"azure setting", signs{azureExtensions: ptr("")}, "127.0.0.1", Azure, "setting azure.extensions"},
		{"azure role", signs{roles: []string{"azure_pg_admin"}}, "127.0.0.1", Azure, "role azure_pg_admin"},
		{"supabase role", signs{roles: []string{"supabase_admin"}}, "127.0.0.1", Supabase, "role supabase_admin"},
		{"neon role", signs{roles: []string{"neon_superuser"}}, "127.0.0.1", Neon, "role neon_superuser"},
		{"catalog over host", signs{roles: []string{"neon_superuser"}}, "db.abc.supabase.co", Neon, "role neon_superuser"},
		{"rds host", signs{}, "mydb.abc123.eu-west-1.rds.amazonaws.com", RDS, "host *.rds.amazonaws.com"},
		{"azure host", signs{}, "pg1.postgres.database.azure.com", Azure, "host *.postgres.database.azure.com"},
		{"supabase host", signs{}, "db.abcdefgh.supabase.co", Supabase, "host *.supabase.co"},
		{"supabase pooler host", signs{}, "aws-0-eu-central-1.pooler.supabase.com", Supabase, "host *.supabase.co"},
		{"neon host", signs{}, "ep-cool-darkness-123456.us-east-2.aws.neon.tech", Neon, "host *.neon.tech"},
		{"cloudsql psc host", signs{}, "abc.1a2b.europe-west1.sql.goog.", CloudSQL, "host *.sql.goog"},
		{"an ip says nothing", signs{}, "34.22.1.9", SelfRun, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.signs.decide(tt.host)
			assert.Equal(t, tt.want, got.Provider)
			assert.Equal(t, tt.evidence, got.Evidence)
		})
	}
}

func TestEachProvidersFixForLogicalDecoding(t *testing.T) {
	tests := []struct {
		srv  Server
		want []string
	}{
		{Server{Provider: SelfRun}, []string{"ALTER SYSTEM SET wal_level = logical", "restart Postgres"}},
		{Server{Provider: RDS, Setting: "rds.logical_replication", SettingValue: "off"},
			[]string{"rds.logical_replication = 1", "(now rds.logical_replication = off)", "DB parameter group", "reboot the instance", "static"}},
		{Server{Provider: Aurora, Setting: "rds.logical_replication"}, []string{"rds.logical_replication = 1", "DB cluster parameter group", "reboot the writer"}},
		{Server{Provider: CloudSQL, Setting: "cloudsql.logical_decoding", SettingValue: "off"},
			[]string{"cloudsql.logical_decoding = on", "--database-flags=cloudsql.logical_decoding=on", "restarts"}},
		{Server{Provider: Azure}, []string{"server parameter wal_level = logical", "restart the server"}},
		{Server{Provider: Supabase}, []string{"Supabase projects run with wal_level = logical", "db.<project-ref>.supabase.co:5432"}},
		{Server{Provider: Neon}, []string{"Logical replication → Enable", "cannot be turned off again"}},
	}
	for _, tt := range tests {
		t.Run(tt.srv.Provider.String(), func(t *testing.T) {
			got := tt.srv.LogicalDecodingFix()
			for _, w := range tt.want {
				assert.Contains(t, got, w)
			}
		})
	}
}

func TestGrantReplicationWhereRoleAttributesCannotBeSet(t *testing.T) {
	assert.Equal(t, `run as the master user (rds_superuser): GRANT rds_replication TO "app";`, RDS.GrantReplication("app"))
	assert.Equal(t, `run as the master user (rds_superuser): GRANT rds_replication TO "app";`, Aurora.GrantReplication("app"))
	assert.Equal(t, []string{"rds_replication"}, RDS.ReplicationRoles())
	assert.Empty(t, CloudSQL.ReplicationRoles())
	assert.Contains(t, CloudSQL.GrantReplication("app"), `ALTER ROLE "app" WITH REPLICATION;`)
	assert.Contains(t, SelfRun.GrantReplication("a\"b"), `ALTER ROLE "a""b" REPLICATION;`)
}

func TestReadReplicaDecodingByProviderAndVersion(t *testing.T) {
	tests := []struct {
		p       Provider
		version int
		ok      bool
		want    string // in the message or the fix
	}{
		{SelfRun, 150004, false, "needs Postgres 16 or later"},
		{SelfRun, 160000, true, ""},
		{RDS, 150007, false, "from 16.1"},
		{RDS, 160000, false, "primary (source) instance's endpoint"},
		{RDS, 160001, true, ""},
		{RDS, 170002, true, ""},
		{Aurora, 160004, false, "cluster endpoint (the writer)"},
		{Aurora, 170000, false, "writer instance only"},
		{CloudSQL, 150008, false, "primary instance"},
		{CloudSQL, 160002, true, ""},
		{Azure, 150008, false, "primary server"},
		{Azure, 160002, true, ""},
		{Supabase, 160004, false, "from Postgres 17"},
		{Supabase, 170001, true, ""},
		{Neon, 150008, false, "read-write compute"},
		{Neon, 160002, true, ""},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s %d", tt.p, tt.version), func(t *testing.T) {
			err := tt.p.ReplicaProblem(tt.version)
			if tt.ok {
				assert.NoError(t, err)
				return
			}
			if assert.Error(t, err) {
				assert.Contains(t, err.Error()+" | "+fix.Of(err), tt.want)
			}
		})
	}
}

func TestPoolersKnownByTheirAddress(t *testing.T) {
	tests := []struct {
		e        Endpoint
		name     string // "" : not a pooler
		direct   string
		evidence string
	}{
		{Endpoint{Host: "ep-cool-darkness-123456-pooler.us-east-2.aws.neon.tech", Port: 5432}, "Neon's pooler",
			"ep-cool-darkness-123456.us-east-2.aws.neon.tech", "-pooler"},
		{Endpoint{Host: "ep-cool-darkness-123456.us-east-2.aws.neon.tech", Port: 5432}, "", "", ""},
		{Endpoint{Host: "aws-0-eu-central-1.pooler.supabase.com", Port: 6543, User: "postgres.abcdefghij"}, "Supavisor",
			"host db.abcdefghij.supabase.co, port 5432, user postgres", "shared pooler"},
		{Endpoint{Host: "aws-0-eu-central-1.pooler.supabase.com", Port: 5432, User: "postgres.abcdefghij"}, "Supavisor", "db.abcdefghij.supabase.co", "shared pooler"},
		{Endpoint{Host: "db.abcdefghij.supabase.co", Port: 6543}, "Supabase's PgBouncer", "db.abcdefghij.supabase.co:5432", "6543"},
		{Endpoint{Host: "db.abcdefghij.supabase.co", Port: 5432}, "", "", ""},
		{Endpoint{Host: "pg1.postgres.database.azure.com", Port: 6432}, "Azure's built-in PgBouncer", "pg1.postgres.database.azure.com:5432", "6432"},
		{Endpoint{Host: "pg1.postgres.database.azure.com", Port: 5432}, "", "", ""},
		{Endpoint{Host: "app.proxy-abcdefghijkl.us-east-1.rds.amazonaws.com", Port: 5432}, "RDS Proxy", "DB instance's endpoint", "RDS Proxy endpoint"},
		{Endpoint{Host: "app.abcdefghijkl.us-east-1.rds.amazonaws.com", Port: 5432}, "", "", ""},
		{Endpoint{Host: "pgbouncer.internal", Port: 6432}, "", "", ""}, // a port says nothing alone: the probe decides
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s:%d", tt.e.Host, tt.e.Port), func(t *testing.T) {
			p, ok := PoolerAt(tt.e)
			if tt.name == "" {
				assert.False(t, ok, "%+v", p)
				return
			}
			assert.True(t, ok)
			assert.Contains(t, p.Name, tt.name)
			assert.Contains(t, p.Evidence, tt.evidence)
			assert.Contains(t, p.Direct, tt.direct)
			err := p.Err()
			assert.Contains(t, err.Error(), "postgres.url goes through a connection pooler ("+p.Name)
			assert.Contains(t, err.Error(), "logical replication needs a direct connection to Postgres")
			assert.Equal(t, p.Direct, fix.Of(err))
			assert.True(t, errors.As(err, new(*PoolerError)))
		})
	}
}

func TestPoolersKnownByTheirAnswers(t *testing.T) {
	refused := fmt.Errorf("connect: %w", &pgconn.PgError{Severity: "FATAL", Code: "08P01", Message: "unsupported startup parameter: replication"})
	p, ok := PoolerRefusal(refused, Endpoint{Host: "10.0.0.7", Port: 6432})
	assert.True(t, ok)
	assert.Equal(t, "PgBouncer", p.Name)
	assert.Contains(t, p.Evidence, `refused the startup parameter "replication"`)
	assert.Contains(t, p.Direct, "[databases]")

	p, ok = PoolerRefusal(refused, Endpoint{Host: "pg1.postgres.database.azure.com", Port: 6433})
	assert.True(t, ok)
	assert.Contains(t, p.Direct, "port 5432 of the server's host", "a recognised provider's host gets its direct connection")

	_, ok = PoolerRefusal(&pgconn.PgError{Code: "08P01", Message: "invalid startup packet layout"}, Endpoint{})
	assert.False(t, ok, "a protocol violation that is not PgBouncer's refusal")
	_, ok = PoolerRefusal(&pgconn.PgError{Code: "28P01", Message: "password authentication failed for user \"app\""}, Endpoint{})
	assert.False(t, ok)
	_, ok = PoolerRefusal(errors.New("dial tcp: connection refused"), Endpoint{})
	assert.False(t, ok)

	p, ok = PoolerDroppedReplication(&pgconn.PgError{Code: "42601", Message: `syntax error at or near "IDENTIFY_SYSTEM"`}, Endpoint{Host: "10.0.0.7"})
	assert.True(t, ok)
	assert.Contains(t, p.Evidence, "replication startup parameter was dropped")
	_, ok = PoolerDroppedReplication(&pgconn.PgError{Code: "42501", Message: "permission denied"}, Endpoint{})
	assert.False(t, ok)
}

func TestSetParameterNamesEachProvidersMechanism(t *testing.T) {
	assert.Equal(t, "run ALTER SYSTEM SET max_wal_senders = 11; and restart Postgres", SelfRun.SetParameter("max_wal_senders", "11", true))
	assert.Equal(t, "run ALTER SYSTEM SET hot_standby_feedback = on; SELECT pg_reload_conf();", SelfRun.SetParameter("hot_standby_feedback", "on", false))
	assert.Contains(t, RDS.SetParameter("max_wal_senders", "11", true), "reboot the instance")
	assert.Contains(t, RDS.SetParameter("hot_standby_feedback", "on", false), "no reboot")
	assert.Contains(t, Aurora.SetParameter("max_wal_senders", "11", true), "DB cluster parameter group")
	assert.Contains(t, CloudSQL.SetParameter("max_wal_senders", "11", true), "database flag max_wal_senders = 11")
	assert.Contains(t, Azure.SetParameter("max_wal_senders", "11", true), "restart the server")
	assert.Contains(t, Supabase.SetParameter("max_wal_senders", "11", true), "supabase postgres-config update --config max_wal_senders=11")
	assert.Contains(t, Neon.SetParameter("max_wal_senders", "11", true), "Neon support")
}
