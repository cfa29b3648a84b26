package state

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/pgpilot/pgpilot/userpilot"
)

// What the store holds of one company, for `pgpilot why`: read, never
// written.

// ErrStoreInUse is returned by ReadStore while a running pgpilot holds the
// store (bbolt locks its file): ask that pgpilot instead.
var ErrStoreInUse = errors.New("the store is held by a running pgpilot")

// ReadStore opens the state directory's store read-only, for a command
// that reads it while no pgpilot runs: ErrStoreInUse when one holds it,
// and ok false when there is no store yet (pgpilot never ran there). It
// takes no lock of the state directory, so a `run` starting meanwhile
// waits for it a moment at most.
func ReadStore(dir string) (_ *Store, ok bool, _ error) {
	path := filepath.Join(dir, StoreFile)
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil, false, nil
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: 300 * time.Millisecond})
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, false, fmt.Errorf("%w: %s", ErrStoreInUse, path)
	}
	if err != nil {
		return nil, false, fmt.Errorf("open %s: %w", path, err)
	}
	x := &Store{db: db, dir: dir, stop: make(chan struct{}), done: make(chan struct{})}
	close(x.done) // no trimming goroutine: nothing is written
	return x, true, nil
}

// CompanyRecord is what the store holds of one company.
type CompanyRecord struct {
	// Indexed: the no-op index holds a record of it, the values Userpilot
	// last accepted. Fingerprints are that record's value fingerprints
	// (hex) by key, for the keys asked about; OtherKeys counts those of
	// other keys (keys the mapping had when they were sent).
	Indexed      bool              `json:"indexed"`
	Fingerprints map[string]string `json:"fingerprints,omitempty"`
	OtherKeys    int               `json:"other_keys,omitempty"`
	// Outbox is what the outbox owes it, nil when nothing.
	Outbox *OutboxRecord `json:"outbox,omitempty"`
	// Sending: marked as being sent (a real-time call or a delete request
	// on its way; after a restart, in doubt).
	Sending bool `json:"sending,omitempty"`
	// Jobs are the bulk jobs on record, not seen end, that carry it;
	// JobsUnreadable why they could not be read, if they could not.
	Jobs           []JobOf `json:"jobs,omitempty"`
	JobsUnreadable string  `json:"jobs_unreadable,omitempty"`
}

// JobOf is a bulk job on record that carries one company.
type JobOf struct {
	// ID is Userpilot's id for it, "" until the submission was answered.
	ID      string    `json:"id"`
	Began   time.Time `json:"began"`
	Records int       `json:"records"`
}

// Company reads what the store holds of company id: its record in the
// no-op index (the fingerprints of keys, by name), its outbox record, its
// mark as being sent, and the jobs on record that carry it.
func (x *Store) Company(id string, keys []string) (CompanyRecord, error) {
	var r CompanyRecord
	err := x.db.View(func(tx *bolt.Tx) error {
		if b := tx.Bucket(groupsBucket); b != nil {
			g := groupReader{c: b.Cursor()}
			if rec := g.get([]byte(id)); rec != nil && readable(rec) {
				r.Indexed = true
				r.Fingerprints = map[string]string{}
				named := map[uint32]string{}
				for _, k := range keys {
					kh, _ := keyHash(k)
					named[kh] = k
				}
				for i := 1; i+12 <= len(rec); i += 12 {
					kh, vh := binary.BigEndian.Uint32(rec[i:]), binary.BigEndian.Uint64(rec[i+4:])
					if k, ok := named[kh]; ok {
						r.Fingerprints[k] = fmt.Sprintf("%016x", vh)
					} else {
						r.OtherKeys++
					}
				}
			}
		}
		if b := tx.Bucket(outboxBucket); b != nil {
			if v := b.Get([]byte(id)); v != nil {
				var o OutboxRecord
				if err := json.Unmarshal(v, &o); err != nil {
					return fmt.Errorf("outbox record of company %q: %w", id, err)
				}
				o.CompanyID = id
				r.Outbox = &o
			}
		}
		if b := tx.Bucket(sendingBucket); b != nil {
			r.Sending = b.Get([]byte(id)) != nil
		}
		return nil
	})
	if err != nil {
		return r, fmt.Errorf("read company %s from the store: %w", strconv.Quote(id), err)
	}
	jobs, err := x.Jobs()
	if err != nil {
		// A running pgpilot may be writing a job's body over an ended
		// one's this very moment: say so, rather than fail the rest.
		r.JobsUnreadable = err.Error()
	}
	for _, j := range jobs {
		if slices.ContainsFunc(j.Companies, func(c userpilot.Company) bool { return c.CompanyID == id }) {
			r.Jobs = append(r.Jobs, JobOf{ID: j.ID, Began: j.Began, Records: len(j.Companies)})
		}
	}
	return r, nil
}
