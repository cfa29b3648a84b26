package state

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
)

// store.db is read here page by page, through ReadAt, without bbolt: to
// check it before bbolt maps it, and to read what a damaged one still
// holds. bbolt trusts its file. A file cut short (a failing disk, a copy of
// a live file) is mapped past its end, and the first read there is a
// SIGBUS; a page overwritten fails an assertion in the walk bbolt makes of
// every page when it opens a store without a free list (NoFreelistSync),
// and that walk runs in a goroutine of bbolt's own, where no recover can
// catch the panic. Either way the process died with a Go stack trace and
// exit 2, naming neither the file nor a way out. checkStoreFile walks the
// pages bbolt would walk, and refuses what would crash it.
//
// The layout is bbolt's (version 2), in the machine's byte order: two meta
// pages, then the pages of a B+tree of buckets, a page's header being its
// id, flags, element count and overflow (how many pages follow it as one).

// bbolt's on-disk constants.
const (
	boltMagic          = 0xED0CDAED
	boltVersion        = 2
	boltPageHeader     = 16
	boltElementSize    = 16 // a branch or leaf element
	boltBucketHeader   = 16 // a bucket value: its root page and sequence
	boltBranchPage     = 0x01
	boltLeafPage       = 0x02
	boltFreelistPage   = 0x10
	boltBucketLeafFlag = 0x01
	boltNoFreelist     = ^uint64(0)
)

// ErrStoreDamaged is wrapped by the error of a store.db that cannot be
// trusted (see StoreDamage).
var ErrStoreDamaged = errors.New("store is damaged")

// StoreDamage says why a store file cannot be opened, and what of it can
// still be read.
type StoreDamage struct {
	Path    string
	Problem string
	// Held is what could be read of it (Readable false when nothing).
	Held StoreContents
}

func (e *StoreDamage) Error() string {
	return fmt.Sprintf("%s is damaged: %s", e.Path, e.Problem)
}

// Unwrap makes errors.Is(err, ErrStoreDamaged) hold.
func (e *StoreDamage) Unwrap() error { return ErrStoreDamaged }

// StoreContents is what a store file holds, as far as it can be read.
type StoreContents struct {
	Readable bool
	// Companies the no-op index knows (Userpilot holds them), and how many
	// the outbox owes something: as many as could be read.
	Indexed, Owed int
	// Unreadable counts pages that could not be read: what they held is
	// not in the counts.
	Unreadable int
}

// boltMeta is a meta page's fields.
type boltMeta struct {
	pageSize uint32
	root     uint64 // the root bucket's page
	freelist uint64
	pgid     uint64 // the high water mark: every page in use is below it
	txid     uint64
}

// storeFile is a store file opened for reading page by page.
type storeFile struct {
	f    *os.File
	path string
	size int64
	meta boltMeta
	// seen guards the walk against a page reached twice (a damaged branch
	// pointing back up the tree); bad are the pages found unreadable.
	seen, bad map[uint64]bool
}

// openStoreFile opens path and reads its meta pages. A file whose meta
// pages are both unreadable is damage (returned as *StoreDamage), as is a
// file shorter than its pages.
func openStoreFile(path string) (*storeFile, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	s := &storeFile{f: f, path: path, size: st.Size(), seen: map[uint64]bool{}, bad: map[uint64]bool{}}
	if err := s.readMeta(); err != nil {
		f.Close()
		return nil, err
	}
	return s, nil
}

func (s *storeFile) close() { s.f.Close() }

func (s *storeFile) damaged(format string, args ...any) error {
	return &StoreDamage{Path: s.path, Problem: fmt.Sprintf(format, args...)}
}

// readMeta picks the meta page bbolt would: the newer of the two that
// validate.
func (s *storeFile) readMeta() error {
	first, errFirst := s.metaAt(0)
	pageSize := int64(os.Getpagesize())
	if errFirst == nil {
		pageSize = int64(first.pageSize)
	}
	second, errSecond := s.metaAt(pageSize)
	switch {
	case errFirst != nil && errSecond != nil:
		return s.damaged("neither meta page is valid (%v; %v)", errFirst, errSecond)
	case errFirst != nil:
		s.meta = second
	case errSecond != nil || first.txid >= second.txid:
		s.meta = first
	default:
		s.meta = second
	}
	if s.meta.pageSize < 512 || s.meta.pageSize > 1<<20 {
		return s.damaged("page size %d", s.meta.pageSize)
	}
	return nil
}

// cutShort says, when the file is shorter than its pages, by how much: the
// pages past its end cannot be read, and bbolt would fault on them.
func (s *storeFile) cutShort() error {
	if need := int64(s.meta.pgid) * int64(s.meta.pageSize); s.size < need {
		return s.damaged("the file is %d bytes, its pages need %d (%d pages of %d): it was cut short",
			s.size, need, s.meta.pgid, s.meta.pageSize)
	}
	return nil
}

