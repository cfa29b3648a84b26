package e2e

import (
	"context"
	"math/rand/v2"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/internal/chatwoot"
	"github.com/pgpilot/pgpilot/internal/workload"
	"github.com/pgpilot/pgpilot/state"
	"github.com/pgpilot/pgpilot/userpilot/userpilottest"
)

// chatwootEnv is newEnv with Chatwoot's tables beside the companies table
// and a config mapping accounts with every derived form.
func chatwootEnv(t *testing.T) *env {
	t.Helper()
	e := newEnv(t, userpilottest.Options{})
	require.NoError(t, chatwoot.Create(context.Background(), e.conn))
	e.writeChatwootConfig(chatwoot.Mapping)
	return e
}

// writeChatwootConfig writes a config for Chatwoot with the companies
// section given.
func (e *env) writeChatwootConfig(companies string) {
	cfg := chatwoot.Config(e.url, workload.SlotName(e.url), e.up.URL(), apiKey, e.stateDir)
	e.writeConfig(cfg[:strings.Index(cfg, "companies:\n")] + companies)
}

// TestChatwootCheckSaysWhatToFix: check on Chatwoot's schema as it is:
// each related table's cheapest replica identity (an index holding
// account_id, not FULL), then, once run, everything passes; a key on the
// generated column is refused by check and by run (exit 2) with the sql:
// key to write.
func TestChatwootCheckSaysWhatToFix(t *testing.T) {
	t.Parallel()
	e := chatwootEnv(t)
	ctx := context.Background()
	code, out := e.runCheck("--skip-userpilot")
	assert.Equal(t, 2, code, out)
	requireFailedLine(t, out, "companies.related[0]", `ALTER TABLE "public"."account_users" REPLICA IDENTITY USING INDEX "uniq_user_id_per_account_id";`)
	requireFailedLine(t, out, "companies.related[1]", `ALTER TABLE "public"."conversations" REPLICA IDENTITY USING INDEX "index_conversations_on_account_id_and_display_id";`)
	assert.NotContains(t, out, "REPLICA IDENTITY FULL", "an index holding account_id serves: FULL would log every column of every old row")

	_, err := e.conn.Exec(ctx, chatwoot.IdentitySQL)
	require.NoError(t, err)
	code, out = e.runCheck("--skip-userpilot")
	require.Equal(t, 0, code, out)
	assert.Contains(t, out, "✓ companies.related and the sql: keys fit the tables (Postgres plans every re-read)")
	assert.Contains(t, out, "✓ no key reads a generated column (Postgres does not stream them)")
	assert.Contains(t, out, "✓ no mapping recorded in state.dir yet: the first sync sends every key")

	e.writeChatwootConfig("companies:\n  table: public.accounts\n  company_id: id\n  metadata:\n    name: name\n    plan: userpilot_plan\n")
	code, out = e.runCheck("--skip-userpilot")
	assert.Equal(t, 2, code, out)
	requireFailedLine(t, out, `pgpilot.yaml:18: companies.metadata.plan: column "userpilot_plan" is a generated column, which Postgres does not stream`,
		`fix: map what it computes with sql:, which pgpilot keeps current on every change of the row: plan: {sql: "(custom_attributes ->> 'plan_name'::text)"}`)
	p := e.run()
	assert.Equal(t, 2, p.wait(t, 60*time.Second))
	assert.Contains(t, p.out.String(), `plan: {sql: \"(custom_attributes ->> 'plan_name'::text)\"}`)
}

