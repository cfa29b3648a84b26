package state

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
)

// OutboxSummary is what a store's outbox owes, read without loading it
// whole (it may hold a million companies).
type OutboxSummary struct {
	// Companies is how many companies the outbox owes something.
	Companies int
	// Deletes is how many of them are owed a deletion (on_delete: delete).
	Deletes int
	// IDs are their company ids, in key order.
	IDs []string
	// Damage, when the store is damaged, says how (and the counts are
	// what could still be read of it).
	Damage *StoreDamage
}

// SummarizeOutbox reads what the store in dir owes Userpilot, opening the
// store only for reading; a directory without a store owes nothing. The
// caller holds the directory (Open), so no daemon has the store open. A
// damaged store is read as far as it can be (Damage says how).
func SummarizeOutbox(dir string) (OutboxSummary, error) {
	var sum OutboxSummary
	path := filepath.Join(dir, StoreFile)
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return sum, nil
	}
	damage, err := eachStored(path, outboxBucket, func(k, v []byte) error {
		var r OutboxRecord
		if err := json.Unmarshal(v, &r); err != nil {
			return fmt.Errorf("outbox record of company %q: %w", k, err)
		}
		sum.Companies++
		if r.Delete {
			sum.Deletes++
		}
		sum.IDs = append(sum.IDs, string(k))
		return nil
	})
	if err != nil {
		return OutboxSummary{}, fmt.Errorf("read outbox in %s: %w", path, err)
	}
	sum.Damage = damage
	return sum, nil
}

// eachStored calls fn with each key and value of bucket name of the store
// file at path, read only. A damaged file is read page by page as far as
// it can be (a record that cannot be read is left out), and its damage
// returned; bbolt, which would crash on it, never opens it.
func eachStored(path string, name []byte, fn func(k, v []byte) error) (*StoreDamage, error) {
	var damage *StoreDamage
	err := checkStoreFile(path)
	if errors.As(err, &damage) {
		s, err := openStoreFile(path)
		if err != nil {
			return damage, nil // not even the meta pages: nothing can be read
		}
		defer s.close()
		n, err := s.bucket(name, func(k, v []byte) error {
			if fn(k, v) != nil {
				damage.Held.Unreadable++ // a record cut by the damage
			}
			return nil
		})
		damage.Held.Unreadable += n
		return damage, err
	}
	if err != nil {
		return nil, err
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	defer db.Close()
	return nil, db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(name)
		if b == nil {
			return nil
		}
		return b.ForEach(fn)
	})
}

// ExportOutbox writes every record the store in dir owes Userpilot to
// file (in dir) as JSON lines an operator can read: company_id, delete,
// metadata, lsn, since. Durable (fsynced, and the directory) when it
// returns; mode 0600, as the records hold customer data. Of a damaged
// store, what can be read is written.
func ExportOutbox(dir, file string) error {
	path := filepath.Join(dir, StoreFile)
	out := filepath.Join(dir, file)
	f, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("write the outbox to %s: %w", out, err)
	}
	w := bufio.NewWriter(f)
	_, err = eachStored(path, outboxBucket, func(k, v []byte) error {
		var r OutboxRecord
		if err := json.Unmarshal(v, &r); err != nil {
			return fmt.Errorf("outbox record of company %q: %w", k, err)
		}
		line, err := json.Marshal(struct {
			CompanyID string `json:"company_id"`
			OutboxRecord
		}{string(k), r})
		if err != nil {
			return err
		}
		_, err = w.Write(append(line, '\n'))
		return err
	})
	if err == nil {
		err = w.Flush()
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = syncDir(dir)
	}
	if err != nil {
		os.Remove(out)
		return fmt.Errorf("write the outbox to %s: %w", out, err)
	}
	return nil
}

