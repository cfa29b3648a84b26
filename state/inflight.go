package state

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/pgpilot/pgpilot/userpilot"
)

// What pgpilot may have sent without seeing the outcome. A kill can fall
// between a call reaching Userpilot and pgpilot recording what it did, so
// the store remembers, before sending, enough for a restart not to trust
// the no-op index where it may be wrong, and not to let an older bulk job
// still running at Userpilot land after newer values:
//
//   - the bulk jobs submitted and not seen end, with the companies and states
//     they carry and, once known, their ids;
//   - the companies being sent: marked before a call, unmarked in the same
//     write that records the call's success in the no-op index (Record,
//     Forget). After a restart a company still marked may have reached
//     Userpilot unrecorded, so its next state is sent, never skipped as
//     unchanged.

var (
	jobsBucket    = []byte("jobs")
	sendingBucket = []byte("sending")
)

// Job is a bulk job pgpilot submitted (or was about to) and has not seen
// end: Userpilot may still be applying it.
type Job struct {
	Key       uint64              `json:"-"`  // pgpilot's own number for it
	ID        string              `json:"id"` // Userpilot's job id; "" until the submission was answered
	Began     time.Time           `json:"began"`
	Companies []userpilot.Company `json:"companies"`
}

// A job is up to three keys: its number (8 bytes) → a bucket of its own
// holding the body submitted (its companies and states) under bodyKey,
// written once, before submission; its number followed by 'b' → when it
// began (Unix nanoseconds), in the same write; and its number followed by
// 'i' → Userpilot's id for it, once answered. The body is a bucket's one
// value so that no other write rewrites it: bbolt writes a whole leaf
// again when any key in it changes, and with the body beside the small
// keys (and the next job's body), recording an id or ending a job wrote
// megabytes, a tenth of pgpilot's CPU in a catch-up. Earlier releases
// kept the body as the number's value, and before the 'b' key carried
// "began" in the body's object; such records are still read.
var bodyKey = []byte("body")

// BeginJob durably records a job about to be submitted, before it is.
func (x *Store) BeginJob(companies []userpilot.Company) (uint64, error) {
	var body userpilot.BulkBody
	for _, co := range companies {
		body.Add(co)
	}
	return x.BeginBulkJob(body)
}

// BeginBulkJob is BeginJob for the body about to be submitted: the record
// is those very bytes, neither encoded again nor copied (a copy was a
// second body's worth of heap, two megabytes, at every job). The body must
// not change while the call runs: bbolt copies it into its pages at the
// commit.
func (x *Store) BeginBulkJob(body userpilot.BulkBody) (uint64, error) {
	began := binary.BigEndian.AppendUint64(nil, uint64(time.Now().UnixNano()))
	var key uint64
	err := x.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(jobsBucket)
		var err error
		if key, err = b.NextSequence(); err != nil {
			return err
		}
		if err := b.Put(jobBeganKey(key), began); err != nil {
			return err
		}
		jb, err := b.CreateBucket(jobKey(key))
		if err != nil {
			return err
		}
		return jb.Put(bodyKey, body.JSON())
	})
	if err != nil {
		return 0, fmt.Errorf("record bulk job: %w", err)
	}
	return key, nil
}

// JobSubmitted records the id Userpilot gave the job.
func (x *Store) JobSubmitted(key uint64, id string) error {
	err := x.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(jobsBucket)
		if b.Bucket(jobKey(key)) == nil && b.Get(jobKey(key)) == nil {
			return fmt.Errorf("no job %d", key)
		}
		return b.Put(jobIDKey(key), []byte(id))
	})
	if err != nil {
		return fmt.Errorf("record bulk job %s: %w", id, err)
	}
	return nil
}

// EndJob forgets a job whose end pgpilot has seen (completed, failed,
// refused).
func (x *Store) EndJob(key uint64) error {
	err := x.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(jobsBucket)
		for _, k := range [][]byte{jobIDKey(key), jobBeganKey(key), jobKey(key)} {
			if err := b.Delete(k); err != nil && !errors.Is(err, bolt.ErrIncompatibleValue) {
				return err
			}
		}
		if err := b.DeleteBucket(jobKey(key)); err != nil && !errors.Is(err, bolt.ErrBucketNotFound) {
			return err
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("forget bulk job: %w", err)
	}
	return nil
}

// Jobs returns the jobs not seen end, oldest first.
func (x *Store) Jobs() ([]Job, error) {
	var out []Job
	ids, began := map[uint64]string{}, map[uint64]time.Time{}
	err := x.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(jobsBucket)
		return b.ForEach(func(k, v []byte) error {
			if len(k) == 9 {
				switch n := binary.BigEndian.Uint64(k); {
				case k[8] == 'i':
					ids[n] = string(v)
				case k[8] == 'b' && len(v) == 8:
					began[n] = time.Unix(0, int64(binary.BigEndian.Uint64(v))).UTC()
				}
				return nil
			}
			if v == nil { // the job's own bucket
				if v = b.Bucket(k).Get(bodyKey); v == nil {
					return fmt.Errorf("job %x: no body", k)
				}
			}
			var j Job
			if err := json.Unmarshal(v, &j); err != nil {
				return fmt.Errorf("job %x: %w", k, err)
			}
			j.Key = binary.BigEndian.Uint64(k)
			out = append(out, j)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("read bulk jobs: %w", err)
	}
	for i := range out {
		if id, ok := ids[out[i].Key]; ok {
			out[i].ID = id
		}
		if t, ok := began[out[i].Key]; ok {
			out[i].Began = t
		}
	}
	return out, nil
}

// MarkSending durably marks companies about to be sent. Concurrent calls
// share one write (bbolt's Batch), as Record's do.
func (x *Store) MarkSending(ids []string) error {
	if len(ids) == 0 {
		return nil
	}
	err := x.db.Batch(func(tx *bolt.Tx) error {
		b := tx.Bucket(sendingBucket)
		for _, id := range ids {
			if err := b.Put([]byte(id), nil); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("mark companies as being sent: %w", err)
	}
	return nil
}

// Sending returns the companies marked as being sent: at a start, those an
// earlier process may have sent without recording the outcome.
func (x *Store) Sending() ([]string, error) {
	var out []string
	err := x.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(sendingBucket).ForEach(func(k, _ []byte) error {
			out = append(out, string(k))
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("read companies being sent: %w", err)
	}
	return out, nil
}

func jobKey(k uint64) []byte {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], k)
	return b[:]
}

func jobIDKey(k uint64) []byte { return append(jobKey(k), 'i') }

func jobBeganKey(k uint64) []byte { return append(jobKey(k), 'b') }
