package daemon_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/config"
	"github.com/pgpilot/pgpilot/daemon"
	"github.com/pgpilot/pgpilot/internal/chatwoot"
	"github.com/pgpilot/pgpilot/mapping"
	"github.com/pgpilot/pgpilot/state"
	"github.com/pgpilot/pgpilot/userpilot/userpilottest"
)

// newChatwootEnv is newEnv over Chatwoot's tables, mapped with every
// derived form (chatwoot.Mapping), the related tables' identity set as
// check suggests.
func newChatwootEnv(t *testing.T) *env {
	t.Helper()
	e := newEnv(t, userpilottest.Options{})
	ctx := context.Background()
	require.NoError(t, chatwoot.Create(ctx, e.conn))
	_, err := e.conn.Exec(ctx, chatwoot.IdentitySQL)
	require.NoError(t, err)
	e.stateOK = filepath.Join(t.TempDir(), "state")
	e.chatwootConfig(chatwoot.Mapping)
	return e
}

// chatwootConfig replaces e's config with Chatwoot's connection and
// state directory and the companies section given.
func (e *env) chatwootConfig(companies string) {
	e.t.Helper()
	path := filepath.Join(e.t.TempDir(), "pgpilot.yaml")
	cfg := chatwoot.Config(e.url, e.slot, e.up.URL(), apiKey, e.stateOK)
	cfg = cfg[:strings.Index(cfg, "companies:\n")] + companies
	require.NoError(e.t, os.WriteFile(path, []byte(cfg), 0o600))
	c, err := config.Load(path)
	require.NoError(e.t, err)
	e.cfg = c
}

func (e *env) convergeAccounts(timeout time.Duration) {
	e.t.Helper()
	if err := chatwoot.WaitConverged(context.Background(), e.conn, e.up.Companies, timeout); err != nil {
		e.t.Fatal(err)
	}
}

// chatwootWorkload writes chatwoot.Step transactions until stop is called,
// which returns how many committed.
func (e *env) chatwootWorkload(seed uint64, maxID int) (stop func() int) {
	ctx := context.Background()
	writer, err := pgx.Connect(ctx, e.url)
	require.NoError(e.t, err)
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan int)
	go func() {
		defer writer.Close(ctx)
		rng, n := rand.New(rand.NewPCG(seed, seed+1)), 0
		for wctx.Err() == nil {
			if ok, err := chatwoot.Step(wctx, writer, rng, maxID); err == nil && ok {
				n++
			}
		}
		done <- n
	}()
	return func() int { cancel(); return <-done }
}

// TestDerivedKeysFollowEveryChangeThroughSnapshotStreamAndRestarts: keys
// inside custom_attributes (nested, dotted, typed, stringified), labels of
// the integer enums, an SQL expression on the row, on_null: keep and
// aggregates over the tables beside, while a random workload runs before,
// during and after the initial snapshot and pgpilot is stopped and
// started again twice: Userpilot ends equal to the oracle computed in SQL,
// every number with its digits; and again after a re-sync into a
// Userpilot that lost everything.
func TestDerivedKeysFollowEveryChangeThroughSnapshotStreamAndRestarts(t *testing.T) {
	t.Parallel()
	e := newChatwootEnv(t)
	ctx := context.Background()
	require.NoError(t, chatwoot.Seed(ctx, e.conn, 600))

	stopWriting := e.chatwootWorkload(21, 700)
	for range 2 {
		stop := e.start(ctx, time.Second)
		time.Sleep(1500 * time.Millisecond)
		require.NoError(t, stop())
	}
	stop := e.start(ctx, 5*time.Second)
	time.Sleep(2 * time.Second)
	t.Logf("%d transactions committed", stopWriting())
	e.convergeAccounts(90 * time.Second)

	// A re-sync into a Userpilot that lost everything sends it all again.
	e.up.Wipe()
	_, err := state.RequestResync(e.cfg.State.Dir, state.Snapshot{})
	require.NoError(t, err)
	e.convergeAccounts(90 * time.Second)
	require.NoError(t, stop())
}