// TestChatwootPreviewShowsDerivedKeysAndReadsWithoutFULL: preview prints
// each derived key as run sends it (a number with its digits, a label, an
// object's JSON text, an expression's and an aggregate's value, a NULL
// left out under on_null: keep), applies companies.where without asking
// for the FULL identity only the stream needs, and says which key a bad
// value holds back.
func TestChatwootPreviewShowsDerivedKeysAndReadsWithoutFULL(t *testing.T) {
	t.Parallel()
	e := chatwootEnv(t)
	ctx := context.Background()
	_, err := e.conn.Exec(ctx, chatwoot.IdentitySQL)
	require.NoError(t, err)
	require.NoError(t, chatwoot.Seed(ctx, e.conn, 8))
	_, err = e.conn.Exec(ctx, `UPDATE accounts SET custom_attributes = '{"mrr": "n/a", "plan_name": "growth"}' WHERE id = 6`)
	require.NoError(t, err)
	e.writeChatwootConfig(chatwoot.Mapping + "  where: status is distinct from 1\n")

	p := e.pgpilot("preview", "--config", e.cfgPath, "--limit", "0")
	require.Equal(t, 0, p.wait(t, 60*time.Second), p.out.String())
	out := p.out.String()
	assert.Contains(t, out, `{"company_id":"8","metadata":{"features":"{\"sla\": true}","locale":"nl","members":0,"mrr":2178.00,"name":"Account 8",`+
		`"open_conversations":1,"plan":"pro","seats_raw":5,"size":42,"status":"active","tier":"small"}}`)
	assert.Contains(t, out, `{"company_id":"1","metadata":{"features":null,"locale":"ar","members":1,"mrr":741.00,"name":"Account 1 GmbH","notes":"Note 1",`+
		`"open_conversations":0,"plan":"startups","seats_raw":"12","size":11,"status":"active","tier":"small"}}`)
	assert.Contains(t, out, `{"company_id":"6","metadata":{"features":null,"locale":"en","members":2,"name":"Account 6 株式会社",`+
		`"open_conversations":0,"plan":"growth","seats_raw":null,"size":null,"status":"active","tier":"small"}}`, "mrr is held back, the rest is sent")
	assert.Contains(t, out, `(company 6): metadata "mrr" (column "custom_attributes", path mrr): cannot read "n/a" as a number (held back: the row's other keys are sent)`)
	assert.NotContains(t, out, `"company_id":"3"`, "status 1: left out by companies.where")
	assert.NotContains(t, out, "REPLICA IDENTITY FULL")
}

