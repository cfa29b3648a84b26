package state

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/cespare/xxhash/v2"
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
	// Users are a users' job's records (a job holds companies or users,
	// as Userpilot's two bulk endpoints do).
	Users []userpilot.User `json:"-"`
}

// UnmarshalJSON reads a job's record: its body, whose records are
// companies or users (a users' body names each one's company flat, as
// company_id).
func (j *Job) UnmarshalJSON(b []byte) error {
	type plain Job
	var v struct {
		plain
		Users []struct {
			UserID    string             `json:"user_id"`
			CompanyID string             `json:"company_id"`
			Metadata  userpilot.Metadata `json:"metadata"`
		} `json:"users"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	*j = Job(v.plain)
	for _, u := range v.Users {
		j.Users = append(j.Users, userpilot.User{UserID: u.UserID, CompanyID: u.CompanyID, Metadata: u.Metadata})
	}
	return nil
}

// A job is up to three keys: its number (8 bytes) → where its body is
// (bodyRef); its number followed by 'b' → when it began (Unix
// nanoseconds), in the same write; and its number followed by 'i' →
// Userpilot's id for it, once answered.
//
// The body submitted (its companies and states, megabytes for a job of
// 10,000) is in a file of its own beside the store, job-body.N, written in
// place over the body of a job that ended. In bbolt it cost a tenth of
// pgpilot's CPU in a catch-up: bbolt copies a value into pages of its own,
// and the freed pages of the last body were taken by the index's pages
// before the next body needed a run of them, so every body went to the
// end of a growing file; writing where no file was costs the kernel ten
// times what writing over one does. Earlier releases kept the body as the
// number's value (and before the 'b' key carried "began" in its object);
// such records are still read.

// bodyFile is the name, in the state directory, of body file n.
func bodyFile(n int) string { return fmt.Sprintf("job-body.%d", n) }

// bodyRef is where a job's body is: file, length and xxHash64 of the bytes
// (a body file holds the body of an older job beyond the length, and a
// file written over is checked).
type bodyRef struct {
	file   int
	length int
	sum    uint64
}

// bodyRefVersion is a bodyRef value's first byte: a body's is '{'.
const bodyRefVersion = 1

func (r bodyRef) encode() []byte {
	b := []byte{bodyRefVersion}
	b = binary.AppendUvarint(b, uint64(r.file))
	b = binary.AppendUvarint(b, uint64(r.length))
	return binary.BigEndian.AppendUint64(b, r.sum)
}

// decodeBodyRef reads a job number's value; ok false means the value is
// the body itself (an earlier release's record).
func decodeBodyRef(v []byte) (_ bodyRef, ok bool, _ error) {
	if len(v) == 0 || v[0] != bodyRefVersion {
		return bodyRef{}, false, nil
	}
	v = v[1:]
	file, n := binary.Uvarint(v)
	if n <= 0 {
		return bodyRef{}, true, errBodyRef
	}
	v = v[n:]
	length, n := binary.Uvarint(v)
	if n <= 0 || len(v[n:]) != 8 {
		return bodyRef{}, true, errBodyRef
	}
	return bodyRef{file: int(file), length: int(length), sum: binary.BigEndian.Uint64(v[n:])}, true, nil
}

var errBodyRef = errors.New("unreadable reference to a bulk job's body")

// bodies are the body files in use, so a new body never goes over the
// body of a job not seen end.
type bodies struct {
	mu   sync.Mutex
	used map[int]bool
}

// take returns the lowest body file not in use, now in use.
func (b *bodies) take() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := 0
	for b.used[n] {
		n++
	}
	b.used[n] = true
	return n
}

func (b *bodies) release(n int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.used, n)
}

// loadBodies notes the body files the jobs on record use.
func (x *Store) loadBodies() error {
	x.bodies.used = map[int]bool{}
	return x.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(jobsBucket).ForEach(func(k, v []byte) error {
			if len(k) != 8 {
				return nil
			}
			if ref, ok, err := decodeBodyRef(v); ok && err == nil {
				x.bodies.used[ref.file] = true
			}
			return nil
		})
	})
}

// writeBody writes body durably into body file n, from its start.
func (x *Store) writeBody(n int, body []byte) error {
	path := filepath.Join(x.dir, bodyFile(n))
	_, err := os.Stat(path)
	created := errors.Is(err, os.ErrNotExist)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	// Over what is there, never truncated: the file's blocks are written
	// again rather than freed and allocated anew.
	_, err = f.WriteAt(body, 0)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil && created {
		err = syncDir(x.dir)
	}
	return err
}

// readBody reads the body ref points to: its length only, not the tail of
// an older, longer body after it.
func (x *Store) readBody(ref bodyRef) ([]byte, error) {
	path := filepath.Join(x.dir, bodyFile(ref.file))
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b := make([]byte, ref.length)
	if _, err := io.ReadFull(f, b); err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("read %s: %w", path, err)
	} else if err != nil || xxhash.Sum64(b) != ref.sum {
		return nil, fmt.Errorf("%s does not hold the body on record (written over, or damaged)", path)
	}
	return b, nil
}

// BeginJob durably records a job about to be submitted, before it is.
func (x *Store) BeginJob(companies []userpilot.Company) (uint64, error) {
	var body userpilot.BulkBody
	for _, co := range companies {
		body.Add(co)
	}
	return x.BeginBulkJob(body)
}

// BeginBulkJob is BeginJob for the body about to be submitted: those very
// bytes are written, neither encoded again nor copied (a copy was a second
// body's worth of heap, two megabytes, at every job). The body must not
// change while the call runs.
func (x *Store) BeginBulkJob(body userpilot.BulkBody) (uint64, error) {
	file := x.bodies.take()
	data := body.JSON()
	if err := x.writeBody(file, data); err != nil {
		x.bodies.release(file)
		return 0, fmt.Errorf("record bulk job: write its body: %w", err)
	}
	ref := bodyRef{file: file, length: len(data), sum: xxhash.Sum64(data)}
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
		return b.Put(jobKey(key), ref.encode())
	})
	if err != nil {
		x.bodies.release(file)
		return 0, fmt.Errorf("record bulk job: %w", err)
	}
	return key, nil
}

// JobSubmitted records the id Userpilot gave the job.
func (x *Store) JobSubmitted(key uint64, id string) error {
	err := x.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(jobsBucket)
		if b.Get(jobKey(key)) == nil {
			return fmt.Errorf("no job %d", key)
		}
		return b.Put(jobIDKey(key), []byte(id))
	})
	if err != nil {
		return fmt.Errorf("record bulk job %s: %w", id, err)
	}
	return nil
}

// JobBody reads again the body of a job on record, as BeginBulkJob wrote
// it: a job that failed at Userpilot is submitted again from it.
func (x *Store) JobBody(key uint64) ([]byte, error) {
	var body []byte
	err := x.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(jobsBucket).Get(jobKey(key))
		if v == nil {
			return fmt.Errorf("bulk job %d is not on record", key)
		}
		b, inline, err := x.bodyOf(v)
		if inline {
			b = bytes.Clone(b) // the store's page: valid only in this transaction
		}
		body = b
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("read bulk job %d's body: %w", key, err)
	}
	return body, nil
}

// bodyOf is the body a job number's value records: read from its body
// file, or (inline) the value itself, an earlier release's record.
func (x *Store) bodyOf(v []byte) (body []byte, inline bool, err error) {
	ref, ok, err := decodeBodyRef(v)
	switch {
	case err != nil:
		return nil, false, err
	case !ok:
		return v, true, nil
	}
	body, err = x.readBody(ref)
	return body, false, err
}

// EndJob forgets a job whose end pgpilot has seen (completed, failed,
// refused). Its body file is kept, for the next body to go over.
func (x *Store) EndJob(key uint64) error {
	file := -1
	err := x.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(jobsBucket)
		if ref, ok, err := decodeBodyRef(b.Get(jobKey(key))); ok && err == nil {
			file = ref.file
		}
		for _, k := range [][]byte{jobIDKey(key), jobBeganKey(key), jobKey(key)} {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("forget bulk job: %w", err)
	}
	if file >= 0 {
		x.bodies.release(file)
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
			v, _, err := x.bodyOf(v)
			if err != nil {
				return fmt.Errorf("job %x: %w", k, err)
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
