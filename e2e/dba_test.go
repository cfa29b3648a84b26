package e2e

// What DBAs and volumes do to a running sidecar: the publication dropped
// (and created again), the slot dropped while pgpilot was stopped, the
// state volume full, read-only or another user's, and store.db damaged.
// Each case runs against the binary with a workload writing, and ends with
// Userpilot equal to the table (deletions included) after following what
// pgpilot printed, and never with a Go stack trace.

import (
	"context"
	"encoding/json"
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

	bolt "go.etcd.io/bbolt"

	"github.com/pgpilot/pgpilot/internal/workload"
	"github.com/pgpilot/pgpilot/state"
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

// TestSlotDroppedWhileStoppedMarksOrDeletesWhatWasDeletedMeanwhile drops
// the slot while pgpilot is stopped and a workload writes and deletes, under
// on_delete mark and delete. pgpilot refuses (exit 1) with the fix `pgpilot
// recover`, saying exactly what will be re-sent and how many companies
// will be marked or deleted (counted, and equal to what the table says),
// and what cannot be known; following it, Userpilot ends equal to the
// table with every company deleted meanwhile handled. Before, the fix was
// teardown: it set the no-op index aside with the knowledge of which
// companies Userpilot holds, and those deleted meanwhile were never marked
// or deleted.
func TestSlotDroppedWhileStoppedMarksOrDeletesWhatWasDeletedMeanwhile(t *testing.T) {
	t.Parallel()
	for _, policy := range []string{"mark", "delete"} {
		t.Run(policy, func(t *testing.T) {
			t.Parallel()
			e, _ := dbaEnv(t, policy, false, "")
			ctx := context.Background()
			require.NoError(t, workload.Seed(ctx, e.conn, 150))
			p := e.run()
			e.waitInitialSync()
			e.convergeDeleted(policy, 60*time.Second)
			code, _ := p.stop(t)
			require.Equal(t, 0, code)

			w := startDeleter(t, e.url, 2831, 200)
			more := w.committed.Load() + 300
			require.Eventually(t, func() bool { return w.committed.Load() >= more }, 60*time.Second, 10*time.Millisecond)
			dropSlot(t, e.conn, e.slot())
			more = w.committed.Load() + 300
			require.Eventually(t, func() bool { return w.committed.Load() >= more }, 60*time.Second, 10*time.Millisecond)
			w.stop()
			// What the refusal must count: the companies Userpilot holds
			// with no row now, less those marked or deleted already.
			gone, handled := e.companiesWithoutRow(policy)
			t.Logf("%d companies Userpilot holds have no row; %d of them handled before the slot went", gone, handled)

			p = e.run()
			assert.Equal(t, 1, p.wait(t, 60*time.Second))
			out := p.out.String()
			assertNoStackTrace(t, out)
			fix := fixLine(out)
			t.Logf("refused with:\n%s\n  fix: %s", lineWith(out, "is gone"), fix)
			require.Contains(t, fix, "pgpilot recover")
			require.Contains(t, fix, "What cannot be known")
			m := regexp.MustCompile(`(\d+) companies Userpilot holds have no row left`).FindStringSubmatch(fix)
			require.NotNil(t, m, "the fix counts the companies without a row: %s", fix)
			counted, _ := strconv.Atoi(m[1])
			// Marked ones are known to the index too: the count is of every
			// company Userpilot holds without a row (a company marked
			// already costs no call: its mark is unchanged).
			if policy == "mark" {
				assert.Equal(t, gone, counted)
			} else {
				// Deleted ones were forgotten by the index: only those not
				// deleted yet are known.
				assert.Equal(t, gone-handled, counted)
			}
			assert.Empty(t, e.slotsOfDatabase(), "pgpilot never makes a slot by itself")

			rc := e.pgpilot("recover", "--config", e.cfgPath, "--yes")
			require.Equal(t, 0, rc.wait(t, 60*time.Second), rc.out.String())
			t.Logf("recover:\n%s", rc.out.String())
			w = startDeleter(t, e.url, 2832, 200)
			p = e.run()
			e.waitWalsender(0, 60*time.Second)
			more = w.committed.Load() + 200
			require.Eventually(t, func() bool { return w.committed.Load() >= more }, 60*time.Second, 10*time.Millisecond)
			w.stop()
			e.convergeDeleted(policy, 120*time.Second)
			gone, handled = e.companiesWithoutRow(policy)
			t.Logf("after recover and run: %d companies without a row in Userpilot, %d handled", gone, handled)
			code, _ = p.stop(t)
			assert.Equal(t, 0, code)
			assertNoStackTrace(t, p.out.String())
		})
	}
}

// startUpdater changes the given companies' mapped values, one a
// transaction, with long notes (a few pages of JSON each), until stopped.
func startUpdater(t *testing.T, url string, ids []string) *writer {
	ctx, cancel := context.WithCancel(context.Background())
	w := &writer{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		conn, err := pgx.Connect(ctx, url)
		if err != nil {
			return
		}
		defer conn.Close(context.Background())
		for i := 0; ctx.Err() == nil; i++ {
			id, _ := strconv.Atoi(ids[i%len(ids)])
			_, err := conn.Exec(ctx, `UPDATE companies SET seats = $2, notes = repeat(md5($3), 300) WHERE id = $1`, id, i, strconv.Itoa(i))
			if err != nil {
				t.Logf("update company %d: %v", id, err)
				w.failed.Add(1)
				time.Sleep(20 * time.Millisecond)
				continue
			}
			w.committed.Add(1)
			time.Sleep(5 * time.Millisecond)
		}
	}()
	t.Cleanup(w.stop)
	return w
}

// TestDeadLettersOnAFullStateVolumeAreWrittenWholeOnceItGrows puts the
// state directory on a small tmpfs, has Userpilot refuse a tenth of the
// companies (each change of theirs is a dead letter) while a workload
// writes, fills the volume, and grows it (mount -o remount,size=…). Every
// dead letter the full volume refused is written whole once there is room:
// the file has no unreadable line, `pgpilot deadletters list` warns of
// none, and each refused company's dead letters, applied in order, make
// its row as the table has it; the others converge. Before, the line cut by the full
// volume stayed, the next dead letter was appended onto it, and both were
// lost (the checkpoint had passed the second).
func TestDeadLettersOnAFullStateVolumeAreWrittenWholeOnceItGrows(t *testing.T) {
	t.Parallel()
	e := newEnv(t, userpilottest.Options{})
	e.dropSlotAtEnd()
	require.NoError(t, os.MkdirAll(e.stateDir, 0o700))
	requireMount(t, e.stateDir, "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs")
	var refused []string // ten: fewer than the breaker's twenty refusals in a row
	for id := 7; id <= 100; id += 10 {
		refused = append(refused, strconv.Itoa(id))
		e.up.RejectCompany(strconv.Itoa(id), 400)
	}
	ctx := context.Background()
	require.NoError(t, workload.Seed(ctx, e.conn, 100))
	p := e.run()
	e.waitInitialSync()
	e.convergeExcept(60*time.Second, refused...)
	w := startWriter(t, e.url, 2841, 100)
	waitWrites := func(w *writer, n int64) {
		more := w.committed.Load() + n
		require.Eventually(t, func() bool { return w.committed.Load() >= more }, 60*time.Second, 10*time.Millisecond)
	}
	waitWrites(w, 100)
	w.stop()

	// The volume full, the refused companies change on (each change a dead
	// letter of a few pages: its notes are long), so dead letters meet it:
	// the first one takes what room the file's last page has and fails.
	filler, err := os.Create(filepath.Join(e.stateDir, "filler"))
	require.NoError(t, err)
	for {
		if _, err := filler.Write(make([]byte, 4096)); err != nil {
			require.ErrorIs(t, err, syscall.ENOSPC)
			break
		}
	}
	require.NoError(t, filler.Close())
	filled := time.Now()
	refusedWriter := startUpdater(t, e.url, refused)
	require.Eventually(t, func() bool {
		out := p.out.String()
		return strings.Contains(lineWith(out, state.DeadLetterFile+": no space left on device"), "no space")
	}, 60*time.Second, 20*time.Millisecond, "a dead letter meets the full volume")
	t.Logf("full volume:\n%s", lineWith(p.out.String(), state.DeadLetterFile+": no space left on device"))
	waitWrites(refusedWriter, 50) // dead letters go on meeting it
	if out, err := exec.Command("mount", "-o", "remount,size=8m", e.stateDir).CombinedOutput(); err != nil {
		t.Skipf("cannot grow the tmpfs here (%v: %s)", err, out)
	}
	grown := time.Now()
	w = startWriter(t, e.url, 2842, 100)
	waitWrites(refusedWriter, 50)
	waitWrites(w, 100)
	refusedWriter.stop()
	w.stop()
	e.convergeExcept(120*time.Second, refused...)

	// Each refused company's dead letters, applied in order, make its row
	// as it stands: none was lost.
	want, err := workload.Expected(ctx, e.conn)
	require.NoError(t, err)
	var dls state.DeadLetters
	require.Eventually(t, func() bool {
		dls, err = state.ReadDeadLetters(e.stateDir)
		require.NoError(t, err)
		// Read again with numbers kept exact (ReadDeadLetters gives the
		// payload as float64s).
		raw, err := os.ReadFile(filepath.Join(e.stateDir, state.DeadLetterFile))
		require.NoError(t, err)
		last := map[string]map[string]any{}
		for _, line := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
			var dl struct {
				CompanyID string `json:"company_id"`
				Payload   struct {
					Metadata map[string]any `json:"metadata"`
				} `json:"payload"`
			}
			dec := json.NewDecoder(strings.NewReader(line))
			dec.UseNumber()
			if dec.Decode(&dl) != nil {
				continue // counted by ReadDeadLetters
			}
			// Folded as Userpilot would apply them: a key left out (an
			// unchanged TOASTed value) keeps its value, a null clears it.
			md := last[dl.CompanyID]
			if md == nil {
				md = map[string]any{}
				last[dl.CompanyID] = md
			}
			for k, v := range dl.Payload.Metadata {
				if v == nil {
					delete(md, k)
				} else {
					md[k] = v
				}
			}
		}
		wantRefused := map[string]map[string]any{}
		for _, id := range refused {
			wantRefused[id] = want[id]
		}
		diff := workload.Diff(wantRefused, last)
		if len(diff) > 0 {
			t.Logf("dead letters not yet as the table: %v", diff[:min(5, len(diff))])
		}
		return len(diff) == 0
	}, 60*time.Second, 200*time.Millisecond, "each refused company's dead letters make its row")
	assert.Zero(t, dls.Unreadable, "no line of the dead-letter file is a fragment")
	list := e.pgpilot("deadletters", "list", "--config", e.cfgPath)
	require.Equal(t, 0, list.wait(t, 60*time.Second))
	assert.Empty(t, lineWith(list.out.String(), "not JSON records"), "deadletters list warns of no fragment")
	t.Logf("%d dead letters outstanding, none unreadable; converged %s after the volume grew (it was full for %s)",
		len(dls.Outstanding), time.Since(grown).Round(time.Millisecond), grown.Sub(filled).Round(time.Millisecond))
	require.True(t, p.running(), "a full volume is waited out")
	code, _ := p.stop(t)
	assert.Equal(t, 0, code)
	assertNoStackTrace(t, p.out.String())
}

