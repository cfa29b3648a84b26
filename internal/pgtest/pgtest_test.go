package pgtest_test

import (
	"context"
	"errors"
	"net"
	"os"
	"os/user"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/internal/pgtest"
)

// queryString returns the single text value of query in the database at url.
func queryString(t *testing.T, url, query string) string {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), url)
	require.NoError(t, err)
	defer conn.Close(context.Background())
	var v string
	require.NoError(t, conn.QueryRow(t.Context(), query).Scan(&v))
	return v
}

func TestStartServesLogicalReplicationReadyDatabase(t *testing.T) {
	t.Parallel()
	srv := pgtest.StartT(t, pgtest.Options{})
	url := srv.NewDatabaseT(t)

	assert.Equal(t, 15, srv.Version())
	assert.Equal(t, "127.0.0.1", srv.Host)
	assert.Contains(t, url, ":"+strconv.Itoa(srv.Port)+"/")

	tests := []struct {
		setting string
		want    string
	}{
		{"wal_level", "logical"},
		{"max_replication_slots", "20"},
		{"max_wal_senders", "20"},
		{"fsync", "off"},
		{"listen_addresses", "127.0.0.1"},
		{"server_encoding", "UTF8"},
		{"port", strconv.Itoa(srv.Port)},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, queryString(t, url, "SHOW "+tt.setting), tt.setting)
	}

	db := strings.TrimPrefix(url[strings.LastIndex(url, "/"):strings.Index(url, "?")], "/")
	require.NoError(t, srv.Exec(t.Context(), db, "CREATE TABLE companies (id int PRIMARY KEY, name text)"))
	require.NoError(t, srv.Exec(t.Context(), db, "INSERT INTO companies VALUES ($1, $2)", 1, "Acme"))
	assert.Equal(t, "Acme", queryString(t, url, "SELECT name FROM companies WHERE id = 1"))

	// A logical slot can be created: the harness's whole reason to exist.
	require.NoError(t, srv.Exec(t.Context(), db, "SELECT pg_create_logical_replication_slot('s', 'pgoutput')"))
}

func TestServerRunsAsPostgresUserWhenRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("only meaningful when the tests run as root")
	}
	t.Parallel()
	srv := pgtest.StartT(t, pgtest.Options{})
	pgUser, err := user.Lookup("postgres")
	require.NoError(t, err)

	fi, err := os.Stat(srv.DataDir)
	require.NoError(t, err)
	assert.Equal(t, pgUser.Uid, strconv.Itoa(int(fi.Sys().(*syscall.Stat_t).Uid)), "data dir owner")
}

func TestSettingsOverrideDefaults(t *testing.T) {
	t.Parallel()
	srv := pgtest.StartT(t, pgtest.Options{Settings: map[string]string{
		"max_wal_senders":  "7",
		"application_name": "it's quoted",
	}})
	url := srv.URL("postgres")
	assert.Equal(t, "7", queryString(t, url, "SHOW max_wal_senders"))
	assert.Equal(t, "it's quoted", queryString(t, url, "SELECT current_setting('application_name')"))
	assert.Equal(t, "logical", queryString(t, url, "SHOW wal_level"))
}

func TestCrashThenRestartKeepsCommittedRows(t *testing.T) {
	t.Parallel()
	srv := pgtest.StartT(t, pgtest.Options{})
	require.NoError(t, srv.Exec(t.Context(), "postgres", "CREATE TABLE companies (id int PRIMARY KEY)"))
	require.NoError(t, srv.Exec(t.Context(), "postgres", "INSERT INTO companies SELECT generate_series(1, 100)"))
	// Crash immediately after the last commit: the case an asynchronous
	// commit would lose.
	port := srv.Port

	require.NoError(t, srv.Crash(t.Context()))
	_, err := pgx.Connect(t.Context(), srv.URL("postgres"))
	require.Error(t, err, "server must be down after Crash")
	assert.DirExists(t, srv.DataDir)

	require.NoError(t, srv.Restart(t.Context()))
	assert.Equal(t, port, srv.Port)
	assert.Equal(t, "100", queryString(t, srv.URL("postgres"), "SELECT count(*)::text FROM companies"))
	assert.Contains(t, srv.Log(), "not properly shut down", "restart after Crash must run crash recovery")
}

func TestStopKeepDataThenRestartKeepsRows(t *testing.T) {
	t.Parallel()
	srv := pgtest.StartT(t, pgtest.Options{})
	require.NoError(t, srv.Exec(t.Context(), "postgres", "CREATE TABLE companies (id int); INSERT INTO companies VALUES (1), (2)"))

	require.NoError(t, srv.StopKeepData(t.Context()))
	assert.FileExists(t, srv.DataDir+"/PG_VERSION")
	require.Error(t, srv.StopKeepData(t.Context()), "stopping a stopped server is an error")

	require.NoError(t, srv.Restart(t.Context()))
	require.Error(t, srv.Restart(t.Context()), "restarting a running server is an error")
	assert.Equal(t, "2", queryString(t, srv.URL("postgres"), "SELECT count(*)::text FROM companies"))
}