// TestChatwootMappingChangeWithKillNinesEndsEqualToTheOracle: pgpilot
// synced with one mapping, then started with another while accounts keep
// changing: check and preview --changes say what changes; pgpilot, killed
// without warning up to 8 times during the backfill (each time once it
// checkpointed some more of it), ends equal to the oracle of
// the new mapping, with the removed key sent as null to every account
// that held it.
func TestChatwootMappingChangeWithKillNinesEndsEqualToTheOracle(t *testing.T) {
	t.Parallel()
	e := chatwootEnv(t)
	ctx := context.Background()
	_, err := e.conn.Exec(ctx, chatwoot.IdentitySQL)
	require.NoError(t, err)
	require.NoError(t, chatwoot.Seed(ctx, e.conn, 4000))
	e.writeChatwootConfig(chatwoot.MappingBefore)
	p := e.run()
	e.waitInitialSync()
	require.Eventually(t, func() bool { return len(e.up.Companies()) == 4000 }, 60*time.Second, 50*time.Millisecond)
	code, _ := p.stop(t)
	require.Equal(t, 0, code)
	held := e.up.Companies()
	before := len(e.up.Applied())

	// Userpilot's budget small, so that the backfill spans the kills, and
	// real time only, so that its checkpoint moves chunk by chunk (a bulk
	// job moves it by thousands of rows: the daemon's tests kill it there).
	e.writeChatwootConfig(chatwoot.Mapping)
	e.writeConfig(strings.Replace(readFile(e.cfgPath), "  rate_limit: 2000\n", "  rate_limit: 300\n  bulk_rate: 0\n", 1))
	code, out := e.runCheck("--skip-userpilot")
	require.Equal(t, 0, code, out)
	assert.Contains(t, out, "✓ mapping changed since the last run: added size; changed status; removed (sent once as null) legacy_plan; "+
		"`pgpilot run` backfills this for every company alongside the stream (`pgpilot preview --changes` shows it)")
	pv := e.pgpilot("preview", "--config", e.cfgPath, "--limit", "2", "--changes")
	require.Equal(t, 0, pv.wait(t, 60*time.Second), pv.out.String())
	assert.Contains(t, pv.out.String(), "the mapping changed since the last run: added size; changed status; removed (sent once as null) legacy_plan")
	assert.Contains(t, pv.out.String(), `{"company_id":"1","metadata":{"legacy_plan":null,"size":11,"status":"active"}}`)

	// An account deleted before the backfill reaches it has no row: its
	// marked profile keeps the old key (docs: configure.md).
	_, err = e.conn.Exec(ctx, `CREATE TABLE deleted_accounts (id int);
		CREATE FUNCTION note_deleted() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN INSERT INTO deleted_accounts VALUES (OLD.id); RETURN OLD; END $$;
		CREATE TRIGGER note_deleted AFTER DELETE ON accounts FOR EACH ROW EXECUTE FUNCTION note_deleted()`)
	require.NoError(t, err)
	writer, err := pgx.Connect(ctx, e.url)
	require.NoError(t, err)
	defer writer.Close(ctx)
	wctx, stopWriting := context.WithCancel(ctx)
	var committed atomic.Int64
	writing := make(chan struct{})
	go func() {
		defer close(writing)
		rng := rand.New(rand.NewPCG(25, 26))
		for wctx.Err() == nil {
			if ok, err := chatwoot.Step(wctx, writer, rng, 4200); err == nil && ok {
				committed.Add(1)
			}
			time.Sleep(time.Duration(5+rng.IntN(10)) * time.Millisecond)
		}
	}()
	// Each run is killed once Userpilot has taken 300 more of the
	// backfill's records (about a second of them), while it still runs:
	// the next run resumes it from its checkpoint.
	rng := rand.New(rand.NewPCG(27, 28))
	backfilled := func() int {
		n := 0
		for _, a := range e.up.Applied()[before:] {
			if _, ok := a.Metadata["legacy_plan"]; ok {
				n++
			}
		}
		return n
	}
	kills, resumed := 0, 0
	for kills < 8 {
		p := e.run()
		from := backfilled()
		require.Eventually(t, func() bool { return backfilled() >= from+300 }, 60*time.Second, 5*time.Millisecond)
		time.Sleep(time.Duration(rng.IntN(200)) * time.Millisecond)
		p.kill9()
		if strings.Contains(p.out.String(), "resuming the snapshot where it stopped") {
			resumed++
		}
		cp, _, err := state.ReadCheckpoint(e.stateDir)
		require.NoError(t, err)
		if cp.Snapshot == nil {
			break // the backfill ended
		}
		kills++
	}
	assert.GreaterOrEqual(t, kills, 4, "killed while the backfill ran")
	assert.GreaterOrEqual(t, resumed, 2, "the backfill resumed where it stopped")
	stopWriting()
	<-writing

	p = e.run()
	var deleted []string
	require.NoError(t, pgx.BeginTxFunc(ctx, e.conn, pgx.TxOptions{}, func(tx pgx.Tx) error {
		rows, _ := tx.Query(ctx, `SELECT DISTINCT id::text FROM deleted_accounts`)
		deleted, err = pgx.CollectRows(rows, pgx.RowTo[string])
		return err
	}))
	cleared := func() map[string]bool {
		out := map[string]bool{}
		for _, a := range e.up.Applied()[before:] {
			if v, sent := a.Metadata["legacy_plan"]; sent && v == nil {
				out[a.CompanyID] = true
			}
		}
		return out
	}
	profiles := func() map[string]map[string]any {
		got, c := e.up.Companies(), cleared()
		for _, id := range deleted {
			if md := got[id]; md != nil && !c[id] {
				delete(md, "legacy_plan")
			}
		}
		return got
	}
	require.NoError(t, chatwoot.WaitConverged(ctx, e.conn, profiles, 150*time.Second))
	code, _ = p.stop(t)
	assert.Equal(t, 0, code)

	c, n := cleared(), 0
	for id, md := range held {
		if md["legacy_plan"] != nil && !slices.Contains(deleted, id) {
			n++
			assert.True(t, c[id], "account %s: legacy_plan sent as null", id)
		}
	}
	assert.Greater(t, n, 100, "accounts checked")
	t.Logf("%d kill -9s during the backfill (%d runs resumed it), %d transactions committed, %d records applied; %d accounts deleted at some point",
		kills, resumed, committed.Load(), e.up.Accepted(), len(deleted))
}
