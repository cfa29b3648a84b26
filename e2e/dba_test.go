package e2e

// What DBAs and volumes do to a running sidecar: the publication dropped
// (and created again), the slot dropped while pgpilot was stopped, the
// state volume full, read-only or another user's, and store.db damaged.
// Each case runs against the binary with a workload writing, and ends with
// Userpilot equal to the table (deletions included) after following what
// pgpilot printed, and never with a Go stack trace.

import (
	"context"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/internal/workload"
	"github.com/pgpilot/pgpilot/userpilot/userpilottest"
)

// assertNoStackTrace checks that pgpilot's output holds no Go crash.
func assertNoStackTrace(t *testing.T, out string) {
	t.Helper()
	for _, s := range []string{"panic:", "fatal error:", "goroutine ", "SIGBUS", "SIGSEGV"} {
		assert.NotContains(t, out, s, "pgpilot crashed instead of saying what is wrong")
	}
}

// fixLine returns the value of the last "fix" attribute (or the `  fix: …`
// line) of pgpilot's output: what it tells the operator to do.
func fixLine(out string) string {
	if m := regexp.MustCompile(`"fix":"((?:[^"\\]|\\.)*)"`).FindAllStringSubmatch(out, -1); len(m) > 0 {
		s, err := strconv.Unquote(`"` + m[len(m)-1][1] + `"`)
		if err == nil {
			return s
		}
	}
	for _, l := range strings.Split(out, "\n") {
		if f, ok := strings.CutPrefix(strings.TrimSpace(l), "fix: "); ok {
			return f
		}
	}
	return ""
}

// backticked returns the first `command` in s.
func backticked(s string) string {
	if m := regexp.MustCompile("`([^`]+)`").FindStringSubmatch(s); m != nil {
		return m[1]
	}
	return ""
}

// asUser runs pgpilot as OS user name (tests run as root), its binary and
// config copied where that user can read them.
func (e *env) asUser(name string, args ...string) *proc {
	e.t.Helper()
	u, err := user.Lookup(name)
	require.NoError(e.t, err)
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	dir, err := os.MkdirTemp("", "pgpilot-as-"+name+"-")
	require.NoError(e.t, err)
	e.t.Cleanup(func() { os.RemoveAll(dir) })
	require.NoError(e.t, os.Chmod(dir, 0o755))
	bin := filepath.Join(dir, "pgpilot")
	data, err := os.ReadFile(binary)
	require.NoError(e.t, err)
	require.NoError(e.t, os.WriteFile(bin, data, 0o755))
	cfg, err := os.ReadFile(e.cfgPath)
	require.NoError(e.t, err)
	cfgPath := filepath.Join(dir, "pgpilot.yaml")
	require.NoError(e.t, os.WriteFile(cfgPath, cfg, 0o600))
	require.NoError(e.t, os.Chown(cfgPath, uid, gid))
	for i, a := range args {
		if a == e.cfgPath {
			args[i] = cfgPath
		}
	}
	cmd := exec.Command(bin, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
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
			e.t.Logf("pgpilot (as %s) %s output:\n%s", name, strings.Join(args, " "), tail(p.out.String(), 4000))
		}
	})
	return p
}

// TestUnwritableStateDirAtStartExitsTwoWithTheFix starts pgpilot on a state
// directory it cannot write, while a workload writes: on a read-only mount,
// and as another user than the directory's owner. Each time it exits 2 at
// once, before touching Postgres (the slot does not move), naming the
// directory and the fix for that cause; once the fix is followed (the
// volume mounted read-write; the chown it printed), it converges.
func TestUnwritableStateDirAtStartExitsTwoWithTheFix(t *testing.T) {
	t.Parallel()
	e := newEnv(t, userpilottest.Options{})
	e.dropSlotAtEnd()
	ctx := context.Background()
	require.NoError(t, workload.Seed(ctx, e.conn, 30))
	p := e.run()
	e.waitInitialSync()
	e.converge(60 * time.Second)
	code, _ := p.stop(t)
	require.Equal(t, 0, code)
	w := startWriter(t, e.url, 2801, 60)
	defer w.stop()

	// A read-only mount.
	unmount := requireMount(t, e.stateDir, "--bind", e.stateDir)
	if out, err := exec.Command("mount", "-o", "remount,bind,ro", e.stateDir).CombinedOutput(); err != nil {
		t.Skipf("cannot remount read-only here (%v: %s)", err, out)
	}
	confirmed := e.slotConfirmed()
	p = e.run()
	assert.Equal(t, 2, p.wait(t, 30*time.Second), "a volume mounted read-only is the setup's to fix: exit 2")
	out := p.out.String()
	t.Logf("read-only mount:\n%s", lineWith(out, "cannot run"))
	assert.Contains(t, out, "read-only file system")
	assert.Contains(t, out, e.stateDir)
	assert.Contains(t, fixLine(out), "mounted read-only: mount it read-write")
	assert.NotContains(t, out, "replication", "refused before Postgres is touched")
	assertNoStackTrace(t, out)
	assert.Equal(t, confirmed, e.slotConfirmed())
	unmount() // the fix: read-write again

	p = e.run()
	e.waitWalsender(0, 60*time.Second)
	e.converge(60 * time.Second)
	code, _ = p.stop(t)
	require.Equal(t, 0, code)

	// Another user's directory: pgpilot runs as "postgres", the directory
	// is root's (0700).
	if _, err := user.Lookup("postgres"); err != nil {
		t.Skipf("no OS user postgres to run pgpilot as: %v", err)
	}
	// Only the directory is another's: its parents let anyone through.
	for d := filepath.Dir(e.stateDir); d != os.TempDir() && d != "/"; d = filepath.Dir(d) {
		require.NoError(t, os.Chmod(d, 0o755))
	}
	confirmed = e.slotConfirmed()
	p = e.asUser("postgres", "run", "--config", e.cfgPath)
	assert.Equal(t, 2, p.wait(t, 30*time.Second), "a directory of another user is the setup's to fix: exit 2")
	out = p.out.String()
	t.Logf("another user's directory:\n%s", lineWith(out, "cannot run"))
	assert.Contains(t, out, "permission denied")
	assertNoStackTrace(t, out)
	assert.Equal(t, confirmed, e.slotConfirmed())
	chown := backticked(fixLine(out))
	require.True(t, strings.HasPrefix(chown, "chown -R "), "the fix names the chown to run: %q", fixLine(out))
	fields := strings.Fields(chown)
	cmdOut, err := exec.Command(fields[0], fields[1:]...).CombinedOutput()
	require.NoError(t, err, "%s: %s", chown, cmdOut)

	p = e.asUser("postgres", "run", "--config", e.cfgPath)
	e.waitWalsender(0, 60*time.Second)
	w.stop()
	e.converge(60 * time.Second)
	code, _ = p.stop(t)
	assert.Equal(t, 0, code)
	assertNoStackTrace(t, p.out.String())
}
