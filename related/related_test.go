package related_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/config"
	"github.com/pgpilot/pgpilot/internal/pgtest"
	"github.com/pgpilot/pgpilot/internal/workload"
	"github.com/pgpilot/pgpilot/mapping"
	"github.com/pgpilot/pgpilot/related"
	"github.com/pgpilot/pgpilot/replication"
	"github.com/pgpilot/pgpilot/row"
)

var pg *pgtest.Server

func TestMain(m *testing.M) {
	var err error
	pg, err = pgtest.Start(context.Background(), pgtest.Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	pg.Stop()
	os.Exit(code)
}

const relatedConfig = `postgres:
  url: postgres://unused
userpilot:
  api_key: k
state:
  dir: /tmp/unused
` + workload.Mapping + workload.RelatedMapping

// setup makes the workload's tables, seeded with n companies, and the
// mapping, with its plan compiled.
func setup(t *testing.T, n int, cfgText string) (string, *pgx.Conn, *config.Config, *related.Plan) {
	t.Helper()
	ctx := context.Background()
	url := pg.NewDatabaseT(t)
	conn, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close(context.Background()) })
	require.NoError(t, workload.Create(ctx, conn))
	require.NoError(t, workload.CreateRelated(ctx, conn))
	require.NoError(t, workload.SeedRelated(ctx, conn, n))
	cfg, err := config.Parse("p.yaml", []byte(cfgText), func(string) (string, bool) { return "", false })
	require.NoError(t, err)
	plan, err := related.Compile(ctx, conn, cfg.Companies)
	require.NoError(t, err)
	return url, conn, cfg, plan
}

// relation describes table as the stream would.
func relation(t *testing.T, conn *pgx.Conn, table string) *row.Relation {
	cols, err := replication.TableColumns(context.Background(), conn, row.Table{Schema: "public", Name: table})
	require.NoError(t, err)
	return &row.Relation{Table: row.Table{Schema: "public", Name: table}, Columns: cols}
}

// values is a row of rel with the named columns set (the rest NULL).
func values(rel *row.Relation, set map[string]string) []row.Value {
	out := make([]row.Value, len(rel.Columns))
	for i, c := range rel.Columns {
		if v, ok := set[c.Name]; ok {
			out[i] = row.Value{Text: []byte(v)}
		} else {
			out[i] = row.Value{Null: true}
		}
	}
	return out
}

// run starts a stage on what is in pre and what in receives; out
// receives what it passes on. stop closes in and returns Run's error;
// ended returns it once the stage ends by itself.
func run(t *testing.T, url string, plan *related.Plan, stats *related.Stats, pre ...row.Transaction) (in chan<- row.Transaction, out <-chan row.Transaction, stop, ended func() error) {
	inc := make(chan row.Transaction, 20_000)
	for _, txn := range pre {
		inc <- txn
	}
	outc := make(chan row.Transaction, 20_000)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	s := related.New(related.Options{URL: url, Plan: plan, Stats: stats, Window: 20 * time.Millisecond})
	go func() { done <- s.Run(ctx, inc, outc) }()
	stop = func() error {
		close(inc)
		err := <-done
		cancel()
		return err
	}
	ended = func() error {
		select {
		case err := <-done:
			return err
		case <-time.After(10 * time.Second):
			t.Fatal("the stage did not end within 10s")
			return nil
		}
	}
	t.Cleanup(func() { cancel() })
	return inc, outc, stop, ended
}

// relatedValues finds, in txn, the related values of company id, as
// key → text ("null" for NULL).
func relatedValues(txn row.Transaction, id string) map[string]string {
	for _, ch := range txn.Changes {
		if !related.IsRelated(ch.Relation) || string(ch.Values[0].Text) != id {
			continue
		}
		m := map[string]string{}
		for i, c := range ch.Relation.Columns[1:] {
			v := ch.Values[i+1]
			if v.Null {
				m[c.Name] = "null"
			} else {
				m[c.Name] = string(v.Text)
			}
		}
		return m
	}
	return nil
}

