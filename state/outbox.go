package state

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
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
	// In writes of a bounded size, in key order: a write transaction holds
	// every page it touches on the heap until it commits.
	put = slices.Clone(put)
	slices.SortFunc(put, func(a, b OutboxRecord) int { return strings.Compare(a.CompanyID, b.CompanyID) })
	for len(put) > outboxWriteBatch {
		if err := x.writeOutbox(put[:outboxWriteBatch], nil); err != nil {
			return err
		}
		put = put[outboxWriteBatch:]
	}
	// Removals too: a completed bulk job's 10,000 companies, removed in one
	// write, dirtied 40 MB of pages. (Records removed before a crash were
	// delivered; those left are sent again, which is harmless.)
	remove = slices.Clone(remove)
	slices.Sort(remove)
	for len(remove) > outboxWriteBatch {
		if err := x.writeOutbox(nil, remove[:outboxWriteBatch]); err != nil {
			return err
		}
		remove = remove[outboxWriteBatch:]
	}
	return x.writeOutbox(put, remove)
}

// outboxWriteBatch is how many records one outbox write transaction puts.
const outboxWriteBatch = 500

func (x *Store) writeOutbox(put []OutboxRecord, remove []string) error {
	// Removals first, then puts, as one write (or more: writeInParts).
	err := x.writeInParts(len(remove)+len(put), func(tx *bolt.Tx, i int) error {
		b := tx.Bucket(outboxBucket)
		if i < len(remove) {
			return b.Delete([]byte(remove[i]))
		}
		r := put[i-len(remove)]
		v, err := json.Marshal(r)
		if err != nil {
			return fmt.Errorf("encode outbox record of company %q: %w", r.CompanyID, err)
		}
		return b.Put([]byte(r.CompanyID), v)
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

// OutboxEntry is what a scan of the outbox tells of one record, without
// keeping it.
type OutboxEntry struct {
	CompanyID string
	Size      int // bytes stored
	Since     time.Time
}

// ScanOutbox calls fn for every record, in key order, keeping none of them
// in memory: a start reads what is owed without loading it whole.
func (x *Store) ScanOutbox(fn func(OutboxEntry) error) error {
	err := x.db.View(func(tx *bolt.Tx) error {
		n := 0
		return tx.Bucket(outboxBucket).ForEach(func(k, v []byte) error {
			if n++; n%trimEvery == 0 {
				x.trimIn(tx)
			}
			since, err := recordSince(v)
			if err != nil {
				return fmt.Errorf("outbox record of company %q: %w", k, err)
			}
			return fn(OutboxEntry{CompanyID: string(k), Size: len(k) + len(v), Since: since})
		})
	})
	if err != nil {
		return fmt.Errorf("read outbox: %w", err)
	}
	return nil
}

// ReadOutbox returns the records of these companies (those that have one).
func (x *Store) ReadOutbox(ids []string) ([]OutboxRecord, error) {
	out := make([]OutboxRecord, 0, len(ids))
	err := x.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(outboxBucket)
		for n, id := range ids {
			if n%trimEvery == trimEvery-1 {
				x.trimIn(tx)
			}
			v := b.Get([]byte(id))
			if v == nil {
				continue
			}
			var r OutboxRecord
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("outbox record of company %q: %w", id, err)
			}
			r.CompanyID = id
			out = append(out, r)
		}
		return nil
	})
	x.trim() // its pages were read through the map: a refill reads a part after another
	if err != nil {
		return nil, fmt.Errorf("read outbox: %w", err)
	}
	return out, nil
}

// OutboxMerge is a newer state to fold into a company's outbox record.
type OutboxMerge struct {
	Record OutboxRecord
	// Replace: the newer state supersedes the record whole (a deletion, or
	// a company created again after one); otherwise its keys are merged
	// over the record's, newer winning.
	Replace bool
}

// Merged is what a merge left of one record: its stored size, and the size
// it had before (0: the company had no record).
type Merged struct{ Size, Was int }

