package state

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"time"
)

// CheckpointFile is the checkpoint's file name inside the state directory.
const CheckpointFile = "checkpoint.json"

// checkpointFormat is bumped whenever the file's meaning changes, so an old
// binary refuses a newer file instead of misreading it. Format 2 added the
// snapshot's progress; format 3 the failed re-sync; format 4 the
// publication and the start over; format 5 a snapshot's backfill. Older
// files are read as having none.
const checkpointFormat = 5

// Initial sync phases recorded in the checkpoint.
const (
	// InitialSyncInProgress is written before the slot is created: if pgpilot
	// dies before the snapshot is fully delivered, the next start knows the
	// slot is its own, never confirmed, and can be dropped and made again.
	InitialSyncInProgress = "in_progress"
	// InitialSyncDone means every row of the snapshot was delivered and LSN is
	// a position in the slot's stream.
	InitialSyncDone = "done"
)

// Checkpoint is how far pgpilot got: every change of every transaction that
// ended at or before LSN has been accepted by Userpilot or set aside.
type Checkpoint struct {
	// SystemID is the Postgres cluster's system identifier (the same on a
	// primary and its physical standbys): a checkpoint from another cluster
	// is refused rather than applied to the wrong slot.
	SystemID string `json:"system_id"`
	// Database is the database the slot belongs to.
	Database string `json:"database"`
	// Slot is the logical replication slot the LSN refers to.
	Slot string `json:"slot"`
	// LSN is the end LSN of the last fully delivered transaction.
	LSN LSN `json:"lsn"`
	// InitialSync is InitialSyncInProgress or InitialSyncDone.
	InitialSync string `json:"initial_sync"`
	// Snapshot is the snapshot (initial sync or re-sync) in progress, as
	// far as it is delivered; nil when none runs.
	Snapshot *Snapshot `json:"snapshot,omitempty"`
	// UsersSynced says the users table's rows were all sent once (the
	// users' initial sync, which runs after the companies'): a users
	// section added to a running sync starts one.
	UsersSynced bool `json:"users_synced,omitempty"`
	// Publication is the publication the slot decodes through, as it was
	// when streaming last began: one dropped and created again has another
	// oid, and the slot cannot decode the changes made in between. Nil in
	// checkpoints written before it was recorded.
	Publication *Publication `json:"publication,omitempty"`
	// Recovery is the start over in progress (see Recovery): its deletions
	// are owed until its re-read of every row (Snapshot, the initial job)
	// is delivered.
	Recovery *Recovery `json:"recovery,omitempty"`
	// LastFailed is the last re-sync that ended before its last row
	// (failed at run time, refused when taken, or cancelled), with its
	// Error and Fix: kept, for status, until another one fails.
	LastFailed *Snapshot `json:"last_failed,omitempty"`
	// UpdatedAt is when the checkpoint was written (for status output).
	UpdatedAt time.Time `json:"updated_at"`
}

// Publication is a publication as the checkpoint records it.
type Publication struct {
	Name string `json:"name"`
	// OID is pg_publication.oid: a publication dropped and created again
	// under the same name has another.
	OID uint32 `json:"oid"`
}

// InitialUsersSnapshot is the job ID of the users' initial sync, when it
// follows the companies' (a users-only sync's is InitialSnapshot).
const InitialUsersSnapshot = "initial-users"

// InitialSnapshot is the ID of the initial sync's snapshot job.
const InitialSnapshot = "initial"

// Initial reports whether a job is an initial sync (the companies' or the
// users'): it sends what the no-op index does not hold yet, not every row
// again, and it is not a re-sync to cancel.
func (s Snapshot) Initial() bool { return s.ID == InitialSnapshot || s.ID == InitialUsersSnapshot }

