package state

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/pgpilot/pgpilot/userpilot"
	bolt "go.etcd.io/bbolt"
)

// OutboxRecord is what is still owed to Userpilot for one company: its
// merged pending metadata. The outbox holds at most one per company, so it
// grows with the number of distinct pending companies, never with the
// number of changes.
type OutboxRecord struct {
	CompanyID string             `json:"-"`
	Metadata  userpilot.Metadata `json:"m"`
	// Delete: what is owed is a deletion (on_delete: delete), not metadata.
	Delete bool `json:"delete,omitempty"`
	// Resend: a re-sync asked for it, so it is sent even where the no-op
	// index says Userpilot holds it.
	Resend bool `json:"resend,omitempty"`
	// LSN is the newest change merged in (for dead letters).
	LSN LSN `json:"lsn"`
	// Since is when the oldest change merged in arrived (for status).
	Since time.Time `json:"since"`
}

// WriteOutbox puts records and deletes the companies in remove, in one
// durable write. Only after it returns may the changes they hold be
// confirmed to Postgres.
func (x *Store) WriteOutbox(put []OutboxRecord, remove []string) error {
	if len(put) == 0 && len(remove) == 0 {
		return nil
	}
	err := x.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(outboxBucket)
		for _, id := range remove {
			if err := b.Delete([]byte(id)); err != nil {
				return err
			}
		}
		for _, r := range put {
			v, err := json.Marshal(r)
			if err != nil {
				return fmt.Errorf("encode outbox record of company %q: %w", r.CompanyID, err)
			}
			if err := b.Put([]byte(r.CompanyID), v); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("write outbox: %w", err)
	}
	return nil
}

// Outbox reads every record (at start, to deliver what a previous run
// owed).
func (x *Store) Outbox() ([]OutboxRecord, error) {
	var out []OutboxRecord
	err := x.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(outboxBucket).ForEach(func(k, v []byte) error {
			var r OutboxRecord
			if err := json.Unmarshal(v, &r); err != nil { // values stay as their JSON, numbers exact
				return fmt.Errorf("outbox record of company %q: %w", k, err)
			}
			r.CompanyID = string(k)
			out = append(out, r)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("read outbox: %w", err)
	}
	return out, nil
}
