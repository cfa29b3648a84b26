package state

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/cespare/xxhash/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/userpilot"
)

// pairs is Profiles as a caller with metadata of its own form gives them:
// each company's keys in a fixed order (not a map's), stopping when yield
// says so.
type pairs []prof

type prof struct {
	id  string
	kvs [][2]string // key, value's JSON
}

func (ps pairs) Len() int               { return len(ps) }
func (ps pairs) CompanyID(i int) string { return ps[i].id }
func (ps pairs) Metadata(i int, yield func(string, json.RawMessage) bool) {
	for _, kv := range ps[i].kvs {
		if !yield(kv[0], json.RawMessage(kv[1])) {
			return
		}
	}
}

func (ps pairs) companies() []userpilot.Company {
	cos := make([]userpilot.Company, len(ps))
	for i, p := range ps {
		cos[i] = userpilot.Company{CompanyID: p.id, Metadata: userpilot.Metadata{}}
		for _, kv := range p.kvs {
			cos[i].Metadata[kv[0]] = json.RawMessage(kv[1])
		}
	}
	return cos
}

func profile(id string, kv ...string) prof {
	p := prof{id: id}
	for i := 0; i < len(kv); i += 2 {
		p.kvs = append(p.kvs, [2]string{kv[i], kv[i+1]})
	}
	return p
}

// records is every record of the index, each as its version and its keys'
// fingerprints in order (the order of a record's keys means nothing: a
// map's records have them in the map's order).
func records(t *testing.T, x *Store) map[string]string {
	out := map[string]string{}
	eachRecord(t, x, func(k string, v []byte) {
		var chunks []string
		for i := 1; i+12 <= len(v); i += 12 {
			chunks = append(chunks, string(v[i:i+12]))
		}
		slices.Sort(chunks)
		out[k] = string(v[:min(1, len(v))]) + strings.Join(chunks, "") + string(v[1+(max(len(v)-1, 0)/12)*12:])
	})
	return out
}

// newRecord is the record a profile of these keys makes in an index that
// knew nothing of the company, computed here from the format: the key's
// fingerprint, then xxHash64 of the value.
func newRecord(kv ...string) []byte {
	rec := []byte{recordValue}
	for i := 0; i < len(kv); i += 2 {
		kh := sha256.Sum256([]byte(kv[i]))
		rec = binary.BigEndian.AppendUint32(rec, binary.BigEndian.Uint32(kh[:4]))
		rec = binary.BigEndian.AppendUint64(rec, xxhash.Sum64([]byte(kv[i+1])))
	}
	return rec
}

// xxhRecord is a record of version 2, as releases before wrote them:
// xxHash64 of key, NUL, value.
func xxhRecord(kv ...string) []byte {
	rec := []byte{recordXXH}
	for i := 0; i < len(kv); i += 2 {
		kh := sha256.Sum256([]byte(kv[i]))
		rec = binary.BigEndian.AppendUint32(rec, binary.BigEndian.Uint32(kh[:4]))
		rec = binary.BigEndian.AppendUint64(rec, xxhash.Sum64(append(append([]byte(kv[i]), 0), kv[i+1]...)))
	}
	return rec
}

