// Package state owns pgpilot's local, durable state: the checkpoint that
// says how far delivery got, the dead letters Userpilot refused, and the lock
// that keeps two daemons from sharing one state directory.
//
// Every write that a restart depends on goes through WriteFileAtomic (temp
// file, fsync, rename, fsync of the directory), so a kill -9 or power cut at
// any instant leaves the previous state or the new one.
package state

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/pgpilot/pgpilot/internal/failpoint"
	"github.com/pgpilot/pgpilot/internal/fix"
)

const lockFile = "lock"

// DefaultDir is state.dir's default, relative to the config file's
// directory.
const DefaultDir = "pgpilot-state"

// Dir is an opened, locked state directory.
type Dir struct {
	path string
	lock *os.File

	mu          sync.Mutex
	deadLetters *os.File
}

// ErrLocked is returned by Open when another process holds the directory.
var ErrLocked = errors.New("state directory is in use by another pgpilot")

// Open creates path (mode 0700: it holds customer data) if needed and takes
// an exclusive lock on it, held until Close or process exit. The kernel drops
// a flock when its holder dies, so a kill -9 never leaves a stale lock. A
// directory this process cannot write (a read-only mount, another user's)
// is an error wrapping ErrNotWritable, with the fix.
func Open(path string) (*Dir, error) {
	if err := os.MkdirAll(path, 0o700); err != nil {
		return nil, notWritable(path, fmt.Errorf("create state directory %s: %w", path, err))
	}
	f, err := os.OpenFile(filepath.Join(path, lockFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, notWritable(path, fmt.Errorf("open state directory lock %s: %w", path, err))
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		holder, _ := os.ReadFile(f.Name())
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s (held by pid %s); each pgpilot needs its own state.dir",
				ErrLocked, path, strings.TrimSpace(string(holder)))
		}
		return nil, fmt.Errorf("lock state directory %s: %w", path, err)
	}
	// The pid is only a hint for the error above; the flock is the lock.
	if err := f.Truncate(0); err == nil {
		f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	// The lock file may be writable where the directory is not (made by
	// another user, or before a chmod): every checkpoint is a new file in
	// it, so that is tried now, not at the first checkpoint.
	if err := probeWritable(path); err != nil {
		f.Close()
		return nil, notWritable(path, err)
	}
	return &Dir{path: path, lock: f}, nil
}

// ErrNotWritable is wrapped by Open's error when the state directory cannot
// be written by this process: a setup problem, fixed on the volume.
var ErrNotWritable = errors.New("state directory not writable")

// probeWritable creates and removes a file in dir, as a checkpoint does.
func probeWritable(dir string) error {
	f, err := os.CreateTemp(dir, ".probe-*")
	if err != nil {
		return fmt.Errorf("write in state directory %s: %w", dir, err)
	}
	name := f.Name()
	f.Close()
	if err := os.Remove(name); err != nil {
		return fmt.Errorf("write in state directory %s: %w", dir, err)
	}
	return nil
}

// notWritable marks err, when the file system refused a write (read-only,
// permission), as ErrNotWritable with the fix for what refused it; any
// other error is returned as it is.
func notWritable(dir string, err error) error {
	uid, gid := os.Geteuid(), os.Getegid()
	switch {
	case errors.Is(err, syscall.EROFS):
		return fix.With(fmt.Errorf("%w: %w", ErrNotWritable, err), fmt.Sprintf(
			"the volume holding state.dir (%s) is mounted read-only: mount it read-write "+
				"(Kubernetes: no readOnly: true on its volumeMount; docker: no :ro on the -v)", dir))
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		return fix.With(fmt.Errorf("%w: %w", ErrNotWritable, err), fmt.Sprintf(
			"make %s and its files writable by the user pgpilot runs as (uid %d, gid %d): `chown -R %d:%d %s` (or `chmod u+rwx` if it is this user's, `chattr -i` if it is immutable), "+
				"or in Kubernetes set the pod's securityContext.fsGroup: %d so the volume is given to that group", dir, uid, gid, uid, gid, dir, gid))
	}
	return err
}

// OpenWait is Open for a standby instance: while another pgpilot holds the
// directory it waits (calling standingBy once with the holder's pid), and it
// takes the directory over as soon as the holder stops or dies (the kernel
// releases a dead process's lock at once). It returns when the directory is
// locked, or with ctx's error.
func OpenWait(ctx context.Context, path string, standingBy func(holder string)) (*Dir, error) {
	told := false
	for {
		d, err := Open(path)
		if !errors.Is(err, ErrLocked) {
			return d, err
		}
		if !told {
			holder, _ := os.ReadFile(filepath.Join(path, lockFile))
			standingBy(strings.TrimSpace(string(holder)))
			told = true
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// Path is the directory's path.
func (d *Dir) Path() string { return d.path }

// Checkpoint reads the directory's checkpoint; ok is false when there is none.
func (d *Dir) Checkpoint() (Checkpoint, bool, error) { return ReadCheckpoint(d.path) }

// SaveCheckpoint durably records cp. It returns only once cp would survive a
// crash: only then may its LSN be confirmed to Postgres.
func (d *Dir) SaveCheckpoint(cp Checkpoint) error {
	cp.UpdatedAt = time.Now().UTC()
	// A crash here, after Userpilot accepted everything up to cp.LSN, must
	// cost no more than sending it again.
	failpoint.Hit(failpoint.CheckpointBeforeWrite, cp.InitialSync)
	return writeCheckpoint(d.path, cp)
}

// Close releases the lock and closes open files.
func (d *Dir) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var errs []error
	if d.deadLetters != nil {
		errs = append(errs, d.deadLetters.Close())
		d.deadLetters = nil
	}
	if d.lock != nil {
		errs = append(errs, d.lock.Close())
		d.lock = nil
	}
	return errors.Join(errs...)
}
