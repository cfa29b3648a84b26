package replication_test

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/internal/pgtest"
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

func connect(t *testing.T) (string, *pgx.Conn) {
	url := pg.NewDatabaseT(t)
	conn, err := replication.ConnectSQL(context.Background(), url)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close(context.Background()) })
	return url, conn
}

var companies = row.Table{Schema: "public", Name: "companies"}

func TestPublicationIsNotCreatedWhenItWouldBreakUpdates(t *testing.T) {
	ctx := context.Background()
	_, conn := connect(t)
	_, err := conn.Exec(ctx, `CREATE TABLE companies (id bigint, name text)`) // no primary key
	require.NoError(t, err)
	srv, err := replication.ReadServer(ctx, conn)
	require.NoError(t, err)
	_, err = replication.EnsurePublication(ctx, conn, "pgpilot", companies, srv)
	require.Error(t, err)
	assert.Contains(t, err.Error(), `ALTER TABLE "public"."companies" REPLICA IDENTITY FULL`)
	_, exists, err := replication.ReadPublication(ctx, conn, "pgpilot")
	require.NoError(t, err)
	assert.False(t, exists)
}

func TestPublicationIsCreatedMarkedAndValidated(t *testing.T) {
	ctx := context.Background()
	_, conn := connect(t)
	_, err := conn.Exec(ctx, `CREATE TABLE companies (id bigint PRIMARY KEY); CREATE TABLE other (id int PRIMARY KEY);
		CREATE PUBLICATION theirs FOR TABLE other`)
	require.NoError(t, err)
	srv, err := replication.ReadServer(ctx, conn)
	require.NoError(t, err)

	created, err := replication.EnsurePublication(ctx, conn, "pgpilot", companies, srv)
	require.NoError(t, err)
	assert.True(t, created)
	p, ok, err := replication.ReadPublication(ctx, conn, "pgpilot")
	require.NoError(t, err)
	require.True(t, ok)
	assert.True(t, p.CreatedByPgpilot, "teardown may drop it")

	created, err = replication.EnsurePublication(ctx, conn, "pgpilot", companies, srv)
	require.NoError(t, err)
	assert.False(t, created, "an existing publication is used as is")

	_, err = replication.EnsurePublication(ctx, conn, "theirs", companies, srv)
	require.Error(t, err, "a publication without the table is not altered behind the operator's back")
	assert.Contains(t, err.Error(), `ALTER PUBLICATION "theirs" ADD TABLE "public"."companies";`)
	p, _, err = replication.ReadPublication(ctx, conn, "theirs")
	require.NoError(t, err)
	assert.False(t, p.CreatedByPgpilot)
}

// TestRelatedTablesArePublishedWithTheCompanies: pgpilot creates its
// publication with the related tables, adds one the config gained to the
// publication it created, and leaves an operator's alone, naming the
// statement; a related table whose UPDATEs would break is not added.
func TestRelatedTablesArePublishedWithTheCompanies(t *testing.T) {
	ctx := context.Background()
	_, conn := connect(t)
	_, err := conn.Exec(ctx, `CREATE TABLE companies (id bigint PRIMARY KEY); CREATE TABLE users (id bigint PRIMARY KEY, company_id bigint);
		CREATE TABLE subscriptions (id bigint PRIMARY KEY, company_id bigint); CREATE TABLE loose (company_id bigint);
		CREATE PUBLICATION theirs FOR TABLE companies`)
	require.NoError(t, err)
	srv, err := replication.ReadServer(ctx, conn)
	require.NoError(t, err)
	users, subs := row.Table{Schema: "public", Name: "users"}, row.Table{Schema: "public", Name: "subscriptions"}
	published := func(pub string) []string {
		rows, err := conn.Query(ctx, `SELECT tablename::text FROM pg_publication_tables WHERE pubname = $1 ORDER BY 1`, pub)
		require.NoError(t, err)
		names, err := pgx.CollectRows(rows, pgx.RowTo[string])
		require.NoError(t, err)
		return names
	}

	created, err := replication.EnsurePublication(ctx, conn, "pgpilot", companies, srv, users)
	require.NoError(t, err)
	assert.True(t, created)
	assert.Equal(t, []string{"companies", "users"}, published("pgpilot"))
	_, err = replication.EnsurePublication(ctx, conn, "pgpilot", companies, srv, users, subs)
	require.NoError(t, err)
	assert.Equal(t, []string{"companies", "subscriptions", "users"}, published("pgpilot"), "a related table the config gained is added")

	_, err = replication.EnsurePublication(ctx, conn, "pgpilot", companies, srv, row.Table{Schema: "public", Name: "loose"})
	require.Error(t, err)
	assert.Contains(t, err.Error(), `ALTER TABLE "public"."loose" REPLICA IDENTITY FULL`)

	_, err = replication.EnsurePublication(ctx, conn, "theirs", companies, srv, users, subs)
	require.Error(t, err)
	assert.Contains(t, err.Error(), `ALTER PUBLICATION "theirs" ADD TABLE "public"."users", "public"."subscriptions";`)
	assert.Equal(t, []string{"companies"}, published("theirs"))
}

