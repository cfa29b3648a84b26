package bench

// The performance harness: catch-up against pg_recvlogical, memory, latency
// and CPU of the pgpilot binary. One command runs it all and ends with a
// table of medians, ready for docs/performance.md:
//
//	go test -run '^$' -bench 'CatchUp$|Snapshot|Latency$' -benchtime 1x -count 3 -timeout 2h ./bench/
//
// PGPILOT_BENCH_ARGS adds flags to the binary's run (--log-level debug),
// PGPILOT_BENCH_LOGDIR keeps its logs. PGPILOT_BENCH_ROWS scales the row count (default 200000; 1000000 for the
// full-size figures). PGPILOT_BENCH_LATENCY_SECONDS sets how long each
// latency rate runs (default 15). PGPILOT_BENCH_GOMEMLIMIT, if set, is
// given to the pgpilot binary as GOMEMLIMIT. Each measurement first waits
// (up to PGPILOT_BENCH_QUIET_WAIT seconds, default 600) for other processes
// to leave the machine quiet, and reports the cores they used meanwhile. Profiles come from the in-process variant:
//
//	go test -run '^$' -bench 'CatchUpInProcess/batch100' -benchtime 1x -cpuprofile cpu.out -memprofile mem.out ./bench/
//	go test -run '^$' -bench 'LatencyInProcess/rate=1000' -benchtime 1x -cpuprofile cpu.out ./bench/
//
// (PGPILOT_BENCH_HEAPPROFILE=FILE makes CatchUpInProcess write a heap
// profile halfway through the drain, when the backlog in memory is largest.)
//
// On a shared machine timings move with the neighbours; instruction counts
// and profiles of the binary do not: PGPILOT_BENCH_WRAP runs the measured
// binary under another program, e.g.
//
//	PGPILOT_BENCH_ROWS=100000 PGPILOT_BENCH_CHILD_ENV=GODEBUG=asyncpreemptoff=1 \
//	PGPILOT_BENCH_WRAP="valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file=/tmp/cg.%p" \
//	go test -run '^$' -bench 'CatchUp$/batch100' -benchtime 1x ./bench/
//	PGPILOT_BENCH_WRAP="perf record -e cpu-clock -g -o /tmp/perf.data --" go test …
//
// (cg_annotate and perf report read them). PGPILOT_BENCH_ARGS="--log-level debug"
// logs how each bulk job was sized and where its time went.
// BenchmarkCatchUpBusy is the catch-up run several times beside a
// process keeping a core busy, a line per run (see catchup_test.go).
//
// Nothing here runs in the ordinary test suite: there are no Test
// functions, and Postgres starts only when a benchmark asks for it.

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/pgpilot/pgpilot/config"
	"github.com/pgpilot/pgpilot/daemon"
	"github.com/pgpilot/pgpilot/internal/pgtest"
	"github.com/pgpilot/pgpilot/internal/workload"
	"github.com/pgpilot/pgpilot/state"
	"github.com/pgpilot/pgpilot/userpilot/userpilottest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	printMedians(os.Stdout)
	printRuns(os.Stdout)
	shared.stop()
	os.Exit(code)
}

// harness is what every harness benchmark of one `go test` run shares: one
// Postgres and one pgpilot binary, made on first use only.
type harness struct {
	pgOnce  sync.Once
	pg      *pgtest.Server
	pgErr   error
	binOnce sync.Once
	binDir  string
	binary  string
	binErr  error
}

var shared harness

func (h *harness) stop() {
	if h.pg != nil {
		_ = h.pg.Stop()
	}
	if h.binDir != "" {
		_ = os.RemoveAll(h.binDir)
	}
}

// benchPG is the shared Postgres 15. Its defaults (fsync off, 32 MB shared
// buffers) are the test harness's; the pg_recvlogical baseline reads the
// same server, so the comparison is fair.
func benchPG(b *testing.B) *pgtest.Server {
	b.Helper()
	shared.pgOnce.Do(func() {
		shared.pg, shared.pgErr = pgtest.Start(context.Background(), pgtest.Options{
			// A 1M-row backlog is ~400 MB of WAL: keep checkpoints from
			// running in the middle of a measurement.
			Settings: map[string]string{"max_wal_size": "4GB"},
		})
	})
	if shared.pgErr != nil {
		b.Fatal(shared.pgErr)
	}
	return shared.pg
}