// outboxEnv is dbaEnv in outbox mode from the first second of a Userpilot
// outage (the slot moves on, what is owed waits in store.db).
func outboxEnv(t *testing.T, policy string) *env {
	e, _ := dbaEnv(t, policy, false, "delivery:\n  max_retained_wal: 0\n  outbox_after: 1s\n")
	return e
}

// oweOutbox runs pgpilot with Userpilot down while w writes, until the
// outbox owes at least n companies, then kills it (kill -9), leaving the
// store as a crash leaves it.
func (e *env) oweOutbox(p *proc, n int) int {
	e.t.Helper()
	e.up.SetFault(&userpilottest.Fault{Status: 503})
	var owed int
	require.Eventually(e.t, func() bool {
		st, ok, err := state.ReadStatus(e.stateDir)
		owed = st.OutboxCompanies
		return err == nil && ok && st.Mode == state.ModeOutbox && owed >= n
	}, 60*time.Second, 50*time.Millisecond, "the outbox owes %d companies", n)
	p.kill9()
	return owed
}

// damageStore damages the stopped pgpilot's store.db as a failing disk or
// a copy of a live file leaves it: cut short, or one live page (the no-op
// index's root, which the outbox does not use) overwritten.
func (e *env) damageStore(how string) {
	e.t.Helper()
	path := filepath.Join(e.stateDir, state.StoreFile)
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true})
	require.NoError(e.t, err)
	pageSize := int64(db.Info().PageSize)
	var used int64
	var root uint64
	require.NoError(e.t, db.View(func(tx *bolt.Tx) error {
		used = int64(tx.Size())
		root = uint64(tx.Bucket([]byte("profiles")).Root())
		return nil
	}))
	require.NoError(e.t, db.Close())
	switch how {
	case "cut short":
		require.NoError(e.t, os.Truncate(path, used/2))
		e.t.Logf("store.db cut to %d of its %d bytes", used/2, used)
	case "page overwritten":
		require.NotZero(e.t, root, "the index has pages of its own")
		f, err := os.OpenFile(path, os.O_WRONLY, 0)
		require.NoError(e.t, err)
		junk := make([]byte, pageSize)
		rng := rand.New(rand.NewPCG(28, 5))
		for i := range junk {
			junk[i] = byte(rng.IntN(256))
		}
		_, err = f.WriteAt(junk, int64(root)*pageSize)
		require.NoError(e.t, err)
		require.NoError(e.t, f.Close())
		e.t.Logf("store.db page %d (the no-op index's root) overwritten", root)
	}
}