func TestSlotOfAnotherKindIsRefused(t *testing.T) {
	ctx := context.Background()
	_, conn := connect(t)
	_, err := conn.Exec(ctx, `SELECT pg_create_logical_replication_slot('not_pgoutput', 'test_decoding')`)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Exec(context.Background(), `SELECT pg_drop_replication_slot('not_pgoutput')`) })
	slot, ok, err := replication.ReadSlot(ctx, conn, "not_pgoutput")
	require.NoError(t, err)
	require.True(t, ok)
	err = slot.Usable(slot.Database)
	require.Error(t, err)
	assert.Contains(t, err.Error(), `uses plugin "test_decoding"`)
}

func TestTypeResolverDecodesDomainsAndEnumsAsTheirBase(t *testing.T) {
	ctx := context.Background()
	_, conn := connect(t)
	_, err := conn.Exec(ctx, `CREATE TYPE tier AS ENUM ('free', 'pro');
		CREATE DOMAIN seats AS integer CHECK (VALUE >= 0);
		CREATE DOMAIN seats2 AS seats;
		CREATE TABLE companies (id bigint PRIMARY KEY, tier tier, seats seats2, tags text[])`)
	require.NoError(t, err)
	cols, err := replication.TableColumns(ctx, conn, companies)
	require.NoError(t, err)
	byName := map[string]row.Column{}
	for _, c := range cols {
		byName[c.Name] = c
	}
	assert.Equal(t, uint32(pgtype.TextOID), byName["tier"].TypeOID)
	assert.Equal(t, uint32(pgtype.Int4OID), byName["seats"].TypeOID, "a domain over a domain over integer decodes as integer")
	assert.Equal(t, "seats2", byName["seats"].TypeName)
	assert.Equal(t, uint32(pgtype.TextArrayOID), byName["tags"].TypeOID)

	_, err = replication.TableColumns(ctx, conn, row.Table{Schema: "public", Name: "nope"})
	assert.ErrorIs(t, err, replication.ErrTableMissing)
}