func receive(t *testing.T, out <-chan row.Transaction) row.Transaction {
	t.Helper()
	select {
	case txn := <-out:
		return txn
	case <-time.After(10 * time.Second):
		t.Fatal("nothing passed on within 10s")
		return row.Transaction{}
	}
}

// TestABurstOfInsertsForOneCompanyIsOneAggregateQuery: 10,000 transactions
// each inserting a user of company 7 ask for one read, one query per
// related entry; the values ride in the last transaction, and every
// transaction passes on in order, stripped of the users' changes.
func TestABurstOfInsertsForOneCompanyIsOneAggregateQuery(t *testing.T) {
	url, conn, _, plan := setup(t, 20, relatedConfig)
	ctx := context.Background()
	_, err := conn.Exec(ctx, `INSERT INTO users (id, company_id, active) SELECT 100000 + g, 7, true FROM generate_series(1, 10000) g`)
	require.NoError(t, err)
	users := relation(t, conn, "users")
	var stats related.Stats
	const n = 10_000
	var burst []row.Transaction
	for i := range n {
		burst = append(burst, row.Transaction{Kind: row.Commit, EndLSN: pglogrepl.LSN(100 + i), Changes: []row.Change{{Op: row.Insert, Relation: users,
			Values: values(users, map[string]string{"id": strconv.Itoa(100001 + i), "company_id": "7", "active": "t"})}}})
	}
	// The burst waits in the stream's channel, as it does behind a read.
	_, out, stop, _ := run(t, url, plan, &stats, burst...)
	var last row.Transaction
	for i := range n {
		txn := receive(t, out)
		require.Equal(t, pglogrepl.LSN(100+i), txn.EndLSN, "in order")
		if i < n-1 {
			require.Empty(t, txn.Changes, "the users' changes are taken out; the values ride in the last transaction that asked")
		}
		last = txn
	}
	require.NoError(t, stop())
	var want string
	require.NoError(t, conn.QueryRow(ctx, `SELECT count(*)::text FROM users WHERE company_id = 7`).Scan(&want))
	got := relatedValues(last, "7")
	require.NotNil(t, got)
	assert.Equal(t, want, got["user_count"])
	assert.Equal(t, "73.50", got["mrr"], "the lookup of the same company, in the same read")
	assert.EqualValues(t, 1, stats.Reads.Load(), "one read for the burst")
	assert.EqualValues(t, 2, stats.Queries.Load(), "one query per related entry")
	assert.EqualValues(t, 1, stats.Companies.Load())
}

// TestAUserMovingBetweenCompaniesRereadsBoth: the old row's company (sent
// under the replica identity) and the new one are both read again.
func TestAUserMovingBetweenCompaniesRereadsBoth(t *testing.T) {
	url, conn, _, plan := setup(t, 20, relatedConfig)
	ctx := context.Background()
	// Company 6 has 6 users (ids 61..66); one moves to company 7 (none, 7 % 7 = 0).
	_, err := conn.Exec(ctx, `UPDATE users SET company_id = 7 WHERE id = 61`)
	require.NoError(t, err)
	users := relation(t, conn, "users")
	in, out, stop, _ := run(t, url, plan, nil)
	in <- row.Transaction{Kind: row.Commit, EndLSN: 10, Changes: []row.Change{{Op: row.Update, Relation: users,
		Values: values(users, map[string]string{"id": "61", "company_id": "7"}),
		Old:    values(users, map[string]string{"id": "61", "company_id": "6"})}}}
	txn := receive(t, out)
	require.NoError(t, stop())
	assert.Equal(t, "5", relatedValues(txn, "6")["user_count"])
	assert.Equal(t, "1", relatedValues(txn, "7")["user_count"])
}

