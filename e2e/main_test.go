// Package e2e tests the pgpilot binary as an operator runs it: a real
// Postgres, the strict Userpilot stand-in, signals and kill -9.
package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/internal/pgtest"
	"github.com/pgpilot/pgpilot/internal/workload"
	"github.com/pgpilot/pgpilot/userpilot/userpilottest"
)

var (
	pg     *pgtest.Server
	binary string
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "pgpilot-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	binary = filepath.Join(dir, "pgpilot")
	build := exec.Command("go", "build", "-o", binary, "github.com/pgpilot/pgpilot")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build pgpilot:", err)
		return 1
	}
	// Tests do not drop their slots; many tests share this server.
	pg, err = pgtest.Start(context.Background(), pgtest.Options{Settings: map[string]string{
		"max_replication_slots": "64", "max_wal_senders": "64", "max_connections": "300"}})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer pg.Stop()
	return m.Run()
}

const apiKey = "e2e-secret-key-5b1d9c"

// env is one test's database, stand-in and config file.
type env struct {
	t        *testing.T
	url      string
	conn     *pgx.Conn
	up       *userpilottest.Server
	cfgPath  string
	stateDir string
}

func newEnv(t *testing.T, opts userpilottest.Options) *env {
	t.Helper()
	ctx := context.Background()
	url := pg.NewDatabaseT(t)
	conn, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close(context.Background()) })
	require.NoError(t, workload.Create(ctx, conn))
	opts.APIKey = apiKey
	up := userpilottest.NewServer(opts)
	t.Cleanup(up.Close)
	dir := t.TempDir()
	e := &env{t: t, url: url, conn: conn, up: up, cfgPath: filepath.Join(dir, "pgpilot.yaml"), stateDir: filepath.Join(dir, "state")}
	e.writeConfig(workload.Config(url, workload.SlotName(url), up.URL(), apiKey, e.stateDir, 2000))
	return e
}

func (e *env) writeConfig(cfg string) {
	require.NoError(e.t, os.WriteFile(e.cfgPath, []byte(cfg), 0o600))
}

// proc is a running pgpilot.
type proc struct {
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
	err  error
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func (e *env) pgpilot(args ...string) *proc {
	e.t.Helper()
	return e.start(binary, nil, args...)
}

// start runs bin (pgpilot, or a build of it with other tags) with extra
// environment variables; it is killed when the test ends.
func (e *env) start(bin string, environ []string, args ...string) *proc {
	e.t.Helper()
	cmd := exec.Command(bin, args...)
	if environ != nil {
		cmd.Env = append(os.Environ(), environ...)
	}
	p := &proc{cmd: cmd, out: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	require.NoError(e.t, cmd.Start())
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	e.t.Cleanup(func() {
		cmd.Process.Kill()
		<-p.done
		if e.t.Failed() {
			e.t.Logf("pgpilot %s output:\n%s", strings.Join(args, " "), tail(p.out.String(), 4000))
		}
	})
	return p
}

func (e *env) run() *proc { return e.pgpilot("run", "--config", e.cfgPath, "--log-level", "debug") }

// kill9 kills p without warning, as a crash or the OOM killer would.
func (p *proc) kill9() {
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// stop sends SIGTERM and returns the exit code and how long it took.
func (p *proc) stop(t *testing.T) (int, time.Duration) {
	start := time.Now()
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case <-p.done:
	case <-time.After(60 * time.Second):
		t.Fatal("pgpilot did not exit within 60s of SIGTERM")
	}
	return p.cmd.ProcessState.ExitCode(), time.Since(start)
}

// wait waits for p to exit by itself and returns its exit code.
func (p *proc) wait(t *testing.T, timeout time.Duration) int {
	select {
	case <-p.done:
		return p.cmd.ProcessState.ExitCode()
	case <-time.After(timeout):
		t.Fatalf("pgpilot still running after %s", timeout)
		return -1
	}
}

func (e *env) converge(timeout time.Duration) {
	e.t.Helper()
	if err := workload.WaitConverged(context.Background(), e.conn, e.up.Companies, timeout); err != nil {
		e.t.Fatal(err)
	}
}

// waitInitialSync waits until pgpilot has sent the table's rows and
// checkpointed the slot's consistent point: from then on, writes are
// streamed. (After a teardown the stand-in may already hold every row, so
// converging proves nothing yet either.)
func (e *env) waitInitialSync() {
	e.t.Helper()
	require.NoError(e.t, workload.WaitInitialSync(context.Background(), e.stateDir, 60*time.Second))
}

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}