// TestProfilesAreReadAsTheirMaps: the index records and answers for
// Profiles exactly what it does for the same companies as maps
// (userpilot.Company): the same records, byte for byte but for the order
// of their keys, and the same answers, through keys left out (an unchanged
// TOAST value), nulls, records of the first fingerprints, an unreadable
// record, one company twice, and more companies than one write takes.
func TestProfilesAreReadAsTheirMaps(t *testing.T) {
	many := pairs{}
	for i := range recordBatch + 300 {
		many = append(many, profile(fmt.Sprint((i*7919)%(recordBatch+300)), "plan", `"pro"`, "seats", fmt.Sprint(i)))
	}
	shaRecord := func(kv ...string) []byte {
		rec := []byte{recordSHA256}
		for i := 0; i < len(kv); i += 2 {
			kh, vh := fingerprint(recordSHA256, kv[i], json.RawMessage(kv[i+1]))
			rec = binary.BigEndian.AppendUint32(rec, kh)
			rec = binary.BigEndian.AppendUint64(rec, vh)
		}
		return rec
	}
	tests := []struct {
		name    string
		stored  map[string][]byte // records there before
		record  []pairs           // recorded in turn
		ask     pairs
		want    []bool
		wantRec map[string][]byte // records to be exactly these bytes
	}{
		{
			name:    "a new company",
			record:  []pairs{{profile("1", "name", `"Globex"`, "seats", "42", "trial", "null")}},
			ask:     pairs{profile("1", "seats", "42", "name", `"Globex"`, "trial", "null"), profile("1", "trial", "false"), profile("2", "name", `"Globex"`)},
			want:    []bool{true, false, false},
			wantRec: map[string][]byte{"1": newRecord("name", `"Globex"`, "seats", "42", "trial", "null")},
		},
		{
			name: "keys left out keep their values",
			record: []pairs{
				{profile("1", "name", `"Globex"`, "notes", `"long"`, "seats", "1")},
				{profile("1", "seats", "2")}, // name and notes unchanged (TOAST)
			},
			ask:     pairs{profile("1", "name", `"Globex"`, "notes", `"long"`, "seats", "2"), profile("1", "seats", "1"), profile("1", "notes", `"long"`)},
			want:    []bool{true, false, true},
			wantRec: map[string][]byte{"1": newRecord("name", `"Globex"`, "notes", `"long"`, "seats", "2")},
		},
		{
			name:   "nulls",
			record: []pairs{{profile("1", "plan", `"pro"`)}, {profile("1", "plan", "null", "deleted", "null")}},
			ask:    pairs{profile("1", "plan", "null"), profile("1", "plan", `"pro"`), profile("1", "deleted", "null", "plan", "null")},
			want:   []bool{true, false, true},
		},
		{
			name:    "a record of the first fingerprints keeps them where keys are left out",
			stored:  map[string][]byte{"1": shaRecord("plan", `"pro"`, "seats", "3"), "2": shaRecord("plan", `"pro"`)},
			record:  []pairs{{profile("1", "plan", `"free"`), profile("2", "plan", `"free"`)}},
			ask:     pairs{profile("1", "plan", `"free"`, "seats", "3"), profile("2", "plan", `"free"`), profile("1", "plan", `"pro"`)},
			want:    []bool{true, true, false},
			wantRec: map[string][]byte{"1": shaRecord("seats", "3", "plan", `"free"`), "2": newRecord("plan", `"free"`)},
		},
		{
			name:    "a record of version 2 keeps its fingerprints where keys are left out",
			stored:  map[string][]byte{"1": xxhRecord("plan", `"pro"`, "seats", "3"), "2": xxhRecord("plan", `"pro"`)},
			record:  []pairs{{profile("1", "plan", `"free"`), profile("2", "plan", `"free"`)}},
			ask:     pairs{profile("1", "plan", `"free"`, "seats", "3"), profile("2", "plan", `"free"`), profile("1", "plan", `"pro"`), profile("1", "seats", "4")},
			want:    []bool{true, true, false, false},
			wantRec: map[string][]byte{"1": xxhRecord("seats", "3", "plan", `"free"`), "2": newRecord("plan", `"free"`)},
		},
		{
			name:    "an unreadable record holds nothing and is written anew",
			stored:  map[string][]byte{"1": {9, 1, 2}, "2": {recordXXH, 1}},
			record:  []pairs{{profile("2", "plan", `"pro"`)}},
			ask:     pairs{profile("1", "plan", `"pro"`), profile("2", "plan", `"pro"`)},
			want:    []bool{false, true},
			wantRec: map[string][]byte{"1": {9, 1, 2}, "2": newRecord("plan", `"pro"`)},
		},
		{
			name:    "one company twice in one call: the later wins",
			record:  []pairs{{profile("1", "plan", `"pro"`), profile("0", "x", "1"), profile("1", "plan", `"free"`)}},
			ask:     pairs{profile("1", "plan", `"free"`), profile("1", "plan", `"pro"`)},
			want:    []bool{true, false},
			wantRec: map[string][]byte{"1": newRecord("plan", `"free"`)},
		},
		{
			name:   "more companies than one write takes, out of order",
			record: []pairs{many},
			ask:    append(pairs{profile("5", "plan", `"pro"`)}, many...),
			want:   slices.Repeat([]bool{true}, 1+len(many)),
		},
		{
			name:   "no metadata",
			record: []pairs{{profile("1")}},
			ask:    pairs{profile("1"), profile("1", "plan", `"pro"`), profile("2")},
			want:   []bool{true, false, false},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			seqs, maps := openStore(t), openStore(t)
			for _, x := range []*Store{seqs, maps} {
				for id, rec := range tt.stored {
					putRecord(t, x, id, rec)
				}
			}
			for _, r := range tt.record {
				require.NoError(t, seqs.RecordProfiles(r))
				require.NoError(t, maps.Record(r.companies()))
			}
			assert.Equal(t, records(t, maps), records(t, seqs), "the same records")
			for id, want := range tt.wantRec {
				assert.Equal(t, want, getRecord(t, seqs, id), "company %s's record, byte for byte", id)
			}
			same, mapSame := make([]bool, len(tt.ask)), make([]bool, len(tt.ask))
			require.NoError(t, seqs.UnchangedProfiles(tt.ask, same, nil))
			require.NoError(t, maps.UnchangedEach(tt.ask.companies(), mapSame))
			assert.Equal(t, tt.want, same)
			assert.Equal(t, mapSame, same, "the answers the maps get")
		})
	}
}