// pgpilotBinary builds the binary once: RSS and CPU are measured on the
// process an operator runs, not on the benchmark's own.
func pgpilotBinary(b *testing.B) string {
	b.Helper()
	shared.binOnce.Do(func() {
		dir, err := os.MkdirTemp("", "pgpilot-bench-")
		if err != nil {
			shared.binErr = err
			return
		}
		shared.binDir, shared.binary = dir, filepath.Join(dir, "pgpilot")
		args := []string{"build", "-o", shared.binary}
		if os.Getenv("PGPILOT_BENCH_HEAPPROFILE") != "" {
			// Heap profiles at each new peak (internal/heapprofile).
			args = append(args, "-tags", "heapprofile")
		}
		out, err := exec.Command("go", append(args, "github.com/pgpilot/pgpilot")...).CombinedOutput()
		if err != nil {
			shared.binErr = fmt.Errorf("build pgpilot: %w\n%s", err, out)
		}
	})
	if shared.binErr != nil {
		b.Fatal(shared.binErr)
	}
	return shared.binary
}

// benchRows is N, the size of a backlog.
func benchRows() int { return envInt("PGPILOT_BENCH_ROWS", 200_000) }

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

const benchAPIKey = "bench-key"

// standInBulkRate is the unlimited stand-in's bulk speed (records/s): far
// beyond what pgpilot can feed it on these two cores.
const standInBulkRate = 1_000_000

// env is one measurement's database, stand-in and config.
type env struct {
	b        *testing.B
	pg       *pgtest.Server
	db       string
	url      string
	conn     *pgx.Conn
	up       *userpilottest.Server
	slot     string
	dir      string
	cfgPath  string
	stateDir string
	users    bool // the config has a users section beside the companies
	// count, when set, is the stand-in pgpilot sends to instead of up
	// (newCountingEnv).
	count *counter
}

// accepted is how many companies the stand-in pgpilot sends to holds.
func (e *env) accepted() int {
	if e.count != nil {
		return e.count.Accepted()
	}
	return e.up.Accepted()
}

// Delivery paths a benchmark's config allows.
const (
	realtimeOnly = false // every company one real-time call (the latency benchmark)
	bulkAllowed  = true  // a backlog may go out in bulk jobs, as pgpilot decides
)

// newEnv makes a database with the companies table, an unlimited stand-in
// and a config that tells pgpilot so: rate_limit 100000 requests/s and, with
// bulk, bulk_rate 1000000 records/s. Against Userpilot an operator writes
// the published figures (10 and 20, the defaults); here they would measure
// pgpilot's own limiter instead of pgpilot. What pgpilot does with a budget
// that high is its business: it sizes bulk jobs from what each path
// achieves, not from the budget alone. Without bulk (bulk_rate 0) every
// company is one real-time call.
// setDelivery writes settings of the config file's delivery: section
// (each "key: value") into the environment's config.
func (e *env) setDelivery(settings ...string) {
	e.b.Helper()
	cfg, err := os.ReadFile(e.cfgPath)
	if err != nil {
		e.b.Fatal(err)
	}
	section := "delivery:\n  " + strings.Join(settings, "\n  ") + "\ncompanies:\n"
	if err := os.WriteFile(e.cfgPath, []byte(strings.Replace(string(cfg), "companies:\n", section, 1)), 0o600); err != nil {
		e.b.Fatal(err)
	}
}

func newEnv(b *testing.B, bulk bool) *env {
	b.Helper()
	return newEnvWith(b, bulk, false)
}

// newCountingEnv is newEnv (bulk allowed) with pgpilot sending to a stand-in
// that only counts what it receives (counter): its own work is not charged
// to pgpilot's time.
func newCountingEnv(b *testing.B) *env {
	b.Helper()
	return newEnvWith(b, bulkAllowed, true)
}

func newEnvWith(b *testing.B, bulk, counting bool) *env {
	b.Helper()
	// Unlimited, with a speed: a job of 10,000 records is done 10 ms after
	// its submission, polled or not, and says when it ended. (A stand-in
	// without a speed completes a job at its first poll, so the job lasted
	// as long as pgpilot chose to wait, and the estimate learned from it
	// was whatever pgpilot started with.)
	up := userpilottest.NewServer(userpilottest.Options{APIKey: benchAPIKey, BulkRecordsPerSecond: standInBulkRate})
	e := newDatabaseEnv(b, up)
	endpoint := up.URL()
	if counting {
		e.count = newCounter(benchAPIKey, standInBulkRate)
		endpoint = e.count.URL()
	}
	cfg := workload.Config(e.url, e.slot, endpoint, benchAPIKey, e.stateDir, 100_000)
	bulkRate := "0"
	if bulk {
		bulkRate = "1000000"
	}
	cfg = strings.Replace(cfg, "  rate_limit: 100000\n", "  rate_limit: 100000\n  bulk_rate: "+bulkRate+"\n", 1)
	if err := os.WriteFile(e.cfgPath, []byte(cfg), 0o600); err != nil {
		b.Fatal(err)
	}
	return e
}