// TestAnUntouchedTOASTedJSONBLeavesItsKeysAsTheyAre: an UPDATE that leaves
// a large custom_attributes alone does not stream it; its derived keys are
// left out of the call (Userpilot keeps them), never sent as null.
func TestAnUntouchedTOASTedJSONBLeavesItsKeysAsTheyAre(t *testing.T) {
	t.Parallel()
	e := newChatwootEnv(t)
	ctx := context.Background()
	require.NoError(t, chatwoot.Seed(ctx, e.conn, 3))
	stop := e.start(ctx, time.Second)
	defer func() { require.NoError(t, stop()) }()
	e.waitInitialSync()
	_, err := e.conn.Exec(ctx, `UPDATE accounts SET custom_attributes = jsonb_build_object('plan_name', 'big', 'mrr', 12.50, 'padding', repeat(md5(random()::text), 200)) WHERE id = 1`)
	require.NoError(t, err)
	e.convergeAccounts(30 * time.Second)
	_, err = e.conn.Exec(ctx, `UPDATE accounts SET name = 'Renamed' WHERE id = 1`)
	require.NoError(t, err)
	e.convergeAccounts(30 * time.Second)

	applied := e.up.Applied()
	last := applied[len(applied)-1]
	require.Equal(t, "1", last.CompanyID)
	assert.Equal(t, "Renamed", last.Metadata["name"])
	for _, k := range []string{"plan", "mrr", "size", "seats_raw", "features"} {
		_, sent := last.Metadata[k]
		assert.False(t, sent, "%s is derived from the unchanged TOASTed column: left out, not null", k)
	}
	co, _ := e.up.Company("1")
	assert.Equal(t, "big", co["plan"])
	assert.Equal(t, json.Number("12.50"), co["mrr"])
}

// TestSQLKeysAndARelatedEntryOverTheCompaniesTableStayCurrent: an sql: key
// and a related aggregate over accounts itself (what an operator writes
// first) follow every update of the row, not just the initial sync.
func TestSQLKeysAndARelatedEntryOverTheCompaniesTableStayCurrent(t *testing.T) {
	t.Parallel()
	e := newChatwootEnv(t)
	ctx := context.Background()
	e.chatwootConfig(`companies:
  table: public.accounts
  company_id: id
  metadata:
    name: name
    tier: {sql: "` + chatwoot.TierSQL + `", type: string}
    plan_upper: {sql: "upper(custom_attributes->>'plan_name')", on_null: keep}
  related:
    - table: public.accounts
      company_id: id
      aggregate:
        plan: max(custom_attributes->>'plan_name')
        status: "max(case status when 0 then 'active' when 1 then 'suspended' else 'unknown' end)"
`)
	require.NoError(t, chatwoot.Seed(ctx, e.conn, 20))
	want := func() map[string]map[string]any {
		rows, err := e.conn.Query(ctx, `SELECT id::text, name, `+chatwoot.TierSQL+`, upper(custom_attributes->>'plan_name'), custom_attributes->>'plan_name',
			case status when 0 then 'active' when 1 then 'suspended' else 'unknown' end FROM accounts`)
		require.NoError(t, err)
		out := map[string]map[string]any{}
		for rows.Next() {
			var id, name, tier string
			var upper, plan, status *string
			require.NoError(t, rows.Scan(&id, &name, &tier, &upper, &plan, &status))
			m := map[string]any{"name": name, "tier": tier}
			for k, v := range map[string]*string{"plan_upper": upper, "plan": plan, "status": status} {
				if v != nil {
					m[k] = *v
				}
			}
			out[id] = m
		}
		require.NoError(t, rows.Err())
		return out
	}
	wait := func() {
		t.Helper()
		require.Eventually(t, func() bool {
			got := e.up.Companies()
			for id, w := range want() {
				for k, v := range w {
					if got[id][k] != v {
						return false
					}
				}
			}
			return true
		}, 30*time.Second, 50*time.Millisecond)
	}
	stop := e.start(ctx, time.Second)
	e.waitInitialSync()
	wait()
	for i, q := range []string{
		`UPDATE accounts SET limits = '{"agents": 150}' WHERE id = 1`,
		`UPDATE accounts SET custom_attributes = jsonb_set(custom_attributes, '{plan_name}', '"scale"') WHERE id = 2`,
		`UPDATE accounts SET status = 1 WHERE id = 3`,
		`UPDATE accounts SET status = 0, limits = '{"agents": 1}' WHERE id = 1`,
		`UPDATE accounts SET custom_attributes = '{"plan_name": "late"}' WHERE id BETWEEN 4 AND 10`,
		`INSERT INTO accounts (id, name, custom_attributes, limits) VALUES (100, 'New', '{"plan_name": "new"}', '{"agents": 500}')`,
		`UPDATE accounts SET status = 7 WHERE id = 100`,
		`UPDATE accounts SET name = 'Only the name' WHERE id = 5`,
	} {
		_, err := e.conn.Exec(ctx, q)
		require.NoError(t, err, "update %d", i)
		wait()
	}
	require.NoError(t, stop())
	// And after a restart.
	_, err := e.conn.Exec(ctx, `UPDATE accounts SET custom_attributes = '{"plan_name": "offline"}', status = 1 WHERE id = 11`)
	require.NoError(t, err)
	stop = e.start(ctx, time.Second)
	wait()
	require.NoError(t, stop())
}

