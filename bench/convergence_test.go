// Package bench holds pgpilot's benchmarks. They are benchmarks, not tests:
// run them with
//
//	go test -run '^$' -bench . -benchtime 1x ./bench/
//
// They start their own Postgres and Userpilot stand-in, like the tests.
package bench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgpilot/pgpilot/daemon"
	"github.com/pgpilot/pgpilot/delivery"
	"github.com/pgpilot/pgpilot/internal/pgtest"
	"github.com/pgpilot/pgpilot/internal/workload"
	"github.com/pgpilot/pgpilot/mapping"
	"github.com/pgpilot/pgpilot/userpilot"
	"github.com/pgpilot/pgpilot/userpilot/userpilottest"
)

// BenchmarkConvergence bursts N companies × U writes at a stand-in whose
// budgets are scaled down (real time rt requests/s with 429s beyond it,
// bulk jobs at bulk records/s, one job at a time) and measures how long
// until Userpilot equals the table. The floor is N/(rt+bulk): both budgets
// spent on distinct companies only. Reported: time ÷ floor (target ≤ 1.2),
// real-time requests, 429s, 409s, bulk jobs.
func BenchmarkConvergence(b *testing.B) {
	cases := []struct {
		companies, writes int
		rt, bulk          float64
	}{
		{2000, 3, 50, 100},
		{6000, 3, 100, 200},
	}
	pg, err := pgtest.Start(context.Background(), pgtest.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer pg.Stop()
	for _, c := range cases {
		b.Run(fmt.Sprintf("companies=%d/writes=%d/rt=%g/bulk=%g", c.companies, c.writes, c.rt, c.bulk), func(b *testing.B) {
			for range b.N {
				convergeOnce(b, pg, c.companies, c.writes, c.rt, c.bulk)
			}
		})
	}
}

func convergeOnce(b *testing.B, pg *pgtest.Server, n, writes int, rt, bulk float64) {
	ctx := context.Background()
	url := pg.NewDatabaseT(b)
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close(ctx)
	if err := workload.Create(ctx, conn); err != nil {
		b.Fatal(err)
	}
	up := userpilottest.NewServer(userpilottest.Options{APIKey: "k", RateLimit: rt, RetryAfter: true, BulkRecordsPerSecond: bulk})
	defer up.Close()
	dir := b.TempDir()
	cfgText := workload.Config(url, workload.SlotName(url), up.URL(), "k", filepath.Join(dir, "state"), rt)
	cfgText = cfgText[:len(cfgText)-len(workload.Mapping)] // insert bulk_rate under userpilot
	cfgPath := filepath.Join(dir, "pgpilot.yaml")
	if err := os.WriteFile(cfgPath, []byte(insertAfter(cfgText, "  rate_limit:", fmt.Sprintf("  bulk_rate: %g\n", bulk))+workload.Mapping), 0o600); err != nil {
		b.Fatal(err)
	}
	cfg, err := mapping.Load(cfgPath)
	if err != nil {
		b.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- daemon.Run(runCtx, daemon.Options{Config: cfg, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
			Userpilot: userpilot.Options{MinBackoff: 50 * time.Millisecond, MaxBackoff: time.Second},
			// The stand-in has no queueing: a job's cost beyond its
			// records is about one poll.
			Delivery: delivery.Options{BulkOverhead: 500 * time.Millisecond, PollInterval: 250 * time.Millisecond, MinBulk: 50}})
	}()
	defer func() {
		stop()
		<-done
	}()
	if err := workload.WaitInitialSync(ctx, filepath.Join(dir, "state"), time.Minute); err != nil {
		b.Fatal(err)
	}

	b.ResetTimer()
	start := time.Now()
	if err := workload.Seed(ctx, conn, n); err != nil {
		b.Fatal(err)
	}
	for i := 1; i < writes; i++ {
		if _, err := conn.Exec(ctx, `UPDATE companies SET seats = seats + 1, updated_at = now()`); err != nil {
			b.Fatal(err)
		}
	}
	if err := workload.WaitConverged(ctx, conn, up.Companies, 30*time.Minute); err != nil {
		b.Fatal(err)
	}
	took := time.Since(start)
	b.StopTimer()

	floor := time.Duration(float64(n) / (rt + bulk) * float64(time.Second))
	var rtRequests, tooMany, conflicts, jobs int
	for _, r := range up.Requests() {
		switch {
		case r.Path == "/v1/companies/identify":
			rtRequests++
		case r.Path == "/v1/companies/bulk_identify" && r.Status == 202:
			jobs++
		}
		switch r.Status {
		case 429:
			tooMany++
		case 409:
			conflicts++
		}
	}
	b.ReportMetric(took.Seconds()/floor.Seconds(), "x_floor")
	b.ReportMetric(took.Seconds(), "s_converge")
	b.ReportMetric(float64(rtRequests), "realtime_requests")
	b.ReportMetric(float64(jobs), "bulk_jobs")
	b.ReportMetric(float64(tooMany), "429s")
	b.ReportMetric(float64(conflicts), "409s")
	b.Logf("%d companies × %d writes: converged in %s, floor %s (%.2f×); %d real-time requests, %d bulk jobs, %d 429s, %d 409s",
		n, writes, took.Round(time.Millisecond), floor, took.Seconds()/floor.Seconds(), rtRequests, jobs, tooMany, conflicts)
}

func insertAfter(s, linePrefix, insert string) string {
	for i := 0; i < len(s); {
		j := i
		for j < len(s) && s[j] != '\n' {
			j++
		}
		if len(s[i:j]) >= len(linePrefix) && s[i:i+len(linePrefix)] == linePrefix {
			return s[:j+1] + insert + s[j+1:]
		}
		i = j + 1
	}
	panic("insertAfter: " + linePrefix + " not found")
}
