package bench

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/pgpilot/pgpilot/state"
)

// backlogs are the shapes of WAL a catch-up drains: the same N rows written
// as many small transactions, as single-row transactions, or as one.
var backlogs = []struct {
	name   string
	perTxn func(n int) int
}{
	{"batch100", func(int) int { return 100 }},
	{"single", func(int) int { return 1 }},
	{"onebig", func(n int) int { return n }},
}

// BenchmarkCatchUp is the catch-up after an outage: with pgpilot stopped
// (its slot made and the initial sync of an empty table done), N rows are
// written; then the same WAL is drained once by pg_recvlogical (pgoutput,
// to /dev/null, from a second slot made at the same point) and once by the
// pgpilot binary into an unlimited stand-in (real-time calls and bulk jobs,
// as pgpilot sizes them; see newEnv). Reported: rows/s of each and their
// ratio (goal ≥ 1), pgpilot's CPU seconds per 100k changes, its peak RSS
// (VmHWM), and how the rows went out (real-time calls, bulk jobs).
//
// pgpilot's time is until the stand-in has accepted every row; ckpt_s is
// until its durable checkpoint has passed the end position as well.
func BenchmarkCatchUp(b *testing.B) {
	n := benchRows()
	for _, bl := range backlogs {
		b.Run(bl.name, func(b *testing.B) {
			for range b.N {
				catchUpOnce(b, n, bl.perTxn(n))
			}
		})
	}
}

