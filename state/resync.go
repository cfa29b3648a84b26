package state

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// ResyncDir is the directory, inside the state directory, where
// `pgpilot resync` queues its requests for the daemon: one file each,
// named by the request's ID, so that a request never replaces another and
// the daemon removes only the one it took.
const ResyncDir = "resync-requests"

// LegacyResyncFile is where releases before the queue left their one
// request; it is taken as the oldest request, with the ID LegacyResyncID.
const (
	LegacyResyncFile = "resync-request.json"
	LegacyResyncID   = "resync-request"
)

// RequestResync queues a re-sync request for the daemon and returns it with
// its ID, which the job keeps once it runs. IDs sort in the order they
// were requested (by this machine's clock). The file is written
// crash-safely (temp file, fsync, rename, fsync of the directory): once
// RequestResync returns, the request survives a crash. It takes no lock:
// the daemon holds it.
func RequestResync(dir string, job Snapshot) (Snapshot, error) {
	queue := filepath.Join(dir, ResyncDir)
	if err := ensureDir(dir, ResyncDir); err != nil {
		return Snapshot{}, err
	}
	var err error
	if job.ID, err = requestName("resync-"); err != nil {
		return Snapshot{}, err
	}
	data, err := json.MarshalIndent(job, "", "  ")
	if err != nil {
		return Snapshot{}, fmt.Errorf("encode re-sync request: %w", err)
	}
	if err := WriteFileAtomic(queue, job.ID+".json", append(data, '\n'), 0o600); err != nil {
		return Snapshot{}, err
	}
	return job, nil
}

// ensureDir creates dir/name (0700) if it is missing, durably.
func ensureDir(dir, name string) error {
	path := filepath.Join(dir, name)
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	if err := os.MkdirAll(path, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	return syncDir(dir)
}

// QueuedResyncs returns the requests waiting, oldest first. A file that
// cannot be read is left out and named in the error, so that one bad file
// does not hold the others back. It takes no lock, so `status` can read a
// running daemon's queue.
func QueuedResyncs(dir string) ([]Snapshot, error) {
	var jobs []Snapshot
	var errs []error
	if job, ok, err := readRequest(filepath.Join(dir, LegacyResyncFile)); err != nil {
		errs = append(errs, err)
	} else if ok {
		job.ID = LegacyResyncID
		jobs = append(jobs, job)
	}
	entries, err := os.ReadDir(filepath.Join(dir, ResyncDir))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return jobs, fmt.Errorf("read re-sync requests: %w", err)
	}
	var names []string
	for _, e := range entries {
		// Temporary files of a write under way start with a dot.
		if name := e.Name(); strings.HasPrefix(name, "resync-") && strings.HasSuffix(name, ".json") && e.Type().IsRegular() {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	for _, name := range names {
		job, ok, err := readRequest(filepath.Join(dir, ResyncDir, name))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if ok {
			job.ID = strings.TrimSuffix(name, ".json")
			jobs = append(jobs, job)
		}
	}
	return jobs, errors.Join(errs...)
}

func readRequest(path string) (Snapshot, bool, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return Snapshot{}, false, nil // taken meanwhile
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

// PendingResync returns the oldest request waiting, if any.
func (d *Dir) PendingResync() (Snapshot, bool, error) {
	jobs, err := QueuedResyncs(d.path)
	if len(jobs) == 0 {
		return Snapshot{}, false, err
	}
	return jobs[0], true, err
}

// TakeResync removes the request id once its job is in the checkpoint
// (or has ended): only that request, so that one written meanwhile stays.
func (d *Dir) TakeResync(id string) error {
	dir, path := filepath.Join(d.path, ResyncDir), filepath.Join(d.path, ResyncDir, id+".json")
	if id == LegacyResyncID {
		dir, path = d.path, filepath.Join(d.path, LegacyResyncFile)
	}
	if err := os.Remove(path); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("remove re-sync request: %w", err)
	}
	return syncDir(dir)
}

// requestName names a request file: fixed width, so that names sort as
// times do, and a random suffix keeps two of the same nanosecond apart.
func requestName(prefix string) (string, error) {
	var suffix [3]byte
	if _, err := rand.Read(suffix[:]); err != nil {
		return "", fmt.Errorf("name a re-sync request: %w", err)
	}
	return prefix + time.Now().UTC().Format("20060102T150405.000000000Z") + "-" + hex.EncodeToString(suffix[:]), nil
}

// Cancel is a `pgpilot resync --cancel`: the re-syncs it ends, running or
// queued, by ID.
type Cancel struct {
	// Name is the request's file name, for TakeCancel.
	Name string   `json:"-"`
	IDs  []string `json:"cancel"`
}

// RequestCancel queues a cancel of the re-syncs ids for the daemon, the
// same crash-safe way as a request. Listing the IDs (rather than "all")
// keeps a re-sync asked for after the cancel out of it.
func RequestCancel(dir string, ids []string) error {
	if err := ensureDir(dir, ResyncDir); err != nil {
		return err
	}
	name, err := requestName("cancel-")
	if err != nil {
		return err
	}
	data, err := json.MarshalIndent(Cancel{IDs: ids}, "", "  ")
	if err != nil {
		return fmt.Errorf("encode re-sync cancel: %w", err)
	}
	return WriteFileAtomic(filepath.Join(dir, ResyncDir), name+".json", append(data, '\n'), 0o600)
}

// PendingCancels returns the cancels waiting, oldest first.
func PendingCancels(dir string) ([]Cancel, error) {
	entries, err := os.ReadDir(filepath.Join(dir, ResyncDir))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read re-sync requests: %w", err)
	}
	var out []Cancel
	var errs []error
	for _, e := range entries { // ReadDir sorts by name
		name := e.Name()
		if !strings.HasPrefix(name, "cancel-") || !strings.HasSuffix(name, ".json") {
			continue
		}
		path := filepath.Join(dir, ResyncDir, name)
		data, err := os.ReadFile(path)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		c := Cancel{Name: name}
		if err == nil {
			err = json.Unmarshal(data, &c)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("read re-sync cancel %s: %w; remove it and run `pgpilot resync --cancel` again", path, err))
			continue
		}
		out = append(out, c)
	}
	return out, errors.Join(errs...)
}

// TakeCancel removes a cancel once everything it names has ended.
func (d *Dir) TakeCancel(c Cancel) error {
	dir := filepath.Join(d.path, ResyncDir)
	if err := os.Remove(filepath.Join(dir, c.Name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove re-sync cancel: %w", err)
	}
	return syncDir(dir)
}