// TestAGeneratedColumnIsRefusedWithTheExpressionToMap: Postgres does not
// stream generated columns, so a key reading one is refused before
// anything streams (exit 2), with the sql: key to write instead.
func TestAGeneratedColumnIsRefusedWithTheExpressionToMap(t *testing.T) {
	t.Parallel()
	e := newChatwootEnv(t)
	e.chatwootConfig("companies:\n  table: public.accounts\n  company_id: id\n  metadata:\n    name: name\n    plan: userpilot_plan\n")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	err := daemon.Run(ctx, daemon.Options{Config: e.cfg, Logger: testLogger(t)})
	require.ErrorIs(t, err, daemon.ErrConfig)
	assert.Contains(t, err.Error(), `companies.metadata.plan: column "userpilot_plan" is a generated column, which Postgres does not stream`)
	var ces mapping.ConfigErrors
	require.ErrorAs(t, err, &ces)
	assert.Equal(t, `map what it computes with sql:, which pgpilot keeps current on every change of the row: plan: {sql: "(custom_attributes ->> 'plan_name'::text)"}`, ces[0].Fix)
}

// TestOneBadValueCostsOneKeyAndItsDeadLetterNamesIt: a value that cannot be
// read as its type holds that key back; the account's other keys reach
// Userpilot, and the dead letter names the key and the value.
func TestOneBadValueCostsOneKeyAndItsDeadLetterNamesIt(t *testing.T) {
	t.Parallel()
	e := newChatwootEnv(t)
	ctx := context.Background()
	require.NoError(t, chatwoot.Seed(ctx, e.conn, 3))
	stop := e.start(ctx, time.Second)
	defer func() { require.NoError(t, stop()) }()
	e.waitInitialSync()
	e.convergeAccounts(30 * time.Second)
	_, err := e.conn.Exec(ctx, `UPDATE accounts SET name = 'Still sent', custom_attributes = '{"mrr": "n/a", "plan_name": "growth"}' WHERE id = 1`)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		co, _ := e.up.Company("1")
		return co["name"] == "Still sent" && co["plan"] == "growth"
	}, 30*time.Second, 20*time.Millisecond)
	co, _ := e.up.Company("1")
	assert.Equal(t, json.Number("741.00"), co["mrr"], "held back: Userpilot keeps the value it had")
	dls, err := state.ReadDeadLetters(e.cfg.State.Dir)
	require.NoError(t, err)
	require.Len(t, dls.Outstanding, 1)
	assert.Equal(t, "1", dls.Outstanding[0].CompanyID)
	assert.Contains(t, dls.Outstanding[0].Reason, `metadata "mrr" (column "custom_attributes", path mrr): cannot read "n/a" as a number`)
}

