package replication_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/replication"
	"github.com/pgpilot/pgpilot/row"
)

// TestTheStreamHandsOnNoMoreThanItsBudget: one transaction of 5,000 rows
// under REPLICA IDENTITY FULL (some 1.3 MB of changes, five times the
// budget), a consumer that takes the pieces in and releases one only when
// nothing has come for a while: what was handed on and not released never
// passes the budget by more than a piece, however much room the channel
// has, and the stream goes on as charges are released, until every row
// came out, in order.
func TestTheStreamHandsOnNoMoreThanItsBudget(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	url, conn := connect(t)
	_, err := conn.Exec(ctx, `CREATE TABLE companies (id bigint PRIMARY KEY, name text);
		ALTER TABLE companies REPLICA IDENTITY FULL;
		INSERT INTO companies SELECT i, 'company ' || i FROM generate_series(1, 5000) i;
		CREATE PUBLICATION p FOR TABLE companies`)
	require.NoError(t, err)
	slot := "budget_" + fmt.Sprint(time.Now().UnixNano()%1e9)
	_, err = conn.Exec(ctx, `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, slot)
	require.NoError(t, err)
	_, err = conn.Exec(ctx, `UPDATE companies SET name = name || '!'`)
	require.NoError(t, err)

	rconn, err := replication.ConnectReplication(ctx, url)
	require.NoError(t, err)
	defer rconn.Close(context.Background())
	typeConn, err := replication.ConnectSQL(ctx, url)
	require.NoError(t, err)
	defer typeConn.Close(context.Background())
	const limit = 256 << 10
	budget := row.NewBudget(limit)
	out := make(chan row.Transaction, 1000)
	sctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- replication.Stream(sctx, rconn, replication.StreamOptions{
			Slot: slot, Publication: "p", Table: row.Table{Schema: "public", Name: "companies"},
			Confirmed: func() pglogrepl.LSN { return 0 }, Types: replication.NewTypeResolver(typeConn), Budget: budget,
		}, out)
	}()
	defer func() {
		stop()
		<-done
	}()

	var held []row.Transaction
	rows := 0
	for rows < 5000 {
		select {
		case txn := <-out:
			if len(txn.Changes) == 0 {
				continue
			}
			for _, ch := range txn.Changes {
				rows++
				require.Equal(t, fmt.Sprint(rows), string(ch.Values[0].Text), "in order")
			}
			held = append(held, txn)
			// A piece alone may pass the budget; two never do.
			require.LessOrEqual(t, budget.Used(), int64(limit)+int64(maxPieceBytes(held)), "after %d rows", rows)
		case <-time.After(200 * time.Millisecond):
			// Nothing came for a while: release the oldest piece. (Only
			// progress hangs on this wait; on a slow machine pieces are
			// released sooner, and the bound above holds all the same.)
			require.NotEmpty(t, held, "the stream stopped with nothing taken from its budget (%d rows)", rows)
			held[0].Charge.Release()
			held = held[1:]
		case err := <-done:
			t.Fatalf("the stream ended: %v", err)
		}
	}
	for _, txn := range held {
		txn.Charge.Release()
	}
	require.Zero(t, budget.Used(), "every charge released")
}

func maxPieceBytes(txns []row.Transaction) int64 {
	var m int64
	for _, txn := range txns {
		m = max(m, maxPieceBytesOf(txn))
	}
	return m
}

func maxPieceBytesOf(txn row.Transaction) int64 {
	var n int64
	for _, ch := range txn.Changes {
		n += int64(ch.Bytes())
	}
	return n
}
