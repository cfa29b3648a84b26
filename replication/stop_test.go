package replication_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/replication"
	"github.com/pgpilot/pgpilot/row"
)

// TestStreamStopsAtOnceWhileWaitingForTheServer stops a stream that waits
// on an idle table. The stream's receive wakes on a timer of its own; a
// stop must not wait for that timer (stretched here to a minute), or a
// SIGTERM would hang for it.
func TestStreamStopsAtOnceWhileWaitingForTheServer(t *testing.T) {
	defer func(d time.Duration) { *replication.ReceiveWake = d }(*replication.ReceiveWake)
	*replication.ReceiveWake = time.Minute

	url, conn := connect(t)
	ctx := context.Background()
	_, err := conn.Exec(ctx, `CREATE TABLE companies (id bigint PRIMARY KEY); CREATE PUBLICATION p FOR TABLE companies`)
	require.NoError(t, err)
	slot := "stop_" + fmt.Sprint(time.Now().UnixNano()%1e9)
	_, err = conn.Exec(ctx, `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, slot)
	require.NoError(t, err)
	rconn, err := replication.ConnectReplication(ctx, url)
	require.NoError(t, err)
	defer rconn.Close(context.Background())

	sctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- replication.Stream(sctx, rconn, replication.StreamOptions{
			Slot: slot, Publication: "p", Table: companies,
			Confirmed:      func() pglogrepl.LSN { return 0 },
			Types:          replication.NewTypeResolver(conn),
			StatusInterval: time.Hour, ReceiveTimeout: 2 * time.Hour,
		}, make(chan row.Transaction, 16))
	}()
	time.Sleep(500 * time.Millisecond) // waiting in a receive by now
	stopped := time.Now()
	stop()
	select {
	case err := <-done:
		require.True(t, errors.Is(err, context.Canceled), "Stream returned %v", err)
		t.Logf("stopped %s after the stop", time.Since(stopped).Round(time.Millisecond))
	case <-time.After(20 * time.Second):
		t.Fatal("Stream still running 20s after its context ended: a stop waits for the receive's own timer")
	}
}
