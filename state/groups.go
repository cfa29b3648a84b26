package state

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"

	bolt "go.etcd.io/bbolt"
)

// The no-op index keeps its records in groups of neighbouring companies:
// one bbolt key per group (its first company id), its value the group's
// companies in id order, each with its record (see readable for a
// record's form). bbolt's cost is per key: a cursor and a seek for each
// Put, an element on its page, a node element to spill at the commit; with
// a key per company those were a third of pgpilot's CPU in a catch-up. A
// group is rewritten whole when one of its companies changes, but so was
// the page around a company's own key, and a group is a fraction of one.
//
// Stores of an earlier form kept one key per company in the "delivered"
// bucket; OpenStore moves such records into groups (migrateRecords).

var groupsBucket = []byte("profiles")

const (
	// groupVersion is a group value's first byte.
	groupVersion = 1
	// groupMaxBytes is the most a group's value holds: one is split when
	// a write makes it larger. About ten companies of seven keys, four
	// groups to a 4 kB page.
	groupMaxBytes = 1024
	// groupFill is how full bbolt fills a page of groups before it splits
	// it (bolt.Bucket.FillPercent).
	groupFill = 0.9
)

// groupEntry is one company of a group: its id and its record.
type groupEntry struct{ id, rec []byte }

// errGroup is a group value that cannot be read.
var errGroup = errors.New("unreadable group of the no-op index")

// decodeGroup appends the entries of value v to es. The entries share v's
// bytes.
func decodeGroup(es []groupEntry, v []byte) ([]groupEntry, error) {
	if len(v) == 0 || v[0] != groupVersion {
		return es, errGroup
	}
	v = v[1:]
	for len(v) > 0 {
		id, rest, ok := field(v)
		if !ok {
			return es, errGroup
		}
		rec, rest, ok := field(rest)
		if !ok {
			return es, errGroup
		}
		es = append(es, groupEntry{id, rec})
		v = rest
	}
	return es, nil
}

// field reads one length-prefixed field.
func field(b []byte) (f, rest []byte, ok bool) {
	n, w := binary.Uvarint(b)
	if w <= 0 || n > uint64(len(b)-w) {
		return nil, nil, false
	}
	return b[w : w+int(n)], b[w+int(n):], true
}

// entrySize is what e takes in a group's value.
func entrySize(e groupEntry) int {
	return uvarintLen(len(e.id)) + len(e.id) + uvarintLen(len(e.rec)) + len(e.rec)
}

func uvarintLen(n int) int {
	w := 1
	for ; n >= 0x80; n >>= 7 {
		w++
	}
	return w
}

// appendGroup appends the value of a group of es.
func appendGroup(dst []byte, es []groupEntry) []byte {
	dst = append(dst, groupVersion)
	for _, e := range es {
		dst = binary.AppendUvarint(dst, uint64(len(e.id)))
		dst = append(dst, e.id...)
		dst = binary.AppendUvarint(dst, uint64(len(e.rec)))
		dst = append(dst, e.rec...)
	}
	return dst
}

// groupReader finds records by company id, ids asked in ascending order,
// through one cursor: neighbours share a group and its one seek.
type groupReader struct {
	c *bolt.Cursor
	// The group loaded covers the ids from key (nil: from the first) up
	// to next (nil: to the last): every id in that range is in it or in
	// no group.
	loaded    bool
	key, next []byte
	entries   []groupEntry
	err       error // the first unreadable group met
	// at is where the last id asked for was (or would go) in entries:
	// ids come in ascending order, so the next is at or after it.
	at int
	// loads counts the groups loaded: only a load reads pages of the
	// store (a look at the resident set is due every trimEvery of them,
	// not every trimEvery ids: see dueLook).
	loads int
}

// dueLook reports whether trimEvery groups were loaded since the last
// look at the resident set, and if so counts the next from here. Ids
// that share a group read no page more: in a catch-up a group holds ten
// of a job's companies, and a look every 16 of them was a tenth of the
// index's write.
func (r *groupReader) dueLook(next *int) bool {
	if r.loads < *next {
		return false
	}
	*next = r.loads + trimEvery
	return true
}

