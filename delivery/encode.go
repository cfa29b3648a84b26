package delivery

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/pgpilot/pgpilot/mapping"
	"github.com/pgpilot/pgpilot/row"
	"github.com/pgpilot/pgpilot/state"
	"github.com/pgpilot/pgpilot/userpilot"
)

// encoder turns rows into packed fields and packed fields into what
// Userpilot and the state take: a company, a bulk body's members, the no-op
// index's profiles. It is the dispatcher's, and so is the room it keeps
// from one row or body to the next (see docs/design.md, "Memory": no map
// per change).
type encoder struct {
	// compile compiles the mapping for a description of the table.
	compile func(*row.Relation) (Mapper, error)
	// mappers holds the mapping compiled for each description of the
	// table in use: the stream's and the snapshot's take turns.
	mappers row.PerRelation[*mapper]
	keys    keyTable

	// marks are on_delete: mark's metadata per entity (nil md: not that
	// policy), numbered and packed once.
	marks [2]markSet
	// membership is mapping.MembershipKey's number (a user's company is
	// one of its packed keys); see newEncoder.
	membership    uint32
	hasMembership bool

	// rowJSON and rowVals are room for one row's values while it is mapped
	// and packed; memberJSON for one company's members while a bulk body
	// is written.
	rowJSON    []byte
	rowVals    []json.RawMessage
	memberJSON []byte

	// spare is the room of the last body sent, for the next job's: a body
	// is the largest object pgpilot makes, and a new one at every job was a
	// sixth of what a catch-up allocated (and cleared). Only one is kept,
	// and not for long: held idle, it would be megabytes for nothing.
	spare   []byte
	spareAt time.Time
}

// newEncoder is an encoder for the mappings compile compiles. A user's
// company (mapping.MembershipKey, which no section may map as a key) is
// numbered from the start, not when a users mapping is first compiled: after
// a restart, a bulk job can be sized from users owed in the outbox before
// the stream or a snapshot brings a users row, and their company must go as
// each record's company_id, not as a metadata key.
func newEncoder(compile func(*row.Relation) (Mapper, error)) *encoder {
	x := &encoder{compile: compile}
	x.membership, x.hasMembership = x.keys.number(mapping.MembershipKey), true
	return x
}

// spareFor is how long a spare room is kept without a job to take it.
const spareFor = 30 * time.Second

// maxRowRoom is the most room for a row's JSON kept for the next row.
const maxRowRoom = 64 << 10

// markSet is an entity's on_delete: mark, numbered and packed once.
type markSet struct {
	md     userpilot.Metadata
	nums   []uint32
	packed fields
}

// mapper is a Mapper with its keys' numbers in the encoder's keyTable,
// found once per mapping: a row's values are packed by position.
type mapper struct {
	Mapper
	nums   []uint32 // nums[i] is Keys()[i]'s
	entity mapping.Entity
	// ascending: nums only grow (a mapping's keys numbered in its own
	// order, none twice): a row's values are packed as they come. A
	// second section's mapping whose keys the first numbered already may
	// not be.
	ascending bool
}

// mapperFor compiles the mapping against rel's columns whenever Postgres
// describes the table anew (a new Relation), so a schema change is met with
// a clear stop rather than values in the wrong keys.
func (x *encoder) mapperFor(rel *row.Relation) (*mapper, error) {
	return x.mappers.Get(rel, func(rel *row.Relation) (*mapper, error) {
		m, err := x.compile(rel)
		if err != nil {
			return nil, fmt.Errorf("%w: %w; fix the mapping and restart pgpilot: nothing is lost, the slot keeps the changes", ErrSchema, err)
		}
		keys := m.Keys()
		nums := make([]uint32, len(keys))
		for i, k := range keys {
			nums[i] = x.keys.number(k)
		}
		if i := m.Membership(); i >= 0 {
			x.membership, x.hasMembership = nums[i], true
		}
		ascending := true
		for i := 1; i < len(nums); i++ {
			ascending = ascending && nums[i] > nums[i-1]
		}
		return &mapper{Mapper: m, nums: nums, entity: m.Entity(), ascending: ascending}, nil
	})
}

