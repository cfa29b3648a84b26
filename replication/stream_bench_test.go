package replication_test

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/pgpilot/pgpilot/internal/workload"
	"github.com/pgpilot/pgpilot/replication"
	"github.com/pgpilot/pgpilot/row"
)

// benchStreamRows is how many rows BenchmarkStreamDecode streams per op.
const benchStreamRows = 20_000

// BenchmarkStreamDecode measures the stream alone: benchStreamRows rows of
// the companies table decoded from pgoutput into Transactions and handed
// to a consumer that only counts them. Nothing is ever confirmed, so every
// op streams the same WAL again from the slot's start. Reported per row:
// ns and heap allocations (of the whole process, pgx included).
func BenchmarkStreamDecode(b *testing.B) {
	for _, c := range []struct {
		name   string
		perTxn int
	}{{"batch100", 100}, {"single", 1}, {"onebig", benchStreamRows}} {
		b.Run(c.name, func(b *testing.B) {
			ctx := context.Background()
			url := pg.NewDatabaseT(b)
			conn, err := replication.ConnectSQL(ctx, url)
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close(ctx)
			if _, err := conn.Exec(ctx, workload.Schema+`; CREATE PUBLICATION bench FOR TABLE companies`); err != nil {
				b.Fatal(err)
			}
			// Slots are per cluster, and this body runs more than once.
			slot := workload.SlotName(url)
			var startText string
			if err := conn.QueryRow(ctx, `SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')`, slot).Scan(&startText); err != nil {
				b.Fatal(err)
			}
			defer conn.Exec(ctx, `SELECT pg_drop_replication_slot($1)`, slot)
			start, _ := pglogrepl.ParseLSN(startText)
			_, err = conn.Exec(ctx, fmt.Sprintf(`DO $$
				BEGIN
					FOR b IN 0..%d LOOP
						INSERT INTO companies (id, name, plan, seats, monthly_spend, trial, created_at, notes)
						SELECT g, 'Company ' || g, (ARRAY['free','pro','enterprise'])[1 + g %% 3], g %% 500,
						       (g * 12.34)::numeric(38,10), g %% 2 = 0, timestamptz '2024-01-01 00:00:00+00' + g * interval '1 hour', NULL
						FROM generate_series(b * %d + 1, least((b + 1) * %d, %d)) g;
						COMMIT;
					END LOOP;
				END $$`, (benchStreamRows-1)/c.perTxn, c.perTxn, c.perTxn, benchStreamRows))
			if err != nil {
				b.Fatal(err)
			}

			var ms0, ms1 runtime.MemStats
			var elapsed, cpu time.Duration
			var mallocs uint64
			b.ResetTimer()
			for range b.N {
				b.StopTimer()
				// The previous op's walsender may not have let go of the slot yet.
				for active := true; active; time.Sleep(10 * time.Millisecond) {
					if err := conn.QueryRow(ctx, `SELECT active FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&active); err != nil {
						b.Fatal(err)
					}
				}
				rconn, err := replication.ConnectReplication(ctx, url)
				if err != nil {
					b.Fatal(err)
				}
				sctx, cancel := context.WithCancel(ctx)
				out := make(chan row.Transaction, 16)
				done := make(chan error, 1)
				runtime.ReadMemStats(&ms0)
				cpu0 := processCPU()
				began := time.Now()
				b.StartTimer()
				go func() {
					done <- replication.Stream(sctx, rconn, replication.StreamOptions{
						Slot: slot, Publication: "bench", Table: companies, Start: start,
						Confirmed: func() pglogrepl.LSN { return start },
						Types:     replication.NewTypeResolver(conn),
						Logger:    slog.New(slog.DiscardHandler),
					}, out)
				}()
				for n := 0; n < benchStreamRows; {
					select {
					case txn := <-out:
						n += len(txn.Changes)
					case err := <-done:
						b.Fatalf("stream ended after %d of %d rows: %v", n, benchStreamRows, err)
					}
				}
				b.StopTimer()
				elapsed += time.Since(began)
				cpu += processCPU() - cpu0
				runtime.ReadMemStats(&ms1)
				mallocs += ms1.Mallocs - ms0.Mallocs
				cancel()
				<-done
				rconn.Close(ctx)
			}
			rows := float64(b.N * benchStreamRows)
			b.ReportMetric(float64(elapsed.Nanoseconds())/rows, "ns/row")
			b.ReportMetric(float64(cpu.Nanoseconds())/rows, "cpu_ns/row")
			b.ReportMetric(float64(mallocs)/rows, "allocs/row")
			b.ReportMetric(rows/elapsed.Seconds(), "rows/s")
		})
	}
}

// processCPU is this process's user+system CPU time: the stream's cost,
// whatever the walsender's speed.
func processCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
