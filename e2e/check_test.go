package e2e

import (
	"context"
	"net/url"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/internal/pgtest"
	"github.com/pgpilot/pgpilot/internal/workload"
	"github.com/pgpilot/pgpilot/userpilot/userpilottest"
)

// checkEnvOn is newEnv on a server of the test's own: a database with the
// companies table on srv, a stand-in, and a config file pointing at both.
func checkEnvOn(t *testing.T, srv *pgtest.Server) *env {
	t.Helper()
	ctx := context.Background()
	dbURL := srv.NewDatabaseT(t)
	conn, err := pgx.Connect(ctx, dbURL)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close(context.Background()) })
	require.NoError(t, workload.Create(ctx, conn))
	up := userpilottest.NewServer(userpilottest.Options{APIKey: apiKey})
	t.Cleanup(up.Close)
	dir := t.TempDir()
	e := &env{t: t, url: dbURL, conn: conn, up: up, cfgPath: filepath.Join(dir, "pgpilot.yaml"), stateDir: filepath.Join(dir, "state")}
	e.writeConfig(workload.Config(dbURL, workload.SlotName(dbURL), up.URL(), apiKey, e.stateDir, 100))
	return e
}

// writeCheckConfig rewrites the config with another database URL and/or API key
// ("" keeps the env's).
func (e *env) writeCheckConfig(dbURL, key string) {
	if dbURL == "" {
		dbURL = e.url
	}
	if key == "" {
		key = apiKey
	}
	e.writeConfig(workload.Config(dbURL, workload.SlotName(e.url), e.up.URL(), key, e.stateDir, 100))
}

// runCheck runs `pgpilot check` and returns its exit code and output.
func (e *env) runCheck(args ...string) (int, string) {
	e.t.Helper()
	p := e.pgpilot(append([]string{"check", "--config", e.cfgPath}, args...)...)
	code := p.wait(e.t, 90*time.Second)
	return code, p.out.String()
}

// requireFailedLine asserts out has a ✗ line (with its indented
// continuation lines) holding every one of parts.
func requireFailedLine(t *testing.T, out string, parts ...string) {
	t.Helper()
	var failed []string
	for _, line := range strings.Split(out, "\n") {
		switch {
		case strings.HasPrefix(line, "✗ "):
			failed = append(failed, line)
		case strings.HasPrefix(line, " ") && len(failed) > 0:
			failed[len(failed)-1] += "\n" + line
		}
	}
	for _, f := range failed {
		hasAll := true
		for _, p := range parts {
			hasAll = hasAll && strings.Contains(f, p)
		}
		if hasAll {
			return
		}
	}
	t.Fatalf("no ✗ line holds all of %q in:\n%s", parts, out)
}

func withUser(t *testing.T, dbURL, user string) string {
	u, err := url.Parse(dbURL)
	require.NoError(t, err)
	u.User = url.User(user)
	return u.String()
}

func TestCheckHealthySetupPassesAndShowsRetainedWAL(t *testing.T) {
	t.Parallel()
	e := newEnv(t, userpilottest.Options{})
	_, err := e.conn.Exec(context.Background(), `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, workload.SlotName(e.url))
	require.NoError(t, err)

	code, out := e.runCheck()
	assert.Equal(t, 0, code, out)
	assert.NotContains(t, out, "✗")
	assert.True(t, strings.HasSuffix(out, "all checks passed\n"), out)
	for _, want := range []string{
		`✓ role "postgres" may stream changes (REPLICATION)`,
		`✓ role "postgres" may SELECT from public.companies`,
		"✓ replication slots: ",
		"✓ WAL senders: ",
		"✓ snapshots page public.companies by its key (id)",
		"reachable and the API key accepted",
	} {
		assert.Contains(t, out, want)
	}
	assert.Regexp(t, regexp.MustCompile(`✓ replication slot "[^"]+" \(active: false, wal_status: reserved, retained WAL: [0-9.]+ (bytes|KiB|MiB)`), out)
	assert.Equal(t, 2, len(e.up.Requests()), "check sends two requests to Userpilot: without the key and with it")
	assert.NotContains(t, out, apiKey)
}

func TestCheckWalLevelReplicaAndNoFreeSlotSayHowToFix(t *testing.T) {
	t.Parallel()
	srv := pgtest.StartT(t, pgtest.Options{Settings: map[string]string{"wal_level": "replica", "max_replication_slots": "1"}})
	e := checkEnvOn(t, srv)
	_, err := e.conn.Exec(context.Background(), `SELECT pg_create_physical_replication_slot('someone_elses')`)
	require.NoError(t, err)

	code, out := e.runCheck()
	assert.Equal(t, 1, code, out)
	requireFailedLine(t, out, "wal_level=replica", `wal_level is "replica"`, "ALTER SYSTEM SET wal_level = logical", "restart")
	requireFailedLine(t, out, "replication slots: 1 of max_replication_slots=1 in use", "raise max_replication_slots")
}

