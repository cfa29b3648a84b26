package delivery

import (
	"encoding/json"
	"maps"
	"testing"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/mapping"
	"github.com/pgpilot/pgpilot/row"
	"github.com/pgpilot/pgpilot/state"
	"github.com/pgpilot/pgpilot/userpilot"
)

// keyMapper maps column 0 to the company id and column i+1 to keys[i], as
// a JSON string of the column's text.
type keyMapper struct{ keys []string }

func (m keyMapper) CompanyID(v []row.Value) (string, error) { return string(v[0].Text), nil }
func (m keyMapper) Keys() []string                          { return m.keys }
func (keyMapper) Entity() mapping.Entity                    { return mapping.Company }
func (keyMapper) Membership() int                           { return -1 }
func (m keyMapper) Map(v []row.Value, buf []byte, vals []json.RawMessage) (string, []byte, error) {
	for i := range m.keys {
		switch val := v[i+1]; {
		case val.Unchanged:
			vals[i] = nil
		case val.Null:
			vals[i] = userpilot.Null
		default:
			start := len(buf)
			buf = append(append(append(buf, '"'), val.Text...), '"')
			vals[i] = buf[start:len(buf):len(buf)]
		}
	}
	return string(v[0].Text), buf, nil
}
func (m keyMapper) Identify(v []row.Value) (userpilot.Company, error) {
	vals := make([]json.RawMessage, len(m.keys))
	id, _, err := m.Map(v, nil, vals)
	md := userpilot.Metadata{}
	for i, val := range vals {
		if val != nil {
			md[m.keys[i]] = val
		}
	}
	return userpilot.Company{CompanyID: id, Metadata: md}, err
}

