package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// ResyncFile is where `pgpilot resync` leaves a request for the daemon.
const ResyncFile = "resync-request.json"

// RequestResync leaves a re-sync request for the daemon, replacing one it
// has not taken yet. It takes no lock: the daemon holds it.
func RequestResync(dir string, job Snapshot) error {
	data, err := json.MarshalIndent(job, "", "  ")
	if err != nil {
		return fmt.Errorf("encode re-sync request: %w", err)
	}
	return WriteFileAtomic(dir, ResyncFile, append(data, '\n'), 0o600)
}

// PendingResync returns the request waiting in the directory, if any.
func (d *Dir) PendingResync() (Snapshot, bool, error) {
	path := filepath.Join(d.path, ResyncFile)
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return Snapshot{}, false, nil
	}
	if err != nil {
		return Snapshot{}, false, fmt.Errorf("read re-sync request %s: %w", path, err)
	}
	var job Snapshot
	if err := json.Unmarshal(data, &job); err != nil {
		return Snapshot{}, false, fmt.Errorf("read re-sync request %s: %w; remove it and run `pgpilot resync` again", path, err)
	}
	return job, true, nil
}

// TakeResync removes the request once its job is in the checkpoint.
func (d *Dir) TakeResync() error {
	if err := os.Remove(filepath.Join(d.path, ResyncFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove re-sync request: %w", err)
	}
	return syncDir(d.path)
}