// SetAside moves what ties the directory to a slot and to what Userpilot
// was sent out of the way, for a fresh start (`pgpilot teardown`): the
// checkpoint and the store (no-op index, outbox, the companies being sent) are renamed
// to NAME.torn-down-SUFFIX, kept for the record, and the status report of
// the last run and any start over asked for are removed. Dead letters and the lock stay. It returns the
// names of the files it renamed, and how many bulk jobs it carried over.
//
// The bulk jobs the last run submitted and did not see end are the one
// thing of the old store the next run needs: Userpilot may still be
// applying one, and the next run must hold its companies until it ends, or
// its older values could land over the re-send. They are copied into a new
// store.
func (d *Dir) SetAside(suffix string) (moved []string, jobs int, err error) {
	storePath := filepath.Join(d.path, StoreFile)
	var kept []keptJob
	var seq uint64
	if _, err := os.Stat(storePath); err == nil {
		if kept, seq, err = readJobs(storePath); err != nil {
			return nil, 0, err
		}
	}
	for _, name := range []string{CheckpointFile, StoreFile} {
		from := filepath.Join(d.path, name)
		if _, err := os.Stat(from); errors.Is(err, os.ErrNotExist) {
			continue
		}
		to := from + ".torn-down-" + suffix
		if err := os.Rename(from, to); err != nil {
			return moved, 0, fmt.Errorf("set %s aside: %w", name, err)
		}
		moved = append(moved, name)
	}
	if err := os.Remove(filepath.Join(d.path, StatusFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return moved, 0, fmt.Errorf("remove the last run's status report: %w", err)
	}
	// A start over asked for is moot: the next run starts from scratch.
	if err := os.Remove(filepath.Join(d.path, RecoveryFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return moved, 0, fmt.Errorf("remove the start-over request: %w", err)
	}
	// The renames must survive a crash, or the next run would find the old
	// checkpoint, or an index that skips rows it means to send again.
	if err := syncDir(d.path); err != nil {
		return moved, 0, err
	}
	jobs, err = d.carryJobs(kept, seq)
	return moved, jobs, err
}

// carryJobs writes the bulk jobs kept from a store set aside into a new
// store, and returns how many jobs they are.
func (d *Dir) carryJobs(kept []keptJob, seq uint64) (int, error) {
	if len(kept) == 0 {
		return 0, nil
	}
	storePath := filepath.Join(d.path, StoreFile)
	store, err := d.OpenStore()
	if err != nil {
		return 0, err
	}
	err = store.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(jobsBucket)
		for _, j := range kept {
			if err := b.Put(j.key, j.value); err != nil {
				return err
			}
		}
		// New jobs are numbered after the kept ones.
		return b.SetSequence(seq)
	})
	if cerr := store.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return 0, fmt.Errorf("keep the bulk jobs not seen end in a new %s: %w", storePath, err)
	}
	carried := 0
	for _, j := range kept {
		if len(j.key) == 8 { // not the id or the start beside a job (see BeginJob)
			carried++
		}
	}
	return carried, nil
}

// keptJob is a bulk job's record, as the store holds it. (Its body file
// stays where it is, and the record still points to it.)
type keptJob struct{ key, value []byte }

// readJobs reads the bulk jobs on record in the store at path, and the
// bucket's sequence; of a damaged store, those that can be read (and a
// sequence past every job read).
func readJobs(path string) ([]keptJob, uint64, error) {
	var jobs []keptJob
	var seq uint64
	damage, err := eachStored(path, jobsBucket, func(k, v []byte) error {
		jobs = append(jobs, keptJob{bytes.Clone(k), bytes.Clone(v)})
		if len(k) >= 8 {
			seq = max(seq, binary.BigEndian.Uint64(k[:8]))
		}
		return nil
	})
	if err != nil {
		return nil, 0, fmt.Errorf("read the bulk jobs in %s: %w", path, err)
	}
	if damage != nil {
		return jobs, seq, nil
	}
	// The sequence itself, from a store bbolt can open.
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: 5 * time.Second})
	if err != nil {
		return nil, 0, fmt.Errorf("open %s: %w", path, err)
	}
	defer db.Close()
	err = db.View(func(tx *bolt.Tx) error {
		if b := tx.Bucket(jobsBucket); b != nil {
			seq = b.Sequence()
		}
		return nil
	})
	if err != nil {
		return nil, 0, fmt.Errorf("read the bulk jobs in %s: %w", path, err)
	}
	return jobs, seq, nil
}