// TestAReadWaitsUntilItsTransactionIsVisible: a transaction the stream
// passed on before it is visible to a new snapshot (its commit written,
// not yet visible, as under synchronous replication) is not read past: the
// read waits, and then sees it.
func TestAReadWaitsUntilItsTransactionIsVisible(t *testing.T) {
	url, conn, _, plan := setup(t, 20, relatedConfig)
	ctx := context.Background()
	tx, err := conn.Begin(ctx)
	require.NoError(t, err)
	defer tx.Rollback(ctx)
	_, err = tx.Exec(ctx, `INSERT INTO users (id, company_id) VALUES (5000, 3)`)
	require.NoError(t, err)
	var xid uint32
	require.NoError(t, tx.QueryRow(ctx, `SELECT (txid_current() % 4294967296)::bigint`).Scan(&xid))
	users := relation(t, conn, "users")
	in, out, stop, _ := run(t, url, plan, nil)
	in <- row.Transaction{Kind: row.Commit, EndLSN: 10, Xid: xid, Changes: []row.Change{{Op: row.Insert, Relation: users,
		Values: values(users, map[string]string{"id": "5000", "company_id": "3"})}}}
	select {
	case <-out:
		t.Fatal("read before the transaction it follows was visible")
	case <-time.After(300 * time.Millisecond):
	}
	require.NoError(t, tx.Commit(ctx))
	txn := receive(t, out)
	require.NoError(t, stop())
	assert.Equal(t, "4", relatedValues(txn, "3")["user_count"], "three seeded users and the new one")
}

// TestADroppedRelatedColumnStopsTheStage: a column an aggregate reads,
// dropped while pgpilot streams, is a schema problem (ErrSchema), not
// something to retry for ever.
func TestADroppedRelatedColumnStopsTheStage(t *testing.T) {
	url, conn, _, plan := setup(t, 20, relatedConfig)
	ctx := context.Background()
	_, err := conn.Exec(ctx, `ALTER TABLE users DROP COLUMN last_login_at`)
	require.NoError(t, err)
	users := relation(t, conn, "users")
	in, _, _, ended := run(t, url, plan, nil)
	in <- row.Transaction{Kind: row.Commit, EndLSN: 10, Changes: []row.Change{{Op: row.Insert, Relation: users,
		Values: values(users, map[string]string{"id": "5000", "company_id": "3"})}}}
	err = ended()
	require.ErrorIs(t, err, related.ErrSchema)
	assert.Contains(t, err.Error(), "last_login_at")
}

// TestWhereDecidesWhatACompanyChangeBecomes: a companies row judged by its
// own values, old and new (REPLICA IDENTITY FULL): a row that stops
// matching becomes a DELETE of its old row (on_delete applies), one that
// never matched is dropped, one that starts matching is sent whole, with
// its related values.
func TestWhereDecidesWhatACompanyChangeBecomes(t *testing.T) {
	url, conn, _, plan := setup(t, 20, relatedConfig)
	companies := relation(t, conn, "companies")
	co := func(id string, test bool) []row.Value {
		return values(companies, map[string]string{"id": id, "name": "C" + id, "is_test": map[bool]string{true: "t", false: "f"}[test], "updated_at": "2026-01-01 00:00:00+00"})
	}
	var stats related.Stats
	in, out, stop, _ := run(t, url, plan, &stats)
	in <- row.Transaction{Kind: row.Commit, EndLSN: 10, Changes: []row.Change{
		{Op: row.Update, Relation: companies, Values: co("1", true), Old: co("1", false)},  // stops matching
		{Op: row.Update, Relation: companies, Values: co("2", true), Old: co("2", true)},   // never matched
		{Op: row.Update, Relation: companies, Values: co("5", false), Old: co("5", true)},  // starts matching
		{Op: row.Update, Relation: companies, Values: co("3", false), Old: co("3", false)}, // matches
		{Op: row.Insert, Relation: companies, Values: co("4", true)},                       // a test company
		{Op: row.Delete, Relation: companies, Values: co("6", true)},                       // a test company deleted
	}}
	txn := receive(t, out)
	require.NoError(t, stop())
	var got []string
	for _, ch := range txn.Changes {
		if ch.Relation == companies {
			got = append(got, ch.Op.String()+" "+string(ch.Values[0].Text))
		}
	}
	assert.Equal(t, []string{"delete 1", "update 5", "update 3"}, got)
	// Company 5 is a test company in the table (5 % 10 != 0: no, it is
	// not); its related values come with it.
	assert.NotNil(t, relatedValues(txn, "5"), "a company that starts matching is sent whole")
	assert.Nil(t, relatedValues(txn, "3"), "a company that kept matching needs no related read")
	assert.EqualValues(t, 3, stats.Filtered.Load())
	assert.EqualValues(t, 1, stats.Stopped.Load())
}

