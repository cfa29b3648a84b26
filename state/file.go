package state

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/pgpilot/pgpilot/internal/failpoint"
)

// WriteFileAtomic replaces dir/name with data so that a crash at any moment
// leaves either the old file or the new one, never a mix: the data goes to a
// temporary file in the same directory, is fsynced, renamed over the target,
// and the directory is fsynced so the rename itself survives a power cut.
func WriteFileAtomic(dir, name string, data []byte, perm os.FileMode) error {
	target := filepath.Join(dir, name)
	tmp, err := os.CreateTemp(dir, "."+name+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", target, err)
	}
	tmpName := tmp.Name()
	// On any failure the temporary file is removed; the target is untouched.
	fail := func(err error) error {
		tmp.Close()
		os.Remove(tmpName)
		return fmt.Errorf("write %s: %w", target, err)
	}
	if _, err := tmp.Write(data); err != nil {
		return fail(err)
	}
	if err := tmp.Chmod(perm); err != nil {
		return fail(err)
	}
	if err := tmp.Sync(); err != nil {
		return fail(err)
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmpName)
		return fmt.Errorf("write %s: %w", target, err)
	}
	if err := os.Rename(tmpName, target); err != nil {
		os.Remove(tmpName)
		return fmt.Errorf("write %s: %w", target, err)
	}
	// A crash here leaves the new file in place, its rename not yet durable.
	failpoint.Hit(failpoint.AtomicAfterRename, name)
	if err := syncDir(dir); err != nil {
		return fmt.Errorf("write %s: %w", target, err)
	}
	return nil
}

// syncDir makes a rename or create in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open directory for fsync: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync directory %s: %w", dir, err)
	}
	return nil
}
