package delivery

import (
	"encoding/binary"
	"encoding/json"
	"slices"
	"sync/atomic"

	"github.com/pgpilot/pgpilot/userpilot"
)

// A pending company's metadata is kept packed, not as a map: a map of
// json.RawMessage costs about 450 bytes for seven keys before any value,
// and memory holds a window of thousands of pending companies (see
// docs/design.md, "Memory"). The values are the JSON the mapping encoded
// once; the keys are numbered by the pipeline's keyTable.

// keyTable numbers the metadata keys a pipeline has met: those of the
// mapping and of on_delete's mark, so a handful.
type keyTable struct {
	index map[string]uint32 // the dispatcher's only
	// names is copied on write, so that workers can read a company's
	// metadata while the dispatcher meets a new key; members is each
	// name as a metadata object's member starts (userpilot.MetadataKey),
	// encoded once for every bulk body (the dispatcher's only).
	names   atomic.Pointer[[]string]
	members [][]byte
}

func (t *keyTable) number(k string) uint32 {
	if n, ok := t.index[k]; ok {
		return n
	}
	if t.index == nil {
		t.index = map[string]uint32{}
	}
	var names []string
	if old := t.names.Load(); old != nil {
		names = *old
	}
	names = append(slices.Clip(names), k)
	n := uint32(len(names) - 1)
	t.index[k] = n
	t.names.Store(&names)
	t.members = append(t.members, userpilot.MetadataKey(k))
	return n
}

// fields is packed metadata: for each key, in the order of its number, the
// number and the value's length (uvarints) and the value's JSON. It is never
// changed in place (the metadata unpacked from it shares its bytes): a
// merge makes a new one.
type fields []byte

type field struct {
	key uint32
	val []byte
}

// pack packs md.
func (t *keyTable) pack(md userpilot.Metadata) fields {
	if len(md) == 0 {
		return nil
	}
	fs := make([]field, 0, len(md))
	for k, v := range md {
		fs = append(fs, field{t.number(k), v})
	}
	return packFields(fs)
}

// packFields packs fs, sorting it by key number; of one key given twice,
// the last is kept (as the last write to a map would be).
func packFields(fs []field) fields {
	if len(fs) == 0 {
		return nil
	}
	// A mapping's keys are usually numbered in its own order: sorted
	// already.
	if !slices.IsSortedFunc(fs, byKey) {
		slices.SortStableFunc(fs, byKey)
	}
	kept := fs[:1]
	for _, fl := range fs[1:] {
		if fl.key == kept[len(kept)-1].key {
			kept[len(kept)-1] = fl
		} else {
			kept = append(kept, fl)
		}
	}
	return encodeFields(kept)
}

func byKey(a, b field) int { return int(a.key) - int(b.key) }

// over returns f with md's keys over it, newer winning.
func (t *keyTable) over(f fields, md userpilot.Metadata) fields {
	return mergeFields(f, t.pack(md))
}

// unpack makes the metadata f holds, sharing f's bytes.
func (t *keyTable) unpack(f fields) userpilot.Metadata {
	md := userpilot.Metadata{}
	if len(f) == 0 {
		return md
	}
	names := t.all()
	f.each(func(fl field) { md[names[fl.key]] = fl.val })
	return md
}

// all is the names of the keys met so far, by number: every key of the
// fields packed before it was called. Safe to call from any goroutine.
func (t *keyTable) all() []string {
	if names := t.names.Load(); names != nil {
		return *names
	}
	return nil
}

func (f fields) each(fn func(field)) {
	for len(f) > 0 {
		var fl field
		fl, f = f.next()
		fn(fl)
	}
}

// next is f's first field, and the fields after it.
func (f fields) next() (field, fields) {
	if len(f) >= 2 && f[0] < 0x80 && f[1] < 0x80 {
		// A key number and a length of one byte each: a mapping's few
		// keys, and most values. Read three times a change (the body, the
		// index, its look-up), the general case was a fifth of the
		// dispatcher's own work.
		size := 2 + int(f[1])
		return field{uint32(f[0]), f[2:size:size]}, f[size:]
	}
	key, n := binary.Uvarint(f)
	f = f[n:]
	size, n := binary.Uvarint(f)
	f = f[n:]
	return field{uint32(key), f[:size:size]}, f[size:]
}