// MergeOutbox folds newer states into the records, in one durable write,
// and returns what each merge left. Only after it returns may the changes
// they hold be confirmed to Postgres.
func (x *Store) MergeOutbox(merges []OutboxMerge) ([]Merged, error) {
	// In key order: the writes touch neighbouring pages, not one page per
	// record (a write holds every page it touches on the heap until it
	// commits: 37 MB for 2,000 records spread over a 200,000-record
	// outbox).
	order := keyOrder(merges, func(m OutboxMerge) string { return m.Record.CompanyID })
	sorted := make([]OutboxMerge, len(merges))
	for i, j := range order {
		sorted[i] = merges[j]
	}
	merged, err := x.mergeSorted(sorted)
	if err != nil {
		return nil, err
	}
	out := make([]Merged, len(merges))
	for i, j := range order {
		out[j] = merged[i]
	}
	return out, nil
}

func (x *Store) mergeSorted(merges []OutboxMerge) ([]Merged, error) {
	sizes := make([]Merged, 0, len(merges))
	for len(merges) > 0 { // in writes of a bounded size, as WriteOutbox
		n := min(len(merges), outboxWriteBatch)
		s, err := x.mergeOutbox(merges[:n])
		if err != nil {
			return nil, err
		}
		sizes, merges = append(sizes, s...), merges[n:]
	}
	return sizes, nil
}

func (x *Store) mergeOutbox(merges []OutboxMerge) ([]Merged, error) {
	sizes := make([]Merged, len(merges))
	err := x.writeInParts(len(merges), func(tx *bolt.Tx, i int) error {
		b := tx.Bucket(outboxBucket)
		m := merges[i]
		id := []byte(m.Record.CompanyID)
		r := m.Record
		if v := b.Get(id); v != nil {
			sizes[i].Was = len(id) + len(v)
			var old OutboxRecord
			if err := json.Unmarshal(v, &old); err != nil {
				return fmt.Errorf("outbox record of company %q: %w", id, err)
			}
			// Merged over what is owed already, newer keys winning, unless
			// the newer state supersedes it whole, or the company was
			// created again after the deletion it owes (it exists, with
			// only what the newer changes say).
			if !m.Replace && !(old.Delete && !r.Delete) {
				r.Metadata = mergeInto(old.Metadata, r.Metadata)
			}
			r.LSN = max(r.LSN, old.LSN)
			r.Resend = r.Resend || old.Resend
			if !old.Since.IsZero() && (r.Since.IsZero() || old.Since.Before(r.Since)) {
				r.Since = old.Since
			}
		}
		v, err := json.Marshal(r)
		if err != nil {
			return fmt.Errorf("encode outbox record of company %q: %w", id, err)
		}
		if err := b.Put(id, v); err != nil {
			return err
		}
		sizes[i].Size = len(id) + len(v)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("write outbox: %w", err)
	}
	return sizes, nil
}

// mergeInto puts newer's keys over older's and returns it.
func mergeInto(older, newer userpilot.Metadata) userpilot.Metadata {
	if older == nil {
		older = userpilot.Metadata{}
	}
	for k, v := range newer {
		older[k] = v
	}
	return older
}

// recordSince reads a record's "since" without decoding the record: a scan
// of a large outbox then makes no garbage. A record written otherwise is
// decoded the long way.
func recordSince(v []byte) (time.Time, error) {
	const field = `"since":"`
	if i := bytes.LastIndex(v, []byte(field)); i >= 0 {
		rest := v[i+len(field):]
		if j := bytes.IndexByte(rest, '"'); j > 0 {
			if t, err := time.Parse(time.RFC3339Nano, string(rest[:j])); err == nil {
				return t, nil
			}
		}
	}
	var r struct {
		Since time.Time `json:"since"`
	}
	if err := json.Unmarshal(v, &r); err != nil {
		return time.Time{}, err
	}
	return r.Since, nil
}