// covers reports whether id falls in the loaded group's range.
func (r *groupReader) covers(id []byte) bool {
	return r.loaded && (r.key == nil || bytes.Compare(id, r.key) >= 0) && (r.next == nil || bytes.Compare(id, r.next) < 0)
}

// load positions the reader on the group whose range holds id.
func (r *groupReader) load(id []byte) {
	r.loaded, r.entries, r.at = true, r.entries[:0], -1
	r.loads++
	k, v := r.c.Seek(id)
	if k != nil && bytes.Equal(k, id) {
		r.key = k
		r.next, _ = r.c.Next()
		r.decode(v)
		return
	}
	r.next = k
	if k == nil {
		k, v = r.c.Last()
	} else {
		k, v = r.c.Prev()
	}
	r.key = k
	if k != nil {
		r.decode(v)
	}
}

func (r *groupReader) decode(v []byte) {
	var err error
	if r.entries, err = decodeGroup(r.entries, v); err != nil {
		// Read as holding nothing: its companies are sent, and the next
		// write of the group replaces it.
		r.entries = r.entries[:0]
		if r.err == nil {
			r.err = fmt.Errorf("group %q: %w", r.key, err)
		}
	}
}

// get returns id's record, nil if the index holds none.
func (r *groupReader) get(id []byte) []byte {
	if !r.covers(id) {
		r.load(id)
	}
	if i, ok := r.find(id); ok {
		return r.entries[i].rec
	}
	return nil
}

// find is where id is, or would go, in the loaded entries. Ids come in
// ascending order: from where the last one was, the next is usually the
// entry after it (or the end, for a company new at the end of a group),
// one comparison where a search from the whole group took four (a search
// per company was a tenth of an index write).
func (r *groupReader) find(id []byte) (int, bool) {
	i := r.at
	if i < 0 || i > len(r.entries) || (i > 0 && bytes.Compare(r.entries[i-1].id, id) >= 0) {
		i, ok := slices.BinarySearchFunc(r.entries, id, func(e groupEntry, id []byte) int { return bytes.Compare(e.id, id) })
		r.at = i
		return i, ok
	}
	for ; i < len(r.entries); i++ {
		if c := bytes.Compare(r.entries[i].id, id); c >= 0 {
			r.at = i
			return i, c == 0
		}
	}
	r.at = i
	return i, false
}

// groupWriter changes records, ids in ascending order, a group at a time:
// the group whose range holds the id is read once, changed in memory, and
// written back (split if it grew past groupMaxBytes) when an id beyond its
// range comes, or at flush.
type groupWriter struct {
	b *bolt.Bucket
	r groupReader
	// orig is the loaded group's key as stored (nil: none was), copied:
	// bbolt's slices are not to be trusted once the bucket changes.
	orig  []byte
	dirty bool
	// room holds what is written, groups and their keys: Put keeps a
	// reference until the commit, so nothing in it is handed out twice
	// within a write.
	room *writeRoom
	// scratch holds the copies of the group being changed (its entries as
	// read, the ids put into it, its key and the next one's): once the
	// group is written back into room, nothing refers to them, and the
	// next group's copies take their room. In room too, they were half of
	// what a write held until its commit: a bulk job of 10,000 users,
	// spread over an index of 200,000, changes most of its groups.
	scratch []byte
	// added are the companies new to the group being changed, in id
	// order, merged into its entries once (mergeAdded) rather than
	// inserted one by one: a catch-up's job adds ten or so to each group
	// it touches, and each insertion moved the entries after it (a tenth
	// of the index's write). merged is the room the merge writes into.
	added, merged []groupEntry
}

// mergeAdded merges the companies added into the group's entries.
func (w *groupWriter) mergeAdded() {
	if len(w.added) == 0 {
		return
	}
	es, out := w.r.entries, w.merged[:0]
	for _, a := range w.added {
		for len(es) > 0 && bytes.Compare(es[0].id, a.id) < 0 {
			out = append(out, es[0])
			es = es[1:]
		}
		out = append(out, a)
	}
	out = append(out, es...)
	clear(w.added)
	w.merged, w.r.entries, w.added = w.r.entries[:0], out, w.added[:0]
	w.r.at = -1 // where the next id goes is to be found again
}

