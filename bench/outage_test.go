package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/pgpilot/pgpilot/state"
)

// BenchmarkOutage is what a long Userpilot outage costs pgpilot: with Userpilot answering 503 to every request (outbox mode after
// 1 s, max_retained_wal 32 MB), N companies are inserted (PGPILOT_BENCH_ROWS,
// default 200,000, in 100-row transactions) until pgpilot owes them all
// durably; then pgpilot is killed (kill -9) and started again with that
// backlog on disk, Postgres is crash-restarted, and each company is updated
// once more; finally Userpilot comes back, and every company must end
// equal to the table. Reported: peak anonymous memory (the Go heap and
// runtime; the store's pages, which bbolt maps and pgpilot lets go, are
// not anonymous) and peak RSS of each pgpilot, the slot's largest retained
// WAL (pg_current_wal_lsn − restart_lsn) sampled every 100 ms, the store's
// bytes per owed company, and how long the backlog took to drain.
func BenchmarkOutage(b *testing.B) {
	n := benchRows()
	for range b.N {
		outageOnce(b, n)
	}
}

func outageOnce(b *testing.B, n int) {
	b.StopTimer()
	ctx := context.Background()
	e := newEnv(b, bulkAllowed)
	e.setDelivery("outbox_after: 1s", "max_retained_wal: 32MB")
	e.initialSync(0)
	// Down on every path (SetFault alone fails only real-time calls: bulk
	// jobs went through).
	e.up.AnswerAll(503)
	if path := os.Getenv("PGPILOT_BENCH_HEAPPROFILE"); path != "" {
		// The outage run inside the benchmark, for a heap profile of what
		// is live once everything is owed.
		ip := e.startInProcess()
		end := e.outageWrites(n)
		e.waitFor("every change owed durably", 30*time.Minute, func() bool { return e.checkpointLSN() >= end })
		writeHeapProfile(b, path)
		ip.stop()
		return
	}
	lag := e.watchSlotLag()
	p := e.startPgpilot()
	end := e.writeRows(n, 100)
	e.waitFor("every insert owed durably (checkpoint past the end)", 30*time.Minute, func() bool { return e.checkpointLSN() >= end })
	outagePeak, outageHWM := p.peakAnon.Load(), p.peakRSS()
	_ = p.cmd.Process.Kill() // kill -9, with the backlog on disk
	<-p.done
	// What is owed, on disk: every company.
	owed, err := state.SummarizeOutbox(e.stateDir)
	if err != nil {
		b.Fatal(err)
	}
	var storeBytes int64
	if fi, err := os.Stat(filepath.Join(e.stateDir, state.StoreFile)); err == nil {
		storeBytes = fi.Size()
	}

	p = e.startPgpilot()
	// Postgres crash-restarts under the restarted pgpilot, which
	// reconnects; then every company changes once more.
	if err := e.pg.Crash(ctx); err != nil {
		b.Fatal(err)
	}
	if err := e.pg.Restart(ctx); err != nil {
		b.Fatal(err)
	}
	e.reconnect()
	end = e.updateAll()
	e.waitFor("every update owed durably (checkpoint past the end)", 30*time.Minute, func() bool { return e.checkpointLSN() >= end })
	e.up.AnswerAll(0)
	b.StartTimer()
	began := time.Now()
	e.waitFor("every company equal to the table", 30*time.Minute, e.userpilotEqualsTable)
	drained := time.Since(began)
	b.StopTimer()
	u := p.stop()
	maxLag, maxUnconfirmed := lag()

	report(b, float64(outagePeak)/(1<<20), "outage_peak_anon_MB")
	report(b, float64(outageHWM)/(1<<20), "outage_peak_rss_MB")
	report(b, float64(u.peakAnon)/(1<<20), "restart_peak_anon_MB")
	report(b, float64(u.peakRSS)/(1<<20), "restart_peak_rss_MB")
	report(b, float64(maxLag)/(1<<20), "slot_retained_max_MB")
	report(b, float64(maxUnconfirmed)/(1<<20), "slot_unconfirmed_max_MB")
	report(b, float64(owed.Companies), "owed_companies")
	if owed.Companies > 0 {
		report(b, float64(storeBytes)/float64(owed.Companies), "store_bytes/company")
	}
	report(b, drained.Seconds(), "drain_s")
	b.Logf("%d companies owed: peak anonymous memory %.0f MB (RSS %.0f MB) during the outage, %.0f MB (RSS %.0f MB) after kill -9, restart and a Postgres crash; slot retained at most %.1f MB of WAL (%.1f MB not yet confirmed); store %.1f MB; equal to the table %s after Userpilot came back",
		owed.Companies, float64(outagePeak)/(1<<20), float64(outageHWM)/(1<<20), float64(u.peakAnon)/(1<<20), float64(u.peakRSS)/(1<<20),
		float64(maxLag)/(1<<20), float64(maxUnconfirmed)/(1<<20), float64(storeBytes)/(1<<20), drained.Round(time.Millisecond))
}

