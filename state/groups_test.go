package state

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"

	"github.com/pgpilot/pgpilot/userpilot"
)

// checkGroups asserts the groups' form: each under its first id, ids
// ascending within and across groups, none empty, none past
// groupMaxBytes unless it holds one company.
func checkGroups(t *testing.T, x *Store) {
	t.Helper()
	var last []byte
	require.NoError(t, x.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(groupsBucket).ForEach(func(k, v []byte) error {
			es, err := decodeGroup(nil, v)
			require.NoError(t, err)
			require.NotEmpty(t, es, "group %q is empty", k)
			assert.Equal(t, string(k), string(es[0].id), "a group is kept under its first id")
			assert.True(t, len(v) <= groupMaxBytes || len(es) == 1, "group %q: %d bytes, %d companies", k, len(v), len(es))
			for _, e := range es {
				require.True(t, last == nil || bytes.Compare(last, e.id) < 0, "%q after %q", e.id, last)
				last = bytes.Clone(e.id)
			}
			return nil
		})
	}))
}

// The index's groups against a model of one record per company, through
// random writes (full, partial, of one company or thousands, in any
// order) and deletions: every company's record is the model's, byte for
// byte, and the groups keep their form as they split and shrink.
func TestTheIndexsGroupsHoldWhatARecordPerCompanyWould(t *testing.T) {
	rng := rand.New(rand.NewPCG(14, 6))
	x := openStore(t)
	keys := []string{"plan", "seats", "name", "trial", "region", "spend", "created"}
	model := map[string]map[string]json.RawMessage{} // each company's values, as Userpilot holds them, since its last deletion
	// A record as the model makes it: its keys' fingerprints, in key order
	// (a record's order means nothing).
	want := func(id string) []string {
		var fps []string
		for k, v := range model[id] {
			kh, vh := fingerprint(recordValue, k, v)
			fps = append(fps, string(binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint32(nil, kh), vh)))
		}
		slices.Sort(fps)
		return fps
	}
	got := func(id string) []string {
		rec := getRecord(t, x, id)
		require.True(t, readable(rec), "company %s: %x", id, rec)
		var fps []string
		for i := 1; i+12 <= len(rec); i += 12 {
			fps = append(fps, string(rec[i:i+12]))
		}
		slices.Sort(fps)
		return fps
	}
	ids := make([]string, 3000)
	for i := range ids {
		ids[i] = fmt.Sprint(rng.IntN(1_000_000)) // neighbours in string order, as ids are
	}
	for round := range 40 {
		n := []int{1, 2, 50, 400, 2500}[rng.IntN(5)]
		if rng.IntN(5) == 0 {
			var gone []string
			for range n {
				id := ids[rng.IntN(len(ids))]
				gone = append(gone, id)
				delete(model, id)
			}
			require.NoError(t, x.Forget(gone), "round %d", round)
			continue
		}
		var cos []userpilot.Company
		for range n {
			md := userpilot.Metadata{}
			for _, k := range keys[:1+rng.IntN(len(keys))] { // some leave keys out
				md[k] = json.RawMessage(fmt.Sprintf(`"%s-%d"`, k, rng.IntN(3)))
			}
			co := userpilot.Company{CompanyID: ids[rng.IntN(len(ids))], Metadata: md}
			cos = append(cos, co)
			if model[co.CompanyID] == nil {
				model[co.CompanyID] = map[string]json.RawMessage{}
			}
			maps.Copy(model[co.CompanyID], md)
		}
		require.NoError(t, x.Record(cos), "round %d", round)
		checkGroups(t, x)
	}
	checkGroups(t, x)
	held := map[string]bool{}
	eachRecord(t, x, func(id string, _ []byte) { held[id] = true })
	for _, id := range ids {
		if len(model[id]) == 0 {
			assert.False(t, held[id], "company %s was deleted", id)
			continue
		}
		assert.Equal(t, want(id), got(id), "company %s", id)
	}
	for id := range held {
		assert.NotEmpty(t, model[id], "company %s: a record nobody wrote", id)
	}
}

