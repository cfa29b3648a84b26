package delivery

import (
	"encoding/json"
	"maps"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/userpilot"
)

func md(kv ...string) userpilot.Metadata {
	m := userpilot.Metadata{}
	for i := 0; i < len(kv); i += 2 {
		m[kv[i]] = json.RawMessage(kv[i+1])
	}
	return m
}

// manyKeys are n key names, k0 to k(n-1).
func manyKeys(n int) []string {
	ks := make([]string, n)
	for i := range ks {
		ks[i] = "k" + strconv.Itoa(i)
	}
	return ks
}

func TestPackedFieldsMergeKeyByKeyNewerWinning(t *testing.T) {
	tests := []struct {
		name          string
		older, newer  userpilot.Metadata
		want          userpilot.Metadata
		newKeysBefore []string // numbered before the merge, to vary the order
	}{
		{"empty", md(), md(), md(), nil},
		{"into nothing", md(), md("plan", `"pro"`), md("plan", `"pro"`), nil},
		{"nothing new", md("plan", `"pro"`), md(), md("plan", `"pro"`), nil},
		{"newer wins", md("plan", `"pro"`, "seats", "3"), md("plan", `"free"`), md("plan", `"free"`, "seats", "3"), nil},
		{"a key left out keeps its value", md("a", "1", "b", "2", "c", "3"), md("b", "20"), md("a", "1", "b", "20", "c", "3"), nil},
		{"keys numbered out of order", md("z", "1", "a", `"x"`), md("m", "null", "a", `"y"`), md("z", "1", "a", `"y"`, "m", "null"), []string{"m", "z", "a"}},
		{"long values", md("notes", `"`+string(make([]byte, 300))+`"`), md("n", "1"), md("notes", `"`+string(make([]byte, 300))+`"`, "n", "1"), nil},
		{"key numbers past one byte, short values and long", md("k150", "1", "k5", `"`+string(make([]byte, 200))+`"`), md("k199", "2", "k5", "3"),
			md("k150", "1", "k5", "3", "k199", "2"), manyKeys(200)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var keys keyTable
			for _, k := range tt.newKeysBefore {
				keys.number(k)
			}
			packed := keys.pack(tt.older)
			assert.Equal(t, tt.older, keys.unpack(packed), "packs and unpacks to the same")
			merged := keys.over(packed, tt.newer)
			assert.Equal(t, tt.want, keys.unpack(merged))
			assert.Equal(t, tt.older, keys.unpack(packed), "the older fields are not changed in place")
			assert.Equal(t, tt.want, keys.unpack(mergeFields(packed, keys.pack(tt.newer))))
		})
	}
}

// TestPackFieldsIsPackOfTheMap: fields given by position (a mapped row:
// in any order of numbers, a key twice) pack to what the map they would
// make packs to: sorted by number, the last of a key kept.
func TestPackFieldsIsPackOfTheMap(t *testing.T) {
	tests := []struct {
		name string
		fs   []field
		want userpilot.Metadata
	}{
		{"none", nil, md()},
		{"in order", []field{{0, []byte(`"a"`)}, {1, []byte("1")}, {2, []byte("null")}}, md("k0", `"a"`, "k1", "1", "k2", "null")},
		{"out of order", []field{{2, []byte("null")}, {0, []byte(`"a"`)}, {1, []byte("1")}}, md("k0", `"a"`, "k1", "1", "k2", "null")},
		{"a key twice: the last", []field{{1, []byte("1")}, {0, []byte(`"a"`)}, {1, []byte("2")}, {1, []byte("3")}}, md("k0", `"a"`, "k1", "3")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var keys keyTable
			for _, k := range []string{"k0", "k1", "k2"} {
				keys.number(k)
			}
			packed := packFields(tt.fs)
			assert.Equal(t, tt.want, keys.unpack(packed))
			assert.Equal(t, keys.pack(tt.want), packed, "the bytes the map packs to")
		})
	}
}

// A row whose keys are numbered in the mapping's order is packed as it
// comes: to the bytes packFields makes of it.
func TestARowInOrderPacksAsPackFieldsWould(t *testing.T) {
	long := json.RawMessage(`"` + string(make([]byte, 200)) + `"`)
	for _, tt := range []struct {
		name string
		nums []uint32
		vals []json.RawMessage
	}{
		{"none", nil, nil},
		{"all left out", []uint32{0, 1}, []json.RawMessage{nil, nil}},
		{"some", []uint32{0, 1, 2, 5}, []json.RawMessage{[]byte(`"a"`), nil, []byte("null"), []byte("12.5")}},
		{"long values, key numbers past a byte", []uint32{3, 127, 128, 300}, []json.RawMessage{long, []byte("1"), long, []byte("true")}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var fs []field
			for i, v := range tt.vals {
				if v != nil {
					fs = append(fs, field{tt.nums[i], v})
				}
			}
			assert.Equal(t, packFields(fs), packInOrder(tt.nums, tt.vals))
		})
	}
}

// Merged fields are what merging the maps packs to, byte for byte, and
// take no more room than they hold (an entry's size counts its room).
func TestMergedFieldsAreTheMergedMapPacked(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	var keys keyTable
	names := manyKeys(150)
	for _, k := range names {
		keys.number(k)
	}
	random := func() userpilot.Metadata {
		m := userpilot.Metadata{}
		for range rng.IntN(8) {
			v := json.RawMessage(strconv.Itoa(rng.IntN(1000)))
			if rng.IntN(4) == 0 {
				v = json.RawMessage(`"` + strings.Repeat("x", rng.IntN(300)) + `"`)
			}
			m[names[rng.IntN(len(names))]] = v
		}
		return m
	}
	for range 2000 {
		older, newer := random(), random()
		want := userpilot.Metadata{}
		maps.Copy(want, older)
		maps.Copy(want, newer)
		got := mergeFields(keys.pack(older), keys.pack(newer))
		require.Equal(t, want, keys.unpack(got))
		if len(want) > 0 {
			require.Equal(t, keys.pack(want), got)
			require.Equal(t, len(got), cap(got), "no room beyond what it holds")
		}
	}
}

// A key number or a value length of one byte is written without the
// varint loop: at the edge of a byte (127, 128), packed fields still read
// back as what was packed, in a row packed as it comes and in a merge.
func TestFieldsAtTheEdgeOfAByteReadBack(t *testing.T) {
	var keys keyTable
	names := manyKeys(130)
	for _, k := range names {
		keys.number(k)
	}
	str := func(n int) string { return `"` + strings.Repeat("x", n-2) + `"` } // n bytes of JSON
	want := md("k126", str(127), "k127", str(128), "k128", str(129), "k129", str(128))
	assert.Equal(t, want, keys.unpack(keys.pack(want)))
	nums := []uint32{126, 127, 128, 129}
	vals := []json.RawMessage{json.RawMessage(str(127)), json.RawMessage(str(128)), json.RawMessage(str(129)), json.RawMessage(str(128))}
	assert.Equal(t, want, keys.unpack(packInOrder(nums, vals)))
	older := md("k127", str(129), "k0", str(128))
	merged := mergeFields(keys.pack(older), keys.pack(want))
	assert.Equal(t, md("k0", str(128), "k126", str(127), "k127", str(128), "k128", str(129), "k129", str(128)), keys.unpack(merged))
}