func catchUpOnce(b *testing.B, n, perTxn int) {
	b.StopTimer()
	e := newEnv(b, bulkAllowed)
	e.initialSync(0)
	recvSlot := e.slot + "_recv"
	if _, err := e.conn.Exec(context.Background(), `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, recvSlot); err != nil {
		b.Fatal(err)
	}
	writeStart := time.Now()
	end := e.writeRows(n, perTxn)
	b.Logf("wrote %d rows in transactions of %d in %s; end %s", n, perTxn, time.Since(writeStart).Round(time.Millisecond), end)

	waitQuiet(b, e.pg.DataDir)
	before := sampleMachine(e.pg.DataDir)
	recvTook, recvCPU := e.recvlogical(recvSlot, end)

	selfBefore := selfCPU()
	b.StartTimer()
	began := time.Now()
	p := e.startPgpilot()
	delivered := e.waitFor("every row delivered", 30*time.Minute, func() bool { return e.up.Accepted() >= n })
	b.StopTimer()
	standIn := selfCPU() - selfBefore
	others := before.foreignCores(e.pg.DataDir)
	checkpointed := e.waitFor("checkpoint past the end", 5*time.Minute, func() bool { return e.checkpointLSN() >= end })
	u := p.stop()
	if got := len(e.up.Companies()); got != n {
		b.Fatalf("stand-in holds %d companies, want %d", got, n)
	}

	took := delivered.Sub(began)
	report(b, float64(n)/took.Seconds(), "pgpilot_rows/s")
	report(b, float64(n)/recvTook.Seconds(), "recvlogical_rows/s")
	report(b, recvTook.Seconds()/took.Seconds(), "ratio")
	report(b, took.Seconds(), "pgpilot_s")
	report(b, checkpointed.Sub(began).Seconds(), "ckpt_s")
	report(b, recvTook.Seconds(), "recvlogical_s")
	report(b, u.cpu.Seconds()/float64(n)*100_000, "cpu_s/100k")
	report(b, recvCPU.Seconds()/float64(n)*100_000, "recv_cpu_s/100k")
	report(b, standIn.Seconds()/float64(n)*100_000, "standin_cpu_s/100k")
	report(b, float64(u.peakRSS)/(1<<20), "peak_MB")
	report(b, float64(u.peakAnon)/(1<<20), "peak_anon_MB")
	report(b, float64(u.peakFile)/(1<<20), "peak_file_MB")
	if fi, err := os.Stat(filepath.Join(e.stateDir, state.StoreFile)); err == nil {
		report(b, float64(fi.Size())/(1<<20), "store_MB") // the no-op index, mapped by bbolt
	}
	calls, jobs := deliveries(e)
	report(b, float64(calls), "realtime_calls")
	report(b, float64(jobs), "bulk_jobs")
	report(b, others, "others_cores")
	b.Logf("pgpilot %s (%.0f rows/s, checkpoint %s), pg_recvlogical %s (%.0f rows/s): ratio %.3f; pgpilot CPU %s, peak RSS %.1f MB; other processes %.2f cores",
		took.Round(time.Millisecond), float64(n)/took.Seconds(), checkpointed.Sub(began).Round(time.Millisecond),
		recvTook.Round(time.Millisecond), float64(n)/recvTook.Seconds(), recvTook.Seconds()/took.Seconds(),
		u.cpu.Round(time.Millisecond), float64(u.peakRSS)/(1<<20), others)
}

// deliveries counts the real-time identify calls and bulk jobs the
// stand-in accepted.
func deliveries(e *env) (calls, jobs int) {
	for _, r := range e.up.Requests() {
		if r.Status/100 != 2 {
			continue
		}
		switch r.Path {
		case "/v1/companies/identify":
			calls++
		case "/v1/companies/bulk_identify":
			jobs++
		}
	}
	return calls, jobs
}

// recvlogical drains slot up to end with pg_recvlogical into /dev/null:
// the floor, decoding and transfer with nothing done to the changes.
func (e *env) recvlogical(slot string, end pglogrepl.LSN) (took, cpu time.Duration) {
	e.b.Helper()
	bin := filepath.Join(e.pg.BinDir, "pg_recvlogical")
	cmd := exec.Command(bin, "-d", e.url, "--slot", slot, "--start", "--endpos", end.String(), "--no-loop",
		"-o", "proto_version=1", "-o", "publication_names="+e.slot, "-f", "/dev/null")
	began := time.Now()
	out, err := cmd.CombinedOutput()
	took = time.Since(began)
	if err != nil {
		e.b.Fatalf("pg_recvlogical: %v\n%s", err, out)
	}
	return took, cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
}

// BenchmarkCatchUpInProcess is BenchmarkCatchUp's pgpilot side run inside
// the benchmark (daemon.Run), for -cpuprofile and -memprofile. The stand-in
// shares the process: read profiles by package (pprof -focus).
func BenchmarkCatchUpInProcess(b *testing.B) {
	n := benchRows()
	for _, bl := range backlogs {
		b.Run(bl.name, func(b *testing.B) {
			for range b.N {
				catchUpInProcessOnce(b, n, bl.perTxn(n))
			}
		})
	}
}

func catchUpInProcessOnce(b *testing.B, n, perTxn int) {
	b.StopTimer()
	e := newEnv(b, bulkAllowed)
	ip := e.startInProcess()
	e.waitFor("initial sync", 10*time.Minute, e.initialSyncDone)
	ip.stop()
	end := e.writeRows(n, perTxn)

	b.StartTimer()
	began := time.Now()
	ip = e.startInProcess()
	if path := os.Getenv("PGPILOT_BENCH_HEAPPROFILE"); path != "" {
		// What is live halfway through the drain: the backlog at its
		// largest. (-memprofile is written at the end, when it is gone.)
		e.waitFor("half the rows delivered", 30*time.Minute, func() bool { return e.up.Accepted() >= n/2 })
		writeHeapProfile(b, path)
	}
	delivered := e.waitFor("every row delivered", 30*time.Minute, func() bool { return e.up.Accepted() >= n })
	b.StopTimer()
	e.waitFor("checkpoint past the end", 5*time.Minute, func() bool { return e.checkpointLSN() >= end })
	ip.stop()
	took := delivered.Sub(began)
	report(b, float64(n)/took.Seconds(), "pgpilot_rows/s")
	b.Logf("in-process drain of %d rows: %s", n, took.Round(time.Millisecond))
}

func writeHeapProfile(b *testing.B, path string) {
	b.Helper()
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	runtime.GC() // the profile shows the heap as of the last collection
	if err := pprof.WriteHeapProfile(f); err != nil {
		b.Fatal(err)
	}
}