// watchSlotLag samples the slot's retained WAL every 100 ms (on a
// connection of its own, opened again after Postgres restarts) until the
// returned function is called, which returns the largest seen: the WAL the
// slot retains (from restart_lsn, which Postgres moves only at the
// running-transactions records it logs every 15 s, or a checkpoint) and
// the WAL past what pgpilot confirmed.
func (e *env) watchSlotLag() func() (retained, unconfirmed int64) {
	var peak, peakUnconfirmed atomic.Int64
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		var conn *pgx.Conn
		defer func() {
			if conn != nil {
				conn.Close(context.Background())
			}
		}()
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			if conn == nil {
				conn, _ = pgx.Connect(ctx, e.url)
			}
			var lag, unconfirmed int64
			if conn != nil {
				if err := conn.QueryRow(ctx, `SELECT coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::bigint,
						coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn), 0)::bigint
					FROM pg_replication_slots WHERE slot_name = $1`, e.slot).Scan(&lag, &unconfirmed); err != nil {
					conn.Close(ctx)
					conn = nil
				}
			}
			cancel()
			if lag > peak.Load() {
				peak.Store(lag)
			}
			if unconfirmed > peakUnconfirmed.Load() {
				peakUnconfirmed.Store(unconfirmed)
			}
		}
	}()
	return func() (int64, int64) {
		close(stop)
		<-done
		return peak.Load(), peakUnconfirmed.Load()
	}
}

// reconnect opens e's connection again (after Postgres restarted).
func (e *env) reconnect() {
	e.b.Helper()
	conn, err := pgx.Connect(context.Background(), e.url)
	if err != nil {
		e.b.Fatal(err)
	}
	e.conn = conn
}

// updateAll changes every company once more (seats + 1), in transactions of
// 100, and returns the end of that WAL.
func (e *env) updateAll() pglogrepl.LSN {
	e.b.Helper()
	if _, err := e.conn.Exec(context.Background(), `DO $$
		BEGIN
			FOR b IN 0..(SELECT max(id) FROM companies) / 100 LOOP
				UPDATE companies SET seats = coalesce(seats, 0) + 1 WHERE id > b * 100 AND id <= (b + 1) * 100;
				COMMIT;
			END LOOP;
		END $$`); err != nil {
		e.b.Fatal(err)
	}
	return e.walLSN()
}

// userpilotEqualsTable reports whether every company's seats in Userpilot
// are the table's.
func (e *env) userpilotEqualsTable() bool {
	rows, err := e.conn.Query(context.Background(), `SELECT id::text, seats FROM companies`)
	if err != nil {
		e.b.Fatal(err)
	}
	defer rows.Close()
	got := e.up.Companies()
	for rows.Next() {
		var id string
		var seats int64
		if err := rows.Scan(&id, &seats); err != nil {
			e.b.Fatal(err)
		}
		co, ok := got[id]
		if !ok || fmt.Sprint(co["seats"]) != fmt.Sprint(seats) {
			return false
		}
	}
	return rows.Err() == nil
}

// outageWrites inserts N companies and updates each once more, in
// transactions of 100, and returns the end of that WAL.
func (e *env) outageWrites(n int) pglogrepl.LSN {
	e.b.Helper()
	e.writeRows(n, 100)
	return e.updateAll()
}