// yield calls yield with each key's name (names: keyTable.all) and value
// until it returns false.
func (f fields) yield(names []string, yield func(string, json.RawMessage) bool) {
	for rest := f; len(rest) > 0; {
		var fl field
		fl, rest = rest.next()
		if !yield(names[fl.key], fl.val) {
			return
		}
	}
}

// appendMembers appends f as a metadata object's members (members:
// keyTable.members), for a bulk job's body (userpilot's AddMembersWithin):
// written from the packed bytes, without a map or a call for each key.
func (f fields) appendMembers(dst []byte, members [][]byte) []byte {
	for rest := f; len(rest) > 0; {
		var fl field
		fl, rest = rest.next()
		dst = append(append(dst, members[fl.key]...), fl.val...)
		if len(rest) > 0 {
			dst = append(dst, ',')
		}
	}
	return dst
}

// appendMembersExcept is appendMembers leaving out the key numbered skip
// (when has), whose value it puts in *value instead: a user's company.
func (f fields) appendMembersExcept(dst []byte, members [][]byte, skip uint32, has bool, value *json.RawMessage) []byte {
	first := true
	for rest := f; len(rest) > 0; {
		var fl field
		fl, rest = rest.next()
		if has && fl.key == skip {
			*value = fl.val
			continue
		}
		if !first {
			dst = append(dst, ',')
		}
		first = false
		dst = append(append(dst, members[fl.key]...), fl.val...)
	}
	return dst
}

// packInOrder packs vals[i] (nil: left out) as key nums[i], nums
// ascending: what packFields makes of them, without sorting or a list of
// fields (the mapping's keys are numbered in its order: a row is packed as
// it comes).
func packInOrder(nums []uint32, vals []json.RawMessage) fields {
	size := 0
	for i, v := range vals {
		if v != nil {
			size += uvarintLen(uint64(nums[i])) + uvarintLen(uint64(len(v))) + len(v)
		}
	}
	if size == 0 {
		return nil
	}
	b := make(fields, 0, size)
	for i, v := range vals {
		if v != nil {
			b = appendField(b, nums[i], v)
		}
	}
	return b
}

// appendField appends one key's number, length and value.
func appendField(b fields, key uint32, val []byte) fields {
	if key < 0x80 && len(val) < 0x80 {
		b = append(b, byte(key), byte(len(val)))
	} else {
		b = binary.AppendUvarint(b, uint64(key))
		b = binary.AppendUvarint(b, uint64(len(val)))
	}
	return append(b, val...)
}

func encodeFields(fs []field) fields {
	size := 0
	for _, fl := range fs {
		size += uvarintLen(uint64(fl.key)) + uvarintLen(uint64(len(fl.val))) + len(fl.val)
	}
	b := make(fields, 0, size)
	for _, fl := range fs {
		b = appendField(b, fl.key, fl.val)
	}
	return b
}

// mergeFields returns older with newer's keys over it. Both are sorted by
// key number: they are walked side by side, once to size the result and
// once to write it, without a list of the fields of each (two lists and a
// third for the result were most of what a burst of updates allocated for
// each change merged).
func mergeFields(older, newer fields) fields {
	switch {
	case len(newer) == 0:
		return older
	case len(older) == 0:
		return newer
	}
	size := 0
	merged(older, newer, func(key uint32, val []byte) {
		size += uvarintLen(uint64(key)) + uvarintLen(uint64(len(val))) + len(val)
	})
	out := make(fields, 0, size)
	merged(older, newer, func(key uint32, val []byte) { out = appendField(out, key, val) })
	return out
}

// merged calls fn with each field of older and newer (both not empty) in
// key order, newer's value for a key both hold.
func merged(older, newer fields, fn func(key uint32, val []byte)) {
	fa, a := older.next()
	fb, b := newer.next()
	haveA, haveB := true, true
	for haveA || haveB {
		takeA, takeB := haveA && (!haveB || fa.key <= fb.key), haveB && (!haveA || fb.key <= fa.key)
		if takeB {
			fn(fb.key, fb.val)
		} else {
			fn(fa.key, fa.val)
		}
		if takeA {
			if haveA = len(a) > 0; haveA {
				fa, a = a.next()
			}
		}
		if takeB {
			if haveB = len(b) > 0; haveB {
				fb, b = b.next()
			}
		}
	}
}

func uvarintLen(x uint64) int {
	n := 1
	for x >= 0x80 {
		x >>= 7
		n++
	}
	return n
}