func TestStreamSkipsTransactionsAtOrBeforeItsStart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	url, conn := connect(t)
	_, err := conn.Exec(ctx, `CREATE TABLE companies (id bigint PRIMARY KEY, name text); CREATE PUBLICATION p FOR TABLE companies`)
	require.NoError(t, err)
	slot := "skip_" + fmt.Sprint(time.Now().UnixNano()%1e9)
	_, err = conn.Exec(ctx, `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, slot)
	require.NoError(t, err)
	_, err = conn.Exec(ctx, `INSERT INTO companies VALUES (1, 'first')`)
	require.NoError(t, err)

	stream := func(start pglogrepl.LSN) row.Transaction {
		t.Helper()
		// The previous stream's walsender may not have let go of the slot
		// yet (it exits after its client has gone): starting now would be
		// refused with "replication slot is active".
		for active := true; active; {
			require.NoError(t, conn.QueryRow(ctx, `SELECT active FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&active))
			if active {
				time.Sleep(10 * time.Millisecond)
			}
		}
		rconn, err := replication.ConnectReplication(ctx, url)
		require.NoError(t, err)
		typeConn, err := replication.ConnectSQL(ctx, url) // pgx connections are not shared across goroutines
		require.NoError(t, err)
		sctx, stop := context.WithCancel(ctx)
		out := make(chan row.Transaction, 4)
		done := make(chan error, 1)
		go func() {
			done <- replication.Stream(sctx, rconn, replication.StreamOptions{
				Slot: slot, Publication: "p", Table: companies, Start: start,
				Confirmed: func() pglogrepl.LSN { return start }, Types: replication.NewTypeResolver(typeConn),
			}, out)
		}()
		defer func() {
			stop()
			<-done
			rconn.Close(context.Background())
			typeConn.Close(context.Background())
		}()
		for {
			select {
			case txn := <-out:
				if len(txn.Changes) > 0 { // skip position markers
					return txn
				}
			case err := <-done:
				done <- err // for the deferred stop
				t.Fatalf("stream from %s ended before a transaction: %v", start, err)
			case <-ctx.Done():
				t.Fatal("no transaction streamed")
			}
		}
	}
	first := stream(0)
	require.Len(t, first.Changes, 1)
	assert.Equal(t, "first", string(first.Changes[0].Values[1].Text))
	assert.Equal(t, row.Insert, first.Changes[0].Op)

	_, err = conn.Exec(ctx, `UPDATE companies SET name = 'second' WHERE id = 1`)
	require.NoError(t, err)
	// The slot was never confirmed, so the server sends "first" again:
	// starting at its end LSN, the stream must drop it.
	second := stream(first.EndLSN)
	assert.Equal(t, "second", string(second.Changes[0].Values[1].Text))
	assert.Equal(t, row.Update, second.Changes[0].Op)
}

func TestStatusIntervalStaysInsideWalSenderTimeout(t *testing.T) {
	tests := []struct {
		timeout, want time.Duration
	}{
		{0, 10 * time.Second},
		{60 * time.Second, 10 * time.Second},
		{3 * time.Second, time.Second},
		{100 * time.Millisecond, 100 * time.Millisecond},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, replication.Server{WALSenderTimeout: tt.timeout}.StatusInterval(), "timeout %s", tt.timeout)
	}
}

func TestFailoverSlotOnPostgres17(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pg17 := pgtest.StartT(t, pgtest.Options{Major: 17})
	url := pg17.NewDatabaseT(t)
	conn, err := replication.ConnectSQL(ctx, url)
	require.NoError(t, err)
	defer conn.Close(ctx)
	rconn, err := replication.ConnectReplication(ctx, url)
	require.NoError(t, err)
	defer rconn.Close(ctx)

	created, err := replication.CreateSlot(ctx, rconn, "with_failover", replication.SlotOptions{Failover: true})
	require.NoError(t, err)
	assert.NotEmpty(t, created.SnapshotName, "the snapshot is still exported")
	var failover bool
	require.NoError(t, conn.QueryRow(ctx, `SELECT failover FROM pg_replication_slots WHERE slot_name = 'with_failover'`).Scan(&failover))
	assert.True(t, failover)
}

// TestRelatedIdentityMustCarryTheCompanyID: FULL, a primary key or an
// identity index that includes company_id pass; any other identity is a
// problem whose fix is the ALTER TABLE.
func TestRelatedIdentityMustCarryTheCompanyID(t *testing.T) {
	ctx := context.Background()
	_, conn := connect(t)
	_, err := conn.Exec(ctx, `
		CREATE TABLE full_t (id bigint PRIMARY KEY, company_id bigint); ALTER TABLE full_t REPLICA IDENTITY FULL;
		CREATE TABLE pk_t (id bigint, company_id bigint, PRIMARY KEY (company_id, id));
		CREATE TABLE idx_t (id bigint PRIMARY KEY, company_id bigint NOT NULL); CREATE UNIQUE INDEX idx_t_i ON idx_t (company_id, id);
		ALTER TABLE idx_t REPLICA IDENTITY USING INDEX idx_t_i;
		CREATE TABLE plain_t (id bigint PRIMARY KEY, company_id bigint);
		CREATE TABLE nokey_t (company_id bigint);
		CREATE TABLE nothing_t (id bigint PRIMARY KEY, company_id bigint); ALTER TABLE nothing_t REPLICA IDENTITY NOTHING`)
	require.NoError(t, err)
	for name, ok := range map[string]bool{"full_t": true, "pk_t": true, "idx_t": true, "plain_t": false, "nokey_t": false, "nothing_t": false} {
		problem, err := replication.RelatedIdentityProblem(ctx, conn, row.Table{Schema: "public", Name: name}, "company_id")
		require.NoError(t, err)
		if ok {
			assert.Empty(t, problem, name)
		} else {
			assert.Contains(t, problem, `ALTER TABLE "public".`+`"`+name+`" REPLICA IDENTITY FULL;`, name)
		}
	}
	indexed, err := replication.HasIndexOn(ctx, conn, row.Table{Schema: "public", Name: "plain_t"}, "company_id")
	require.NoError(t, err)
	assert.False(t, indexed)
	indexed, err = replication.HasIndexOn(ctx, conn, row.Table{Schema: "public", Name: "pk_t"}, "company_id")
	require.NoError(t, err)
	assert.True(t, indexed)
}

