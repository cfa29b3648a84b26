package e2e

// What DBAs and volumes do to a running sidecar: the publication dropped
// (and created again), the slot dropped while pgpilot was stopped, the
// state volume full, read-only or another user's, and store.db damaged.
// Each case runs against the binary with a workload writing, and ends with
// Userpilot equal to the table (deletions included) after following what
// pgpilot printed, and never with a Go stack trace.

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
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

// dbaEnv is newEnv with on_delete set to policy, and the HTTP endpoints
// (listen, returned as the base URL) when listen is set.
func dbaEnv(t *testing.T, policy string, listen bool, extra string) (*env, string) {
	t.Helper()
	e := newEnv(t, userpilottest.Options{})
	e.dropSlotAtEnd()
	cfg := workload.Config(e.url, workload.SlotName(e.url), e.up.URL(), apiKey, e.stateDir, 2000)
	base := ""
	if listen {
		addr := freeAddr(t)
		extra += "http:\n  listen: " + addr + "\n"
		base = "http://" + addr
	}
	cfg = strings.Replace(cfg, "companies:\n", extra+"companies:\n  on_delete: "+policy+"\n", 1)
	e.writeConfig(cfg)
	return e, base
}

// startDeleter runs the random workload with deletions besides: one
// transaction in four deletes a company (which a later upsert may bring
// back), until stopped.
func startDeleter(t *testing.T, url string, seed uint64, maxID int) *writer {
	ctx, cancel := context.WithCancel(context.Background())
	w := &writer{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		rng := rand.New(rand.NewPCG(seed, seed+1))
		var conn *pgx.Conn
		defer func() {
			if conn != nil {
				conn.Close(context.Background())
			}
		}()
		for ctx.Err() == nil {
			if conn == nil {
				c, err := pgx.Connect(ctx, url)
				if err != nil {
					time.Sleep(50 * time.Millisecond)
					continue
				}
				conn = c
			}
			var err error
			ok := true
			if rng.IntN(4) == 0 {
				_, err = conn.Exec(ctx, `DELETE FROM companies WHERE id = $1`, 1+rng.IntN(maxID))
			} else {
				ok, err = workload.Step(ctx, conn, rng, maxID)
			}
			switch {
			case err != nil:
				w.failed.Add(1)
				conn.Close(context.Background())
				conn = nil
				time.Sleep(20 * time.Millisecond)
			case ok:
				w.committed.Add(1)
			}
			time.Sleep(time.Duration(rng.IntN(3)) * time.Millisecond)
		}
	}()
	t.Cleanup(w.stop)
	return w
}

