package state

import (
	"encoding/json"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

var (
	learnedBucket = []byte("learned")
	bulkKey       = []byte("bulk")
)

// BulkEstimate is what delivery has learned of Userpilot's bulk path: how
// fast a job's records are processed and what a job costs beyond them. It
// is kept so a restart sizes its first job from what was measured, not
// from the configured starting point.
type BulkEstimate struct {
	// RecordsPerSecond is the smoothed processing speed.
	RecordsPerSecond float64 `json:"records_per_second"`
	// Overhead is the smoothed time of a job beyond its records
	// (submission, queueing, validation, the poll that sees it end).
	Overhead time.Duration `json:"overhead_ns"`
	// Jobs counts the completed jobs it was learned from.
	Jobs int `json:"jobs"`
	// StartedFrom is the configured bulk_rate the learning started from:
	// when the operator changes it, learning starts over from the new one.
	StartedFrom float64 `json:"started_from"`
	// At is when it was last updated.
	At time.Time `json:"at"`
}

// BulkEstimate reads the stored estimate; ok is false when there is none
// (or it cannot be read, which only costs learning it again).
func (x *Store) BulkEstimate() (est BulkEstimate, ok bool, err error) {
	err = x.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(learnedBucket)
		if b == nil {
			return nil
		}
		v := b.Get(bulkKey)
		if v == nil {
			return nil
		}
		ok = json.Unmarshal(v, &est) == nil && est.RecordsPerSecond > 0 && est.Overhead >= 0
		return nil
	})
	if err != nil {
		return BulkEstimate{}, false, fmt.Errorf("read the bulk estimate: %w", err)
	}
	if !ok {
		return BulkEstimate{}, false, nil
	}
	return est, true, nil
}

// SaveBulkEstimate replaces the stored estimate.
func (x *Store) SaveBulkEstimate(est BulkEstimate) error {
	v, err := json.Marshal(est)
	if err != nil {
		return fmt.Errorf("encode the bulk estimate: %w", err)
	}
	err = x.db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(learnedBucket)
		if err != nil {
			return err
		}
		return b.Put(bulkKey, v)
	})
	if err != nil {
		return fmt.Errorf("save the bulk estimate: %w", err)
	}
	return nil
}