// TestIdentityFixSuggestsTheCheapestIdentity: a unique index over NOT NULL
// columns that holds company_id (not partial, not on expressions, not
// deferrable; the smallest) is suggested as REPLICA IDENTITY USING INDEX;
// FULL only when there is none.
func TestIdentityFixSuggestsTheCheapestIdentity(t *testing.T) {
	ctx := context.Background()
	_, conn := connect(t)
	_, err := conn.Exec(ctx, `
		CREATE TABLE conv (id serial PRIMARY KEY, account_id int NOT NULL, display_id int NOT NULL, inbox_id int NOT NULL);
		CREATE UNIQUE INDEX conv_wide ON conv (account_id, display_id, inbox_id);
		CREATE UNIQUE INDEX conv_narrow ON conv (account_id, display_id);
		CREATE TABLE nullable (id int PRIMARY KEY, account_id int, k int NOT NULL); CREATE UNIQUE INDEX nullable_i ON nullable (account_id, k);
		CREATE TABLE partial (id int PRIMARY KEY, account_id int NOT NULL); CREATE UNIQUE INDEX partial_i ON partial (account_id, id) WHERE id > 0;
		CREATE TABLE expr (id int PRIMARY KEY, account_id int NOT NULL); CREATE UNIQUE INDEX expr_i ON expr (account_id, (id + 1));
		CREATE TABLE included (id int NOT NULL, account_id int NOT NULL); CREATE UNIQUE INDEX included_i ON included (id) INCLUDE (account_id);
		CREATE TABLE deferred (account_id int NOT NULL, id int NOT NULL, UNIQUE (account_id, id) DEFERRABLE)`)
	require.NoError(t, err)
	for name, want := range map[string]string{
		"conv":     `ALTER TABLE "public"."conv" REPLICA IDENTITY USING INDEX "conv_narrow";`,
		"nullable": `ALTER TABLE "public"."nullable" REPLICA IDENTITY FULL;`,
		"partial":  `ALTER TABLE "public"."partial" REPLICA IDENTITY FULL;`,
		"expr":     `ALTER TABLE "public"."expr" REPLICA IDENTITY FULL;`,
		"included": `ALTER TABLE "public"."included" REPLICA IDENTITY FULL;`,
		"deferred": `ALTER TABLE "public"."deferred" REPLICA IDENTITY FULL;`,
	} {
		fix, err := replication.IdentityFix(ctx, conn, row.Table{Schema: "public", Name: name}, "account_id")
		require.NoError(t, err)
		assert.Contains(t, fix, "run on the primary: "+want, name)
		problem, err := replication.RelatedIdentityProblem(ctx, conn, row.Table{Schema: "public", Name: name}, "account_id")
		require.NoError(t, err)
		assert.Contains(t, problem, want, name)
	}
	// Applied, the suggestion is accepted.
	_, err = conn.Exec(ctx, `ALTER TABLE conv REPLICA IDENTITY USING INDEX conv_narrow`)
	require.NoError(t, err)
	problem, err := replication.RelatedIdentityProblem(ctx, conn, row.Table{Schema: "public", Name: "conv"}, "account_id")
	require.NoError(t, err)
	assert.Empty(t, problem)
}