// convergeDeleted waits until Userpilot holds the table's rows as mapped
// (workload.Expected), and every company it holds whose row is gone is
// marked deleted (on_delete: mark) or was deleted through Userpilot's
// delete API (on_delete: delete; Userpilot erases in a daily batch, so the
// profile stays).
func (e *env) convergeDeleted(policy string, timeout time.Duration) {
	e.t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(timeout)
	for {
		want, err := workload.Expected(ctx, e.conn)
		require.NoError(e.t, err)
		got := e.up.Companies()
		deleted := map[string]bool{}
		for _, id := range e.up.Deleted() {
			deleted[id] = true
		}
		var diff []string
		for id, md := range got {
			if _, ok := want[id]; ok {
				continue
			}
			switch {
			case policy == "mark" && md["deleted"] != true:
				diff = append(diff, fmt.Sprintf("company %s has no row, and is not marked deleted: %v", id, md))
			case policy == "delete" && !deleted[id]:
				diff = append(diff, fmt.Sprintf("company %s has no row, and was not deleted", id))
			}
			delete(got, id)
		}
		diff = append(diff, workload.Diff(want, got)...)
		if len(diff) == 0 {
			return
		}
		if time.Now().After(deadline) {
			slices.Sort(diff)
			e.t.Fatalf("Userpilot did not converge to the table, deletions included, within %s:\n%s", timeout, strings.Join(diff[:min(15, len(diff))], "\n"))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// companiesWithoutRow counts the companies Userpilot holds whose row is
// gone, and how many of them are marked or deleted already.
func (e *env) companiesWithoutRow(policy string) (gone, handled int) {
	e.t.Helper()
	want, err := workload.Expected(context.Background(), e.conn)
	require.NoError(e.t, err)
	deleted := map[string]bool{}
	for _, id := range e.up.Deleted() {
		deleted[id] = true
	}
	for id, md := range e.up.Companies() {
		if _, ok := want[id]; ok {
			continue
		}
		gone++
		if policy == "mark" && md["deleted"] == true || policy == "delete" && deleted[id] {
			handled++
		}
	}
	return gone, handled
}

// TestPublicationDroppedAndCreatedAgainWhileStreamingLosesNothing runs a
// DBA's migration step, DROP PUBLICATION then CREATE PUBLICATION, while
// pgpilot streams and a workload writes and deletes (on_delete: mark).
// pgpilot says the publication is gone (an ERROR with the fix, /readyz 503
// and pgpilot_fault), never creates it itself (the DBA's CREATE succeeds),
// and once it exists again starts over on a new slot: Userpilot ends equal
// to the table, the companies deleted meanwhile marked. Before, it
// re-created the publication behind the DBA's back and then retried a
// stream that could never decode past the DROP, forever.
func TestPublicationDroppedAndCreatedAgainWhileStreamingLosesNothing(t *testing.T) {
	t.Parallel()
	e, base := dbaEnv(t, "mark", true, "")
	ctx := context.Background()
	require.NoError(t, workload.Seed(ctx, e.conn, 150))
	p := e.run()
	e.waitInitialSync()
	e.convergeDeleted("mark", 60*time.Second)
	oldSlot := e.slotConfirmed()
	w := startDeleter(t, e.url, 2811, 200)
	require.Eventually(t, func() bool { return w.committed.Load() > 50 }, 30*time.Second, 10*time.Millisecond)

	_, err := e.conn.Exec(ctx, `DROP PUBLICATION `+e.slot())
	require.NoError(t, err)
	dropped := time.Now()
	require.Eventually(t, func() bool { return strings.Contains(p.out.String(), "publication gone") }, 60*time.Second, 20*time.Millisecond,
		"pgpilot says the publication is gone")
	said := time.Since(dropped)
	out := p.out.String()
	t.Logf("said %s after the DROP:\n%s", said.Round(time.Millisecond), lineWith(out, "publication gone"))
	assert.Contains(t, fixLine(out), "CREATE PUBLICATION")
	code, body := httpGet(base + "/readyz")
	assert.Equal(t, 503, code)
	assert.Contains(t, body, "publication_missing")
	t.Logf("/readyz: %d %s", code, strings.TrimSpace(body))
	fams := scrape(t, base)
	assert.Equal(t, 1.0, metricValue(fams, "pgpilot_fault", "kind", "publication_missing"))
	var pubs int
	require.NoError(t, e.conn.QueryRow(ctx, `SELECT count(*) FROM pg_publication`).Scan(&pubs))
	assert.Zero(t, pubs, "pgpilot does not create the publication again by itself")

	// The DBA's script goes on: its CREATE works (pgpilot made none).
	_, err = e.conn.Exec(ctx, `CREATE PUBLICATION `+e.slot()+` FOR TABLE companies`)
	require.NoError(t, err, "the DBA's CREATE PUBLICATION succeeds")
	created := time.Now()
	require.Eventually(t, func() bool { return strings.Contains(p.out.String(), "starting over") }, 60*time.Second, 20*time.Millisecond)
	t.Logf("started over %s after the CREATE:\n%s", time.Since(created).Round(time.Millisecond), lineWith(p.out.String(), "starting over"))
	more := w.committed.Load() + 100
	require.Eventually(t, func() bool { return w.committed.Load() >= more }, 60*time.Second, 10*time.Millisecond,
		"the workload writes on through the start over")
	committed := w.committed.Load()
	w.stop()
	e.convergeDeleted("mark", 120*time.Second)
	t.Logf("converged %s after the CREATE; %d transactions written", time.Since(created).Round(time.Millisecond), committed)
	gone, marked := e.companiesWithoutRow("mark")
	t.Logf("%d companies without a row in Userpilot, %d marked deleted", gone, marked)
	assert.Positive(t, gone)
	assert.Greater(t, e.slotConfirmed(), oldSlot, "a new slot streams")
	require.Eventually(t, func() bool { code, _ := httpGet(base + "/readyz"); return code == 200 }, 60*time.Second, 50*time.Millisecond)
	fams = scrape(t, base)
	assert.Equal(t, 0.0, metricValue(fams, "pgpilot_fault", "kind", "publication_missing"))
	require.True(t, p.running())
	code, _ = p.stop(t)
	assert.Equal(t, 0, code)
	assertNoStackTrace(t, p.out.String())
}

// createStatement returns the CREATE PUBLICATION statement a fix names.
func createStatement(fix string) string {
	if m := regexp.MustCompile(`CREATE PUBLICATION [^;]+;`).FindString(fix); m != "" {
		return m
	}
	return ""
}

// TestPublicationDroppedWhileStoppedLosesNothing drops the publication
// while pgpilot is stopped and a workload writes and deletes (on_delete:
// mark), twice: created again before pgpilot starts (it starts over by
// itself), and still missing when it starts (it waits, unready, saying so
// with the statement to run; `pgpilot check` says the same and what the
// start over will do; the statement run, it starts over). Each time
// Userpilot ends equal to the table, the companies deleted meanwhile
// marked. Before, pgpilot created the publication again itself, and the
// stream failed at the first change after the DROP, forever.
func TestPublicationDroppedWhileStoppedLosesNothing(t *testing.T) {
	t.Parallel()
	e, base := dbaEnv(t, "mark", true, "")
	ctx := context.Background()
	require.NoError(t, workload.Seed(ctx, e.conn, 150))
	p := e.run()
	e.waitInitialSync()
	e.convergeDeleted("mark", 60*time.Second)
	code, _ := p.stop(t)
	require.Equal(t, 0, code)

	// Dropped and created again while stopped, with writes between.
	w := startDeleter(t, e.url, 2821, 200)
	waitWrites := func(n int64) {
		more := w.committed.Load() + n
		require.Eventually(t, func() bool { return w.committed.Load() >= more }, 60*time.Second, 10*time.Millisecond)
	}
	waitWrites(100)
	_, err := e.conn.Exec(ctx, `DROP PUBLICATION `+e.slot())
	require.NoError(t, err)
	waitWrites(100)
	_, err = e.conn.Exec(ctx, `CREATE PUBLICATION `+e.slot()+` FOR TABLE companies`)
	require.NoError(t, err)
	waitWrites(100)
	chk := e.pgpilot("check", "--config", e.cfgPath, "--skip-userpilot")
	chk.wait(t, 60*time.Second)
	t.Logf("check before the start:\n%s", lineWith(chk.out.String(), "dropped and created again"))
	assert.Contains(t, chk.out.String(), "was dropped and created again since the checkpoint")
	assert.Contains(t, chk.out.String(), "companies Userpilot holds have no row left")
	p = e.run()
	require.Eventually(t, func() bool { return strings.Contains(p.out.String(), "starting over") }, 60*time.Second, 20*time.Millisecond)
	t.Logf("at start:\n%s", lineWith(p.out.String(), "was dropped and created again"))
	waitWrites(100)
	w.stop()
	e.convergeDeleted("mark", 120*time.Second)
	gone, marked := e.companiesWithoutRow("mark")
	t.Logf("created again while stopped: %d companies without a row in Userpilot, %d marked deleted", gone, marked)
	code, _ = p.stop(t)
	require.Equal(t, 0, code)
	assertNoStackTrace(t, p.out.String())

	// Dropped while stopped, and still missing at the start.
	w = startDeleter(t, e.url, 2822, 200)
	waitWrites(100)
	_, err = e.conn.Exec(ctx, `DROP PUBLICATION `+e.slot())
	require.NoError(t, err)
	waitWrites(100)
	p = e.run()
	require.Eventually(t, func() bool { return strings.Contains(p.out.String(), "publication gone") }, 60*time.Second, 20*time.Millisecond)
	out := p.out.String()
	t.Logf("missing at start:\n%s", lineWith(out, "publication gone"))
	require.Eventually(t, func() bool { code, _ := httpGet(base + "/readyz"); return code == 503 }, 30*time.Second, 20*time.Millisecond)
	_, body := httpGet(base + "/readyz")
	assert.Contains(t, body, "publication_missing")
	assert.True(t, p.running(), "it waits for the publication, it does not exit")
	chk = e.pgpilot("check", "--config", e.cfgPath, "--skip-userpilot")
	assert.Equal(t, 1, chk.wait(t, 60*time.Second))
	t.Logf("check while it is missing:\n%s", lineWith(chk.out.String(), "✗ publication"))
	assert.Contains(t, chk.out.String(), "it is gone: it was dropped after the checkpoint")
	create := createStatement(fixLine(out))
	require.NotEmpty(t, create, "the fix names the statement: %q", fixLine(out))
	waitWrites(100)
	_, err = e.conn.Exec(ctx, create) // the fix, as printed
	require.NoError(t, err)
	require.Eventually(t, func() bool { return strings.Count(p.out.String(), "starting over") > 0 }, 60*time.Second, 20*time.Millisecond)
	waitWrites(100)
	w.stop()
	e.convergeDeleted("mark", 120*time.Second)
	gone, marked = e.companiesWithoutRow("mark")
	t.Logf("missing at start, created from the fix: %d companies without a row in Userpilot, %d marked deleted", gone, marked)
	require.Eventually(t, func() bool { code, _ := httpGet(base + "/readyz"); return code == 200 }, 60*time.Second, 50*time.Millisecond)
	code, _ = p.stop(t)
	assert.Equal(t, 0, code)
	assertNoStackTrace(t, p.out.String())
}
