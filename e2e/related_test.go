package e2e

import (
	"context"
	"math/rand/v2"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/internal/pgtest"
	"github.com/pgpilot/pgpilot/internal/workload"
	"github.com/pgpilot/pgpilot/userpilot/userpilottest"
)

// relatedEnv is newEnv with subscriptions and users mapped as related
// tables and companies.where set (workload.RelatedMapping), snapshots in
// small chunks so that the initial sync spans many of them.
func relatedEnv(t *testing.T) *env {
	t.Helper()
	e := newEnv(t, userpilottest.Options{})
	require.NoError(t, workload.CreateRelated(context.Background(), e.conn))
	e.writeRelatedConfig()
	return e
}

func (e *env) writeRelatedConfig() {
	cfg := workload.Config(e.url, workload.SlotName(e.url), e.up.URL(), apiKey, e.stateDir, 2000)
	cfg = strings.Replace(cfg, "companies:\n", "delivery:\n  snapshot_chunk_rows: 200\ncompanies:\n", 1)
	e.writeConfig(cfg + workload.RelatedMapping)
}

func (e *env) convergeRelated(timeout time.Duration) {
	e.t.Helper()
	if err := workload.WaitRelatedConverged(context.Background(), e.conn, e.up.Companies, timeout); err != nil {
		e.t.Fatal(err)
	}
}

// TestRelatedKillNineDuringSnapshotAndWorkloadEndsEqualToTheOracle: a
// random workload over companies, subscriptions and users (users moving
// between companies, rolled-back transactions, companies with several
// rows and none, companies turning into test companies and back) while
// the initial snapshot runs, and pgpilot killed without warning 12 times:
// Userpilot ends equal to the join and aggregates computed in SQL.
func TestRelatedKillNineDuringSnapshotAndWorkloadEndsEqualToTheOracle(t *testing.T) {
	t.Parallel()
	e := relatedEnv(t)
	ctx := context.Background()
	require.NoError(t, workload.SeedRelated(ctx, e.conn, 3000))

	writer, err := pgx.Connect(ctx, e.url)
	require.NoError(t, err)
	defer writer.Close(ctx)
	wctx, stopWriting := context.WithCancel(ctx)
	var committed atomic.Int64
	writing := make(chan struct{})
	go func() {
		defer close(writing)
		rng := rand.New(rand.NewPCG(15, 16))
		for wctx.Err() == nil {
			if ok, err := workload.RelatedStep(wctx, writer, rng, 3200); err == nil && ok {
				committed.Add(1)
			}
			time.Sleep(time.Duration(rng.IntN(2)) * time.Millisecond)
		}
	}()

	rng := rand.New(rand.NewPCG(17, 18))
	for range 12 {
		p := e.run()
		time.Sleep(time.Duration(200+rng.IntN(1300)) * time.Millisecond)
		p.kill9()
	}
	stopWriting()
	<-writing

	p := e.run()
	e.convergeRelated(150 * time.Second)
	code, _ := p.stop(t)
	assert.Equal(t, 0, code)
	t.Logf("12 kill -9s, %d transactions committed, %d identify requests, %d records applied",
		committed.Load(), e.up.IdentifyRequests(), e.up.Accepted())
}

// TestRelatedCheckReportsEachSchemaProblemWithItsFix: `pgpilot check` with
// related tables: a missing replica identity (✗, the ALTER TABLE), a
// missing index (!, the CREATE INDEX), a bad expression (✗ and exit 2,
// the file's line).
func TestRelatedCheckReportsEachSchemaProblemWithItsFix(t *testing.T) {
	t.Parallel()
	e := relatedEnv(t)
	ctx := context.Background()
	code, out := e.runCheck("--skip-userpilot")
	require.Equal(t, 0, code, out)
	assert.Contains(t, out, "✓ companies.related and companies.where fit the tables")
	assert.Contains(t, out, `✓ companies.related[1]: public.users is indexed on company_id`)

	_, err := e.conn.Exec(ctx, `ALTER TABLE users REPLICA IDENTITY DEFAULT; DROP INDEX users_company_id`)
	require.NoError(t, err)
	code, out = e.runCheck("--skip-userpilot")
	assert.Equal(t, 2, code, out)
	requireFailedLine(t, out, "companies.related[1]", `ALTER TABLE "public"."users" REPLICA IDENTITY FULL;`)
	assert.Contains(t, out, `! companies.related[1]: no index on public.users (company_id)`)
	assert.Contains(t, out, `CREATE INDEX CONCURRENTLY ON "public"."users" ("company_id");`)

	_, err = e.conn.Exec(ctx, `ALTER TABLE users REPLICA IDENTITY FULL`)
	require.NoError(t, err)
	cfg := workload.Config(e.url, workload.SlotName(e.url), e.up.URL(), apiKey, e.stateDir, 2000) +
		strings.Replace(workload.RelatedMapping, "max(last_login_at)", "max(last_logged_in)", 1)
	e.writeConfig(cfg)
	code, out = e.runCheck("--skip-userpilot")
	assert.Equal(t, 2, code, out)
	requireFailedLine(t, out, "pgpilot.yaml:35: companies.related[1].aggregate.last_login_at", `column "last_logged_in" does not exist`)

	// run refuses the same, before streaming.
	p := e.run()
	assert.Equal(t, 2, p.wait(t, 60*time.Second))
	assert.Contains(t, p.out.String(), "last_logged_in")
}

