package state

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/pgpilot/pgpilot/userpilot"
	bolt "go.etcd.io/bbolt"
)

// StoreFile is the file, in the state directory, holding the no-op index
// and the outbox.
const StoreFile = "store.db"

var (
	// deliveredBucket held a record per company before the groups; it is
	// read only to move them (migrateRecords).
	deliveredBucket = []byte("delivered")
	outboxBucket    = []byte("outbox")
)

// initialMmap is the store's first mapping: 1 GiB of address space.
const initialMmap = 1 << 30

// A record's first byte says how its value fingerprints were made.
const (
	// recordSHA256: 64 bits of SHA-256, the first fingerprints; still
	// read, and written only where an update leaves keys of such a record
	// out (their fingerprints cannot be made again without the values).
	recordSHA256 = 1
	// recordXXH: xxHash64 of key, NUL, value. A record is made at every
	// delivery, and SHA-256 was a third of that. Still read, and written
	// only where an update leaves keys of such a record out.
	recordXXH = 2
	// recordValue: xxHash64 of the value alone, written for every other
	// record. The key's own fingerprint beside it says whose value it is;
	// hashing key and value together needed them copied into one run of
	// bytes first, and reading that run just written cost the hash three
	// times what hashing the value where it lies does.
	recordValue = 3
)

// Store is pgpilot's embedded database (bbolt: crash-safe, one file): the
// no-op index and the outbox.
//
// The no-op index remembers, for each company, a fingerprint of every
// metadata value Userpilot last accepted, so that an update changing nothing mapped
// (say only updated_at) sends nothing. It is bbolt (crash-safe, a record
// per company, kept in groups of neighbours: groups.go; it grows with the
// number of companies, never with the number of changes). Values are kept
// per key because an update may leave a key out (an unchanged TOAST value)
// and must still be comparable.
//
// It only ever holds states that were accepted; a lost write just means one
// redundant send later. A value's fingerprint is 64 bits of a hash of the
// value, beside its key's fingerprint (xxHash64; in records written before,
// of key and value, by xxHash64 or SHA-256): a false
// "unchanged" needs a collision on the same company and key, about one in
// 2^64 for values not made to collide, and only the table's own writers
// could make them.
type Store struct {
	db     *bolt.DB
	dir    string        // the state directory, where the bulk jobs' bodies are
	bodies bodies        // see inflight.go
	stop   chan struct{} // ends trimResident
	done   chan struct{}
	once   sync.Once
	res    resident // see resident.go
}