// TestWhereJudgesMoreRowsThanOneQueryTakes: a transaction of 5,001
// company updates is judged a few hundred rows per query, and each row
// keeps its own verdict across the queries' boundaries.
func TestWhereJudgesMoreRowsThanOneQueryTakes(t *testing.T) {
	url, conn, _, plan := setup(t, 5, relatedConfig)
	companies := relation(t, conn, "companies")
	var changes []row.Change
	var want []string
	for i := 1; i <= 5001; i++ {
		id := strconv.Itoa(i)
		test := map[bool]string{true: "t", false: "f"}[i%3 == 0 || i%1000 == 7]
		vals := values(companies, map[string]string{"id": id, "name": "C" + id, "is_test": test, "updated_at": "2026-01-01 00:00:00+00"})
		changes = append(changes, row.Change{Op: row.Update, Relation: companies, Values: vals, Old: vals})
		if test == "f" {
			want = append(want, id)
		}
	}
	in, out, stop, _ := run(t, url, plan, &related.Stats{})
	in <- row.Transaction{Kind: row.Commit, EndLSN: 10, Changes: changes}
	txn := receive(t, out)
	require.NoError(t, stop())
	got := idsOf(txn, companies)
	assert.Equal(t, want, got, "companies that match companies.where, in order, and only they")
}