// TestRelatedPreviewShowsRelatedKeys: preview prints the related keys with
// the row's own, and leaves out what companies.where excludes.
func TestRelatedPreviewShowsRelatedKeys(t *testing.T) {
	t.Parallel()
	e := relatedEnv(t)
	ctx := context.Background()
	require.NoError(t, workload.SeedRelated(ctx, e.conn, 12))
	p := e.pgpilot("preview", "--config", e.cfgPath, "--limit", "0")
	require.Equal(t, 0, p.wait(t, 60*time.Second), p.out.String())
	out := p.out.String()
	assert.Contains(t, out, `{"company_id":"6","metadata":{"active_users":3,"billing_status":"active","created_at":null,"last_login_at":"2026-01-01T12:00:00Z","monthly_spend":null,"mrr":63.00,"name":"Company 6","notes":null,"plan":"free","seats":6,"trial":null,"user_count":6}}`)
	assert.Contains(t, out, `{"company_id":"4","metadata":{"active_users":2,"billing_status":null,`, "no subscription: the lookup's keys are null")
	assert.Contains(t, out, `{"company_id":"7","metadata":{"active_users":0,`, "no user: count is 0")
	assert.NotContains(t, out, `"company_id":"10"`, "a test company is left out by companies.where")
}

// TestRelatedOnAPostgres17StandbyWithKillNines: the random workload on the
// primary while pgpilot, pointed at a Postgres 17 standby, runs its
// initial sync and is killed without warning 6 times: Userpilot ends equal
// to the oracle computed on the primary. check first prints the CREATE
// PUBLICATION with every table, to run on the primary.
func TestRelatedOnAPostgres17StandbyWithKillNines(t *testing.T) {
	t.Parallel()
	primary := pgtest.StartT(t, pgtest.Options{Major: 17})
	standby := primary.StartStandbyT(t)
	e := checkEnvOn(t, primary)
	ctx := context.Background()
	require.NoError(t, workload.CreateRelated(ctx, e.conn))
	require.NoError(t, workload.SeedRelated(ctx, e.conn, 1500))
	require.NoError(t, standby.WaitReplayed(ctx))
	u, err := url.Parse(e.url)
	require.NoError(t, err)
	primaryURL := e.url
	e.url = standby.URL(strings.TrimPrefix(u.Path, "/"))
	cfg := workload.Config(e.url, workload.SlotName(primaryURL), e.up.URL(), apiKey, e.stateDir, 2000)
	cfg = strings.Replace(cfg, "companies:\n", "delivery:\n  snapshot_chunk_rows: 200\ncompanies:\n", 1)
	e.writeConfig(cfg + workload.RelatedMapping)

	code, out := e.runCheck("--skip-userpilot")
	assert.Equal(t, 1, code, out)
	create := "CREATE PUBLICATION " + pgx.Identifier{workload.SlotName(primaryURL)}.Sanitize() + ` FOR TABLE "public"."companies", "public"."subscriptions", "public"."users";`
	requireFailedLine(t, out, "publication", "run on the primary", create)
	_, err = e.conn.Exec(ctx, strings.TrimSuffix(create, ";"))
	require.NoError(t, err)
	require.NoError(t, standby.WaitReplayed(ctx))

	// A slot on a standby waits for the primary's running-transactions record.
	sctx, stopSnapshots := context.WithCancel(ctx)
	defer stopSnapshots()
	go func() {
		for sctx.Err() == nil {
			_ = primary.Exec(sctx, "postgres", "SELECT pg_log_standby_snapshot()")
			time.Sleep(100 * time.Millisecond)
		}
	}()
	writer, err := pgx.Connect(ctx, primaryURL)
	require.NoError(t, err)
	defer writer.Close(ctx)
	wctx, stopWriting := context.WithCancel(ctx)
	var committed atomic.Int64
	writing := make(chan struct{})
	go func() {
		defer close(writing)
		rng := rand.New(rand.NewPCG(19, 20))
		for wctx.Err() == nil {
			if ok, err := workload.RelatedStep(wctx, writer, rng, 1700); err == nil && ok {
				committed.Add(1)
			}
			time.Sleep(time.Duration(rng.IntN(3)) * time.Millisecond)
		}
	}()
	rng := rand.New(rand.NewPCG(21, 22))
	for range 6 {
		p := e.run()
		time.Sleep(time.Duration(500+rng.IntN(1500)) * time.Millisecond)
		p.kill9()
	}
	stopWriting()
	<-writing
	require.NoError(t, standby.WaitReplayed(ctx))

	p := e.run()
	e.convergeRelated(150 * time.Second) // the oracle reads the primary (e.conn)
	code, _ = p.stop(t)
	assert.Equal(t, 0, code)
	t.Logf("6 kill -9s on a standby, %d transactions committed on the primary, %d identify requests", committed.Load(), e.up.IdentifyRequests())
}
