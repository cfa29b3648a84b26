package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

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
				catchUpOnce(b, n, bl.perTxn(n), false)
			}
		})
	}
}

// BenchmarkCatchUpBusy is BenchmarkCatchUp's batch100 with a neighbour: a
// process that keeps one core busy (a shell loop, as `stress -c 1` would)
// from before pg_recvlogical starts until pgpilot has delivered, so both
// drains share the machine with it, as a sidecar shares its node. pgpilot
// sends to a stand-in that only counts what it receives (counter), so the
// stand-in's own work is not charged to pgpilot's time. Run it
// several times (-count 5): the table printed at the end has a line per
// run and the worst of each column; the goal is every run, not the median.
// Beside pgpilot's CPU per change is the decoder's: the walsender decoding
// for pg_recvlogical plus pg_recvlogical itself (what draining the slot
// costs with nothing done to the changes).
func BenchmarkCatchUpBusy(b *testing.B) {
	n := benchRows()
	for range b.N {
		catchUpOnce(b, n, 100, true)
	}
}

func catchUpOnce(b *testing.B, n, perTxn int, loaded bool) {
	b.StopTimer()
	var e *env
	if loaded {
		e = newCountingEnv(b)
	} else {
		e = newEnv(b, bulkAllowed)
	}
	e.initialSync(0)
	recvSlot := e.slot + "_recv"
	if _, err := e.conn.Exec(context.Background(), `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, recvSlot); err != nil {
		b.Fatal(err)
	}
	writeStart := time.Now()
	end := e.writeRows(n, perTxn)
	b.Logf("wrote %d rows in transactions of %d in %s; end %s", n, perTxn, time.Since(writeStart).Round(time.Millisecond), end)

	waitQuiet(b, e.pg.DataDir)
	if loaded {
		stop := busyNeighbour(b)
		defer stop()
	}
	before := sampleMachine(e.pg.DataDir)
	recvDecoder := e.followWalsender(recvSlot)
	recvTook, recvCPU := e.recvlogical(recvSlot, end)
	recvWalsender := recvDecoder.stop()

	selfBefore := selfCPU()
	b.StartTimer()
	began := time.Now()
	p := e.startPgpilot()
	decoder := e.followWalsender(e.slot)
	delivered := e.waitFor("every row delivered", 30*time.Minute, func() bool { return e.accepted() >= n })
	b.StopTimer()
	walsender := decoder.stop()
	standIn := selfCPU() - selfBefore
	others := before.foreignCores(e.pg.DataDir)
	checkpointed := e.waitFor("checkpoint past the end", 5*time.Minute, func() bool { return e.checkpointLSN() >= end })
	u := p.stop()
	if got := e.accepted(); got != n {
		b.Fatalf("stand-in holds %d companies, want %d", got, n)
	}

	took := delivered.Sub(began)
	perChange := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 / float64(n) }
	report(b, float64(n)/took.Seconds(), "pgpilot_rows/s")
	report(b, float64(n)/recvTook.Seconds(), "recvlogical_rows/s")
	report(b, recvTook.Seconds()/took.Seconds(), "ratio")
	report(b, took.Seconds(), "pgpilot_s")
	report(b, checkpointed.Sub(began).Seconds(), "ckpt_s")
	report(b, recvTook.Seconds(), "recvlogical_s")
	report(b, u.cpu.Seconds()/float64(n)*100_000, "cpu_s/100k")
	report(b, recvCPU.Seconds()/float64(n)*100_000, "recv_cpu_s/100k")
	// The decoder: the walsender that decoded for pg_recvlogical, and
	// pg_recvlogical; pgpilot's CPU per change against it.
	report(b, perChange(u.cpu), "cpu_us/change")
	report(b, perChange(u.sys), "sys_us/change")
	report(b, float64(u.wrote)/float64(n), "written_bytes/change") // files and sockets
	report(b, perChange(recvWalsender+recvCPU), "decoder_us/change")
	report(b, perChange(u.cpu)/perChange(recvWalsender+recvCPU), "cpu_ratio")
	report(b, perChange(walsender), "pgpilot_walsender_us/change")
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
	b.Logf("pgpilot %s (%.0f rows/s, checkpoint %s), pg_recvlogical %s (%.0f rows/s): ratio %.3f; pgpilot CPU %s (%.2f µs a change, the decoder's %.2f), peak RSS %.1f MB; %d real-time calls, %d bulk jobs; other processes %.2f cores",
		took.Round(time.Millisecond), float64(n)/took.Seconds(), checkpointed.Sub(began).Round(time.Millisecond),
		recvTook.Round(time.Millisecond), float64(n)/recvTook.Seconds(), recvTook.Seconds()/took.Seconds(),
		u.cpu.Round(time.Millisecond), perChange(u.cpu), perChange(recvWalsender+recvCPU), float64(u.peakRSS)/(1<<20), calls, jobs, others)
}

// busyNeighbour starts a process that keeps one core busy (a shell's empty
// loop) and returns what stops it.
func busyNeighbour(b *testing.B) (stop func()) {
	b.Helper()
	cmd := exec.Command("sh", "-c", "while :; do :; done")
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	stop = func() {
		_ = cmd.Process.Kill()
		<-done
	}
	b.Cleanup(stop) // a second stop finds it gone
	return stop
}

// cpuFollower follows the CPU time of the walsender streaming one slot.
type cpuFollower struct {
	last atomic.Int64 // ns of CPU time, as last read
	quit chan struct{}
	done chan struct{}
}

// followWalsender follows the walsender of slot from when a client starts
// streaming it until stop, or until it exits. The time comes from
// /proc/PID/schedstat (nanoseconds on a CPU), read every 2 ms: at most the
// last 2 ms of its work are missed.
func (e *env) followWalsender(slot string) *cpuFollower {
	e.b.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, e.url) // e.conn is not for another goroutine
	if err != nil {
		e.b.Fatal(err)
	}
	f := &cpuFollower{quit: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(f.done)
		defer conn.Close(ctx)
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		pid := 0
		for {
			select {
			case <-f.quit:
				return
			case <-tick.C:
			}
			if pid == 0 {
				var active *int32
				if err := conn.QueryRow(ctx, `SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&active); err == nil && active != nil {
					pid = int(*active)
				}
				continue
			}
			ns, ok := schedTime(pid)
			if !ok {
				return // exited: the last reading stands
			}
			f.last.Store(ns)
		}
	}()
	return f
}

// stop ends the following and returns the CPU time last read.
func (f *cpuFollower) stop() time.Duration {
	select {
	case <-f.done:
	default:
		close(f.quit)
		<-f.done
	}
	return time.Duration(f.last.Load())
}

// schedTime is a process's time on a CPU, in ns, from /proc/PID/schedstat.
func schedTime(pid int) (int64, bool) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/schedstat", pid))
	if err != nil {
		return 0, false
	}
	f := strings.Fields(string(data))
	if len(f) == 0 {
		return 0, false
	}
	ns, err := strconv.ParseInt(f[0], 10, 64)
	return ns, err == nil
}

// deliveries counts the real-time identify calls and bulk jobs the
// stand-in accepted.
func deliveries(e *env) (calls, jobs int) {
	if e.count != nil {
		return e.count.deliveries()
	}
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
