package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"
)

// RecoveryFile is the file, in the state directory, that asks the next
// `pgpilot run` to start over (see Recovery).
const RecoveryFile = "recovery.json"

// Why a start over is asked for.
const (
	// RecoverSlotMissing: the slot was dropped (while pgpilot was
	// stopped, or behind its back).
	RecoverSlotMissing = "slot_missing"
	// RecoverSlotInvalidated: Postgres invalidated the slot.
	RecoverSlotInvalidated = "slot_invalidated"
	// RecoverPublicationMissing: the publication was dropped; the start
	// over waits until it exists again.
	RecoverPublicationMissing = "publication_missing"
	// RecoverPublicationRecreated: the publication was dropped and made
	// again, or the stream refused it: the slot cannot decode the changes
	// made in between.
	RecoverPublicationRecreated = "publication_recreated"
	// RecoverStoreDamaged: store.db was damaged and set aside.
	RecoverStoreDamaged = "store_damaged"
)

// Recovery is a start over that keeps what the state directory knows: the
// table's every row is read again (sent where the no-op index does not
// already hold it), and the companies the state directory knows Userpilot
// holds but that have no row left are treated as deleted (on_delete). It is
// asked for in RecoveryFile (by `pgpilot recover`, or by the daemon when
// the publication was dropped), then carried by the checkpoint from the
// moment it begins until its re-read is delivered.
type Recovery struct {
	// ID names the request; a checkpoint carrying it means it has begun.
	ID     string `json:"id"`
	Reason string `json:"reason"`
	// NewSlot: the slot is unusable (gone, invalidated, or unable to
	// decode past a dropped publication): a new one is made, and the
	// stream starts at its consistent point.
	NewSlot bool `json:"new_slot"`
	// KnownFrom are store files set aside (in the state directory) whose
	// companies count as known to Userpilot, beside the store's own.
	KnownFrom []string  `json:"known_from,omitempty"`
	Asked     time.Time `json:"asked"`
}

// RequestRecovery asks the next run to start over, durably. A request
// already waiting is merged into (the reasons differ, the work is one):
// a new slot if either wants one, the set-aside stores of both.
func (d *Dir) RequestRecovery(r Recovery) (Recovery, error) {
	if old, ok, err := ReadRecovery(d.path); err != nil {
		return Recovery{}, err
	} else if ok {
		r.NewSlot = r.NewSlot || old.NewSlot
		for _, f := range old.KnownFrom {
			if !slices.Contains(r.KnownFrom, f) {
				r.KnownFrom = append(r.KnownFrom, f)
			}
		}
	}
	var err error
	if r.ID, err = requestName("recovery-"); err != nil {
		return Recovery{}, err
	}
	if r.Asked.IsZero() {
		r.Asked = time.Now().UTC()
	}
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return Recovery{}, fmt.Errorf("encode the start-over request: %w", err)
	}
	return r, WriteFileAtomic(d.path, RecoveryFile, append(data, '\n'), 0o600)
}

// ReadRecovery reads the start over waiting in the state directory dir, if
// any. It takes no lock (check and status read it beside a running daemon).
func ReadRecovery(dir string) (Recovery, bool, error) {
	path := filepath.Join(dir, RecoveryFile)
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return Recovery{}, false, nil
	}
	if err != nil {
		return Recovery{}, false, fmt.Errorf("read %s: %w", path, err)
	}
	var r Recovery
	if err := json.Unmarshal(data, &r); err != nil || r.ID == "" {
		return Recovery{}, false, fmt.Errorf("%s is not a start-over request (%v): remove it, and run `pgpilot recover` again", path, err)
	}
	return r, true, nil
}

// TakeRecovery removes the request once its start over is in the
// checkpoint.
func (d *Dir) TakeRecovery() error {
	err := os.Remove(filepath.Join(d.path, RecoveryFile))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove the start-over request: %w", err)
	}
	return syncDir(d.path)
}