// Snapshot is a snapshot job's delivered progress: every row up to After,
// in key order, is delivered, and a restart reads on from there.
type Snapshot struct {
	// ID names the job: "initial" for the initial sync, "resync-…" for a
	// re-sync.
	ID string `json:"id"`
	// Where restricts a re-sync to the rows it selects (SQL); CompanyID to
	// one company. Both empty: every row.
	Where     string `json:"where,omitempty"`
	CompanyID string `json:"company_id,omitempty"`
	// Users makes it a job of the users table (users:), CompanyID then
	// one user's id; false: the companies table.
	Users bool `json:"users,omitempty"`
	// After is the key of the last row delivered (text, one per key
	// column); nil: none yet.
	After []string `json:"after,omitempty"`
	// Rows is how many rows are delivered; Total the estimate of all (-1:
	// unknown).
	Rows  int64     `json:"rows"`
	Total int64     `json:"total"`
	Began time.Time `json:"began"`
	// Backfill, when set, makes the job a backfill after a mapping
	// change: it sends only some keys of every row.
	Backfill *Backfill `json:"backfill,omitempty"`
	// Error says why the job ended before its last row, Fix what to do,
	// Ended when; set only in Checkpoint.LastFailed.
	Error string    `json:"error,omitempty"`
	Fix   string    `json:"fix,omitempty"`
	Ended time.Time `json:"ended,omitzero"`
}

// Backfill is what a snapshot job sends of each row after a mapping
// change: the current values of Keys (added, or defined anew), and null
// for Clear (keys the mapping dropped, so no orphan property stays in
// Userpilot). The other keys are left as Userpilot holds them.
type Backfill struct {
	Keys  []string `json:"keys,omitempty"`
	Clear []string `json:"clear,omitempty"`
}

// envelope is the file: the checkpoint and a checksum of its exact bytes, so
// a torn or hand-edited file is detected instead of trusted.
type envelope struct {
	Format     int             `json:"format"`
	CRC32C     string          `json:"crc32c"`
	Checkpoint json.RawMessage `json:"checkpoint"`
}

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// ErrCorrupt is wrapped by ReadCheckpoint when the file exists but cannot be
// trusted. pgpilot refuses to start rather than start over silently.
var ErrCorrupt = errors.New("checkpoint is corrupt")

// ReadCheckpoint reads dir's checkpoint. It returns ok=false, and no error,
// when there is none yet. It takes no lock, so status can read a running
// daemon's state.
func ReadCheckpoint(dir string) (cp Checkpoint, ok bool, err error) {
	path := filepath.Join(dir, CheckpointFile)
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return Checkpoint{}, false, nil
	}
	if err != nil {
		return Checkpoint{}, false, fmt.Errorf("read checkpoint %s: %w", path, err)
	}
	corrupt := func(why string) error {
		return fmt.Errorf("%w: %s: %s; pgpilot will not guess where to resume. "+
			"Restore the file from a backup, or remove the state directory and run `pgpilot teardown` "+
			"then `pgpilot run` to start over with a full re-send", ErrCorrupt, path, why)
	}
	var env envelope
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&env); err != nil {
		return Checkpoint{}, false, corrupt("not a checkpoint file (" + err.Error() + ")")
	}
	if env.Format < 1 || env.Format > checkpointFormat {
		return Checkpoint{}, false, corrupt(fmt.Sprintf("format %d, this pgpilot reads format %d", env.Format, checkpointFormat))
	}
	// The checksum covers the compact form, so indentation is not content.
	var compact bytes.Buffer
	if err := json.Compact(&compact, env.Checkpoint); err != nil {
		return Checkpoint{}, false, corrupt(err.Error())
	}
	if env.CRC32C != checksum(compact.Bytes()) {
		return Checkpoint{}, false, corrupt("checksum mismatch (torn write or edited by hand)")
	}
	dec = json.NewDecoder(bytes.NewReader(env.Checkpoint))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cp); err != nil {
		return Checkpoint{}, false, corrupt(err.Error())
	}
	if cp.InitialSync != InitialSyncInProgress && cp.InitialSync != InitialSyncDone {
		return Checkpoint{}, false, corrupt(fmt.Sprintf("unknown initial_sync %q", cp.InitialSync))
	}
	return cp, true, nil
}

// writeCheckpoint durably replaces dir's checkpoint.
func writeCheckpoint(dir string, cp Checkpoint) error {
	body, err := json.Marshal(cp)
	if err != nil {
		return fmt.Errorf("encode checkpoint: %w", err)
	}
	data, err := json.MarshalIndent(envelope{Format: checkpointFormat, CRC32C: checksum(body), Checkpoint: body}, "", "  ")
	if err != nil {
		return fmt.Errorf("encode checkpoint: %w", err)
	}
	return WriteFileAtomic(dir, CheckpointFile, append(data, '\n'), 0o600)
}

func checksum(b []byte) string {
	return fmt.Sprintf("%08x", crc32.Checksum(b, crcTable))
}
