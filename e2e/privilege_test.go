package e2e

import (
	"context"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/internal/workload"
)

// leastPrivilegeRole creates a role that may only stream (REPLICATION)
// and read the mapped and related tables, and, as the DBA, the
// publication it streams from; the config now connects as that role.
func (e *env) leastPrivilegeRole() string {
	e.t.Helper()
	role := "lp" + workload.SlotName(e.url)[1:] // unique per database, like the slot
	pub := pgx.Identifier{workload.SlotName(e.url)}.Sanitize()
	r := pgx.Identifier{role}.Sanitize()
	_, err := e.conn.Exec(context.Background(), `CREATE ROLE `+r+` LOGIN REPLICATION;
		GRANT SELECT ON public.companies, public.subscriptions, public.users TO `+r+`;
		CREATE PUBLICATION `+pub+` FOR TABLE public.companies, public.subscriptions, public.users;`)
	require.NoError(e.t, err)
	cfg := workload.Config(withUser(e.t, e.url, role), workload.SlotName(e.url), e.up.URL(), apiKey, e.stateDir, 2000)
	cfg = strings.Replace(cfg, "companies:\n", "delivery:\n  snapshot_chunk_rows: 200\ncompanies:\n", 1)
	e.writeConfig(cfg + workload.RelatedMapping)
	return role
}

// TestLeastPrivilegeRoleSyncsStreamsSurvivesKillAndResyncs: a role with
// only REPLICATION and SELECT on the mapped and related tables, streaming
// from a publication a DBA made: check passes, the initial sync completes,
// changes stream, a kill -9 and a restart lose nothing, a re-sync re-sends,
// and teardown drops the slot and leaves the DBA's publication in place,
// saying so with the statement that would drop it.
func TestLeastPrivilegeRoleSyncsStreamsSurvivesKillAndResyncs(t *testing.T) {
	t.Parallel()
	e := relatedEnv(t)
	ctx := context.Background()
	require.NoError(t, workload.SeedRelated(ctx, e.conn, 500))
	e.leastPrivilegeRole()

	code, out := e.runCheck("--skip-userpilot")
	require.Equal(t, 0, code, out)
	assert.NotContains(t, out, "✗")
	assert.Contains(t, out, `publication "`+workload.SlotName(e.url)+`" exists (created by pgpilot: false)`)
	assert.Contains(t, out, "✓ a replication connection opens (IDENTIFY_SYSTEM)")

	p := e.run()
	e.waitInitialSync()
	e.convergeRelated(60 * time.Second)
	rng := rand.New(rand.NewPCG(30, 31))
	for range 40 {
		_, err := workload.RelatedStep(ctx, e.conn, rng, 520)
		require.NoError(t, err)
	}
	e.convergeRelated(60 * time.Second)
	p.kill9()
	for range 40 {
		_, err := workload.RelatedStep(ctx, e.conn, rng, 520)
		require.NoError(t, err)
	}
	p = e.run()
	e.convergeRelated(60 * time.Second)

	// A re-sync re-sends every row: Userpilot, emptied, fills again.
	e.up.Wipe()
	code, out = e.resync("--where", "id > 0")
	require.Equal(t, 0, code, out)
	e.convergeRelated(60 * time.Second)
	code, _ = p.stop(t)
	require.Equal(t, 0, code)

	td := e.pgpilot("teardown", "--config", e.cfgPath, "--yes")
	require.Equal(t, 0, td.wait(t, 30*time.Second), td.out.String())
	pub := workload.SlotName(e.url)
	assert.Contains(t, td.out.String(), `dropped replication slot "`+pub+`"`)
	assert.Contains(t, td.out.String(), `publication "`+pub+`" was not created by pgpilot (its owner is postgres): left in place`)
	assert.Contains(t, td.out.String(), `DROP PUBLICATION "`+pub+`";`)
}

// TestTeardownSaysWhatItMayNotDropAndTheStatement: a publication pgpilot
// created (as the table's owner) and a least-privilege role tearing down:
// the slot is dropped and the state set aside, and teardown exits 1
// naming the publication's owner and the DROP PUBLICATION to run.
func TestTeardownSaysWhatItMayNotDropAndTheStatement(t *testing.T) {
	t.Parallel()
	e := relatedEnv(t)
	ctx := context.Background()
	require.NoError(t, workload.SeedRelated(ctx, e.conn, 50))
	e.writeRelatedConfig()
	p := e.run() // as postgres: creates the publication (and the slot)
	e.waitInitialSync()
	code, _ := p.stop(t)
	require.Equal(t, 0, code)
	pub := workload.SlotName(e.url)
	_, err := e.conn.Exec(ctx, `DROP PUBLICATION `+pgx.Identifier{pub}.Sanitize())
	require.NoError(t, err)
	e.leastPrivilegeRole() // makes the publication again, as the DBA
	_, err = e.conn.Exec(ctx, `COMMENT ON PUBLICATION `+pgx.Identifier{pub}.Sanitize()+` IS 'created by pgpilot'`)
	require.NoError(t, err)

	td := e.pgpilot("teardown", "--config", e.cfgPath, "--yes")
	assert.Equal(t, 1, td.wait(t, 30*time.Second))
	out := td.out.String()
	assert.Contains(t, out, `dropped replication slot "`+pub+`"`)
	assert.Contains(t, out, `could not drop publication "`+pub+`": only its owner (postgres) or a superuser may`)
	assert.Contains(t, out, "checkpoint moved to")
	assert.Contains(t, out, `fix: run on the primary: DROP PUBLICATION "`+pub+`"; (as "postgres")`)
	assert.NotContains(t, out, "permission denied")
}

// TestCheckNamesEachMissingRightAndTheDBAsStatement: a role that may
// stream but may not read a related table nor reach a schema: check names
// each missing right with the GRANT that gives it, and never says
// "permission denied" alone.
func TestCheckNamesEachMissingRightAndTheDBAsStatement(t *testing.T) {
	t.Parallel()
	e := relatedEnv(t)
	role := e.leastPrivilegeRole()
	r := pgx.Identifier{role}.Sanitize()
	_, err := e.conn.Exec(context.Background(), `REVOKE SELECT ON public.subscriptions FROM `+r+`; REVOKE USAGE ON SCHEMA public FROM PUBLIC`)
	require.NoError(t, err)

	code, out := e.runCheck("--skip-userpilot")
	assert.Equal(t, 1, code, "missing rights are not a configuration problem: "+out)
	assert.NotContains(t, out, "permission denied")
	requireFailedLine(t, out, `may SELECT from public.companies`, "it lacks USAGE on schema public", `GRANT USAGE ON SCHEMA "public" TO `+r+";")
	requireFailedLine(t, out, `may SELECT from public.subscriptions`, "it lacks USAGE on schema public and SELECT on public.subscriptions",
		`GRANT USAGE ON SCHEMA "public" TO `+r+`; GRANT SELECT ON "public"."subscriptions" TO `+r+";")
	assert.Contains(t, out, "- companies.related and companies.where not checked: the role may not read their tables")
}