// newDatabaseEnv makes a database of its own on the benchmarks' server
// with the workload's tables, beside the stand-in up, and drops it at
// the end; the config is the caller's to write.
func newDatabaseEnv(b *testing.B, up *userpilottest.Server) *env {
	b.Helper()
	ctx := context.Background()
	pg := benchPG(b)
	url := pg.NewDatabaseT(b)
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		b.Fatal(err)
	}
	if err := workload.Create(ctx, conn); err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	e := &env{b: b, pg: pg, url: url, conn: conn, up: up, slot: workload.SlotName(url), dir: dir,
		cfgPath: filepath.Join(dir, "pgpilot.yaml"), stateDir: filepath.Join(dir, "state")}
	e.db = url[strings.LastIndex(url, "/")+1:]
	e.db = e.db[:strings.Index(e.db, "?")]
	b.Cleanup(e.close)
	return e
}

// close drops the database and its slots, so WAL is not kept for them and
// slots do not run out over many runs.
func (e *env) close() {
	ctx := context.Background()
	e.up.Close()
	if e.count != nil {
		e.count.Close()
	}
	_, _ = e.conn.Exec(ctx, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
		WHERE database = current_database() AND NOT active`)
	e.conn.Close(ctx)
	_ = e.pg.Exec(ctx, "postgres", fmt.Sprintf("DROP DATABASE IF EXISTS %s WITH (FORCE)", pgx.Identifier{e.db}.Sanitize()))
}

// insertSQL inserts companies lo..hi (SQL expressions) with the values
// workload.Seed uses: every mapped type (text, integer, numeric(38,10),
// boolean, timestamptz) on every row.
const insertSQL = `INSERT INTO companies (id, name, plan, seats, monthly_spend, trial, created_at, notes)
	SELECT g, 'Company ' || g, (ARRAY['free','pro','enterprise'])[1 + g %% 3], g %% 500,
	       (g * 12.34)::numeric(38,10), g %% 2 = 0, timestamptz '2024-01-01 00:00:00+00' + g * interval '1 hour', NULL
	FROM generate_series(%s, %s) g`

// writeRows inserts companies 1..n in transactions of perTxn rows (the
// last may be shorter), all server-side so the writer costs no round trips,
// and returns the WAL position after the last commit.
func (e *env) writeRows(n, perTxn int) pglogrepl.LSN {
	return e.writeRowsOf(insertSQL, 0, n, perTxn)
}

// writeRowsOf is writeRows with another insert (a template of two SQL
// expressions, the first and last id, like insertSQL) and ids after off:
// off+1..off+n.
func (e *env) writeRowsOf(template string, off, n, perTxn int) pglogrepl.LSN {
	e.b.Helper()
	ctx := context.Background()
	var err error
	if perTxn >= n {
		_, err = e.conn.Exec(ctx, fmt.Sprintf(template, strconv.Itoa(off+1), strconv.Itoa(off+n)))
	} else {
		// COMMIT inside DO: one transaction per batch, no client round trips.
		_, err = e.conn.Exec(ctx, fmt.Sprintf(`DO $$
			BEGIN
				FOR b IN 0..%d LOOP
					`+template+`;
					COMMIT;
				END LOOP;
			END $$`, (n-1)/perTxn, fmt.Sprintf("b * %d + %d", perTxn, off+1), fmt.Sprintf("least((b + 1) * %d, %d) + %d", perTxn, n, off)))
	}
	if err != nil {
		e.b.Fatalf("write %d rows in transactions of %d: %v", n, perTxn, err)
	}
	return e.walLSN()
}

func (e *env) walLSN() pglogrepl.LSN {
	e.b.Helper()
	var s string
	if err := e.conn.QueryRow(context.Background(), `SELECT pg_current_wal_lsn()::text`).Scan(&s); err != nil {
		e.b.Fatal(err)
	}
	lsn, err := pglogrepl.ParseLSN(s)
	if err != nil {
		e.b.Fatal(err)
	}
	return lsn
}

// checkpointLSN is pgpilot's durable checkpoint, 0 until there is one.
func (e *env) checkpointLSN() pglogrepl.LSN {
	cp, ok, err := state.ReadCheckpoint(e.stateDir)
	if err != nil || !ok || cp.InitialSync != state.InitialSyncDone {
		return 0
	}
	return pglogrepl.LSN(cp.LSN)
}

// initialSyncDone reports whether the initial sync is over: the slot made
// and the snapshot job delivered. (The checkpoint says "done" as soon as
// the slot exists, with the job still on it: a benchmark that stopped
// pgpilot then had its next start snapshot the rows it wrote meanwhile,
// each row then mapped twice, once from a chunk and once from the stream.)
//
// With users beside the companies, the users' initial sync follows the
// companies': done when the checkpoint says the users were sent too.
func (e *env) initialSyncDone() bool {
	cp, ok, err := state.ReadCheckpoint(e.stateDir)
	return err == nil && ok && cp.InitialSync == state.InitialSyncDone && cp.Snapshot == nil && (!e.users || cp.UsersSynced)
}

// waitFor polls cond every few milliseconds and returns when it held.
func (e *env) waitFor(what string, timeout time.Duration, cond func() bool) time.Time {
	e.b.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			e.b.Fatalf("%s: not within %s", what, timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return time.Now()
}

// proc is a running pgpilot binary.
type proc struct {
	b    *testing.B
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	// wrapped: run under PGPILOT_BENCH_WRAP, whose exit status is its own
	wrapped bool
	// peakAnon is the largest RssAnon seen (bytes), sampled every 50ms:
	// VmHWM also counts the pages of the no-op index that bbolt maps,
	// which the kernel can drop at will; the Go heap and runtime cannot be.
	peakAnon atomic.Int64
	// peakFile is the largest RssFile seen: the program's text and the
	// store's pages, which bbolt maps.
	peakFile atomic.Int64
}

// startPgpilot runs `pgpilot run` on e's config, the run a benchmark
// measures; its log goes to a file shown if the benchmark fails.
func (e *env) startPgpilot() *proc {
	e.b.Helper()
	return e.startBinary(strings.Fields(os.Getenv("PGPILOT_BENCH_WRAP")))
}

// startBinary runs `pgpilot run` under wrap (none: nil). PGPILOT_BENCH_WRAP
// wraps the runs benchmarks measure, e.g. "valgrind --tool=cachegrind
// --cache-sim=no --cachegrind-out-file=/tmp/cg.%p" or "perf record -g -o
// /tmp/perf.data --": instruction counts and profiles are repeatable where
// a shared machine's timings are not. (CPU and memory figures are then the
// wrapper's.)
func (e *env) startBinary(wrap []string) *proc {
	e.b.Helper()
	// PGPILOT_BENCH_LOGDIR keeps the logs (e.g. with
	// PGPILOT_BENCH_CHILD_ENV=GODEBUG=gctrace=1, to see the heap at each
	// collection).
	logPath := filepath.Join(cmp.Or(os.Getenv("PGPILOT_BENCH_LOGDIR"), e.dir), fmt.Sprintf("pgpilot-%d.log", time.Now().UnixNano()))
	f, err := os.Create(logPath)
	if err != nil {
		e.b.Fatal(err)
	}
	// PGPILOT_BENCH_ARGS adds flags to `pgpilot run` (--log-level debug:
	// how each bulk job was sized).
	args := append([]string{pgpilotBinary(e.b), "run", "--config", e.cfgPath}, strings.Fields(os.Getenv("PGPILOT_BENCH_ARGS"))...)
	args = append(wrap, args...)
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	// A benchmark killed (its -timeout) takes its pgpilot with it: an
	// orphan would go on reading its slot and taking the cores the next
	// measurement counts on.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if limit := os.Getenv("PGPILOT_BENCH_GOMEMLIMIT"); limit != "" {
		// For pgpilot only: the benchmark and its stand-in keep theirs.
		cmd.Env = append(os.Environ(), "GOMEMLIMIT="+limit)
	}
	if extra := os.Getenv("PGPILOT_BENCH_CHILD_ENV"); extra != "" {
		if cmd.Env == nil {
			cmd.Env = os.Environ()
		}
		cmd.Env = append(cmd.Env, extra)
	}
	if err := cmd.Start(); err != nil {
		e.b.Fatal(err)
	}
	p := &proc{b: e.b, cmd: cmd, log: logPath, done: make(chan struct{}), wrapped: len(wrap) > 0}
	go func() {
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-p.done:
				return
			case <-tick.C:
				if kb, err := procStatusKB(cmd.Process.Pid, "RssAnon:"); err == nil && kb*1024 > p.peakAnon.Load() {
					p.peakAnon.Store(kb * 1024)
				}
				if kb, err := procStatusKB(cmd.Process.Pid, "RssFile:"); err == nil && kb*1024 > p.peakFile.Load() {
					p.peakFile.Store(kb * 1024)
				}
			}
		}
	}()
	go func() {
		_ = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	e.b.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.done
		if e.b.Failed() {
			out, _ := os.ReadFile(logPath)
			e.b.Logf("pgpilot log:\n%s", tail(string(out), 4000))
		}
	})
	return p
}

// usage is what a process cost.
type usage struct {
	cpu      time.Duration // user + system, from the kernel's accounting of the child
	sys      time.Duration // of which system (the kernel's work for it: syscalls, faults)
	wrote    int64         // bytes it wrote (files and sockets), until the stop
	peakRSS  int64         // bytes: VmHWM just before the stop
	peakAnon int64         // bytes: the largest RssAnon sampled
	peakFile int64         // bytes: the largest RssFile sampled
}

// stop sends SIGTERM, waits for exit 0 and returns the process's whole CPU
// time and its peak RSS. The peak is VmHWM, not the child's ru_maxrss:
// a child forked with vfork inherits its parent's high-water mark into
// ru_maxrss at exec, so ru_maxrss would report this benchmark's own size.
func (p *proc) stop() usage {
	p.b.Helper()
	hwm := p.peakRSS()
	wrote, _ := procIO(p.cmd.Process.Pid, "wchar:")
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		p.b.Fatal(err)
	}
	select {
	case <-p.done:
	case <-time.After(60 * time.Second):
		p.b.Fatal("pgpilot did not exit within 60s of SIGTERM")
	}
	if code := p.cmd.ProcessState.ExitCode(); code != 0 && !p.wrapped {
		out, _ := os.ReadFile(p.log)
		p.b.Fatalf("pgpilot exited %d:\n%s", code, tail(string(out), 4000))
	}
	return usage{cpu: p.cmd.ProcessState.UserTime() + p.cmd.ProcessState.SystemTime(), sys: p.cmd.ProcessState.SystemTime(), wrote: wrote, peakRSS: hwm, peakAnon: p.peakAnon.Load(), peakFile: p.peakFile.Load()}
}

// peakRSS reads VmHWM, the peak resident set, from /proc.
func (p *proc) peakRSS() int64 {
	kb, _ := procStatusKB(p.cmd.Process.Pid, "VmHWM:")
	return kb * 1024
}

// procIO reads a field of /proc/PID/io (bytes).
func procIO(pid int, field string) (int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, field); ok {
			return strconv.ParseInt(strings.TrimSpace(rest), 10, 64)
		}
	}
	return 0, fmt.Errorf("%s not in /proc/%d/io", field, pid)
}

func procStatusKB(pid int, field string) (int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, field); ok {
			return strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
		}
	}
	return 0, fmt.Errorf("%s not in /proc/%d/status", field, pid)
}

// inProcess is pgpilot run inside the benchmark (daemon.Run), so that
// -cpuprofile and -memprofile see it; the stand-in shares the process.
type inProcess struct {
	b      *testing.B
	cancel context.CancelFunc
	done   chan error
}

func (e *env) startInProcess() *inProcess {
	e.b.Helper()
	cfg, err := config.Load(e.cfgPath)
	if err != nil {
		e.b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ip := &inProcess{b: e.b, cancel: cancel, done: make(chan error, 1)}
	go func() {
		ip.done <- daemon.Run(ctx, daemon.Options{Config: cfg, Logger: slog.New(slog.DiscardHandler)})
	}()
	e.b.Cleanup(func() {
		cancel()
		<-ip.done
	})
	return ip
}

// stop stops it as SIGTERM would and waits for it.
func (ip *inProcess) stop() {
	ip.b.Helper()
	ip.cancel()
	err := <-ip.done
	ip.done <- nil // for the cleanup
	if err != nil {
		ip.b.Fatal(err)
	}
}

// initialSync starts pgpilot on the (empty or pre-filled) table, waits for
// the initial sync to be done and every row to be delivered, and stops it:
// from then on the slot holds everything written.
func (e *env) initialSync(rows int) {
	e.b.Helper()
	p := e.startBinary(nil)
	e.waitFor("initial sync", 10*time.Minute, e.initialSyncDone)
	e.waitFor("initial rows delivered", 10*time.Minute, func() bool { return e.accepted() >= rows })
	// Stopped before the snapshot job's end is checkpointed, the next run
	// would read the table again beside whatever it measures.
	e.waitFor("snapshot job ended", 10*time.Minute, e.initialSyncDone)
	p.stop()
}

// medians collects every run's metrics so TestMain can print the median of
// each over -count runs.
var medians struct {
	mu    sync.Mutex
	order []string
	runs  map[string]map[string][]float64 // benchmark → unit → values
	units map[string][]string
}

// report is b.ReportMetric that also keeps the value for the median table.
func report(b *testing.B, value float64, unit string) {
	b.ReportMetric(value, unit)
	medians.mu.Lock()
	defer medians.mu.Unlock()
	if medians.runs == nil {
		medians.runs, medians.units = map[string]map[string][]float64{}, map[string][]string{}
	}
	name := b.Name()
	if medians.runs[name] == nil {
		medians.runs[name] = map[string][]float64{}
		medians.order = append(medians.order, name)
	}
	if _, ok := medians.runs[name][unit]; !ok {
		medians.units[name] = append(medians.units[name], unit)
	}
	medians.runs[name][unit] = append(medians.runs[name][unit], value)
}

func printMedians(w io.Writer) {
	medians.mu.Lock()
	defer medians.mu.Unlock()
	if len(medians.order) == 0 {
		return
	}
	fmt.Fprintln(w, "\nMedians over runs (min–max):")
	for _, name := range medians.order {
		fmt.Fprintf(w, "%s\n", name)
		for _, unit := range medians.units[name] {
			vals := slices.Clone(medians.runs[name][unit])
			sort.Float64s(vals)
			fmt.Fprintf(w, "    %-22s %12s   (%s–%s, %d runs)\n", unit, num(median(vals)), num(vals[0]), num(vals[len(vals)-1]), len(vals))
		}
	}
}

// perRun are the benchmarks whose every run is a line of a table (the goal
// is every run, not the median), with the columns shown.
var perRun = map[string][]string{
	"BenchmarkCatchUpBusy": {"ratio", "cpu_us/change", "decoder_us/change", "cpu_ratio", "realtime_calls", "bulk_jobs", "peak_MB", "others_cores"},
}

// printRuns prints perRun's tables: one line per run, then the min, the
// median and the max of each column.
func printRuns(w io.Writer) {
	medians.mu.Lock()
	defer medians.mu.Unlock()
	for _, name := range medians.order {
		cols, ok := perRun[strings.TrimSuffix(name, "-"+strconv.Itoa(runtime.GOMAXPROCS(0)))]
		if !ok {
			continue
		}
		runs := medians.runs[name]
		fmt.Fprintf(w, "\n%s, run by run:\n| run |", name)
		for _, c := range cols {
			fmt.Fprintf(w, " %s |", c)
		}
		fmt.Fprint(w, "\n| --- |"+strings.Repeat(" --- |", len(cols))+"\n")
		for i := range len(runs[cols[0]]) {
			fmt.Fprintf(w, "| %d |", i+1)
			for _, c := range cols {
				if i < len(runs[c]) {
					fmt.Fprintf(w, " %s |", num(runs[c][i]))
				} else {
					fmt.Fprint(w, " – |")
				}
			}
			fmt.Fprintln(w)
		}
		for _, row := range []struct {
			what string
			pick func([]float64) float64
		}{{"min", func(v []float64) float64 { return v[0] }}, {"median", median}, {"max", func(v []float64) float64 { return v[len(v)-1] }}} {
			fmt.Fprintf(w, "| %s |", row.what)
			for _, c := range cols {
				vals := slices.Clone(runs[c])
				sort.Float64s(vals)
				fmt.Fprintf(w, " %s |", num(row.pick(vals)))
			}
			fmt.Fprintln(w)
		}
	}
}

func median(sorted []float64) float64 {
	n := len(sorted)
	if n%2 == 1 {
		return sorted[n/2]
	}
	return (sorted[n/2-1] + sorted[n/2]) / 2
}

func num(v float64) string {
	switch {
	case v >= 1000:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case v >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	}
	return strconv.FormatFloat(v, 'f', 3, 64)
}

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}