// TestWhereReadsEveryValueAsPostgresWould: the values a where judges
// reach Postgres as they are, whatever they hold (quotes, backslashes,
// braces, commas, spaces, the word NULL, nothing at all) and a NULL stays
// NULL: each company's verdict is the one the table's own query gives.
func TestWhereReadsEveryValueAsPostgresWould(t *testing.T) {
	cfgText := strings.Replace(relatedConfig, "where: not is_test", `where: name like 'keep%' or name is null`, 1)
	require.NotEqual(t, relatedConfig, cfgText)
	url, conn, _, plan := setup(t, 20, cfgText)
	companies := relation(t, conn, "companies")
	names := []string{`keep "quoted"`, `keep \ back\`, `keep {brace},comma`, `keep NULL`, `NULL`, ``, `keep `, ` keep`,
		`drop "keep"`, `keep\"`, `{"keep"}`, `keep ünïcode ✓`, `keep '`, "keep\ttab"}
	var changes []row.Change
	var want []string
	for i, name := range names {
		id := strconv.Itoa(i + 1)
		vals := values(companies, map[string]string{"id": id, "name": name, "is_test": "f", "updated_at": "2026-01-01 00:00:00+00"})
		changes = append(changes, row.Change{Op: row.Insert, Relation: companies, Values: vals})
		var match bool
		require.NoError(t, conn.QueryRow(context.Background(), `SELECT $1::text LIKE 'keep%'`, name).Scan(&match))
		if match {
			want = append(want, id)
		}
	}
	// And one whose name is NULL: it matches by "is null".
	id := strconv.Itoa(len(names) + 1)
	changes = append(changes, row.Change{Op: row.Insert, Relation: companies,
		Values: values(companies, map[string]string{"id": id, "is_test": "f", "updated_at": "2026-01-01 00:00:00+00"})})
	want = append(want, id)
	in, out, stop, _ := run(t, url, plan, &related.Stats{})
	in <- row.Transaction{Kind: row.Commit, EndLSN: 10, Changes: changes}
	txn := receive(t, out)
	require.NoError(t, stop())
	got := idsOf(txn, companies)
	assert.Equal(t, want, got)
	assert.Len(t, want, 10, "the names the test is about: most kept, some not")
}

// TestARereadHoldsAtMostAFewMegabytesOfRows: forty transactions, each an
// update of a company whose row (old and new, as REPLICA IDENTITY FULL
// sends them) is 200 kB, all waiting at once: the stage reads before it
// holds all 8 MB of them, not only once it holds ten thousand changes,
// and passes every one on, in order.
func TestARereadHoldsAtMostAFewMegabytesOfRows(t *testing.T) {
	url, conn, _, plan := setup(t, 50, relatedConfig)
	companies := relation(t, conn, "companies")
	name := strings.Repeat("n", 100<<10)
	var pre []row.Transaction
	for i := 1; i <= 40; i++ {
		vals := values(companies, map[string]string{"id": strconv.Itoa(i), "name": name, "is_test": "f", "updated_at": "2026-01-01 00:00:00+00"})
		pre = append(pre, row.Transaction{Kind: row.Commit, EndLSN: pglogrepl.LSN(i), Changes: []row.Change{{Op: row.Update, Relation: companies, Values: vals, Old: vals}}})
	}
	var stats related.Stats
	_, out, stop, _ := run(t, url, plan, &stats, pre...)
	for i := 1; i <= 40; i++ {
		txn := receive(t, out)
		require.EqualValues(t, i, txn.EndLSN, "every transaction passes on, in order")
	}
	require.NoError(t, stop())
	assert.GreaterOrEqual(t, stats.Reads.Load(), int64(4), "8 MB of rows waiting: read a couple of megabytes at a time")
}

// TestCompileRefusesWhatCannotRunWithTheLineAndTheFix: what only Postgres
// can judge is refused when the config is compiled (check, run), with the
// file's line.
func TestCompileRefusesWhatCannotRunWithTheLineAndTheFix(t *testing.T) {
	_, conn, _, _ := setup(t, 5, relatedConfig)
	ctx := context.Background()
	tests := []struct {
		name, from, to, want string
	}{
		{"an expression Postgres refuses", "count(*) filter (where active)", "count(*) filter (where activ)",
			`p.yaml:30: companies.related[1].aggregate.active_users: "count(*) filter (where activ)" does not work on public.users: column "activ" does not exist`},
		{"a value that is not a primitive", "max(last_login_at)", "array_agg(id)",
			`p.yaml:31: companies.related key "last_login_at": the value of "last_login_at" is bigint[]`},
		{"a bad order", "updated_at desc, id desc", "updated desc",
			`p.yaml:22: companies.related[0].order_by: "updated desc" does not work on public.subscriptions: column "updated" does not exist`},
		{"a missing column", "status\n", "state\n",
			`p.yaml:25: companies.related[0].metadata "billing_status": column "state" does not exist in public.subscriptions`},
		{"several rows and no order", "      order_by: updated_at desc, id desc\n", "",
			`p.yaml:20: companies.related[0]: public.subscriptions may hold several rows per company`},
		{"a bad condition", "not is_test", "not is_tset",
			`p.yaml:32: companies.where: "not is_tset" does not work on public.companies: column "is_tset" does not exist`},
		{"a missing table", "public.users", "public.userz",
			`p.yaml:26: companies.related[1].table: table public.userz does not exist`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			text := strings.Replace(relatedConfig, tt.from, tt.to, 1)
			require.NotEqual(t, relatedConfig, text)
			cfg, err := config.Parse("p.yaml", []byte(text), func(string) (string, bool) { return "", false })
			require.NoError(t, err)
			_, err = related.Compile(ctx, conn, cfg.Companies)
			var ces mapping.ConfigErrors
			require.True(t, errors.As(err, &ces), "%v", err)
			require.Len(t, ces, 1, "%v", err)
			assert.Contains(t, ces[0].Error(), tt.want)
			assert.NotEmpty(t, ces[0].Fix)
		})
	}

	// companies.where needs the old row: REPLICA IDENTITY FULL.
	_, err := conn.Exec(ctx, `ALTER TABLE companies REPLICA IDENTITY DEFAULT`)
	require.NoError(t, err)
	cfg, err := config.Parse("p.yaml", []byte(relatedConfig), func(string) (string, bool) { return "", false })
	require.NoError(t, err)
	_, err = related.Compile(ctx, conn, cfg.Companies)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "needs REPLICA IDENTITY FULL on public.companies")
	assert.Contains(t, err.Error(), `ALTER TABLE "public"."companies" REPLICA IDENTITY FULL;`)
}