// mapRow maps a row into packed fields under its entry's key (keyOf). mapErr
// says the row, or some of its keys (a heldBack: md holds the others),
// cannot become a payload (id is then the row's id as read, if any); err
// (ErrSchema) that the mapping no longer fits.
func (x *encoder) mapRow(rel *row.Relation, values []row.Value) (entity mapping.Entity, id, key string, md fields, mapErr, err error) {
	m, err := x.mapperFor(rel)
	if err != nil {
		return 0, "", "", nil, nil, err
	}
	// Mapped into room reused from row to row and packed from there.
	vals := slices.Grow(x.rowVals[:0], len(m.nums))[:len(m.nums)]
	id, buf, mapErr := m.Map(values, x.rowJSON[:0], vals)
	// vals point into buf until the next row writes every one of them
	// again: they are cleared only when buf is a huge row's room, which
	// is not kept (clearing them at every row, with the collector's write
	// barriers, was a tenth of mapping a row).
	if cap(buf) <= maxRowRoom {
		x.rowJSON = buf
	} else {
		defer clear(vals)
	}
	x.rowVals = vals
	if mapErr != nil && !keysHeldBack(mapErr) {
		return m.entity, id, keyOf(m.entity, id), nil, mapErr, nil
	}
	// Mapped, or with only some keys held back (one bad value costs one
	// key): what the row has goes out.
	if m.ascending && x.marks[m.entity].md == nil {
		md = packInOrder(m.nums, vals)
	} else {
		md = x.rowFields(m.entity, m.nums, vals)
	}
	return m.entity, id, keyOf(m.entity, id), md, mapErr, nil
}

// heldBack is a mapping error that left some keys of a row out, not the
// row (mapping.BadValues).
type heldBack interface {
	error
	HeldBack() []string
}

// keysHeldBack reports whether err is a heldBack. A function of its own:
// the target errors.As writes through is on the heap, and declared in
// mapRow it was allocated for every row mapped, error or not.
func keysHeldBack(err error) bool {
	var held heldBack
	return errors.As(err, &held)
}

// idOf reads only a row's id (a DELETE carries no more), with its entity
// and key.
func (x *encoder) idOf(rel *row.Relation, values []row.Value) (entity mapping.Entity, id, key string, readErr, err error) {
	m, err := x.mapperFor(rel)
	if err != nil {
		return 0, "", "", nil, err
	}
	id, readErr = m.CompanyID(values)
	return m.entity, id, keyOf(m.entity, id), readErr, nil
}

// rowFields packs a mapped row: vals[i] (nil: left out) is the value of
// the key numbered nums[i]. With on_delete: mark, the mark's keys the row
// leaves out are null: a row that exists is not deleted, and that clears a
// mark a delete left.
func (x *encoder) rowFields(entity mapping.Entity, nums []uint32, vals []json.RawMessage) fields {
	var few [24]field // the mapping's keys and the mark's, usually
	fs := few[:0]
	for i, v := range vals {
		if v != nil {
			fs = append(fs, field{nums[i], v})
		}
	}
	if x.marks[entity].md != nil {
		row := len(fs)
		for _, n := range x.markKeys(entity) {
			if !slices.ContainsFunc(fs[:row], func(fl field) bool { return fl.key == n }) {
				fs = append(fs, field{n, userpilot.Null})
			}
		}
	}
	return packFields(fs)
}

// markKeys numbers the keys of entity's on_delete mark (once).
func (x *encoder) markKeys(entity mapping.Entity) []uint32 {
	ms := &x.marks[entity]
	if ms.nums == nil {
		ms.nums = make([]uint32, 0, len(ms.md))
		for k := range ms.md {
			ms.nums = append(ms.nums, x.keys.number(k))
		}
	}
	return ms.nums
}

// markFields is entity's on_delete mark, packed (once; fields are never
// changed in place, so every deleted row's entry may share it).
func (x *encoder) markFields(entity mapping.Entity) fields {
	ms := &x.marks[entity]
	if ms.packed == nil {
		x.markKeys(entity)
		ms.packed = x.keys.pack(ms.md)
	}
	return ms.packed
}

// company is e under its key with every packed key, as the no-op index
// and the outbox keep it (a user's company among its keys).
func (x *encoder) company(e *entry) userpilot.Company {
	return userpilot.Company{CompanyID: e.id, Metadata: x.keys.unpack(e.md)}
}

// call is e as a real-time worker sends it.
func (x *encoder) call(e *entry) call {
	rec := x.company(e)
	entity, id := subjectOf(e.id)
	c := call{key: e.id, record: rec}
	if entity == mapping.User {
		c.user, c.person = true, userPayload(id, rec.Metadata)
	} else {
		c.company = rec
	}
	return c
}

