package daemon_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/daemon"
	"github.com/pgpilot/pgpilot/mapping"
	"github.com/pgpilot/pgpilot/userpilot/userpilottest"
)

// TestCompanyIDNeedNotBeTheKey maps a table whose primary key is a serial
// and whose company id is another (unique) column, written while its
// snapshot runs: the snapshot pages by the key, and Userpilot ends with one
// profile per company id, each as the table says. (The exact interleavings
// of chunks and streamed changes are pinned in package snapshot's tests;
// here the race is whatever the machine makes of it.)
func TestCompanyIDNeedNotBeTheKey(t *testing.T) {
	t.Parallel()
	e := newEnv(t, userpilottest.Options{})
	ctx := context.Background()
	_, err := e.conn.Exec(ctx, `
		CREATE TABLE accounts (pk bigserial PRIMARY KEY, code text NOT NULL UNIQUE, name text);
		INSERT INTO accounts (code, name) SELECT 'acct-' || g, 'Account ' || g FROM generate_series(1, 400) g;`)
	require.NoError(t, err)
	e.cfg.Companies = mapping.Companies{Table: "accounts", Schema: "public", Name: "accounts", CompanyID: "code",
		Metadata: []mapping.Field{{Key: "name", Column: "name"}}}
	e.chunkRows = 25
	writes := make(chan error, 1)
	stop := e.start(ctx, 5*time.Second)
	go func() {
		// Racing the snapshot: renames, and a row whose key moves.
		var err error
		for i := 1; i <= 400 && err == nil; i += 7 {
			_, err = e.conn.Exec(ctx, `UPDATE accounts SET name = name || ' v2' WHERE code = $1`, fmt.Sprintf("acct-%d", i))
		}
		if err == nil {
			_, err = e.conn.Exec(ctx, `UPDATE accounts SET pk = 100000, name = 'moved' WHERE code = 'acct-3'`)
		}
		writes <- err
	}()
	require.NoError(t, <-writes)
	e.waitInitialSync()
	require.Eventually(t, func() bool {
		got := e.up.Companies()
		if len(got) != 400 {
			return false
		}
		rows, err := e.conn.Query(ctx, `SELECT code, name FROM accounts`)
		require.NoError(t, err)
		defer rows.Close()
		for rows.Next() {
			var code, name string
			require.NoError(t, rows.Scan(&code, &name))
			if got[code]["name"] != name {
				return false
			}
		}
		return true
	}, 60*time.Second, 50*time.Millisecond, "one profile per code, each with the table's name")
	require.NoError(t, stop())
}

// TestTableWithoutKeyIsRefusedWithTheFix: with no primary key and no
// replica identity index, a snapshot cannot page or resume; pgpilot stops
// with a configuration error (exit 2) naming the fix.
func TestTableWithoutKeyIsRefusedWithTheFix(t *testing.T) {
	t.Parallel()
	e := newEnv(t, userpilottest.Options{})
	ctx := context.Background()
	_, err := e.conn.Exec(ctx, `
		CREATE TABLE nokey (code text, name text);
		ALTER TABLE nokey REPLICA IDENTITY FULL;`)
	require.NoError(t, err)
	e.cfg.Companies = mapping.Companies{Table: "nokey", Schema: "public", Name: "nokey", CompanyID: "code",
		Metadata: []mapping.Field{{Key: "name", Column: "name"}}}
	done := make(chan error, 1)
	go func() { done <- daemon.Run(ctx, daemon.Options{Config: e.cfg, Logger: testLogger(t)}) }()
	var runErr error
	select {
	case runErr = <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("pgpilot did not stop on a table it cannot page")
	}
	assert.True(t, errors.Is(runErr, daemon.ErrConfig), "a configuration error: exit 2 (%v)", runErr)
	assert.Contains(t, runErr.Error(), "ADD PRIMARY KEY")
}