// A store written before the groups (one key per company in "delivered")
// is moved into groups when it is opened, in writes of migrateBatch: its
// answers are the same, and nothing is left in the old bucket.
func TestAStoreOfOneRecordPerCompanyIsMovedIntoGroups(t *testing.T) {
	d, err := Open(t.TempDir())
	require.NoError(t, err)
	t.Cleanup(func() { d.Close() })
	x, err := d.OpenStore()
	require.NoError(t, err)
	n := migrateBatch + migrateBatch/2 // two writes
	ids := make([]string, n)
	var cos []userpilot.Company
	for i := range ids {
		ids[i] = fmt.Sprint(i)
		cos = append(cos, userpilot.Company{CompanyID: ids[i], Metadata: userpilot.Metadata{"plan": json.RawMessage(`"pro"`), "seats": json.RawMessage(fmt.Sprint(i))}})
	}
	// The records as groups make them, laid out as a key each.
	require.NoError(t, x.Record(cos))
	recs := map[string][]byte{}
	eachRecord(t, x, func(id string, rec []byte) { recs[id] = bytes.Clone(rec) })
	require.Len(t, recs, n)
	require.NoError(t, x.db.Update(func(tx *bolt.Tx) error {
		if err := tx.DeleteBucket(groupsBucket); err != nil {
			return err
		}
		if _, err := tx.CreateBucket(groupsBucket); err != nil {
			return err
		}
		old, err := tx.CreateBucket(deliveredBucket)
		if err != nil {
			return err
		}
		for id, rec := range recs {
			if err := old.Put([]byte(id), rec); err != nil {
				return err
			}
		}
		return nil
	}))
	// One company was written anew after a move was cut short: the
	// group's record is the newer.
	newer := userpilot.Company{CompanyID: "7", Metadata: userpilot.Metadata{"plan": json.RawMessage(`"free"`)}}
	putRecord(t, x, "7", recordOf(t, newer))
	require.NoError(t, x.Close())

	x, err = d.OpenStore()
	require.NoError(t, err)
	t.Cleanup(func() { x.Close() })
	require.NoError(t, x.db.View(func(tx *bolt.Tx) error {
		assert.Nil(t, tx.Bucket(deliveredBucket), "the old bucket is gone")
		return nil
	}))
	checkGroups(t, x)
	got := map[string][]byte{}
	eachRecord(t, x, func(id string, rec []byte) { got[id] = bytes.Clone(rec) })
	recs["7"] = recordOf(t, newer)
	assert.Equal(t, recs, got)
	same := make([]bool, len(cos))
	require.NoError(t, x.UnchangedEach(cos, same))
	for i, s := range same {
		assert.Equal(t, cos[i].CompanyID != "7", s, "company %s", cos[i].CompanyID)
	}
}

// recordOf is the record a store makes of co alone.
func recordOf(t *testing.T, co userpilot.Company) []byte {
	y := openStore(t)
	require.NoError(t, y.Record([]userpilot.Company{co}))
	return getRecord(t, y, co.CompanyID)
}

// A group that cannot be read holds nothing: its companies are sent, and
// the next write of the group replaces it.
func TestAnUnreadableGroupIsReadAsHoldingNothing(t *testing.T) {
	x := openStore(t)
	co := userpilot.Company{CompanyID: "5", Metadata: userpilot.Metadata{"plan": json.RawMessage(`"pro"`)}}
	require.NoError(t, x.Record([]userpilot.Company{co}))
	require.NoError(t, x.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(groupsBucket).Put([]byte("5"), []byte{groupVersion, 0xff})
	}))
	same, err := x.Unchanged("5", co.Metadata)
	require.NoError(t, err)
	assert.False(t, same)
	require.NoError(t, x.Record([]userpilot.Company{co}))
	same, err = x.Unchanged("5", co.Metadata)
	require.NoError(t, err)
	assert.True(t, same)
	checkGroups(t, x)
	assert.True(t, slices.Equal(recordOf(t, co), getRecord(t, x, "5")))
}

// Companies recorded in order fill the index's pages: split in half, as
// bbolt splits by default, a page stayed half empty, and the index was
// twice the pages to write at every commit and to map. (Groups of up to 1
// kB fill a 4 kB page to about three quarters: 75% measured, 52% split in
// half.)
func TestCompaniesRecordedInOrderFillTheIndexsPages(t *testing.T) {
	x := openStore(t)
	const n = 20_000
	batch := make([]userpilot.Company, 0, 1000)
	for i := 1; i <= n; i++ {
		batch = append(batch, userpilot.Company{CompanyID: fmt.Sprint(i), Metadata: userpilot.Metadata{
			"name": json.RawMessage(fmt.Sprintf(`"Company %d"`, i)), "plan": json.RawMessage(`"pro"`),
			"seats": json.RawMessage(fmt.Sprint(i % 500)), "trial": json.RawMessage(`true`)}})
		if len(batch) == cap(batch) {
			require.NoError(t, x.Record(batch))
			batch = batch[:0]
		}
	}
	var leafBytes, used int
	require.NoError(t, x.db.View(func(tx *bolt.Tx) error {
		st := tx.Bucket(groupsBucket).Stats()
		leafBytes, used = st.LeafAlloc, st.LeafInuse
		return nil
	}))
	assert.Greater(t, float64(used)/float64(leafBytes), 0.7, "%d bytes of leaf pages hold %d", leafBytes, used)
}

// find goes on from where the last id was (ids come in ascending order),
// and is right for an id asked out of order all the same.
func TestFindInAGroupIsRightInAnyOrder(t *testing.T) {
	r := groupReader{loaded: true, at: -1}
	for _, id := range []string{"b", "d", "f", "h"} {
		r.entries = append(r.entries, groupEntry{id: []byte(id), rec: []byte{recordXXH}})
	}
	for _, tt := range []struct {
		id   string
		want int
		ok   bool
	}{
		{"a", 0, false}, {"b", 0, true}, {"c", 1, false}, {"d", 1, true}, {"g", 3, false}, {"h", 3, true}, {"i", 4, false},
		{"b", 0, true}, {"e", 2, false}, {"a", 0, false}, {"h", 3, true}, {"f", 2, true}, {"d", 1, true},
	} {
		i, ok := r.find([]byte(tt.id))
		assert.Equal(t, tt.want, i, tt.id)
		assert.Equal(t, tt.ok, ok, tt.id)
	}
}
