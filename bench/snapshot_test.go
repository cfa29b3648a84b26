package bench

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/pgpilot/pgpilot/internal/workload"
)

// BenchmarkSnapshot is the first start on a table that already holds N
// rows: the pgpilot binary reads them in key-ordered chunks alongside the
// stream and sends each to an unlimited stand-in. Reported: rows/s until
// the stand-in has every row, the same table's `COPY companies TO STDOUT`
// rows/s and the ratio of the two, pgpilot's CPU
// seconds per 100k rows and its peak RSS.
func BenchmarkSnapshot(b *testing.B) {
	n := benchRows()
	for range b.N {
		snapshotOnce(b, n)
	}
}

func snapshotOnce(b *testing.B, n int) {
	b.StopTimer()
	e := newEnv(b, bulkAllowed)
	if err := workload.Seed(context.Background(), e.conn, n); err != nil {
		b.Fatal(err)
	}
	if _, err := e.conn.Exec(context.Background(), `VACUUM ANALYZE companies`); err != nil {
		b.Fatal(err)
	}
	copyRate := copyRowsPerSecond(b, e, n)
	waitQuiet(b, e.pg.DataDir)
	before := sampleMachine(e.pg.DataDir)
	selfBefore := selfCPU()
	b.StartTimer()
	began := time.Now()
	p := e.startPgpilot()
	delivered := e.waitFor("every row delivered", 30*time.Minute, func() bool { return e.up.Accepted() >= n })
	b.StopTimer()
	standIn := selfCPU() - selfBefore
	others := before.foreignCores(e.pg.DataDir)
	synced := e.waitFor("initial sync checkpointed", 5*time.Minute, func() bool {
		return workload.WaitInitialSync(context.Background(), e.stateDir, 0) == nil
	})
	u := p.stop()
	if got := len(e.up.Companies()); got != n {
		b.Fatalf("stand-in holds %d companies, want %d", got, n)
	}

	took := delivered.Sub(began)
	report(b, float64(n)/took.Seconds(), "pgpilot_rows/s")
	report(b, copyRate, "copy_rows/s")
	report(b, float64(n)/took.Seconds()/copyRate, "ratio")
	report(b, took.Seconds(), "pgpilot_s")
	report(b, synced.Sub(began).Seconds(), "ckpt_s")
	report(b, u.cpu.Seconds()/float64(n)*100_000, "cpu_s/100k")
	report(b, standIn.Seconds()/float64(n)*100_000, "standin_cpu_s/100k")
	report(b, float64(u.peakRSS)/(1<<20), "peak_MB")
	report(b, float64(u.peakAnon)/(1<<20), "peak_anon_MB")
	// Memory must not grow with the table: the stage waits for the
	// pipeline's backlog, whatever N. Not a timing: a slow machine reads
	// the same number of chunks ahead. (Before that wait, 1M rows peaked
	// at 317 MB.)
	if limit := envInt("PGPILOT_BENCH_MAX_ANON_MB", 160); u.peakAnon > int64(limit)<<20 {
		b.Errorf("pgpilot's heap (RssAnon) peaked at %.0f MB snapshotting %d rows, over %d MB: memory is not flat",
			float64(u.peakAnon)/(1<<20), n, limit)
	}
	report(b, others, "others_cores")
	b.Logf("COPY TO STDOUT: %.0f rows/s; ratio %.3f", copyRate, float64(n)/took.Seconds()/copyRate)
	b.Logf("initial sync of %d rows: delivered in %s (%.0f rows/s), checkpointed after %s; pgpilot CPU %s, peak RSS %.1f MB; other processes %.2f cores",
		n, took.Round(time.Millisecond), float64(n)/took.Seconds(), synced.Sub(began).Round(time.Millisecond),
		u.cpu.Round(time.Millisecond), float64(u.peakRSS)/(1<<20), others)
}

// copyRowsPerSecond is the best of three `COPY companies TO STDOUT` runs on
// the table: what reading it costs Postgres and the wire, and no more.
func copyRowsPerSecond(b *testing.B, e *env, n int) float64 {
	b.Helper()
	best := time.Duration(0)
	for range 3 {
		began := time.Now()
		if _, err := e.conn.PgConn().CopyTo(context.Background(), io.Discard, "COPY companies TO STDOUT"); err != nil {
			b.Fatal(err)
		}
		if took := time.Since(began); best == 0 || took < best {
			best = took
		}
	}
	return float64(n) / best.Seconds()
}