func TestStopRemovesDirectoryAndIsIdempotent(t *testing.T) {
	t.Parallel()
	srv, err := pgtest.Start(t.Context(), pgtest.Options{})
	require.NoError(t, err)
	require.DirExists(t, srv.DataDir)

	require.NoError(t, srv.Stop())
	assert.NoDirExists(t, srv.DataDir)
	assert.NoError(t, srv.Stop(), "second Stop")
	assert.Error(t, srv.Restart(t.Context()), "Restart after Stop")

	_, err = pgx.Connect(t.Context(), srv.URL("postgres"))
	assert.Error(t, err, "server must be down after Stop")
}

func TestStopAfterCrashRemovesDirectory(t *testing.T) {
	t.Parallel()
	srv, err := pgtest.Start(t.Context(), pgtest.Options{})
	require.NoError(t, err)
	require.NoError(t, srv.Crash(t.Context()))
	require.NoError(t, srv.Stop())
	assert.NoDirExists(t, srv.DataDir)
}

func TestParallelServersAreIndependent(t *testing.T) {
	t.Parallel()
	const n = 2
	servers := make([]*pgtest.Server, n)
	errs := make(chan error, n)
	for i := range n {
		go func() {
			var err error
			servers[i], err = pgtest.Start(t.Context(), pgtest.Options{})
			errs <- err
		}()
	}
	for range n {
		require.NoError(t, <-errs)
	}
	for _, srv := range servers {
		t.Cleanup(func() { _ = srv.Stop() })
	}

	assert.NotEqual(t, servers[0].Port, servers[1].Port)
	assert.NotEqual(t, servers[0].DataDir, servers[1].DataDir)
	for i, srv := range servers {
		require.NoError(t, srv.Exec(t.Context(), "postgres", "CREATE TABLE marker (server int)"))
		require.NoError(t, srv.Exec(t.Context(), "postgres", "INSERT INTO marker VALUES ($1)", i))
	}
	for i, srv := range servers {
		assert.Equal(t, strconv.Itoa(i), queryString(t, srv.URL("postgres"), "SELECT string_agg(server::text, ',') FROM marker"))
	}
}

func TestPasswordModeRefusesWrongPassword(t *testing.T) {
	t.Parallel()
	const password = "s3cret-p@ss/word"
	srv := pgtest.StartT(t, pgtest.Options{Password: password})
	dbURL := srv.URL("postgres")
	assert.Contains(t, dbURL, "postgres:s3cret-p%40ss%2Fword@127.0.0.1:")

	base := "postgres://postgres%s@127.0.0.1:" + strconv.Itoa(srv.Port) + "/postgres?sslmode=disable"
	tests := []struct {
		name     string
		url      string
		wantCode string // "" means the login succeeds
	}{
		{"right password", dbURL, ""},
		{"wrong password", strings.Replace(base, "%s", ":wrong", 1), "28P01"},
		{"no password", strings.Replace(base, "%s", "", 1), "28P01"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn, err := pgx.Connect(t.Context(), tt.url)
			if tt.wantCode == "" {
				require.NoError(t, err)
				require.NoError(t, conn.Close(t.Context()))
				return
			}
			var pgErr *pgconn.PgError
			require.True(t, errors.As(err, &pgErr), "want a server error, got %v", err)
			assert.Equal(t, tt.wantCode, pgErr.Code)
		})
	}

	// Errors from the harness itself never carry the password.
	err := srv.Exec(t.Context(), "no_such_db", "SELECT 1")
	require.Error(t, err)
	assert.NotContains(t, err.Error(), password)
	assert.NotContains(t, err.Error(), "s3cret")
	assert.NotContains(t, srv.Log(), "s3cret")
}

func TestStartFailsWithClearErrorForMissingBinaries(t *testing.T) {
	t.Parallel()
	_, err := pgtest.Start(t.Context(), pgtest.Options{BinDir: t.TempDir()})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "postgres binary not found")
	assert.Contains(t, err.Error(), "scripts/setup.sh")
}

func TestStartOnTakenPortFailsWithAddressInUse(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	port := strconv.Itoa(l.Addr().(*net.TCPAddr).Port)

	// A pinned port is not retried, so the detection of "address in use"
	// (which drives the retry for picked ports) shows in the error.
	_, err = pgtest.Start(t.Context(), pgtest.Options{Settings: map[string]string{"port": port}})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "port already in use")
	assert.Contains(t, err.Error(), "Address already in use")
}

func TestStartFailureCarriesServerLog(t *testing.T) {
	t.Parallel()
	_, err := pgtest.Start(t.Context(), pgtest.Options{Settings: map[string]string{"no_such_setting": "1"}})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "no_such_setting", "error must quote the server log")
}

