package pgtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// PgBouncerOptions configures StartPgBouncer. The zero value is PgBouncer
// in transaction mode, as the managed services run it in front of their
// databases, refusing startup parameters it does not know.
type PgBouncerOptions struct {
	// PoolMode is session, transaction (default) or statement.
	PoolMode string
	// Users may log in (trust authentication, as the server's); the
	// superuser "postgres" always may.
	Users []string
	// IgnoreStartupParameters is PgBouncer's ignore_startup_parameters:
	// startup parameters it drops instead of refusing the connection.
	IgnoreStartupParameters []string
}

// PgBouncer is a PgBouncer (Debian's package) in front of a test server,
// forwarding every database to it.
type PgBouncer struct {
	// Host and Port are where PgBouncer listens.
	Host string
	Port int

	dir     string
	logPath string
	pm      *postmaster
}

// pgbouncerBinary is where Debian's pgbouncer package installs it.
const pgbouncerBinary = "/usr/sbin/pgbouncer"

// StartPgBouncer starts PgBouncer in front of s (as the OS user
// "postgres" when the harness is root: PgBouncer refuses root too) and
// returns once it accepts TCP connections.
func (s *Server) StartPgBouncer(ctx context.Context, opts PgBouncerOptions) (*PgBouncer, error) {
	bin, err := exec.LookPath("pgbouncer")
	if err != nil {
		bin = pgbouncerBinary
		if _, statErr := os.Stat(bin); statErr != nil {
			return nil, fmt.Errorf("pgtest: pgbouncer not found on PATH nor at %s: run scripts/setup.sh test", bin)
		}
	}
	dir, err := newServerDir(s.owner)
	if err != nil {
		return nil, err
	}
	b := &PgBouncer{Host: "127.0.0.1", dir: dir, logPath: filepath.Join(dir, "pgbouncer.log")}
	users := append([]string{superuser}, opts.Users...)
	var list strings.Builder
	for _, u := range users {
		fmt.Fprintf(&list, "%q \"\"\n", u)
	}
	if err := s.owner.writeFile(filepath.Join(dir, "users.txt"), []byte(list.String()), 0o600); err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	mode := opts.PoolMode
	if mode == "" {
		mode = "transaction"
	}
	for attempt := 1; ; attempt++ {
		if b.Port, err = freePort(); err != nil {
			break
		}
		conf := fmt.Sprintf(`# Written by pgpilot's internal/pgtest for a throw-away test PgBouncer.
[databases]
* = host=%s port=%d
[pgbouncer]
listen_addr = %s
listen_port = %d
unix_socket_dir =
auth_type = trust
auth_file = %s
pool_mode = %s
ignore_startup_parameters = %s
logfile = %s
`, s.Host, s.Port, b.Host, b.Port, filepath.Join(dir, "users.txt"), mode, strings.Join(opts.IgnoreStartupParameters, ","), b.logPath)
		confPath := filepath.Join(dir, "pgbouncer.ini")
		if err = s.owner.writeFile(confPath, []byte(conf), 0o600); err != nil {
			break
		}
		if err = b.launch(ctx, bin, confPath, s.owner); err == nil {
			return b, nil
		}
		if !strings.Contains(b.log(), "Address already in use") || attempt == portAttempts {
			break
		}
	}
	_ = os.RemoveAll(dir)
	return nil, err
}

func (b *PgBouncer) launch(ctx context.Context, bin, conf string, owner *osOwner) error {
	cmd := exec.Command(bin, conf)
	cmd.Dir = b.dir
	cmd.Env = childEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if owner != nil {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: owner.uid, Gid: owner.gid}
	}
	if err := startProcess(cmd); err != nil {
		return fmt.Errorf("pgtest: start %s: %w", bin, err)
	}
	pm := &postmaster{cmd: cmd, done: make(chan struct{})}
	go func() {
		pm.err = cmd.Wait()
		close(pm.done)
	}()
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	addr := net.JoinHostPort(b.Host, strconv.Itoa(b.Port))
	for {
		c, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
		if err == nil {
			c.Close()
			b.pm = pm
			return nil
		}
		select {
		case <-pm.done:
			return fmt.Errorf("pgtest: pgbouncer on port %d exited before listening (%v)\nlog:\n%s", b.Port, pm.err, b.log())
		case <-ctx.Done():
			_ = pm.stop(context.Background(), syscall.SIGKILL)
			return fmt.Errorf("pgtest: pgbouncer on port %d not listening: %w\nlog:\n%s", b.Port, ctx.Err(), b.log())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (b *PgBouncer) log() string {
	raw, _ := os.ReadFile(b.logPath)
	return string(raw)
}

// URL returns a libpq URL for database db as user, through PgBouncer.
func (b *PgBouncer) URL(db, user string) string {
	u := url.URL{Scheme: "postgres", User: url.User(user), Host: net.JoinHostPort(b.Host, strconv.Itoa(b.Port)),
		Path: "/" + db, RawQuery: "sslmode=disable"}
	return u.String()
}

// Stop stops PgBouncer and removes its directory. It is idempotent.
func (b *PgBouncer) Stop() error {
	var errs []error
	if b.pm != nil {
		ctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
		errs = append(errs, b.pm.stop(ctx, syscall.SIGINT))
		cancel()
		b.pm = nil
	}
	if err := os.RemoveAll(b.dir); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// StartPgBouncerT starts PgBouncer in front of s for the test and stops it
// when the test ends.
func (s *Server) StartPgBouncerT(t testing.TB, opts PgBouncerOptions) *PgBouncer {
	t.Helper()
	b, err := s.StartPgBouncer(t.Context(), opts)
	if err != nil {
		t.Fatalf("start test pgbouncer: %v", err)
	}
	t.Cleanup(func() {
		if err := b.Stop(); err != nil {
			t.Logf("stop test pgbouncer: %v", err)
		}
	})
	return b
}