// payload is what a dead letter keeps of an entry: what Userpilot would
// have been sent (nothing for a deletion).
func (x *encoder) payload(e *entry) any {
	if e.delete {
		return nil
	}
	return x.sent(e)
}

// sent is e as Userpilot takes it: a company, or a user.
func (x *encoder) sent(e *entry) any {
	c := x.call(e)
	if c.user {
		return c.person
	}
	return c.company
}

// profiles is es for the no-op index, read in place. The entries' fields
// must not change until the index's call returns (it is made by the
// dispatcher, which is the only one to change them).
func (x *encoder) profiles(es []*entry) state.Profiles {
	return packedProfiles{es: es, names: x.keys.all()}
}

// profileValues is es for the no-op index as values, for a goroutine of
// its own to record: it holds nothing the dispatcher changes (packed
// fields are never changed in place, only replaced).
func (x *encoder) profileValues(es []*entry) profileValues {
	pv := profileValues{ids: make([]string, len(es)), md: make([]fields, len(es)), absent: make([]bool, len(es)), names: x.keys.all()}
	for i, e := range es {
		pv.ids[i], pv.md[i], pv.absent[i] = e.id, e.md, e.checked && e.absent
	}
	return pv
}

// addMember writes e into a bulk body (of companies, or of users: a
// user's company goes as its record's company_id, not as a key), unless
// it would pass maxBytes.
func (x *encoder) addMember(body *userpilot.BulkBody, e *entry, maxBytes int) bool {
	entity, id := subjectOf(e.id)
	if entity == mapping.Company {
		// Written into the body itself: copied there from room of its
		// own, each company's metadata was written twice.
		members := x.keys.members
		return body.AppendMembersWithin(e.id, func(dst []byte) []byte { return e.md.appendMembers(dst, members) }, maxBytes)
	}
	var company json.RawMessage
	x.memberJSON = e.md.appendMembersExcept(x.memberJSON[:0], x.keys.members, x.membership, x.hasMembership, &company)
	return body.AddUserMembersWithin(id, mapping.CompanyOf(company), x.memberJSON, maxBytes)
}

// takeSpare returns the spare room (nil: none), no longer spare.
func (x *encoder) takeSpare() []byte {
	room := x.spare
	x.spare = nil
	return room
}

// putSpare keeps a sent body's room for the next, if it is the larger.
func (x *encoder) putSpare(room []byte, now time.Time) {
	if cap(room) > cap(x.spare) {
		x.spare, x.spareAt = room, now
	}
}

// expireSpare lets a room kept for spareFor go.
func (x *encoder) expireSpare(now time.Time) {
	if x.spare != nil && now.Sub(x.spareAt) >= spareFor {
		x.spare = nil
	}
}

// packedProfiles are entries as the no-op index reads them
// (state.Profiles): straight from their packed fields, no map of each.
type packedProfiles struct {
	es    []*entry
	names []string
}

func (pp packedProfiles) Len() int               { return len(pp.es) }
func (pp packedProfiles) CompanyID(i int) string { return pp.es[i].id }
func (pp packedProfiles) Metadata(i int, yield func(string, json.RawMessage) bool) {
	pp.es[i].md.yield(pp.names, yield)
}

// Absent is what the entry's look-up found (state.KnownAbsent): the index
// held no record of its company. The answer holds until the entry is
// recorded, as its same does: nothing else of its company is on its way
// meanwhile, and a merge has it looked up again.
func (pp packedProfiles) Absent(i int) bool { return pp.es[i].checked && pp.es[i].absent }

// profileValues are companies' profiles as values (state.KnownAbsent).
type profileValues struct {
	ids    []string
	md     []fields
	absent []bool
	names  []string
}

func (pv profileValues) Len() int               { return len(pv.ids) }
func (pv profileValues) CompanyID(i int) string { return pv.ids[i] }
func (pv profileValues) Metadata(i int, yield func(string, json.RawMessage) bool) {
	pv.md[i].yield(pv.names, yield)
}
func (pv profileValues) Absent(i int) bool { return pv.absent[i] }

// plus is pv with more's profiles after its own.
func (pv profileValues) plus(more profileValues) profileValues {
	return profileValues{ids: append(slices.Clip(pv.ids), more.ids...), md: append(slices.Clip(pv.md), more.md...),
		absent: append(slices.Clip(pv.absent), more.absent...), names: pv.names}
}