// TestDamagedStoreWhileAnOutboxIsOwedIsRefusedAndRecovered leaves store.db
// damaged (cut short; one live page overwritten) after pgpilot was killed
// with Userpilot down and the outbox owing updates and deletions (on_delete:
// mark), a workload writing and deleting throughout. `pgpilot run` refuses
// with exit 1, never a Go crash, naming the file, what it held (the no-op
// index, how many companies the outbox owed, as far as it can be read) and
// the way out; `pgpilot check` says the same. Following it (`pgpilot
// recover`, then `pgpilot run`), Userpilot ends equal to the table, the
// deleted companies marked. Before, bbolt crashed the process (SIGBUS, or
// a panic in a goroutine of its own), exit 2, naming neither.
func TestDamagedStoreWhileAnOutboxIsOwedIsRefusedAndRecovered(t *testing.T) {
	t.Parallel()
	for _, how := range []string{"cut short", "page overwritten"} {
		t.Run(how, func(t *testing.T) {
			t.Parallel()
			e := outboxEnv(t, "mark")
			ctx := context.Background()
			require.NoError(t, workload.Seed(ctx, e.conn, 300))
			p := e.run()
			e.waitInitialSync()
			e.convergeDeleted("mark", 60*time.Second)
			w := startDeleter(t, e.url, 2851, 300)
			owed := e.oweOutbox(p, 40)
			e.damageStore(how)
			t.Logf("the outbox owed %d companies", owed)

			p = e.run()
			assert.Equal(t, 1, p.wait(t, 60*time.Second), "a damaged store is a runtime failure: exit 1")
			out := p.out.String()
			assertNoStackTrace(t, out)
			refusal := lineWith(out, "is damaged")
			t.Logf("refused with:\n%s", refusal)
			assert.Contains(t, refusal, filepath.Join(e.stateDir, state.StoreFile))
			assert.Contains(t, refusal, "no-op index")
			if how == "page overwritten" {
				assert.Contains(t, refusal, fmt.Sprintf("the outbox (%d companies owed", owed), "the outbox is read whole")
			}
			fix := fixLine(out)
			require.Contains(t, fix, "pgpilot recover")
			chk := e.pgpilot("check", "--config", e.cfgPath, "--skip-userpilot")
			assert.Equal(t, 1, chk.wait(t, 60*time.Second))
			assertNoStackTrace(t, chk.out.String())
			assert.Contains(t, chk.out.String(), "✗ store "+filepath.Join(e.stateDir, state.StoreFile))

			rc := e.pgpilot("recover", "--config", e.cfgPath, "--yes")
			require.Equal(t, 0, rc.wait(t, 60*time.Second), rc.out.String())
			assertNoStackTrace(t, rc.out.String())
			t.Logf("recover:\n%s", rc.out.String())
			e.up.SetFault(nil)
			p = e.run()
			e.waitWalsender(0, 60*time.Second)
			more := w.committed.Load() + 200
			require.Eventually(t, func() bool { return w.committed.Load() >= more }, 60*time.Second, 10*time.Millisecond)
			w.stop()
			e.convergeDeleted("mark", 120*time.Second)
			gone, marked := e.companiesWithoutRow("mark")
			t.Logf("after recover and run: %d companies without a row in Userpilot, %d marked deleted", gone, marked)
			code, _ := p.stop(t)
			assert.Equal(t, 0, code)
			assertNoStackTrace(t, p.out.String())
		})
	}
}