func TestStartRefusesBinariesOfAnotherMajorVersion(t *testing.T) {
	t.Parallel()
	_, err := pgtest.Start(t.Context(), pgtest.Options{Major: 17, BinDir: pgtest.DefaultBinDir})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "Options.Major is 17 but the binaries in "+pgtest.DefaultBinDir+" are Postgres 15")
}

func TestStartWithMissingMajorVersionSaysHowToFetchIt(t *testing.T) {
	t.Parallel()
	_, err := pgtest.Start(t.Context(), pgtest.Options{Major: 99})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "scripts/fetch-postgres.sh 99")
	assert.Contains(t, err.Error(), "$PGPILOT_PG99_BIN")
}

// TestStandbyFollowsPrimaryAndDecodesFromSixteen is the standby harness's
// contract, for Debian's 15 and the fetched 17: rows committed on the
// primary are readable on the standby, before and after the standby
// crashes; a logical slot can be created on a 17 standby and not on a 15
// one (what the harness is for); Stop drops the standby's slot on the
// primary.
func TestStandbyFollowsPrimaryAndDecodesFromSixteen(t *testing.T) {
	t.Parallel()
	for _, major := range []int{15, 17} {
		t.Run(strconv.Itoa(major), func(t *testing.T) {
			t.Parallel()
			ctx := t.Context()
			primary := pgtest.StartT(t, pgtest.Options{Major: major, Password: "standby-pw"})
			assert.Equal(t, major, primary.Version())
			assert.True(t, strings.HasPrefix(queryString(t, primary.URL("postgres"), "SHOW server_version"), strconv.Itoa(major)+"."))
			require.NoError(t, primary.Exec(ctx, "postgres", "CREATE TABLE companies (id int PRIMARY KEY); INSERT INTO companies VALUES (1)"))

			standby := primary.StartStandbyT(t)
			assert.False(t, primary.IsStandby())
			assert.True(t, standby.IsStandby())
			assert.NotEqual(t, primary.Port, standby.Port)
			assert.Equal(t, major, standby.Version())
			assert.Equal(t, "true", queryString(t, standby.URL("postgres"), "SELECT pg_is_in_recovery()::text"))
			assert.Equal(t, "false", queryString(t, primary.URL("postgres"), "SELECT pg_is_in_recovery()::text"),
				"the primary is running again after its data directory was copied")

			require.NoError(t, primary.Exec(ctx, "postgres", "INSERT INTO companies VALUES (2)"))
			require.NoError(t, standby.WaitReplayed(ctx))
			assert.Equal(t, "1,2", queryString(t, standby.URL("postgres"), "SELECT string_agg(id::text, ',' ORDER BY id) FROM companies"))
			require.Error(t, standby.Exec(ctx, "postgres", "INSERT INTO companies VALUES (3)"), "a standby is read-only")

			require.NoError(t, standby.Crash(ctx))
			require.NoError(t, primary.Exec(ctx, "postgres", "INSERT INTO companies VALUES (3)"))
			require.NoError(t, standby.Restart(ctx))
			require.NoError(t, standby.WaitReplayed(ctx))
			assert.Equal(t, "1,2,3", queryString(t, standby.URL("postgres"), "SELECT string_agg(id::text, ',' ORDER BY id) FROM companies"))

			createSlot := func() error {
				return standby.Exec(ctx, "postgres", "SELECT pg_create_logical_replication_slot('on_standby', 'pgoutput')")
			}
			if major < 16 {
				err := createSlot()
				require.Error(t, err)
				assert.Contains(t, err.Error(), "logical decoding cannot be used while in recovery")
			} else {
				// Slot creation on a standby waits for a running-xacts record
				// from the primary; an idle primary logs none by itself.
				logCtx, stopLogging := context.WithCancel(ctx)
				logged := make(chan struct{})
				go func() {
					defer close(logged)
					for logCtx.Err() == nil {
						_ = primary.Exec(logCtx, "postgres", "SELECT pg_log_standby_snapshot()")
						select {
						case <-logCtx.Done():
						case <-time.After(100 * time.Millisecond):
						}
					}
				}()
				began := time.Now()
				err := createSlot()
				stopLogging()
				<-logged
				require.NoError(t, err)
				t.Logf("logical slot created on the standby in %s", time.Since(began).Round(time.Millisecond))
				assert.Equal(t, "logical", queryString(t, standby.URL("postgres"), "SELECT slot_type FROM pg_replication_slots WHERE slot_name = 'on_standby'"))
			}

			assert.NotContains(t, standby.Log(), "standby-pw", "the password the standby streams with is never logged")

			slots := "SELECT count(*)::text FROM pg_replication_slots WHERE slot_type = 'physical'"
			assert.Equal(t, "1", queryString(t, primary.URL("postgres"), slots))
			require.NoError(t, standby.Stop())
			assert.Equal(t, "0", queryString(t, primary.URL("postgres"), slots), "Stop drops the standby's slot on the primary")
		})
	}
}