// TestAMappingChangeIsBackfilledForEveryCompany: started with another
// mapping, pgpilot says what changed, sends the added and changed keys of
// every account and null for the removed one, alongside the stream and
// across a restart in the middle, and ends equal to the oracle of the new
// mapping. Only those keys are sent.
func TestAMappingChangeIsBackfilledForEveryCompany(t *testing.T) {
	t.Parallel()
	e := newChatwootEnv(t)
	ctx := context.Background()
	require.NoError(t, chatwoot.Seed(ctx, e.conn, 500))
	e.chatwootConfig(chatwoot.MappingBefore)
	stop := e.start(ctx, time.Second)
	e.waitInitialSync()
	require.Eventually(t, func() bool { return len(e.up.Companies()) == 500 }, 30*time.Second, 20*time.Millisecond)
	require.NoError(t, stop())
	co, _ := e.up.Company("1")
	require.Equal(t, "startups", co["legacy_plan"])
	before := len(e.up.Applied())
	held := e.up.Companies()

	e.chatwootConfig(chatwoot.Mapping)
	// An account deleted before the backfill reaches it has no row to
	// clear; created again, its (marked) profile keeps the old key.
	_, err := e.conn.Exec(ctx, `CREATE TABLE deleted_accounts (id int);
		CREATE FUNCTION note_deleted() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN INSERT INTO deleted_accounts VALUES (OLD.id); RETURN OLD; END $$;
		CREATE TRIGGER note_deleted AFTER DELETE ON accounts FOR EACH ROW EXECUTE FUNCTION note_deleted()`)
	require.NoError(t, err)
	stopWriting := e.chatwootWorkload(31, 500)
	// Userpilot slow, so that the backfill is stopped in its middle.
	e.up.SetFault(&userpilottest.Fault{Delay: 400 * time.Millisecond})
	e.up.SetBulkSpeed(50, time.Second)
	stop = e.start(ctx, time.Second)
	// Stopped once in the middle: the backfill resumes from its checkpoint.
	require.Eventually(t, func() bool { return len(clearedIn(e.up.Applied()[before:])) >= 50 }, 60*time.Second, 5*time.Millisecond)
	require.NoError(t, stop())
	cp, _, err := state.ReadCheckpoint(e.cfg.State.Dir)
	require.NoError(t, err)
	require.NotNil(t, cp.Snapshot, "stopped before the backfill ended")
	require.NotNil(t, cp.Snapshot.Backfill)
	assert.Equal(t, &state.Backfill{Keys: []string{"size", "status"}, Clear: []string{"legacy_plan"}}, cp.Snapshot.Backfill)
	e.up.SetFault(nil)
	e.up.SetBulkSpeed(0, 0)
	stop = e.start(ctx, time.Second)
	time.Sleep(time.Second)
	t.Logf("%d transactions committed", stopWriting())
	var deleted []string
	require.NoError(t, pgx.BeginTxFunc(ctx, e.conn, pgx.TxOptions{}, func(tx pgx.Tx) error {
		rows, _ := tx.Query(ctx, `SELECT DISTINCT id::text FROM deleted_accounts`)
		deleted, err = pgx.CollectRows(rows, pgx.RowTo[string])
		return err
	}))
	profiles := func() map[string]map[string]any {
		got := e.up.Companies()
		for _, id := range deleted {
			if md := got[id]; md != nil && md["legacy_plan"] != nil && !clearedIn(e.up.Applied()[before:])[id] {
				delete(md, "legacy_plan")
			}
		}
		return got
	}
	require.NoError(t, chatwoot.WaitConverged(ctx, e.conn, profiles, 90*time.Second))
	require.NoError(t, stop())

	cp, _, err = state.ReadCheckpoint(e.cfg.State.Dir)
	require.NoError(t, err)
	assert.Nil(t, cp.Snapshot, "the backfill is done")
	// Every account whose profile held legacy_plan got it as null (the
	// others hold nothing to clear: the no-op index skips them).
	cleared := clearedIn(e.up.Applied()[before:])
	n := 0
	for id, md := range held {
		if md["legacy_plan"] != nil && !slices.Contains(deleted, id) {
			n++
			assert.True(t, cleared[id], "account %s: legacy_plan sent as null", id)
		}
	}
	assert.Greater(t, n, 50, "accounts checked")
}

// clearedIn lists the companies whose records sent legacy_plan (as null:
// any other value fails the test).
func clearedIn(applied []userpilottest.Applied) map[string]bool {
	out := map[string]bool{}
	for _, a := range applied {
		if v, sent := a.Metadata["legacy_plan"]; sent {
			if v != nil {
				panic("legacy_plan sent as " + fmt.Sprint(v))
			}
			out[a.CompanyID] = true
		}
	}
	return out
}

// TestABackfillSendsOnlyTheKeysThatChanged: with nothing else written, a
// backfill's records carry the keys added or defined anew (on the row, an
// expression, an aggregate over a related table) and the removed one as
// null, nothing else; accounts whose values did not change are skipped.
func TestABackfillSendsOnlyTheKeysThatChanged(t *testing.T) {
	t.Parallel()
	e := newChatwootEnv(t)
	ctx := context.Background()
	require.NoError(t, chatwoot.Seed(ctx, e.conn, 60))
	e.chatwootConfig(strings.NewReplacer(
		"        members: count(*)\n", "        members: count(*) filter (where role = 1)\n",
		`    tier: {sql: "`+chatwoot.TierSQL+`", type: string}`, `    tier: {sql: "'unknown'", type: string}`,
	).Replace(chatwoot.MappingBefore))
	stop := e.start(ctx, time.Second)
	e.waitInitialSync()
	require.Eventually(t, func() bool { return len(e.up.Companies()) == 60 }, 30*time.Second, 20*time.Millisecond)
	require.NoError(t, stop())
	before := len(e.up.Applied())

	e.chatwootConfig(chatwoot.Mapping)
	stop = e.start(ctx, time.Second)
	e.convergeAccounts(60 * time.Second)
	require.NoError(t, stop())
	allowed := []string{"size", "status", "members", "tier", "legacy_plan", "deleted"}
	for _, a := range e.up.Applied()[before:] {
		for k := range a.Metadata {
			assert.Contains(t, allowed, k, "account %s: only the keys that changed are sent", a.CompanyID)
		}
	}
	assert.Greater(t, len(e.up.Applied())-before, 40)
	assert.LessOrEqual(t, len(e.up.Applied())-before, 60, "each account once: its row and its related values are one call")
}