// TestTeardownWorksOnADamagedStore: the other way out of a damaged store,
// `pgpilot teardown`, works on one cut short: it sets it aside, exports
// what can be read of what its outbox owed, says how much could not be
// read, and the next run sends every row. Before, it crashed (SIGBUS) as
// run did.
func TestTeardownWorksOnADamagedStore(t *testing.T) {
	t.Parallel()
	e := outboxEnv(t, "ignore")
	ctx := context.Background()
	require.NoError(t, workload.Seed(ctx, e.conn, 300))
	p := e.run()
	e.waitInitialSync()
	e.converge(60 * time.Second)
	w := startWriter(t, e.url, 2861, 300)
	owed := e.oweOutbox(p, 40)
	e.damageStore("cut short")

	td := e.pgpilot("teardown", "--config", e.cfgPath, "--yes")
	require.Equal(t, 0, td.wait(t, 60*time.Second), td.out.String())
	out := td.out.String()
	assertNoStackTrace(t, out)
	t.Logf("teardown (the outbox owed %d companies):\n%s", owed, out)
	assert.Contains(t, out, "is damaged")
	assert.Contains(t, out, "of its pages cannot be read")
	m := regexp.MustCompile(`the outbox holds changes of (\d+) companies`).FindStringSubmatch(out)
	require.NotNil(t, m, "teardown says what it could read of the outbox")
	read, _ := strconv.Atoi(m[1])
	assert.Positive(t, read)
	assert.LessOrEqual(t, read, owed)
	exported, err := filepath.Glob(filepath.Join(e.stateDir, "outbox.torn-down-*.jsonl"))
	require.NoError(t, err)
	require.Len(t, exported, 1)
	raw, err := os.ReadFile(exported[0])
	require.NoError(t, err)
	assert.Equal(t, read, strings.Count(string(raw), "\n"), "what could be read of the outbox is exported")

	e.up.SetFault(nil)
	p = e.run()
	e.waitInitialSync()
	w.stop()
	e.converge(120 * time.Second)
	code, _ := p.stop(t)
	assert.Equal(t, 0, code)
	assertNoStackTrace(t, p.out.String())
}