// OpenStore opens (creating) the store in the state directory. A store
// file bbolt would crash on (cut short, a page overwritten) is refused
// with a *StoreDamage, before bbolt maps it.
func (d *Dir) OpenStore() (*Store, error) {
	path := filepath.Join(d.path, StoreFile)
	if err := checkStoreFile(path); err != nil {
		return nil, err
	}
	// A large initial mapping (address space, not memory) spares the
	// remaps a growing file would need: at each one bbolt copies every node
	// the open write transaction touched onto the heap, which was most of
	// an outage's peak memory.
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second, NoFreelistSync: true, InitialMmapSize: initialMmap})
	if err != nil {
		return nil, notWritable(d.path, fmt.Errorf("open %s: %w", path, err))
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{groupsBucket, outboxBucket, jobsBucket, sendingBucket} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		db.Close()
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	if err := migrateRecords(db); err != nil {
		db.Close()
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	x := &Store{db: db, dir: d.path, stop: make(chan struct{}), done: make(chan struct{})}
	if err := x.loadBodies(); err != nil {
		db.Close()
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
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

// keyHashes caches the fingerprint of each metadata key: there are only
// the mapping's few, and every company repeats them.
var keyHashes sync.Map // string → uint32

// fingerprint hashes a key and its value's JSON, the bytes the body
// carries (userpilot.Encode: what json.Marshal writes, what fingerprints
// were always made of), as a record of version v makes it.
func fingerprint(v byte, key string, value json.RawMessage) (uint32, uint64) {
	kh, _ := keyHash(key)
	var h hasher
	return kh, h.value(v, key, value)
}

// hashOf is the fingerprint of key, NUL, value (b), as a record of
// version v (recordSHA256 or recordXXH) makes it.
func hashOf(v byte, b []byte) uint64 {
	if v == recordXXH {
		return xxhash.Sum64(b)
	}
	vh := sha256.Sum256(b)
	return binary.BigEndian.Uint64(vh[:8])
}

// hasher makes values' fingerprints, those of the older versions in room
// of its own, kept from one to the next: made anew on the stack, the room
// was cleared for every key of every company.
type hasher struct{ scratch []byte }

// value is the fingerprint of key's value as a record of version v makes
// it.
func (h *hasher) value(v byte, key string, value json.RawMessage) uint64 {
	if v == recordValue {
		return xxhash.Sum64(value)
	}
	h.scratch = append(append(append(h.scratch[:0], key...), 0), value...)
	return hashOf(v, h.scratch)
}

// keyHash is a key's fingerprint, computed once per key.
func keyHash(key string) (uint32, bool) {
	kh, ok := keyHashes.Load(key)
	if !ok {
		h := sha256.Sum256([]byte(key))
		kh, _ = keyHashes.LoadOrStore(key, binary.BigEndian.Uint32(h[:4]))
	}
	return kh.(uint32), true
}

// Profiles are companies as a caller keeps them, for the no-op index to
// read key by key: delivery keeps pending metadata packed, and a map of
// each company made only for the index was a large part of a change's CPU
// in a catch-up. A []userpilot.Company is Profiles too (UnchangedEach,
// Record).
type Profiles interface {
	Len() int
	CompanyID(i int) string
	// Metadata calls yield with each key of company i and its value's
	// JSON (each key once, in any order) until yield returns false: an
	// iter.Seq2 of the company's metadata. The values must stay unchanged
	// until the call that reads them returns.
	Metadata(i int, yield func(key string, value json.RawMessage) bool)
}

// KnownAbsent is Profiles that know, of some companies, that the index held
// no readable record of them when they were looked up (UnchangedProfiles'
// absent), and that nothing recorded them since: their write looks up no
// older record to keep keys from. In a catch-up of new companies that
// look-up was a tenth of the write. A wrong answer costs no update: the
// keys the older record held and this write does not send lose their
// fingerprints, so their next values are sent rather than skipped.
type KnownAbsent interface {
	Profiles
	Absent(i int) bool
}

// companies is a []userpilot.Company as Profiles.
type companies []userpilot.Company

func (cs companies) Len() int               { return len(cs) }
func (cs companies) CompanyID(i int) string { return cs[i].CompanyID }
func (cs companies) Metadata(i int, yield func(string, json.RawMessage) bool) {
	for k, v := range cs[i].Metadata {
		if !yield(k, v) {
			return
		}
	}
}

// Unchanged reports whether every key in metadata has the value Userpilot
// last accepted for this company. A company never delivered is changed.
func (x *Store) Unchanged(companyID string, metadata userpilot.Metadata) (bool, error) {
	same := []bool{false}
	err := x.UnchangedEach([]userpilot.Company{{CompanyID: companyID, Metadata: metadata}}, same)
	return same[0], err
}

// UnchangedEach is Unchanged for each company of cos, answered in
// same[i], in one read of the index: a read transaction per company was
// most of what the look-up cost.
func (x *Store) UnchangedEach(cos []userpilot.Company, same []bool) error {
	return x.UnchangedProfiles(companies(cos), same, nil)
}

// UnchangedProfiles is UnchangedEach for Profiles. absent, unless nil,
// is told which companies the index holds no readable record of: a caller
// that keeps that answer until it records them may say so to the write
// (KnownAbsent), which then looks nothing up.
func (x *Store) UnchangedProfiles(ps Profiles, same, absent []bool) error {
	order := keyOrderOf(ps.Len(), ps.CompanyID)
	err := x.db.View(func(tx *bolt.Tx) error {
		// One cursor for all, in key order: a Get makes a cursor of its own
		// (and its allocations) each time, and neighbours share a group.
		r := groupReader{c: tx.Bucket(groupsBucket).Cursor()}
		var h holdsCheck // one for all: its yield is made once
		yield := h.holds
		var id []byte // each id in turn: the reader keeps none
		look := trimEvery
		for _, i := range order {
			if r.dueLook(&look) {
				x.trimIn(tx) // a job's look-ups read pages all over the index
			}
			id = append(id[:0], ps.CompanyID(i)...)
			h.rec, h.same, h.n = r.get(id), true, 0
			if absent != nil {
				absent[i] = !readable(h.rec)
			}
			if !readable(h.rec) {
				// An unreadable record holds nothing (it is sent).
				same[i] = false
				continue
			}
			ps.Metadata(i, yield)
			same[i] = h.same
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("read no-op index: %w", err)
	}
	return nil
}

// holdsCheck finds whether a stored record holds every key of a company's
// metadata at that value, a key at a time.
type holdsCheck struct {
	rec  []byte // readable
	same bool
	n    int // the company's keys seen so far
	last lastKeys
	hash hasher
}

func (h *holdsCheck) holds(k string, v json.RawMessage) bool {
	kh, vh := h.last.hash(h.n, k), h.hash.value(h.rec[0], k, v)
	h.n++
	got, ok := lookup(h.rec, kh)
	h.same = ok && got == vh
	return h.same
}

// A record is its version, then 12 bytes per key: the key's fingerprint
// (4) and its value's (8). A company has a handful of keys: a scan of the
// record is quicker than building a map of it.
func readable(rec []byte) bool {
	return len(rec) >= 1 && (rec[0] == recordSHA256 || rec[0] == recordXXH || rec[0] == recordValue) && (len(rec)-1)%12 == 0
}

func lookup(rec []byte, kh uint32) (uint64, bool) {
	for i := 1; i+12 <= len(rec); i += 12 {
		if binary.BigEndian.Uint32(rec[i:]) == kh {
			return binary.BigEndian.Uint64(rec[i+4:]), true
		}
	}
	return 0, false
}

// Record notes that Userpilot accepted these profiles: their keys now hold
// these values (keys not sent keep theirs, as in Userpilot). It returns once
// that is durable. Concurrent calls share one write (bbolt's Batch), so
// many real-time workers recording at once cost one fsync.
//
// The profiles are written in key order (a bulk job's 10,000 land in
// neighbouring pages rather than all over the tree), each record built
// in one buffer shared by the write: no map, no allocation per company.
func (x *Store) Record(profiles []userpilot.Company) error {
	return x.RecordProfiles(companies(profiles))
}

// RecordProfiles is Record for Profiles.
func (x *Store) RecordProfiles(ps Profiles) error {
	// In writes of recordBatch companies, in key order across the writes
	// too: a write transaction holds on the heap every node it touches
	// until it commits. With a key per company a bulk job's 10,000 were
	// 20 MB of nodes, and were written 1,000 at a time; in groups they
	// touch at most a thousand keys, and a job is one write: each write
	// costs two fsyncs and the pages above its leaves again, and one per
	// job made the index's CPU a company 15% less
	// (BenchmarkDeliveredIndexSize).
	order := keyOrderOf(ps.Len(), ps.CompanyID)
	for len(order) > recordBatch {
		if err := x.record(ps, order[:recordBatch]); err != nil {
			return err
		}
		order = order[recordBatch:]
	}
	return x.record(ps, order)
}

// recordBatch is how many companies one write of the index records: a
// bulk job's most.
const recordBatch = userpilot.MaxBulkRecords

// batchAlone is the smallest write that does not wait for others to share
// its transaction.
const batchAlone = 64

// sent is one key a profile sends: the key's fingerprint and its
// value's.
type sent struct {
	kh uint32
	vh uint64
}

// sentKeys gathers a profile's keys with their values' fingerprints, made
// as a record of version makes them, in room reused from one profile to
// the next. Fingerprints, not the keys and values: nothing in the room
// points into the heap, so filling it costs no write barriers, and a
// value is hashed while it is at hand.
type sentKeys struct {
	keys    []sent
	version byte
	last    lastKeys
	hash    hasher
}

func (s *sentKeys) add(k string, v json.RawMessage) bool {
	s.keys = append(s.keys, sent{s.last.hash(len(s.keys), k), s.hash.value(s.version, k, v)})
	return true
}

// lastKeys are the keys of the company before, by position, with their
// fingerprints: the companies of one call have the same keys in the same
// order (the mapping's), and comparing a key with itself is quicker than
// looking its fingerprint up (keyHash) for every key of every company.
type lastKeys struct {
	keys []string
	khs  []uint32
}

// hash is the fingerprint of k, the company's n-th key.
func (l *lastKeys) hash(n int, k string) uint32 {
	if n < len(l.keys) && l.keys[n] == k {
		return l.khs[n]
	}
	kh, _ := keyHash(k)
	if n < len(l.keys) {
		l.keys[n], l.khs[n] = k, kh
	} else if n == len(l.keys) {
		l.keys, l.khs = append(l.keys, k), append(l.khs, kh)
	}
	return kh
}

// record writes the profiles of ps at order (in key order), in as many
// writes as the store's resident pages need (see writeInParts: a bulk
// job's 10,000 companies spread over the index made its pages resident
// until the commit, the overlap's peaks of RSS).
func (x *Store) record(ps Profiles, order []int) error {
	for len(order) > 0 {
		done, err := x.recordPart(ps, order)
		if err != nil {
			return err
		}
		order = order[done:]
	}
	return nil
}

// recordPart writes the profiles of ps at order, or the first of them
// until the store's pages pass the budget (a write of its own only), and
// says how many it wrote.
func (x *Store) recordPart(ps Profiles, order []int) (int, error) {
	// A real-time call's outcome (one company) shares a write with the
	// others' (bbolt's Batch waits up to 10 ms for them to join); a bulk
	// job's part is a write of its own, with nothing worth waiting for:
	// through Batch, its ten parts waited 100 ms, half of a job's time
	// against a fast Userpilot.
	write := x.db.Batch
	if len(order) >= batchAlone {
		write = x.db.Update
	}
	var room writeRoom
	defer room.release() // after the write: committed, or rolled back
	done := 0
	err := write(func(tx *bolt.Tx) error {
		w, sending := newGroupWriter(tx.Bucket(groupsBucket), &room), tx.Bucket(sendingBucket)
		// Nothing is marked on the bulk path: an empty bucket needs no
		// deletes looked up.
		marked := func() bool { k, _ := sending.Cursor().First(); return k != nil }()
		// What Put is given must stay unchanged until the commit: each
		// record is written in room of the write's own. A batch may run
		// more than once (bbolt's Batch retries a failed one alone).
		var s sentKeys
		add := s.add
		var id []byte
		known, _ := ps.(KnownAbsent)
		done = len(order)
		look := trimEvery
		for n, i := range order {
			if n > 0 && len(order) >= batchAlone && w.r.dueLook(&look) && x.overBudget() {
				done = n // the rest in the next write, once these pages are let go
				break
			}
			s.keys, s.version = s.keys[:0], recordValue
			ps.Metadata(i, add)
			// The id in room reused from company to company: the writer
			// copies what it keeps, and bbolt keeps no key it is given to
			// look up or delete.
			id = append(id[:0], ps.CompanyID(i)...)
			// The send's outcome is seen: no longer in doubt.
			if marked {
				if err := sending.Delete(id); err != nil {
					return err
				}
			}
			var old []byte
			if known == nil || !known.Absent(i) {
				var err error
				if old, err = w.get(id); err != nil {
					return err
				}
				if !readable(old) {
					old = nil
				}
			}
			// Sized for the keys sent and those the record keeps.
			buf := w.reserve(1 + 12*(len(s.keys)+(len(old)-min(len(old), 1))/12))
			buf = append(buf, recordValue)
			// Keys not sent keep what they had, in the record's version.
			for j := 1; j+12 <= len(old); j += 12 {
				kh := binary.BigEndian.Uint32(old[j:])
				if !sends(s.keys, kh) {
					buf = append(buf, old[j:j+12]...)
				}
			}
			if len(buf) > 1 && old[0] != recordValue {
				// Kept keys of an older version: the values sent are
				// fingerprinted again as it makes them (a record made
				// before, an update leaving keys of it out: rare).
				buf[0] = old[0]
				s.keys, s.version = s.keys[:0], old[0]
				ps.Metadata(i, add)
			}
			for _, k := range s.keys {
				buf = binary.BigEndian.AppendUint32(buf, k.kh)
				buf = binary.BigEndian.AppendUint64(buf, k.vh)
			}
			if err := w.put(id, buf); err != nil {
				return err
			}
		}
		return w.flush()
	})
	if done < len(order) {
		x.trimBy(x.dropMapped, 0)
	} else {
		x.trimAfter(done) // its pages were read through the map
	}
	if err != nil {
		return 0, fmt.Errorf("write no-op index: %w", err)
	}
	return done, nil
}

// keyOrder is the order of xs by company id; two of one company (none is
// sent twice at once, but Record must not depend on it) keep their order,
// so the newer is written last.
func keyOrder[T any](xs []T, id func(T) string) []int {
	return keyOrderOf(len(xs), func(i int) string { return id(xs[i]) })
}

// keyOrderOf is keyOrder of n things, the i-th of company id(i).
func keyOrderOf(n int, id func(int) string) []int {
	order := make([]int, n)
	for i := range order {
		order[i] = i
	}
	byID := func(a, b int) int { return strings.Compare(id(a), id(b)) }
	if !slices.IsSortedFunc(order, byID) {
		slices.SortStableFunc(order, byID)
	}
	return order
}

// sends reports whether a profile sends a key of fingerprint kh.
func sends(keys []sent, kh uint32) bool {
	for _, k := range keys {
		if k.kh == kh {
			return true
		}
	}
	return false
}

// Forget drops what the index knows of these companies (deleted in
// Userpilot): a company created again is then sent in full.
func (x *Store) Forget(ids []string) error {
	if len(ids) == 0 {
		return nil
	}
	ids = slices.Sorted(slices.Values(ids)) // the groups are read in key order
	var room writeRoom
	defer room.release()
	err := x.db.Batch(func(tx *bolt.Tx) error {
		w, sending := newGroupWriter(tx.Bucket(groupsBucket), &room), tx.Bucket(sendingBucket)
		for _, id := range ids {
			if err := w.delete([]byte(id)); err != nil {
				return err
			}
			if err := sending.Delete([]byte(id)); err != nil {
				return err
			}
		}
		return w.flush()
	})
	if err != nil {
		return fmt.Errorf("write no-op index: %w", err)
	}
	return nil
}
