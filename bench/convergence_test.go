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

	"github.com/pgpilot/pgpilot/config"
	"github.com/pgpilot/pgpilot/daemon"
	"github.com/pgpilot/pgpilot/delivery"
	"github.com/pgpilot/pgpilot/internal/pgtest"
	"github.com/pgpilot/pgpilot/internal/workload"
	"github.com/pgpilot/pgpilot/userpilot"
	"github.com/pgpilot/pgpilot/userpilot/userpilottest"
)

// BenchmarkConvergence bursts N companies × U writes at a stand-in whose
// budgets are scaled down (real time rt requests/s with 429s beyond it,
// bulk jobs at bulk records/s, one job at a time) and measures how long
// until Userpilot equals the table. The floor is N/(rt+bulk): both budgets
// spent on distinct companies only. Reported: time ÷ floor (target ≤ 1.2),
// real-time requests, 429s, 409s, bulk jobs.
//
// The "told" cases give pgpilot bulk_rate and tuned job timings, as the
// benchmark did before pgpilot measured Userpilot. The "learn" cases are
// docs/performance.md's: pgpilot is told only rate_limit (bulk_rate, the
// job overhead and the poll interval are the defaults, 20 records/s, 10 s
// and 2 s), so the bulk path's speed is what it measures, whichever side of
// the default the stand-in's is. Each run starts from a new state
// directory: nothing learned before carries over.
func BenchmarkConvergence(b *testing.B) {
	cases := []convergeCase{
		{companies: 2000, writes: 3, rt: 50, bulk: 100, told: true},
		{companies: 6000, writes: 3, rt: 100, bulk: 200, told: true},
		{companies: 3000, writes: 6, rt: 100, bulk: 300},
		{companies: 1500, writes: 6, rt: 20, bulk: 10},
	}
	pg, err := pgtest.Start(context.Background(), pgtest.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer pg.Stop()
	for _, c := range cases {
		mode := "learn"
		if c.told {
			mode = "told"
		}
		b.Run(fmt.Sprintf("%s/companies=%d/writes=%d/rt=%g/bulk=%g", mode, c.companies, c.writes, c.rt, c.bulk), func(b *testing.B) {
			for range b.N {
				convergeOnce(b, pg, c)
			}
		})
	}
}

// convergeCase is one burst: companies × writes (an insert, then writes-1
// updates of every row), the stand-in's real-time and bulk budgets, and
// whether pgpilot is told the bulk rate (told) or only rate_limit.
type convergeCase struct {
	companies, writes int
	rt, bulk          float64
	told              bool
}

func convergeOnce(b *testing.B, pg *pgtest.Server, c convergeCase) {
	n, writes, rt, bulk := c.companies, c.writes, c.rt, c.bulk
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
	// Userpilot publishes no Retry-After on its 429s: the stand-in of the
	// cases pgpilot must learn sends none either.
	up := userpilottest.NewServer(userpilottest.Options{APIKey: "k", RateLimit: rt, RetryAfter: c.told, BulkRecordsPerSecond: bulk})
	defer up.Close()
	dir := b.TempDir()
	cfgText := workload.Config(url, workload.SlotName(url), up.URL(), "k", filepath.Join(dir, "state"), rt)
	if c.told {
		cfgText = cfgText[:len(cfgText)-len(workload.Mapping)] // insert bulk_rate under userpilot
		cfgText = insertAfter(cfgText, "  rate_limit:", fmt.Sprintf("  bulk_rate: %g\n", bulk)) + workload.Mapping
	}
	cfgPath := filepath.Join(dir, "pgpilot.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfgText), 0o600); err != nil {
		b.Fatal(err)
	}
	cfg, err := config.Load(cfgPath)
	if err != nil {
		b.Fatal(err)
	}
	// PGPILOT_BENCH_LOG=1 shows pgpilot's debug log (each job measured).
	var logTo io.Writer = io.Discard
	if os.Getenv("PGPILOT_BENCH_LOG") != "" {
		logTo = os.Stderr
	}
	opts := daemon.Options{Config: cfg, Logger: slog.New(slog.NewTextHandler(logTo, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	if c.told {
		opts.Userpilot = userpilot.Options{MinBackoff: 50 * time.Millisecond, MaxBackoff: time.Second}
		// The stand-in has no queueing: a job's cost beyond its
		// records is about one poll.
		opts.Delivery = delivery.Options{BulkOverhead: 500 * time.Millisecond, PollInterval: 250 * time.Millisecond, MinBulk: 50}
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- daemon.Run(runCtx, opts) }()
	defer func() {
		stop()
		<-done
	}()
	if err := workload.WaitInitialSync(ctx, filepath.Join(dir, "state"), time.Minute); err != nil {
		b.Fatal(err)
	}

	// The machine may be shared: wait for it to be quiet, and say how
	// busy others kept it meanwhile (see machine_test.go).
	waitQuiet(b, pg.DataDir)
	machine := sampleMachine(pg.DataDir)
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
	others := machine.foreignCores(pg.DataDir)

	floor := time.Duration(float64(n) / (rt + bulk) * float64(time.Second))
	var requests, rtRequests, tooMany, conflicts, jobs int
	for _, r := range up.Requests() {
		requests++
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
	report(b, took.Seconds()/floor.Seconds(), "x_floor")
	report(b, took.Seconds(), "s_converge")
	report(b, float64(rtRequests), "realtime_requests")
	report(b, float64(jobs), "bulk_jobs")
	report(b, float64(tooMany), "429s")
	report(b, 100*float64(tooMany)/float64(max(1, requests)), "pct_429")
	report(b, float64(conflicts), "409s")
	report(b, others, "other_cores")
	b.Logf("%d companies × %d writes: converged in %s, floor %s (%.2f×); %d requests, %d real-time, %d bulk jobs, %d 429s, %d 409s; other processes used %.2f cores",
		n, writes, took.Round(time.Millisecond), floor, took.Seconds()/floor.Seconds(), requests, rtRequests, jobs, tooMany, conflicts, others)
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