// metaAt reads and validates the meta page at offset off.
func (s *storeFile) metaAt(off int64) (boltMeta, error) {
	buf := make([]byte, boltPageHeader+64)
	if _, err := s.f.ReadAt(buf, off); err != nil {
		return boltMeta{}, fmt.Errorf("meta page at %d: %w", off, err)
	}
	m := buf[boltPageHeader:]
	ne := binary.NativeEndian
	if ne.Uint32(m[0:]) != boltMagic {
		return boltMeta{}, fmt.Errorf("meta page at %d: not a bbolt file", off)
	}
	if v := ne.Uint32(m[4:]); v != boltVersion {
		return boltMeta{}, fmt.Errorf("meta page at %d: version %d", off, v)
	}
	h := fnv.New64a()
	h.Write(m[:56])
	if h.Sum64() != ne.Uint64(m[56:]) {
		return boltMeta{}, fmt.Errorf("meta page at %d: checksum mismatch", off)
	}
	return boltMeta{pageSize: ne.Uint32(m[8:]), root: ne.Uint64(m[16:]), freelist: ne.Uint64(m[32:]),
		pgid: ne.Uint64(m[40:]), txid: ne.Uint64(m[48:])}, nil
}

// page reads page id, overflow included, and checks its header: the id it
// holds is its own, it is below the high water mark, and of a kind the
// tree may hold.
func (s *storeFile) page(id uint64, kinds ...uint16) ([]byte, error) {
	if id < 2 || id >= s.meta.pgid {
		return nil, s.damaged("page %d is out of bounds (pages 2 to %d)", id, s.meta.pgid-1)
	}
	ps := int64(s.meta.pageSize)
	head := make([]byte, boltPageHeader)
	if _, err := s.f.ReadAt(head, int64(id)*ps); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, s.damaged("page %d lies past the end of the file: it was cut short", id)
		}
		return nil, s.damaged("page %d: %v", id, err)
	}
	ne := binary.NativeEndian
	if got := ne.Uint64(head); got != id {
		return nil, s.damaged("page %d says it is page %d: it was overwritten", id, got)
	}
	flags, overflow := ne.Uint16(head[8:]), ne.Uint32(head[12:])
	kindOK := false
	for _, k := range kinds {
		kindOK = kindOK || flags == k
	}
	if !kindOK {
		return nil, s.damaged("page %d has flags %#x, not a page the tree may hold there", id, flags)
	}
	if id+uint64(overflow) >= s.meta.pgid {
		return nil, s.damaged("page %d runs past the last page (overflow %d)", id, overflow)
	}
	buf := make([]byte, ps*(1+int64(overflow)))
	if _, err := s.f.ReadAt(buf, int64(id)*ps); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, s.damaged("page %d lies past the end of the file: it was cut short", id)
		}
		return nil, s.damaged("page %d: %v", id, err)
	}
	return buf, nil
}

// element returns the i-th element of page p (branch or leaf): its key,
// and for a leaf its value and flags; for a branch the child's page id.
func (s *storeFile) element(p []byte, i int) (key, value []byte, flags uint32, child uint64, err error) {
	ne := binary.NativeEndian
	at := boltPageHeader + i*boltElementSize
	if at+boltElementSize > len(p) {
		return nil, nil, 0, 0, s.damaged("page %d: element %d lies outside it", ne.Uint64(p), i)
	}
	e := p[at:]
	if ne.Uint16(p[8:]) == boltBranchPage {
		pos, ksize := int(ne.Uint32(e[0:])), int(ne.Uint32(e[4:]))
		if at+pos+ksize > len(p) || pos < 0 {
			return nil, nil, 0, 0, s.damaged("page %d: element %d's key lies outside it", ne.Uint64(p), i)
		}
		return p[at+pos : at+pos+ksize], nil, 0, ne.Uint64(e[8:]), nil
	}
	flags = ne.Uint32(e[0:])
	pos, ksize, vsize := int(ne.Uint32(e[4:])), int(ne.Uint32(e[8:])), int(ne.Uint32(e[12:]))
	if at+pos+ksize+vsize > len(p) || pos < 0 {
		return nil, nil, 0, 0, s.damaged("page %d: element %d's key or value lies outside it", ne.Uint64(p), i)
	}
	return p[at+pos : at+pos+ksize], p[at+pos+ksize : at+pos+ksize+vsize], flags, 0, nil
}