// TestPackedPathIsTheMapPath: what the pipeline makes of changes without a
// map per change (the mapping's values packed by position, the body, the
// no-op index's look-up and record read from the packed fields) is what
// the map path made: Identify's map, mark keys nulled, merged key by key
// newer winning (pending.merge before), then unpacked for each use.
func TestPackedPathIsTheMapPath(t *testing.T) {
	// A second description of the table maps one more key, first: a key
	// met mid-stream, numbered after the others.
	relA := &row.Relation{Table: row.Table{Schema: "public", Name: "companies"}, Columns: []row.Column{{Name: "id", TypeOID: pgtype.TextOID}}}
	relB := &row.Relation{Table: relA.Table, Columns: relA.Columns}
	mappers := map[*row.Relation]keyMapper{
		relA: {keys: []string{"name", "plan", "seats"}},
		relB: {keys: []string{"region", "name", "plan", "seats"}},
	}
	v := func(s string) row.Value {
		switch s {
		case "NULL":
			return row.Value{Null: true}
		case "TOAST":
			return row.Value{Unchanged: true}
		}
		return row.Value{Text: []byte(s)}
	}
	upsert := func(rel *row.Relation, vals ...string) row.Change {
		ch := row.Change{Op: row.Update, Relation: rel}
		for _, s := range vals {
			ch.Values = append(ch.Values, v(s))
		}
		return ch
	}
	del := func(id string) row.Change {
		return row.Change{Op: row.Delete, Relation: relA, Values: []row.Value{v(id)}}
	}
	tests := []struct {
		name     string
		onDelete string
		mark     map[string]any
		changes  []row.Change
	}{
		{name: "every key, then nulls", changes: []row.Change{
			upsert(relA, "1", "Globex", "pro", "3"), upsert(relA, "2", "NULL", "free", "NULL"),
		}},
		{name: "unchanged TOAST keys left out, merged over older values", changes: []row.Change{
			upsert(relA, "1", "Globex", "pro", "3"), upsert(relA, "1", "TOAST", "free", "TOAST"), upsert(relA, "1", "TOAST", "TOAST", "4"),
			upsert(relA, "2", "TOAST", "TOAST", "TOAST"), upsert(relA, "3", "TOAST", "NULL", "TOAST"), upsert(relA, "3", "x", "TOAST", "TOAST"),
		}},
		{name: "a key met mid-stream", changes: []row.Change{
			upsert(relA, "1", "Globex", "pro", "3"), upsert(relA, "2", "Initech", "free", "1"),
			upsert(relB, "1", "EU", "TOAST", "enterprise", "TOAST"), upsert(relB, "3", "US", "Hooli", "NULL", "9"),
			upsert(relA, "3", "Hooli", "free", "TOAST"),
		}},
		{name: "on_delete mark: a row that exists clears the mark", onDelete: "mark", mark: map[string]any{"deleted": true, "deleted_at": "then"},
			changes: []row.Change{
				upsert(relA, "1", "Globex", "pro", "3"), del("1"), del("2"), upsert(relA, "2", "TOAST", "free", "TOAST"),
				del("3"), upsert(relB, "3", "EU", "Hooli", "TOAST", "TOAST"), del("3"),
			}},
		{name: "on_delete mark of a mapped key: a row leaving it out nulls it", onDelete: "mark", mark: map[string]any{"plan": "gone"},
			changes: []row.Change{upsert(relA, "1", "Globex", "TOAST", "3"), upsert(relA, "2", "Initech", "pro", "1"), del("2"),
				upsert(relA, "3", "Hooli", "pro", "1")},
		},
		{name: "on_delete delete: created again", onDelete: "delete", changes: []row.Change{
			upsert(relA, "1", "Globex", "pro", "3"), del("1"), upsert(relA, "1", "TOAST", "free", "TOAST"), upsert(relA, "1", "G", "TOAST", "TOAST"),
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mark, err := userpilot.MetadataOf(tt.mark)
			require.NoError(t, err)
			p := New(Options{NoBulk: true, OnDelete: tt.onDelete, DeleteMark: mark,
				Mapping: func(rel *row.Relation) (Mapper, error) { return mappers[rel], nil }})

			// The map path, as it was: each change's map (Identify, mark
			// keys nulled), merged key by key over what is pending.
			want := map[string]userpilot.Metadata{}
			deleted := map[string]bool{}
			var ids []string
			for i, ch := range tt.changes {
				txn := row.Transaction{Kind: row.Commit, CommitLSN: pglogrepl.LSN(10 * (i + 1)), EndLSN: pglogrepl.LSN(10*(i+1) + 5),
					Changes: []row.Change{ch}}
				require.NoError(t, p.add(txn))
				id := string(ch.Values[0].Text)
				if _, ok := want[id]; !ok && !deleted[id] {
					ids = append(ids, id)
				}
				var md userpilot.Metadata
				switch {
				case ch.Op == row.Delete && tt.onDelete == "delete":
					delete(want, id)
					deleted[id] = true
					continue
				case ch.Op == row.Delete:
					md = maps.Clone(mark)
				default:
					co, err := mappers[ch.Relation].Identify(ch.Values)
					require.NoError(t, err)
					md = co.Metadata
					if tt.onDelete == "mark" {
						for k := range mark {
							if _, ok := md[k]; !ok {
								md[k] = userpilot.Null
							}
						}
					}
				}
				if deleted[id] { // created again: the deletion's state is replaced
					want[id], deleted[id] = md, false
					continue
				}
				if want[id] == nil {
					want[id] = userpilot.Metadata{}
				}
				maps.Copy(want[id], md)
			}

			var es []*entry
			var wantCos []userpilot.Company
			for _, id := range ids {
				e := p.ledger.companies[id].waiting
				require.NotNil(t, e, id)
				require.Equal(t, deleted[id], e.delete, id)
				if e.delete {
					continue
				}
				assert.Equal(t, want[id], p.enc.keys.unpack(e.md), "company %s", id)
				es = append(es, e)
				wantCos = append(wantCos, userpilot.Company{CompanyID: id, Metadata: want[id]})
			}

			// The body: from the packed fields, the JSON the map writes.
			var packed, mapped userpilot.BulkBody
			for i, e := range es {
				require.True(t, packed.AddMembersWithin(e.id, e.md.appendMembers(nil, p.enc.keys.members), 0))
				mapped.Add(wantCos[i])
			}
			assert.JSONEq(t, string(mapped.JSON()), string(packed.JSON()))
			assert.Equal(t, mapped.Size(), packed.Size())

			// The index: recorded from the packed fields or from the maps,
			// it answers the same for the same states and for changed ones.
			fromPacked, fromMaps := openStore(t), openStore(t)
			require.NoError(t, fromPacked.RecordProfiles(p.enc.profiles(es)))
			require.NoError(t, fromMaps.Record(wantCos))
			var ask []userpilot.Company
			for _, co := range wantCos {
				ask = append(ask, co)
				for k := range co.Metadata {
					changed := maps.Clone(co.Metadata)
					changed[k] = json.RawMessage(`"changed"`)
					ask = append(ask, userpilot.Company{CompanyID: co.CompanyID, Metadata: changed},
						userpilot.Company{CompanyID: co.CompanyID, Metadata: userpilot.Metadata{k: co.Metadata[k]}})
				}
			}
			for _, x := range []*state.Store{fromPacked, fromMaps} {
				same := make([]bool, len(ask))
				require.NoError(t, x.UnchangedEach(ask, same))
				for i, co := range ask {
					_, isWant := p.ledger.companies[co.CompanyID]
					changed := false
					for _, v := range co.Metadata {
						changed = changed || string(v) == `"changed"`
					}
					assert.Equal(t, isWant && !changed, same[i], "%s: %s", co.CompanyID, co.AppendJSON(nil))
				}
				// The look-up from the packed fields: every pending state is held.
				held := make([]bool, len(es))
				require.NoError(t, x.UnchangedProfiles(p.enc.profiles(es), held, nil))
				for i, h := range held {
					assert.True(t, h, "company %s", es[i].id)
				}
			}
			// And a state the index does not hold is a change, on both.
			older := openStore(t)
			require.NoError(t, older.Record([]userpilot.Company{{CompanyID: "1", Metadata: userpilot.Metadata{"name": json.RawMessage(`"Old"`)}}}))
			same, mapSame := make([]bool, len(es)), make([]bool, len(es))
			require.NoError(t, older.UnchangedProfiles(p.enc.profiles(es), same, nil))
			require.NoError(t, older.UnchangedEach(wantCos, mapSame))
			assert.Equal(t, mapSame, same)
		})
	}
}