func newGroupWriter(b *bolt.Bucket, room *writeRoom) *groupWriter {
	// Pages filled to 90% before they split, not bbolt's half: companies
	// are mostly added in order (a catch-up of new rows, ids ascending
	// within each write), and a page split in half stays half empty, so
	// the index was twice the pages to write and map. (A page that grows
	// later splits as any does.)
	b.FillPercent = groupFill
	return &groupWriter{b: b, r: groupReader{c: b.Cursor()}, room: room}
}

// hold appends p to the writer's room and returns the copy.
func (w *groupWriter) hold(p []byte) []byte {
	return append(w.reserve(len(p)), p...)
}

// copyOf appends p to scratch and returns the copy, valid until the group
// being changed is written back.
func (w *groupWriter) copyOf(p []byte) []byte {
	start := len(w.scratch)
	w.scratch = append(w.scratch, p...)
	return w.scratch[start:len(w.scratch):len(w.scratch)]
}

// reserve returns room for n bytes, empty, never handed out again within
// the write.
func (w *groupWriter) reserve(n int) []byte { return w.room.reserve(n) }

// writeRoom is where one write of the index keeps what it hands bbolt's
// Put (values must stay unchanged until the commit): blocks of
// writeBlock, taken from a pool and given back once the write is
// committed or rolled back, when bbolt holds nothing of them any more. A
// block made for each write, and never used again, was a sixth of what a
// catch-up allocated, each one cleared as it was made.
type writeRoom struct {
	blocks []*[]byte
	cur    []byte
}

// writeBlock is a block of room: a bulk job's write of 10,000 companies
// takes about 60.
const writeBlock = 32 << 10

// writeBlocks holds blocks of writeBlock (*[]byte) between writes.
var writeBlocks sync.Pool

// reserve returns room for n bytes, empty, never handed out again until
// release.
func (r *writeRoom) reserve(n int) []byte {
	if cap(r.cur)-len(r.cur) < n {
		if n > writeBlock/4 {
			return make([]byte, 0, n) // a large value: a block of its own
		}
		r.cur = r.next(n)
	}
	start := len(r.cur)
	r.cur = r.cur[:start+n]
	return r.cur[start : start : start+n]
}

// next is the write's next block, for at least n bytes: one from the
// pool, or, with none there, one made twice the last (4 kB first, up to
// writeBlock). A real-time call's write of one company needs a few kB;
// a first block of 32 kB for each, whenever the pool is empty (a
// collection empties it), was most of what the real-time path allocated.
func (r *writeRoom) next(n int) []byte {
	if b, ok := writeBlocks.Get().(*[]byte); ok {
		r.blocks = append(r.blocks, b)
		return (*b)[:0]
	}
	b := make([]byte, 0, min(writeBlock, max(n, 4<<10, 2*cap(r.cur))))
	r.blocks = append(r.blocks, &b)
	return b
}

// release gives the blocks back: the write they served is over. Only
// whole blocks are kept: a small one would be handed to a bulk job's
// write as if it were one.
func (r *writeRoom) release() {
	for _, b := range r.blocks {
		if cap(*b) == writeBlock {
			writeBlocks.Put(b)
		}
	}
	*r = writeRoom{}
}

// at makes the group whose range holds id the one being changed.
func (w *groupWriter) at(id []byte) error {
	if w.r.covers(id) {
		return nil
	}
	if err := w.flush(); err != nil {
		return err
	}
	w.r.load(id)
	// The last group's copies are written (or were unchanged): their room
	// is this one's.
	w.scratch = w.scratch[:0]
	w.orig = nil
	if w.r.key != nil {
		w.orig = w.copyOf(w.r.key)
	}
	// Copies: the bucket changes under the slices bbolt handed out.
	for i, e := range w.r.entries {
		w.r.entries[i] = groupEntry{w.copyOf(e.id), w.copyOf(e.rec)}
	}
	w.r.key = w.orig
	if w.r.next != nil {
		w.r.next = w.copyOf(w.r.next)
	}
	return nil
}

// get is id's record as the writer holds it (nil: none).
func (w *groupWriter) get(id []byte) ([]byte, error) {
	if err := w.at(id); err != nil {
		return nil, err
	}
	if i, ok := w.r.find(id); ok {
		return w.r.entries[i].rec, nil
	}
	if n := len(w.added); n > 0 && bytes.Equal(w.added[n-1].id, id) {
		return w.added[n-1].rec, nil // put twice in one write
	}
	return nil, nil
}

