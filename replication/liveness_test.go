package replication_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/internal/faultproxy"
	"github.com/pgpilot/pgpilot/replication"
	"github.com/pgpilot/pgpilot/row"
)

// TestStreamGivesUpOnASilentlyDeadConnectionButNotOnAQuietOne streams an
// idle table through a proxy. While the connection is healthy the server
// answers the stream's reply requests, so a quiet table is never taken for
// a dead connection; once the proxy silently drops the connection (nothing
// forwarded, nothing closed), Stream returns within ReceiveTimeout instead
// of waiting forever.
func TestStreamGivesUpOnASilentlyDeadConnectionButNotOnAQuietOne(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	url, conn := connect(t)
	_, err := conn.Exec(ctx, `CREATE TABLE companies (id bigint PRIMARY KEY, name text); CREATE PUBLICATION p FOR TABLE companies`)
	require.NoError(t, err)
	slot := "alive_" + fmt.Sprint(time.Now().UnixNano()%1e9)
	_, err = conn.Exec(ctx, `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, slot)
	require.NoError(t, err)

	direct := fmt.Sprintf("%s:%d", pg.Host, pg.Port)
	px, err := faultproxy.Start(direct)
	require.NoError(t, err)
	defer px.Close()
	rconn, err := replication.ConnectReplication(ctx, strings.Replace(url, direct, px.Addr(), 1))
	require.NoError(t, err)
	defer rconn.Close(context.Background())

	const receiveTimeout = 2 * time.Second
	done := make(chan error, 1)
	started := time.Now()
	go func() {
		// The shared server's wal_sender_timeout is 60s: on an idle table
		// it sends nothing of its own accord within this test, so only the
		// answers to reply requests keep the stream alive.
		done <- replication.Stream(ctx, rconn, replication.StreamOptions{
			Slot: slot, Publication: "p", Table: companies,
			Confirmed:      func() pglogrepl.LSN { return 0 },
			Types:          replication.NewTypeResolver(conn),
			StatusInterval: 10 * time.Second, ReceiveTimeout: receiveTimeout,
		}, make(chan row.Transaction, 16))
	}()
	select {
	case err := <-done:
		t.Fatalf("a quiet, healthy stream was given up after %s: %v", time.Since(started), err)
	case <-time.After(4 * receiveTimeout):
	}

	px.Sever()
	severed := time.Now()
	select {
	case err := <-done:
		require.Error(t, err)
		assert.Contains(t, err.Error(), "the connection is dead")
		assert.Less(t, time.Since(severed), receiveTimeout+2*time.Second)
		t.Logf("gave up %s after the connection went silent: %v", time.Since(severed).Round(time.Millisecond), err)
	case <-time.After(30 * time.Second):
		t.Fatal("Stream still waits on a dead connection 30s later")
	}
}
