package e2e

import (
	"context"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/internal/pgtest"
	"github.com/pgpilot/pgpilot/internal/workload"
)

var updateGolden = flag.Bool("update", false, "rewrite the golden files of check's output in testdata/")

// simulatedProviders make a test server look like each managed service the
// way its catalog does: the custom settings and roles the service creates
// in every server it runs (and, for Aurora, its aurora_version()). Each
// server keeps wal_level = replica, the service's default, and one
// replication slot, taken by someone else.
var simulatedProviders = []struct {
	name     string
	settings map[string]string
	setup    string
}{
	{name: "selfrun"},
	{name: "rds", settings: map[string]string{"rds.logical_replication": "off"},
		setup: `CREATE ROLE rds_superuser NOLOGIN; CREATE ROLE rds_replication NOLOGIN; GRANT rds_replication TO rds_superuser;`},
	{name: "aurora", settings: map[string]string{"rds.logical_replication": "off"},
		setup: `CREATE ROLE rds_superuser NOLOGIN; CREATE ROLE rds_replication NOLOGIN; GRANT rds_replication TO rds_superuser;
			CREATE FUNCTION public.aurora_version() RETURNS text LANGUAGE sql AS $$ SELECT '16.4.1' $$;`},
	{name: "cloudsql", settings: map[string]string{"cloudsql.logical_decoding": "off"},
		setup: `CREATE ROLE cloudsqlsuperuser NOLOGIN;`},
	{name: "azure", settings: map[string]string{"azure.extensions": ""},
		setup: `CREATE ROLE azure_pg_admin NOLOGIN;`},
	{name: "supabase", setup: `CREATE ROLE supabase_admin NOLOGIN;`},
	{name: "neon", setup: `CREATE ROLE neon_superuser NOLOGIN;`},
}

// TestCheckGivesEachProvidersFix runs check, as a role with no right at
// all, against a server made to look like each provider, and compares the
// output with testdata/check/<provider>.golden: every failing check names
// that provider's fix (its parameter and restart, its grant).
func TestCheckGivesEachProvidersFix(t *testing.T) {
	t.Parallel()
	for _, p := range simulatedProviders {
		t.Run(p.name, func(t *testing.T) {
			t.Parallel()
			settings := map[string]string{"wal_level": "replica", "max_replication_slots": "1"}
			for k, v := range p.settings {
				settings[k] = v
			}
			srv := pgtest.StartT(t, pgtest.Options{Settings: settings})
			e := checkEnvOn(t, srv)
			ctx := context.Background()
			_, err := e.conn.Exec(ctx, p.setup+`; CREATE ROLE pgpilot LOGIN; SELECT pg_create_physical_replication_slot('someone_elses')`)
			require.NoError(t, err)
			e.writeCheckConfig(withUser(t, e.url, "pgpilot"), "")

			code, out := e.runCheck("--skip-userpilot")
			assert.Equal(t, 1, code, out)
			assert.NotContains(t, out, "permission denied", "every refusal says which right is missing")
			compareGolden(t, filepath.Join("testdata", "check", p.name+".golden"), normalizeCheck(e, out))
		})
	}
}

// normalizeCheck replaces what differs from run to run (paths, the test's
// database and slot names) with fixed words.
func normalizeCheck(e *env, out string) string {
	slot := workload.SlotName(e.url)
	db := e.url[strings.LastIndex(e.url, "/")+1:]
	db = db[:strings.Index(db, "?")]
	return strings.NewReplacer(e.cfgPath, "pgpilot.yaml", pgx.Identifier{slot}.Sanitize(), `"SLOT"`, slot, "SLOT", db, "DB").Replace(out)
}

func compareGolden(t *testing.T, path, got string) {
	t.Helper()
	if *updateGolden {
		require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
		require.NoError(t, os.WriteFile(path, []byte(got), 0o644))
		return
	}
	want, err := os.ReadFile(path)
	require.NoError(t, err, "run go test ./e2e -run %s -update to write it", t.Name())
	assert.Equal(t, string(want), got, "check's output differs from %s (go test ./e2e -run %s -update rewrites it)", path, t.Name())
}

// TestCheckOnAProvidersReadReplicaNamesItsVersionRuleAndTheWriter: a
// Postgres 15 standby made to look like RDS (its rds_* roles), in one
// database also like Aurora (aurora_version()): check refuses each with
// that provider's rule (RDS decodes on a replica from 16.1; Aurora never)
// and the endpoint to use instead.
func TestCheckOnAProvidersReadReplicaNamesItsVersionRuleAndTheWriter(t *testing.T) {
	t.Parallel()
	primary := pgtest.StartT(t, pgtest.Options{Settings: map[string]string{"rds.logical_replication": "on"}})
	standby := primary.StartStandbyT(t)
	ctx := context.Background()
	require.NoError(t, primary.Exec(ctx, "postgres", `CREATE ROLE rds_superuser NOLOGIN; CREATE ROLE rds_replication NOLOGIN`))
	for _, tt := range []struct{ name, setup, want, fix string }{
		{"rds", "", "this server is a read replica running 15.", "point postgres.url at the primary (source) instance's endpoint, or upgrade both to 16.1 or later"},
		{"aurora", `CREATE FUNCTION public.aurora_version() RETURNS text LANGUAGE sql AS $$ SELECT '15.8.0' $$`,
			"this server is an Aurora Replica: Aurora serves logical replication from the writer instance only",
			"point postgres.url at the cluster endpoint (the writer), not the reader endpoint"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := checkEnvOn(t, primary)
			if tt.setup != "" {
				_, err := e.conn.Exec(ctx, tt.setup)
				require.NoError(t, err)
			}
			require.NoError(t, standby.WaitReplayed(ctx))
			db := e.url[strings.LastIndex(e.url, "/")+1 : strings.Index(e.url, "?")]
			e.writeCheckConfig(standby.URL(db), "")
			code, out := e.runCheck("--skip-userpilot")
			assert.Equal(t, 1, code, out)
			requireFailedLine(t, out, "Postgres 15 (standby), wal_level=logical", tt.want, "fix: "+tt.fix)
		})
	}
}