// put sets id's record; rec must stay unchanged until the commit.
func (w *groupWriter) put(id, rec []byte) error {
	if err := w.at(id); err != nil {
		return err
	}
	i, ok := w.r.find(id)
	switch n := len(w.added); {
	case ok:
		w.r.entries[i].rec = rec
	case n > 0 && bytes.Equal(w.added[n-1].id, id):
		w.added[n-1].rec = rec // put twice in one write: the later wins
	case n > 0 && bytes.Compare(w.added[n-1].id, id) > 0:
		// Not in id order (no caller does that): in place.
		w.mergeAdded()
		i, _ = w.r.find(id)
		w.r.entries = slices.Insert(w.r.entries, i, groupEntry{w.copyOf(id), rec})
	default:
		w.added = append(w.added, groupEntry{w.copyOf(id), rec})
	}
	w.dirty = true
	return nil
}

// delete drops id's record, if any.
func (w *groupWriter) delete(id []byte) error {
	if err := w.at(id); err != nil {
		return err
	}
	w.mergeAdded()
	if i, ok := w.r.find(id); ok {
		w.r.entries = slices.Delete(w.r.entries, i, i+1)
		w.dirty = true
	}
	return nil
}

// flush writes the group being changed back: under its first id, in
// pieces of at most groupMaxBytes; the key it had goes if that is not a
// first id any more.
func (w *groupWriter) flush() error {
	if !w.dirty {
		return nil
	}
	w.mergeAdded()
	w.dirty, w.r.loaded = false, false
	es := w.r.entries
	if w.orig != nil && (len(es) == 0 || !bytes.Equal(es[0].id, w.orig)) {
		if err := w.b.Delete(w.orig); err != nil {
			return err
		}
	}
	for len(es) > 0 {
		n, size := 0, 1
		for n < len(es) && (n == 0 || size+entrySize(es[n]) <= groupMaxBytes) {
			size += entrySize(es[n])
			n++
		}
		if n < len(es) && len(es)-n < n/2 {
			// The rest would be a small group of its own: share evenly.
			n = (len(es) + 1) / 2
		}
		v := appendGroup(w.reserve(size), es[:n])
		// The key is the first id as the group holds it: Put keeps both
		// until the commit, and the entry's copy is scratch.
		at := 1 + uvarintLen(len(es[0].id))
		if err := w.b.Put(v[at:at+len(es[0].id):at+len(es[0].id)], v); err != nil {
			return err
		}
		es = es[n:]
	}
	return nil
}

// migrateBatch is how many per-company records one write moves into
// groups.
const migrateBatch = 10_000

// migrateRecords moves the records of a store of the earlier form (one
// key per company in the "delivered" bucket) into groups, in writes
// of migrateBatch: each moves records and deletes them in one commit, so a
// kill between two leaves nothing half moved, and the next open goes on.
// A record the groups hold already (none should: the groups are written
// only once the move is done) is the newer and stays.
func migrateRecords(db *bolt.DB) error {
	for {
		done := false
		var room writeRoom
		err := db.Update(func(tx *bolt.Tx) error {
			old := tx.Bucket(deliveredBucket)
			if old == nil {
				done = true
				return nil
			}
			w := newGroupWriter(tx.Bucket(groupsBucket), &room)
			var moved [][]byte
			c := old.Cursor()
			for k, v := c.First(); k != nil && len(moved) < migrateBatch; k, v = c.Next() {
				id := w.hold(k)
				have, err := w.get(id)
				if err != nil {
					return err
				}
				if have == nil {
					if err := w.put(id, w.hold(v)); err != nil {
						return err
					}
				}
				moved = append(moved, id)
			}
			if err := w.flush(); err != nil {
				return err
			}
			if len(moved) == 0 {
				done = true
				return tx.DeleteBucket(deliveredBucket)
			}
			for _, k := range moved {
				if err := old.Delete(k); err != nil {
					return err
				}
			}
			return nil
		})
		room.release()
		if err != nil {
			return fmt.Errorf("move the no-op index's records into groups: %w", err)
		}
		if done {
			return nil
		}
	}
}