// absentPairs are pairs whose look-up found no record of the companies
// listed (KnownAbsent).
type absentPairs struct {
	pairs
	absent map[string]bool
}

func (ps absentPairs) Absent(i int) bool { return ps.absent[ps.pairs[i].id] }

// A look-up says which companies the index holds nothing of, and a write
// told so looks no older record up: the keys an older record held and the
// write does not send are not kept. (That is only ever told where the
// look-up found nothing, and it costs no update where wrong: see
// KnownAbsent.)
func TestAWriteTrustsALookUpThatFoundNothing(t *testing.T) {
	x := openStore(t)
	require.NoError(t, x.RecordProfiles(pairs{{"1", [][2]string{{"plan", `"pro"`}, {"seats", `3`}}}}))

	ask := pairs{{"1", [][2]string{{"plan", `"pro"`}}}, {"2", [][2]string{{"plan", `"pro"`}}}}
	same, absent := make([]bool, 2), make([]bool, 2)
	require.NoError(t, x.UnchangedProfiles(ask, same, absent))
	assert.Equal(t, []bool{true, false}, same)
	assert.Equal(t, []bool{false, true}, absent, "company 2 was never recorded")

	for _, tt := range []struct {
		name      string
		absent    bool
		seatsKept bool
	}{
		{"looked up: the older record's seats are kept", false, true},
		{"told absent: nothing is looked up, nothing kept", true, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			x := openStore(t)
			require.NoError(t, x.RecordProfiles(pairs{{"1", [][2]string{{"plan", `"pro"`}, {"seats", `3`}}}}))
			write := absentPairs{pairs{{"1", [][2]string{{"plan", `"free"`}}}}, map[string]bool{"1": tt.absent}}
			require.NoError(t, x.RecordProfiles(write))
			kept, err := x.Unchanged("1", userpilot.Metadata{"seats": json.RawMessage(`3`)})
			require.NoError(t, err)
			assert.Equal(t, tt.seatsKept, kept)
			plan, err := x.Unchanged("1", userpilot.Metadata{"plan": json.RawMessage(`"free"`)})
			require.NoError(t, err)
			assert.True(t, plan, "the value written is held either way")
		})
	}
}