// TestADeleteOfACompanyThatNeverMatchedIsNotMirrored: a DELETE alone in its
// transaction is judged by its old row too.
func TestADeleteOfACompanyThatNeverMatchedIsNotMirrored(t *testing.T) {
	url, conn, _, plan := setup(t, 20, relatedConfig)
	companies := relation(t, conn, "companies")
	in, out, stop, _ := run(t, url, plan, nil)
	in <- row.Transaction{Kind: row.Commit, EndLSN: 10, Changes: []row.Change{{Op: row.Delete, Relation: companies,
		Values: values(companies, map[string]string{"id": "10", "name": "C10", "is_test": "t", "updated_at": "2026-01-01 00:00:00+00"})}}}
	in <- row.Transaction{Kind: row.Commit, EndLSN: 20, Changes: []row.Change{{Op: row.Delete, Relation: companies,
		Values: values(companies, map[string]string{"id": "11", "name": "C11", "is_test": "f", "updated_at": "2026-01-01 00:00:00+00"})}}}
	first, second := receive(t, out), receive(t, out)
	require.NoError(t, stop())
	assert.Empty(t, first.Changes, "a test company's delete is not mirrored")
	require.Len(t, second.Changes, 1, "a synced company's delete is")
	assert.Equal(t, row.Delete, second.Changes[0].Op)
}

// TestTwoEntriesOnOneTableByTwoColumnsAskForBothCompanies: a users row
// counted for its company and for the company that referred it asks for a
// read of each.
func TestTwoEntriesOnOneTableByTwoColumnsAskForBothCompanies(t *testing.T) {
	text := strings.Replace(relatedConfig, "  where: not is_test\n", `    - table: public.users
      company_id: referrer_id
      aggregate:
        referred: count(*)
  where: not is_test
`, 1)
	ctx := context.Background()
	url := pg.NewDatabaseT(t)
	conn, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	defer conn.Close(ctx)
	require.NoError(t, workload.Create(ctx, conn))
	require.NoError(t, workload.CreateRelated(ctx, conn))
	require.NoError(t, workload.SeedRelated(ctx, conn, 20))
	_, err = conn.Exec(ctx, `ALTER TABLE users ADD COLUMN referrer_id bigint; CREATE INDEX ON users (referrer_id);
		INSERT INTO users (id, company_id, referrer_id) VALUES (9000, 3, 4)`)
	require.NoError(t, err)
	cfg, err := config.Parse("p.yaml", []byte(text), func(string) (string, bool) { return "", false })
	require.NoError(t, err)
	plan, err := related.Compile(ctx, conn, cfg.Companies)
	require.NoError(t, err)
	users := relation(t, conn, "users")
	in, out, stop, _ := run(t, url, plan, nil)
	in <- row.Transaction{Kind: row.Commit, EndLSN: 10, Changes: []row.Change{{Op: row.Insert, Relation: users,
		Values: values(users, map[string]string{"id": "9000", "company_id": "3", "referrer_id": "4"})}}}
	txn := receive(t, out)
	require.NoError(t, stop())
	assert.Equal(t, "4", relatedValues(txn, "3")["user_count"], "three seeded users and the new one")
	assert.Equal(t, "1", relatedValues(txn, "4")["referred"], "the referrer's count")
}

// idsOf is the ids (first column) of txn's changes of rel, in order.
func idsOf(txn row.Transaction, rel *row.Relation) []string {
	var ids []string
	for _, ch := range txn.Changes {
		if ch.Relation == rel {
			ids = append(ids, string(ch.Values[0].Text))
		}
	}
	return ids
}
