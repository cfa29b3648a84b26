package pgtest

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// osOwner is the unprivileged OS user the servers run as when the harness
// runs as root. A nil *osOwner means "the current user": its methods then
// leave ownership alone.
type osOwner struct {
	uid, gid uint32
}

// lookupOwner returns nil when not root, else the OS user "postgres"
// (created by Debian's postgresql package).
func lookupOwner() (*osOwner, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup(superuser)
	if err != nil {
		return nil, fmt.Errorf("pgtest: running as root, and Postgres refuses to run as root, but OS user %q was not found (%w); run scripts/setup.sh or create the user", superuser, err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("pgtest: OS user %q has a non-numeric uid %q: %w", superuser, u.Uid, err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("pgtest: OS user %q has a non-numeric gid %q: %w", superuser, u.Gid, err)
	}
	if uid == 0 {
		return nil, fmt.Errorf("pgtest: OS user %q has uid 0; Postgres needs an unprivileged user", superuser)
	}
	return &osOwner{uid: uint32(uid), gid: uint32(gid)}, nil
}

// chown gives path to the owner; a no-op when not root.
func (o *osOwner) chown(path string) error {
	if o == nil {
		return nil
	}
	if err := os.Chown(path, int(o.uid), int(o.gid)); err != nil {
		return fmt.Errorf("pgtest: give %s to OS user %q: %w", path, superuser, err)
	}
	return nil
}

// writeFile writes a file the server will read (or rewrite: ALTER SYSTEM,
// a copy made into a standby) and gives it to the owner.
func (o *osOwner) writeFile(path string, data []byte, perm os.FileMode) error {
	if err := os.WriteFile(path, data, perm); err != nil {
		return fmt.Errorf("pgtest: write %s: %w", path, err)
	}
	return o.chown(path)
}

// baseDirName is per effective user, so two users on one machine never
// fight over a directory the other owns.
var baseDirName = "pgpilot-pgtest-" + strconv.Itoa(os.Geteuid())

// ownerFile in each server directory holds the pid of the process that
// created it, so a later run can remove what a killed run left behind.
const ownerFile = "owner.pid"

var sweepOnce sync.Once

// newServerDir creates a fresh per-server directory under a 0755 base
// directory in os.TempDir(), traversable by the owner, and gives it to the
// owner (the server writes its socket and lock files there).
func newServerDir(owner *osOwner) (string, error) {
	base, err := baseDir(owner)
	if err != nil {
		return "", err
	}
	sweepOnce.Do(func() { sweepAbandoned(base) })
	dir, err := os.MkdirTemp(base, "pg-")
	if err != nil {
		return "", fmt.Errorf("pgtest: create server directory in %s: %w", base, err)
	}
	// MkdirTemp makes 0700; 0755 lets root (or anyone debugging) read the log
	// and lets "postgres" in when we are root.
	if err := os.Chmod(dir, 0o755); err != nil {
		return "", fmt.Errorf("pgtest: chmod server directory %s: %w", dir, err)
	}
	if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		return "", fmt.Errorf("pgtest: write %s in %s: %w", ownerFile, dir, err)
	}
	if err := owner.chown(dir); err != nil {
		return "", err
	}
	return dir, nil
}

// baseDir returns (creating it) the directory holding all server
// directories. As root it must be reachable by "postgres", so a temp dir
// with a root-only ancestor (TMPDIR=/root/tmp) is skipped for /tmp.
func baseDir(owner *osOwner) (string, error) {
	candidates := []string{os.TempDir()}
	if owner != nil {
		candidates = append(candidates, "/tmp", "/var/tmp")
	}
	var errs []error
	for _, parent := range candidates {
		if owner != nil && !traversableByOthers(parent) {
			errs = append(errs, fmt.Errorf("%s (or an ancestor) is not traversable by OS user %q", parent, superuser))
			continue
		}
		base := filepath.Join(parent, baseDirName)
		if err := os.MkdirAll(base, 0o755); err != nil {
			errs = append(errs, err)
			continue
		}
		fi, err := os.Lstat(base)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !fi.IsDir() || !ok || int(st.Uid) != os.Geteuid() {
			// Someone else's directory or a symlink in a shared /tmp: do not
			// put servers (or the password file) there.
			errs = append(errs, fmt.Errorf("%s is not a directory owned by uid %d", base, os.Geteuid()))
			continue
		}
		if fi.Mode().Perm() != 0o755 {
			if err := os.Chmod(base, 0o755); err != nil {
				errs = append(errs, err)
				continue
			}
		}
		return base, nil
	}
	return "", fmt.Errorf("pgtest: no usable base directory for test servers (set TMPDIR to a directory every user can traverse): %w", errors.Join(errs...))
}

// traversableByOthers reports whether every directory from / down to dir
// has the search (x) bit for others.
func traversableByOthers(dir string) bool {
	dir, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return false
	}
	for d := filepath.Clean(dir); ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil || fi.Mode().Perm()&0o001 == 0 {
			return false
		}
		if d == filepath.Dir(d) {
			return true
		}
	}
}

// sweepAbandoned removes server directories whose creating process is gone
// (a test binary killed by a timeout: Pdeathsig stopped its servers, but
// nothing removed their directories). Directories of live processes, and
// young ones whose owner file may not be written yet, are left alone.
func sweepAbandoned(base string) {
	entries, err := os.ReadDir(base)
	if err != nil {
		return
	}
	for _, e := range entries {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), "pg-") {
			continue
		}
		dir := filepath.Join(base, e.Name())
		raw, err := os.ReadFile(filepath.Join(dir, ownerFile))
		if err != nil {
			if info, statErr := e.Info(); statErr == nil && time.Since(info.ModTime()) > time.Hour && errors.Is(err, fs.ErrNotExist) {
				_ = os.RemoveAll(dir)
			}
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(raw)))
		if err != nil || pid <= 0 {
			continue
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			_ = os.RemoveAll(dir)
		}
	}
}
