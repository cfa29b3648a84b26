package bench

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// BenchmarkLatency measures commit → Userpilot latency on the real-time
// path at a steady 10, 100 and 1,000 changes/s: each change is a
// single-row INSERT of a new company, committed on a fixed schedule (open
// loop: the i-th commit is due at start + i/rate whatever happened to the
// ones before, so a stall shows as latency instead of as fewer
// measurements) by a pool of connections. Latency is from the scheduled
// commit time to the stand-in receiving the company's identify request.
// Reported: p50, p99 and max in ms, pgpilot's CPU (seconds per 100k
// changes, and % of one core), and how late the writer itself committed
// (p99: if that grows, the writer, not pgpilot, is behind).
//
// PGPILOT_BENCH_LATENCY_SECONDS sets how long each rate runs (default 15).
func BenchmarkLatency(b *testing.B) { benchmarkLatency(b, false) }

// BenchmarkLatencyInProcess is BenchmarkLatency with pgpilot run inside
// the benchmark (daemon.Run), for -cpuprofile; it reports no CPU figures.
func BenchmarkLatencyInProcess(b *testing.B) { benchmarkLatency(b, true) }

func benchmarkLatency(b *testing.B, inProc bool) {
	seconds := envInt("PGPILOT_BENCH_LATENCY_SECONDS", 15)
	for _, rate := range []int{10, 100, 1000} {
		b.Run(fmt.Sprintf("rate=%d", rate), func(b *testing.B) {
			for range b.N {
				latencyOnce(b, rate, time.Duration(seconds)*time.Second, inProc)
			}
		})
	}
}

const latencyWriters = 8

func latencyOnce(b *testing.B, rate int, d time.Duration, inProc bool) {
	b.StopTimer()
	ctx := context.Background()
	e := newEnv(b, realtimeOnly)
	conns := make([]*pgx.Conn, latencyWriters)
	for i := range conns {
		c, err := pgx.Connect(ctx, e.url)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close(ctx)
		conns[i] = c
	}
	var p *proc
	var ip *inProcess
	if inProc {
		ip = e.startInProcess()
	} else {
		p = e.startPgpilot()
	}
	e.waitFor("initial sync", 5*time.Minute, e.initialSyncDone)
	waitQuiet(b, e.pg.DataDir)
	before := sampleMachine(e.pg.DataDir)
	pgpilotCPU := func() time.Duration {
		if p == nil {
			return 0
		}
		return procCPU(p.cmd.Process.Pid)
	}
	cpu0 := pgpilotCPU()

	n := int(float64(rate) * d.Seconds())
	period := time.Second / time.Duration(rate)
	start := time.Now().Add(50 * time.Millisecond)
	due := func(i int) time.Time { return start.Add(time.Duration(i) * period) }
	committed := make([]time.Time, n)
	jobs := make(chan int, n) // never blocks the schedule
	var wg sync.WaitGroup
	errs := make(chan error, latencyWriters)
	for _, c := range conns {
		wg.Go(func() {
			for i := range jobs {
				id := i + 1
				_, err := c.Exec(ctx, `INSERT INTO companies (id, name, plan, seats, monthly_spend, trial, created_at)
					VALUES ($1::bigint, 'Company ' || $1::bigint, 'pro', $1::bigint % 500, ($1::bigint * 12.34)::numeric(38,10), true, now())`, id)
				if err != nil {
					errs <- err
					return
				}
				committed[i] = time.Now()
			}
		})
	}
	b.StartTimer()
	for i := range n {
		time.Sleep(time.Until(due(i)))
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	select {
	case err := <-errs:
		b.Fatal(err)
	default:
	}
	e.waitFor("every change delivered", 5*time.Minute, func() bool { return e.up.Accepted() >= n })
	b.StopTimer()
	cpu := pgpilotCPU() - cpu0
	others := before.foreignCores(e.pg.DataDir)
	if inProc {
		ip.stop()
	} else {
		p.stop()
	}

	received := make([]time.Time, n)
	for _, r := range e.up.Requests() {
		if r.Path != "/v1/companies/identify" || r.Status != http.StatusAccepted || len(r.CompanyIDs) != 1 {
			continue
		}
		id, err := strconv.Atoi(r.CompanyIDs[0])
		if err != nil || id < 1 || id > n {
			continue
		}
		if received[id-1].IsZero() || r.Time.Before(received[id-1]) {
			received[id-1] = r.Time
		}
	}
	lat := make([]float64, n)
	lag := make([]float64, n)
	for i := range n {
		if received[i].IsZero() {
			b.Fatalf("company %d never reached the stand-in", i+1)
		}
		lat[i] = float64(received[i].Sub(due(i)).Microseconds()) / 1000
		lag[i] = float64(committed[i].Sub(due(i)).Microseconds()) / 1000
	}
	slices.Sort(lat)
	slices.Sort(lag)
	report(b, percentile(lat, 50), "p50_ms")
	report(b, percentile(lat, 99), "p99_ms")
	report(b, lat[n-1], "max_ms")
	if !inProc {
		report(b, cpu.Seconds()/float64(n)*100_000, "cpu_s/100k")
		report(b, 100*cpu.Seconds()/d.Seconds(), "cpu_%")
	}
	report(b, percentile(lag, 99), "writer_p99_ms")
	report(b, others, "others_cores")
	b.Logf("%d changes at %d/s: commit → Userpilot p50 %.2f ms, p99 %.2f ms, max %.2f ms (writer's own commit p99 %.2f ms); pgpilot CPU %s; other processes %.2f cores",
		n, rate, percentile(lat, 50), percentile(lat, 99), lat[n-1], percentile(lag, 99), cpu.Round(time.Millisecond), others)
}

// percentile of sorted values, nearest rank.
func percentile(sorted []float64, p float64) float64 {
	i := int(math.Ceil(p/100*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}