// walk visits the tree rooted at page id (or, for an inline bucket, the
// page held in inline), calling leaf with each key and value of its
// leaves (a nested bucket's value is its header and, inline, its page).
// It stops at the first damage unless tolerant, which counts the pages it
// could not read in *unreadable and goes on with the others.
func (s *storeFile) walk(id uint64, inline []byte, tolerant bool, unreadable *int, leaf func(k, v []byte, flags uint32) error) error {
	p := inline
	if p == nil {
		if s.seen[id] {
			return s.damaged("page %d is reached twice", id)
		}
		s.seen[id] = true
		var err error
		if p, err = s.page(id, boltBranchPage, boltLeafPage); err != nil {
			if tolerant {
				if !s.bad[id] { // counted once, however many walks meet it
					s.bad[id] = true
					*unreadable++
				}
				return nil
			}
			return err
		}
	} else if len(p) < boltPageHeader || binary.NativeEndian.Uint16(p[8:]) != boltLeafPage {
		if tolerant {
			*unreadable++
			return nil
		}
		return s.damaged("an inline bucket under page %d is not a leaf", id)
	}
	count := int(binary.NativeEndian.Uint16(p[10:]))
	isBranch := binary.NativeEndian.Uint16(p[8:]) == boltBranchPage
	for i := range count {
		k, v, flags, child, err := s.element(p, i)
		if err != nil {
			if tolerant {
				*unreadable++
				return nil
			}
			return err
		}
		if isBranch {
			if err := s.walk(child, nil, tolerant, unreadable, leaf); err != nil {
				return err
			}
			continue
		}
		if err := leaf(k, v, flags); err != nil {
			return err
		}
	}
	return nil
}

// bucketRoot reads a bucket value: its root page, or, for an inline bucket
// (root 0), its page.
func bucketRoot(v []byte) (root uint64, inline []byte, ok bool) {
	if len(v) < boltBucketHeader {
		return 0, nil, false
	}
	root = binary.NativeEndian.Uint64(v)
	if root == 0 {
		return 0, v[boltBucketHeader:], true
	}
	return root, nil, true
}

// checkAll walks every page bbolt would walk when opening the store: the
// root bucket's tree, and every bucket nested in it, to any depth.
func (s *storeFile) checkAll() error {
	if err := s.cutShort(); err != nil {
		return err
	}
	if s.meta.freelist != boltNoFreelist {
		if _, err := s.page(s.meta.freelist, boltFreelistPage); err != nil {
			return err
		}
	}
	var visit func(root uint64, inline []byte) error
	visit = func(root uint64, inline []byte) error {
		return s.walk(root, inline, false, nil, func(k, v []byte, flags uint32) error {
			if flags&boltBucketLeafFlag == 0 {
				return nil
			}
			r, in, ok := bucketRoot(v)
			if !ok {
				return s.damaged("bucket %q has a short header", k)
			}
			return visit(r, in)
		})
	}
	return visit(s.meta.root, nil)
}

// bucket calls fn with each key and value of the top-level bucket name
// that can be read, going on past damaged pages; it returns how many
// pages it could not read (the bucket not found, when those pages held
// it, reads as empty).
func (s *storeFile) bucket(name []byte, fn func(k, v []byte) error) (unreadable int, err error) {
	clear(s.seen)
	var root uint64
	var inline []byte
	found := false
	err = s.walk(s.meta.root, nil, true, &unreadable, func(k, v []byte, flags uint32) error {
		if flags&boltBucketLeafFlag != 0 && bytes.Equal(k, name) {
			root, inline, found = bucketRoot(v)
		}
		return nil
	})
	if err != nil {
		return unreadable, err
	}
	if !found {
		return unreadable, nil
	}
	err = s.walk(root, inline, true, &unreadable, func(k, v []byte, flags uint32) error {
		if flags&boltBucketLeafFlag != 0 {
			return nil // a nested bucket: none of pgpilot's buckets has one
		}
		return fn(k, v)
	})
	return unreadable, err
}

// checkStoreFile reports whether the store file at path can be opened by
// bbolt: nil when it can (or does not exist), a *StoreDamage saying why
// not, with what can still be read of it, or another error when the file
// cannot be read at all.
func checkStoreFile(path string) error {
	s, err := openStoreFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	var damage *StoreDamage
	if errors.As(err, &damage) {
		return damage
	}
	if err != nil {
		return err
	}
	defer s.close()
	if err := s.checkAll(); err != nil {
		if errors.As(err, &damage) {
			damage.Held = s.contents()
		}
		return err
	}
	return nil
}

// contents counts what can still be read: the no-op index's companies and
// the outbox's.
func (s *storeFile) contents() StoreContents {
	c := StoreContents{Readable: true}
	n, _ := s.bucket(groupsBucket, func(_, v []byte) error {
		es, err := decodeGroup(nil, v)
		if err != nil {
			c.Unreadable++
		}
		c.Indexed += len(es)
		return nil
	})
	c.Unreadable += n
	n, _ = s.bucket(outboxBucket, func(_, _ []byte) error {
		c.Owed++
		return nil
	})
	c.Unreadable += n
	return c
}
