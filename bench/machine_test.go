package bench

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The machine is small (2 cores) and may be shared: a figure taken while
// something else was burning CPU measures that something else. So each
// measurement waits for a quiet machine first, and reports how many cores
// processes other than its own (pgpilot, the benchmark with its stand-in,
// its Postgres) used meanwhile.

// clockTick is USER_HZ, the unit of /proc CPU times: 100 on Linux.
const clockTick = 10 * time.Millisecond

// machineBusy is the CPU time every core spent not idle, since boot.
func machineBusy() time.Duration {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal ...
	var busy int64
	for i, s := range f[1:] {
		v, _ := strconv.ParseInt(s, 10, 64)
		if i != 3 && i != 4 && i < 8 { // not idle, not iowait; guest is inside user
			busy += v
		}
	}
	return time.Duration(busy) * clockTick
}

// procCPU is a process's utime+stime from /proc, 0 if it is gone.
func procCPU(pid int) time.Duration {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(data)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0
	}
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * clockTick
}

// ppid is a process's parent, 0 if it is gone.
func ppid(pid int) int {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(data)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 2 {
		return 0
	}
	p, _ := strconv.Atoi(f[1])
	return p
}

// ownCPU is the CPU time of everything this benchmark runs: itself (with
// the stand-in), its children (pgpilot, pg_recvlogical), and its Postgres
// (the postmaster and its children).
func ownCPU(dataDir string) time.Duration {
	self := os.Getpid()
	roots := map[int]bool{self: true}
	if data, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid")); err == nil {
		line, _, _ := strings.Cut(string(data), "\n")
		if pm, err := strconv.Atoi(strings.TrimSpace(line)); err == nil {
			roots[pm] = true
		}
	}
	var total time.Duration
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if roots[pid] || roots[ppid(pid)] {
			total += procCPU(pid)
		}
	}
	return total
}

// machineSample is a point in time for foreign CPU accounting.
type machineSample struct {
	at        time.Time
	busy, own time.Duration
	ownExited time.Duration // CPU of own children that exited (rusage)
}

func sampleMachine(dataDir string) machineSample {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_CHILDREN, &ru)
	exited := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	return machineSample{at: time.Now(), busy: machineBusy(), own: ownCPU(dataDir), ownExited: exited}
}

// foreignCores is how many cores other processes used on average since s.
// Own processes that ended meanwhile are counted through rusage; Postgres
// backends that ended meanwhile are not (they are short and few here).
func (s machineSample) foreignCores(dataDir string) float64 {
	now := sampleMachine(dataDir)
	wall := now.at.Sub(s.at)
	if wall <= 0 {
		return 0
	}
	foreign := (now.busy - s.busy) - (now.own - s.own) - (now.ownExited - s.ownExited)
	return max(0, foreign.Seconds()/wall.Seconds())
}

// waitQuiet waits (up to PGPILOT_BENCH_QUIET_WAIT seconds, default 600)
// until other processes use less than a quarter of a core, so a
// measurement does not start in the middle of someone else's build.
func waitQuiet(b *testing.B, dataDir string) {
	b.Helper()
	limit := time.Duration(envInt("PGPILOT_BENCH_QUIET_WAIT", 600)) * time.Second
	deadline := time.Now().Add(limit)
	for waited := false; ; waited = true {
		s := sampleMachine(dataDir)
		time.Sleep(time.Second)
		c := s.foreignCores(dataDir)
		if c < 0.25 {
			if waited {
				b.Logf("machine quiet again (other processes: %.2f cores)", c)
			}
			return
		}
		if time.Now().After(deadline) {
			b.Logf("machine still busy after %s (other processes: %.2f cores); measuring anyway", limit, c)
			return
		}
		if !waited {
			b.Logf("waiting for a quiet machine: other processes use %.2f cores", c)
		}
	}
}

// selfCPU is the benchmark process's own CPU time: the stand-in, mostly.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