func TestCheckRoleWithoutReplicationOrSelectSaysWhatToGrant(t *testing.T) {
	t.Parallel()
	e := newEnv(t, userpilottest.Options{})
	role := "r" + workload.SlotName(e.url)[1:] // unique per database, like the slot
	_, err := e.conn.Exec(context.Background(), "CREATE ROLE "+pgx.Identifier{role}.Sanitize()+" LOGIN")
	require.NoError(t, err)
	e.writeCheckConfig(withUser(t, e.url, role), "")

	code, out := e.runCheck()
	assert.Equal(t, 1, code, out)
	quoted := pgx.Identifier{role}.Sanitize()
	requireFailedLine(t, out, "may stream changes (REPLICATION)", "ALTER ROLE "+quoted+" REPLICATION;")
	requireFailedLine(t, out, "may SELECT from public.companies", `GRANT SELECT ON "public"."companies" TO `+quoted+";")
	requireFailedLine(t, out, "will be created by `pgpilot run`", "this role may not", `CREATE PUBLICATION`)
}

func TestCheckMissingMappedColumnIsNamed(t *testing.T) {
	t.Parallel()
	e := newEnv(t, userpilottest.Options{})
	_, err := e.conn.Exec(context.Background(), `ALTER TABLE companies DROP COLUMN plan`)
	require.NoError(t, err)

	code, out := e.runCheck()
	assert.Equal(t, 2, code, "a mapping that does not fit the table is a configuration problem: "+out)
	requireFailedLine(t, out, "every mapped column exists", `metadata "plan": column "plan" does not exist in public.companies`)
}

func TestCheckTableWithoutKeySaysAddOne(t *testing.T) {
	t.Parallel()
	e := newEnv(t, userpilottest.Options{})
	_, err := e.conn.Exec(context.Background(), `ALTER TABLE companies REPLICA IDENTITY FULL; ALTER TABLE companies DROP CONSTRAINT companies_pkey`)
	require.NoError(t, err)

	code, out := e.runCheck()
	assert.NotEqual(t, 0, code, out)
	requireFailedLine(t, out, "snapshots can page public.companies by a unique key", "ADD PRIMARY KEY")
}

func TestCheckInvalidatedSlotSaysStartOver(t *testing.T) {
	t.Parallel()
	srv := pgtest.StartT(t, pgtest.Options{Settings: map[string]string{
		"max_slot_wal_keep_size": "1MB", "max_wal_size": "32MB", "min_wal_size": "32MB",
	}})
	e := checkEnvOn(t, srv)
	ctx := context.Background()
	slot := workload.SlotName(e.url)
	_, err := e.conn.Exec(ctx, `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, slot)
	require.NoError(t, err)
	// Move past the slot's kept WAL, segment by segment, until a checkpoint
	// removes what the slot needed.
	var status string
	for range 20 {
		_, err := e.conn.Exec(ctx, `INSERT INTO companies (id, name) VALUES (1, 'x') ON CONFLICT (id) DO UPDATE SET name = 'y';
			SELECT pg_switch_wal(); CHECKPOINT`)
		require.NoError(t, err)
		require.NoError(t, e.conn.QueryRow(ctx, `SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&status))
		if status == "lost" {
			break
		}
	}
	require.Equal(t, "lost", status)

	code, out := e.runCheck()
	assert.Equal(t, 1, code, out)
	requireFailedLine(t, out, `replication slot "`+slot+`"`, "wal_status: lost", "replication slot was invalidated", "pgpilot teardown")
}

func TestCheckBadAPIKeyOrUnreachableUserpilotSaysWhichSetting(t *testing.T) {
	t.Parallel()
	e := newEnv(t, userpilottest.Options{})
	const wrongKey = "wrong-key-7f3a9c"
	e.writeCheckConfig("", wrongKey)

	code, out := e.runCheck()
	assert.Equal(t, 1, code, out)
	requireFailedLine(t, out, "Userpilot at "+e.up.URL(), "refused the API key (HTTP 401)", "fix userpilot.api_key")
	assert.Contains(t, out, "1 check(s) failed", "only the key is wrong")
	assert.NotContains(t, out, wrongKey)

	code, out = e.runCheck("--skip-userpilot")
	assert.Equal(t, 0, code, out)
	assert.Contains(t, out, "- Userpilot not checked (--skip-userpilot)")
	assert.Contains(t, out, "all checks passed")

	e.up.Close() // nothing listens there any more
	code, out = e.runCheck()
	assert.Equal(t, 1, code, out)
	requireFailedLine(t, out, "Userpilot at "+e.up.URL(), "cannot reach it", "check userpilot.endpoint")
	assert.NotContains(t, out, wrongKey)
}

