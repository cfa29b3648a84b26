package pgtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"
)

// errPortInUse marks a start that failed because the TCP port was taken.
var errPortInUse = errors.New("port already in use")

// postmaster is one running postgres process.
type postmaster struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited
	err  error         // cmd.Wait's result, valid after done
}

// command prepares a child process of binary name with the harness's
// process attributes: run as "postgres" when we are root, killed if the
// thread that started it dies (so a crashed test run leaves no server
// behind), and in its own process group so Stop can kill the postmaster's
// children too and a terminal's Ctrl-C reaches only the test binary.
func (s *Server) command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(filepath.Join(s.BinDir, name), args...)
	cmd.Dir = s.dir // the current directory may be unreadable by "postgres"
	cmd.Env = childEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Pdeathsig: syscall.SIGKILL,
		Setpgid:   true,
	}
	if s.owner != nil {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: s.owner.uid, Gid: s.owner.gid}
	}
	return cmd
}

// startProcess starts cmd with its OS thread locked: Pdeathsig fires when
// the *thread* that forked the child exits, and Go only ends threads that a
// goroutine leaves locked, so lock+unlock keeps the parent thread alive.
func startProcess(cmd *exec.Cmd) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	return cmd.Start()
}

// childEnv is the environment minus PG* variables, which would otherwise
// redirect initdb or postgres (PGDATA, PGPORT, …) away from the temp dir.
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PG") {
			env = append(env, kv)
		}
	}
	return env
}

func (s *Server) initdb(ctx context.Context) error {
	args := []string{"-D", s.DataDir, "-U", superuser, "-E", "UTF8", "--no-sync", "--auth-local=trust"}
	if s.password != "" {
		pwfile := filepath.Join(s.dir, "pwfile")
		if err := s.owner.writeFile(pwfile, []byte(s.password+"\n"), 0o600); err != nil {
			return err
		}
		// The password is read from a file (never argv, which ps shows)
		// and removed as soon as initdb has hashed it.
		defer os.Remove(pwfile)
		args = append(args, "--pwfile="+pwfile, "--auth-host=scram-sha-256")
	} else {
		args = append(args, "--auth-host=trust")
	}
	var lastErr error
	// C.UTF-8 gives UTF-8 ctype without depending on generated locales;
	// some systems lack it, so plain C is the fallback.
	for _, locale := range []string{"C.UTF-8", "C"} {
		out, err := s.runInitdb(ctx, append(args, "--locale="+locale))
		if err == nil {
			return nil
		}
		lastErr = fmt.Errorf("pgtest: initdb --locale=%s into %s: %w\n%s", locale, s.DataDir, err, strings.TrimSpace(out))
		// initdb removes a data dir it created when it fails; make sure,
		// so the retry starts from an empty directory.
		if rmErr := os.RemoveAll(s.DataDir); rmErr != nil {
			return errors.Join(lastErr, fmt.Errorf("pgtest: remove failed data dir %s: %w", s.DataDir, rmErr))
		}
	}
	return lastErr
}

func (s *Server) runInitdb(ctx context.Context, args []string) (string, error) {
	var out strings.Builder
	cmd := s.command("initdb", args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := startProcess(cmd); err != nil {
		return "", err
	}
	stop := context.AfterFunc(ctx, func() { _ = cmd.Process.Kill() })
	defer stop()
	err := cmd.Wait()
	if err != nil && ctx.Err() != nil {
		err = fmt.Errorf("%w (%w)", ctx.Err(), err)
	}
	return out.String(), err
}

// launchLocked starts the postmaster and waits until it accepts
// connections. s.mu must be held.
func (s *Server) launchLocked(ctx context.Context) error {
	offset := s.logSize()
	logFile, err := os.OpenFile(s.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("pgtest: open server log %s: %w", s.logPath, err)
	}
	cmd := s.command("postgres", "-D", s.DataDir)
	// An *os.File is handed to the child as its own descriptor: the server
	// keeps logging even while nothing in this process reads it.
	cmd.Stdout, cmd.Stderr = logFile, logFile
	err = startProcess(cmd)
	logFile.Close()
	if err != nil {
		return fmt.Errorf("pgtest: start %s: %w", cmd.Path, err)
	}
	pm := &postmaster{cmd: cmd, done: make(chan struct{})}
	go func() {
		pm.err = cmd.Wait()
		close(pm.done)
	}()
	if err := s.waitReady(ctx, pm); err != nil {
		// Kill rather than shut down: a server that is not ready has
		// nothing worth a clean shutdown, and the caller wants it gone.
		killCtx, cancel := context.WithTimeout(context.Background(), stopTimeout)
		_ = pm.stop(killCtx, syscall.SIGKILL)
		cancel()
		log := s.logSince(offset)
		if strings.Contains(log, "Address already in use") || strings.Contains(log, "could not create any TCP/IP sockets") {
			err = fmt.Errorf("%w (%w)", err, errPortInUse)
		}
		return fmt.Errorf("%w\nserver log:\n%s", err, log)
	}
	s.pm = pm
	return nil
}

// waitReady polls with real connections until the server answers, it
// exits, or 60s (or ctx) pass. A connection is the only reliable signal:
// the port opens before crash recovery has finished.
func (s *Server) waitReady(ctx context.Context, pm *postmaster) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	var lastErr error
	for {
		attemptCtx, cancelAttempt := context.WithTimeout(ctx, 2*time.Second)
		// If the postmaster dies, whatever holds the port (another program
		// that took it) may never answer: give up the attempt at once.
		go func() {
			select {
			case <-pm.done:
				cancelAttempt()
			case <-attemptCtx.Done():
			}
		}()
		conn, err := s.connect(attemptCtx, "postgres")
		cancelAttempt()
		if err == nil {
			_ = conn.Close(ctx)
			return nil
		}
		lastErr = err
		if isAuthFailure(err) {
			return fmt.Errorf("pgtest: postgres on port %d refused the harness's own login: %w", s.Port, err)
		}
		select {
		case <-pm.done:
			return fmt.Errorf("pgtest: postgres on port %d exited before accepting connections (%v)", s.Port, pm.err)
		case <-ctx.Done():
			return fmt.Errorf("pgtest: postgres on port %d not ready: %w (last attempt: %w)", s.Port, ctx.Err(), lastErr)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// stop sends sig to the postmaster and waits for it to exit until ctx ends;
// then it kills the whole process group, so no backend outlives it.
func (pm *postmaster) stop(ctx context.Context, sig syscall.Signal) error {
	select {
	case <-pm.done:
		return nil // already gone, e.g. it crashed on its own
	default:
	}
	pid := pm.cmd.Process.Pid
	if err := syscall.Kill(pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("signal postmaster pid %d with %v: %w", pid, sig, err)
	}
	select {
	case <-pm.done:
		if sig == syscall.SIGKILL {
			_ = syscall.Kill(-pid, syscall.SIGKILL) // orphaned backends
		}
		return nil
	case <-ctx.Done():
	}
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	<-pm.done
	return fmt.Errorf("postmaster pid %d did not exit after %v (%w); killed it and its process group", pid, sig, ctx.Err())
}