// KnownCompanies returns, sorted, every company the store knows Userpilot
// holds or may hold: those in the no-op index, those the outbox owes
// something, those being sent, and those of bulk jobs not seen end.
func (x *Store) KnownCompanies() ([]string, error) {
	var ids []string
	err := x.db.View(func(tx *bolt.Tx) error {
		var es []groupEntry
		err := tx.Bucket(groupsBucket).ForEach(func(_, v []byte) error {
			var err error
			if es, err = decodeGroup(es[:0], v); err != nil {
				return nil // an unreadable group knows nothing (as for a look-up)
			}
			for _, e := range es {
				ids = append(ids, string(e.id))
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, b := range [][]byte{outboxBucket, sendingBucket} {
			if err := tx.Bucket(b).ForEach(func(k, _ []byte) error {
				ids = append(ids, string(k))
				return nil
			}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read the companies the store knows: %w", err)
	}
	jobs, err := x.Jobs()
	if err != nil {
		return nil, err
	}
	for _, j := range jobs {
		for _, co := range j.Companies {
			ids = append(ids, co.CompanyID)
		}
	}
	slices.Sort(ids)
	return slices.Compact(ids), nil
}

// KnownInStoreFile is KnownCompanies of a store file set aside (dir/name),
// damaged or not, read page by page as far as it can be: the no-op
// index's, the outbox's and the sending companies. (Its bulk jobs were
// carried into the store that replaced it.)
func KnownInStoreFile(dir, name string) ([]string, error) {
	path := filepath.Join(dir, name)
	s, err := openStoreFile(path)
	if errors.As(err, new(*StoreDamage)) {
		return nil, nil // not even its meta pages: it knows nothing now
	}
	if err != nil {
		return nil, err
	}
	defer s.close()
	var ids []string
	var es []groupEntry
	if _, err := s.bucket(groupsBucket, func(_, v []byte) error {
		if es, err = decodeGroup(es[:0], v); err == nil {
			for _, e := range es {
				ids = append(ids, string(e.id))
			}
		}
		return nil
	}); err != nil {
		return nil, err
	}
	for _, b := range [][]byte{outboxBucket, sendingBucket} {
		if _, err := s.bucket(b, func(k, _ []byte) error {
			ids = append(ids, string(k))
			return nil
		}); err != nil {
			return nil, err
		}
	}
	slices.Sort(ids)
	return slices.Compact(ids), nil
}

// CheckStore checks the store file of the state directory dir, without
// opening it with bbolt: nil when it can be opened (or there is none yet),
// else a *StoreDamage with what can still be read of it.
func CheckStore(dir string) error {
	return checkStoreFile(filepath.Join(dir, StoreFile))
}

// SetStoreAside moves a damaged store out of the way, as
// store.db.damaged-SUFFIX (returned), for a start over: what its outbox
// still owed, as far as it can be read, is written beside it as JSON lines
// (exported, "" when it owed nothing), and its bulk jobs not seen end are
// carried into a new store, as teardown does. The checkpoint stays.
func (d *Dir) SetStoreAside(suffix string) (aside, exported string, jobs int, err error) {
	storePath := filepath.Join(d.path, StoreFile)
	kept, seq, err := readJobs(storePath)
	if err != nil {
		return "", "", 0, err
	}
	sum, err := SummarizeOutbox(d.path)
	if err != nil {
		return "", "", 0, err
	}
	if sum.Companies > 0 {
		exported = "outbox.damaged-" + suffix + ".jsonl"
		if err := ExportOutbox(d.path, exported); err != nil {
			return "", "", 0, err
		}
	}
	aside = StoreFile + ".damaged-" + suffix
	if err := os.Rename(storePath, filepath.Join(d.path, aside)); err != nil {
		return "", exported, 0, fmt.Errorf("set %s aside: %w", storePath, err)
	}
	if err := syncDir(d.path); err != nil {
		return aside, exported, 0, err
	}
	jobs, err = d.carryJobs(kept, seq)
	return aside, exported, jobs, err
}