// TestCheckOnStandby points check at a Postgres 17 standby. The subtests
// share one primary and standby and run in order: each starts from what the
// one before left.
func TestCheckOnStandby(t *testing.T) {
	t.Parallel()
	primary := pgtest.StartT(t, pgtest.Options{Major: 17})
	standby := primary.StartStandbyT(t)
	e := checkEnvOn(t, primary)
	ctx := context.Background()
	require.NoError(t, standby.WaitReplayed(ctx))
	u, err := url.Parse(e.url)
	require.NoError(t, err)
	db := strings.TrimPrefix(u.Path, "/")
	e.writeCheckConfig(standby.URL(db), "")
	create := "CREATE PUBLICATION " + pgx.Identifier{workload.SlotName(e.url)}.Sanitize() + ` FOR TABLE "public"."companies";`

	t.Run("MissingPublicationPrintsTheStatementForThePrimary", func(t *testing.T) {
		code, out := e.runCheck()
		assert.Equal(t, 1, code, out)
		assert.Contains(t, out, "✓ Postgres 17 (standby), wal_level=logical")
		assert.Contains(t, out, "✓ standby keeps the primary from removing rows the slot needs")
		requireFailedLine(t, out, "publication", "a standby cannot create it; run on the primary", create)
		assert.Contains(t, out, "1 check(s) failed", out)
	})

	t.Run("PassesOnceThePublicationWasCreatedOnThePrimary", func(t *testing.T) {
		_, err := e.conn.Exec(ctx, create) // on the primary, as told
		require.NoError(t, err)
		require.NoError(t, standby.WaitReplayed(ctx))
		code, out := e.runCheck()
		assert.Equal(t, 0, code, out)
		assert.Contains(t, out, "all checks passed")
	})

	// Without hot_standby_feedback the primary's vacuum removes catalog rows
	// a logical slot on the standby still needs, and Postgres invalidates
	// the slot: check names that cause and its fix, not "lost WAL".
	t.Run("SlotInvalidatedByPrimaryVacuumSaysTurnOnFeedback", func(t *testing.T) {
		require.NoError(t, standby.Exec(ctx, "postgres", "ALTER SYSTEM SET hot_standby_feedback = off"))
		require.NoError(t, standby.Exec(ctx, "postgres", "SELECT pg_reload_conf()"))
		slot := workload.SlotName(e.url)
		created := make(chan error, 1)
		go func() {
			created <- standby.Exec(ctx, db, "SELECT pg_create_logical_replication_slot($1, 'pgoutput')", slot)
		}()
		// The slot on the standby is created at the primary's next
		// running-xacts record.
		waitCreated := time.After(60 * time.Second)
	creating:
		for {
			require.NoError(t, primary.Exec(ctx, "postgres", "SELECT pg_log_standby_snapshot()"))
			select {
			case err := <-created:
				require.NoError(t, err, "create a logical slot on the standby")
				break creating
			case <-time.After(100 * time.Millisecond):
			case <-waitCreated:
				t.Fatal("the logical slot on the standby was not created within 60s")
			}
		}

		standbyConn, err := pgx.Connect(ctx, standby.URL(db))
		require.NoError(t, err)
		defer standbyConn.Close(ctx)
		var reason *string
		for deadline := time.Now().Add(60 * time.Second); reason == nil; {
			require.False(t, time.Now().After(deadline), "the primary's vacuum did not invalidate the standby's slot within 60s")
			_, err := e.conn.Exec(ctx, "CREATE TABLE conflict_test (x int); DROP TABLE conflict_test")
			require.NoError(t, err)
			_, err = e.conn.Exec(ctx, "VACUUM FULL pg_class") // plain VACUUM took ~60s of rounds to conflict; FULL does at once
			require.NoError(t, err)
			require.NoError(t, standby.WaitReplayed(ctx))
			require.NoError(t, standbyConn.QueryRow(ctx, "SELECT invalidation_reason FROM pg_replication_slots WHERE slot_name = $1", slot).Scan(&reason))
		}
		require.Equal(t, "rows_removed", *reason)

		code, out := e.runCheck()
		assert.Equal(t, 1, code, out)
		requireFailedLine(t, out, "standby keeps the primary from removing rows", "hot_standby_feedback is off")
		requireFailedLine(t, out, `replication slot "`+slot+`"`, "wal_status: lost", "needed catalog rows that the primary removed",
			"set hot_standby_feedback = on on the standby", "pgpilot teardown")
	})
}