func openStore(t *testing.T) *state.Store {
	d, err := state.Open(t.TempDir())
	require.NoError(t, err)
	t.Cleanup(func() { d.Close() })
	x, err := d.OpenStore()
	require.NoError(t, err)
	t.Cleanup(func() { x.Close() })
	return x
}

// Mapping a row allocates its packed fields and what the mapping makes
// (here the id's string), nothing more: a catch-up maps every change, and
// the target of the mapping error's check was made for each row, an error
// or not.
func TestMappingARowAllocatesOnlyItsFields(t *testing.T) {
	rel := &row.Relation{Table: row.Table{Schema: "public", Name: "companies"}, Columns: []row.Column{{Name: "id", TypeOID: pgtype.TextOID}}}
	x := &encoder{compile: func(*row.Relation) (Mapper, error) { return keyMapper{keys: []string{"name", "plan", "seats"}}, nil }}
	values := []row.Value{{Text: []byte("42")}, {Text: []byte("Globex")}, {Text: []byte("pro")}, {Null: true}}
	_, _, _, _, _, err := x.mapRow(rel, values) // compiles the mapping, makes the room
	require.NoError(t, err)
	allocs := testing.AllocsPerRun(100, func() {
		_, _, _, md, mapErr, err := x.mapRow(rel, values)
		if err != nil || mapErr != nil || len(md) == 0 {
			t.Fatal("not mapped", err, mapErr)
		}
	})
	assert.Equal(t, 2.0, allocs, "the id's string and the packed fields")
}
