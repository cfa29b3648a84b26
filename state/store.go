package state

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"path/filepath"
	"sync"
	"time"

	"github.com/pgpilot/pgpilot/userpilot"
	bolt "go.etcd.io/bbolt"
)

// StoreFile is the file, in the state directory, holding the no-op index
// and the outbox.
const StoreFile = "store.db"

var (
	deliveredBucket = []byte("delivered")
	outboxBucket    = []byte("outbox")
)

// initialMmap is the store's first mapping: 1 GiB of address space.
const initialMmap = 1 << 30

// recordVersion prefixes each stored record, so its layout can change.
const recordVersion = 1

// Store is pgpilot's embedded database (bbolt: crash-safe, one file): the
// no-op index and the outbox.
//
// The no-op index remembers, for each company, a fingerprint of every
// metadata value Userpilot last accepted, so that an update changing nothing mapped
// (say only updated_at) sends nothing. It is bbolt (crash-safe, one record
// per company: it grows with the number of companies, never with the number
// of changes). Values are kept per key because an update may leave a key
// out (an unchanged TOAST value) and must still be comparable.
//
// It only ever holds states that were accepted; a lost write just means one
// redundant send later. A fingerprint is 64 bits of SHA-256 of key and
// value: a false "unchanged" needs a collision on the same company and key.
type Store struct {
	db   *bolt.DB
	stop chan struct{} // ends trimResident
	done chan struct{}
	once sync.Once
	res  resident // see resident.go
}

// OpenStore opens (creating) the store in the state directory.
func (d *Dir) OpenStore() (*Store, error) {
	path := filepath.Join(d.path, StoreFile)
	// A large initial mapping (address space, not memory) spares the
	// remaps a growing file would need: at each one bbolt copies every node
	// the open write transaction touched onto the heap, which was most of
	// an outage's peak memory.
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second, NoFreelistSync: true, InitialMmapSize: initialMmap})
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{deliveredBucket, outboxBucket, jobsBucket, sendingBucket} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		db.Close()
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	x := &Store{db: db, stop: make(chan struct{}), done: make(chan struct{})}
	if base, ok := residentFileBytes(); ok {
		x.res.ok = true
		x.res.base.Store(base)
	}
	go func() {
		defer close(x.done)
		x.trimResident(x.stop)
	}()
	return x, nil
}

// Close closes the store.
func (x *Store) Close() error {
	x.once.Do(func() { close(x.stop) })
	<-x.done
	return x.db.Close()
}

// fingerprints is a company's record: key fingerprint → value fingerprint.
type fingerprints map[uint32]uint64

// keyHashes caches the fingerprint of each metadata key: there are only
// the mapping's few, and every company repeats them.
var keyHashes sync.Map // string → uint32

// fingerprint hashes a key and its value's JSON, the bytes the body
// carries (userpilot.Encode: what json.Marshal writes, what fingerprints
// were always made of, so a stored index stays valid).
func fingerprint(key string, value json.RawMessage) (uint32, uint64) {
	kh, ok := keyHashes.Load(key)
	if !ok {
		h := sha256.Sum256([]byte(key))
		kh, _ = keyHashes.LoadOrStore(key, binary.BigEndian.Uint32(h[:4]))
	}
	var buf [256]byte
	b := append(append(append(buf[:0], key...), 0), value...)
	vh := sha256.Sum256(b)
	return kh.(uint32), binary.BigEndian.Uint64(vh[:8])
}

func decode(b []byte) fingerprints {
	if len(b) < 1 || b[0] != recordVersion || (len(b)-1)%12 != 0 {
		return nil // unreadable: treated as "never delivered", so it is sent
	}
	fp := make(fingerprints, (len(b)-1)/12)
	for i := 1; i+12 <= len(b); i += 12 {
		fp[binary.BigEndian.Uint32(b[i:])] = binary.BigEndian.Uint64(b[i+4:])
	}
	return fp
}

func (fp fingerprints) encode() []byte {
	var buf bytes.Buffer
	buf.WriteByte(recordVersion)
	var rec [12]byte
	for k, v := range fp {
		binary.BigEndian.PutUint32(rec[:4], k)
		binary.BigEndian.PutUint64(rec[4:], v)
		buf.Write(rec[:])
	}
	return buf.Bytes()
}

// Unchanged reports whether every key in metadata has the value Userpilot
// last accepted for this company. A company never delivered is changed.
func (x *Store) Unchanged(companyID string, metadata userpilot.Metadata) (bool, error) {
	var unchanged bool
	err := x.db.View(func(tx *bolt.Tx) error {
		fp := decode(tx.Bucket(deliveredBucket).Get([]byte(companyID)))
		if fp == nil {
			return nil
		}
		for k, v := range metadata {
			kh, vh := fingerprint(k, v)
			if got, ok := fp[kh]; !ok || got != vh {
				return nil
			}
		}
		unchanged = true
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("read no-op index: %w", err)
	}
	return unchanged, nil
}

// Record notes that Userpilot accepted these profiles: their keys now hold
// these values (keys not sent keep theirs, as in Userpilot). It returns once
// that is durable. Concurrent calls share one write (bbolt's Batch), so
// many real-time workers recording at once cost one fsync.
func (x *Store) Record(profiles []userpilot.Company) error {
	// In writes of recordBatch companies: a write transaction holds on the
	// heap every node it touches until it commits, and a bulk job's 10,000
	// companies are spread over most of the index's pages (20 MB of nodes).
	for len(profiles) > recordBatch {
		if err := x.record(profiles[:recordBatch]); err != nil {
			return err
		}
		profiles = profiles[recordBatch:]
	}
	return x.record(profiles)
}

// recordBatch is how many companies one write of the index records.
const recordBatch = 1000

func (x *Store) record(profiles []userpilot.Company) error {
	if len(profiles) == 0 {
		return nil
	}
	err := x.db.Batch(func(tx *bolt.Tx) error {
		b, sending := tx.Bucket(deliveredBucket), tx.Bucket(sendingBucket)
		for _, p := range profiles {
			// The send's outcome is seen: no longer in doubt.
			if err := sending.Delete([]byte(p.CompanyID)); err != nil {
				return err
			}
			fp := decode(b.Get([]byte(p.CompanyID)))
			if fp == nil {
				fp = fingerprints{}
			}
			for k, v := range p.Metadata {
				kh, vh := fingerprint(k, v)
				fp[kh] = vh
			}
			if err := b.Put([]byte(p.CompanyID), fp.encode()); err != nil {
				return err
			}
		}
		return nil
	})
	x.trim() // its pages were read through the map
	if err != nil {
		return fmt.Errorf("write no-op index: %w", err)
	}
	return nil
}

// Forget drops what the index knows of these companies (deleted in
// Userpilot): a company created again is then sent in full.
func (x *Store) Forget(ids []string) error {
	if len(ids) == 0 {
		return nil
	}
	err := x.db.Batch(func(tx *bolt.Tx) error {
		b, sending := tx.Bucket(deliveredBucket), tx.Bucket(sendingBucket)
		for _, id := range ids {
			if err := b.Delete([]byte(id)); err != nil {
				return err
			}
			if err := sending.Delete([]byte(id)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("write no-op index: %w", err)
	}
	return nil
}