// TestCheckSaysWhetherTheConnectionIsEncrypted runs check against the test
// Postgres, which has no TLS: it says the connection is not encrypted, with
// the sslmode pgx used (the URL's disable, then none at all: prefer, whose
// silent fallback to plaintext is what the line shows). On loopback that
// is no warning; the warning for another host is TestTLSWarningForEverySSLModeAndHost's.
func TestCheckSaysWhetherTheConnectionIsEncrypted(t *testing.T) {
	t.Parallel()
	e := newEnv(t, userpilottest.Options{})
	code, out := e.runCheck()
	assert.Equal(t, 0, code, out)
	assert.Contains(t, out, "✓ connection to Postgres encrypted: no (sslmode=disable)\n")
	assert.NotContains(t, out, "! TLS")

	e.writeCheckConfig(strings.Replace(e.url, "sslmode=disable", "application_name=pgpilot-check", 1), "")
	code, out = e.runCheck()
	assert.Equal(t, 0, code, out)
	assert.Contains(t, out, "✓ connection to Postgres encrypted: no (sslmode=prefer)\n", "prefer fell back to plaintext")
	assert.NotContains(t, out, "! TLS", "loopback: the connection never leaves the machine")
	assert.True(t, strings.HasSuffix(out, "all checks passed\n"), out)
}

// TestCheckAndPreviewNamePersonalDataUnlessAcknowledged maps columns that
// look like personal data (by name; by type: a domain named email, inet)
// and one acknowledged with pii: true: check and preview warn of each of
// the others, saying why and how to acknowledge it, and block nothing.
func TestCheckAndPreviewNamePersonalDataUnlessAcknowledged(t *testing.T) {
	t.Parallel()
	e := newEnv(t, userpilottest.Options{})
	ctx := context.Background()
	_, err := e.conn.Exec(ctx, `CREATE DOMAIN email AS text CHECK (VALUE LIKE '%@%');
		ALTER TABLE companies ADD COLUMN contact_email text, ADD COLUMN reach email, ADD COLUMN seen_from inet, ADD COLUMN owner_phone text`)
	require.NoError(t, err)
	require.NoError(t, workload.Seed(ctx, e.conn, 3))
	_, err = e.conn.Exec(ctx, `UPDATE companies SET contact_email = 'ann@example.com', reach = 'bob@example.com', seen_from = '192.0.2.7', owner_phone = '+1 555 0100'`)
	require.NoError(t, err)
	e.writeConfig(workload.Config(e.url, workload.SlotName(e.url), e.up.URL(), apiKey, e.stateDir, 100) +
		"    contact: contact_email\n    reach: reach\n    seen: seen_from\n    phone: {column: owner_phone, pii: true}\n")
	warnings := []*regexp.Regexp{
		regexp.MustCompile(`:\d+: metadata "contact": column "contact_email" looks like personal data \(an email address, by its name\); Userpilot's API reference asks you to check with your legal and security teams before sending personal data as metadata\n  fix: once sending it is cleared, acknowledge it: contact: \{column: contact_email, pii: true\}; otherwise remove the key\n`),
		regexp.MustCompile(`:\d+: metadata "reach": column "reach" looks like personal data \(an email address, by its type email\)`),
		regexp.MustCompile(`:\d+: metadata "seen": column "seen_from" looks like personal data \(an IP address, by its type inet\)`),
	}

	code, out := e.runCheck()
	assert.Equal(t, 0, code, "a warning blocks nothing:\n%s", out)
	for _, w := range warnings {
		assert.Regexp(t, regexp.MustCompile(`! personal data: `+regexp.QuoteMeta(e.cfgPath)+w.String()), out)
	}
	assert.NotContains(t, out, "owner_phone", "pii: true silences the warning for its key")
	assert.True(t, strings.HasSuffix(out, "all checks passed, with 3 warning(s) above\n"), out)

	p := e.pgpilot("preview", "--config", e.cfgPath, "--limit", "2")
	require.Equal(t, 0, p.wait(t, 60*time.Second), p.out.String())
	out = p.out.String()
	for _, w := range warnings {
		assert.Regexp(t, regexp.MustCompile(`preview: warning: `+regexp.QuoteMeta(e.cfgPath)+w.String()), out)
	}
	assert.NotContains(t, out, "owner_phone")
	assert.Contains(t, out, `"contact":"ann@example.com"`, "nothing is blocked: the payloads carry the keys")
	assert.Contains(t, out, "2 rows read, 0 would be set aside; nothing was sent")
}
