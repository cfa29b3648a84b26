package replication

import (
	"bufio"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pglogrepl"
	"github.com/pgpilot/pgpilot/row"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// seed reads a two-message entry of the fuzz seed corpus.
func seed(t *testing.T, name string) (relation, row []byte) {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata", "fuzz", "FuzzDecodeToPayload", name))
	require.NoError(t, err)
	defer f.Close()
	var msgs [][]byte
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if l, ok := strings.CutPrefix(sc.Text(), "[]byte("); ok {
			s, err := strconv.Unquote(strings.TrimSuffix(l, ")"))
			require.NoError(t, err)
			msgs = append(msgs, []byte(s))
		}
	}
	require.Len(t, msgs, 2)
	return msgs[0], msgs[1]
}

// TestDecodeMessageReadsEveryRowKind decodes the seed corpus's well-formed
// messages as the stream does, and refuses the malformed ones with an error.
func TestDecodeMessageReadsEveryRowKind(t *testing.T) {
	tests := []struct {
		seed        string
		op          row.Op
		id, oldID   string // the first column of Values and Old; "" for none
		values, old int
	}{
		{"insert", row.Insert, "42", "", 9, 0},
		{"update", row.Update, "43", "", 9, 0},
		{"update_key_changed", row.Update, "105", "42", 9, 9},
		{"update_full", row.Update, "43", "42", 9, 9},
		{"delete_key", row.Delete, "42", "", 9, 0},
		{"delete_full", row.Delete, "42", "", 9, 0},
	}
	for _, tt := range tests {
		t.Run(tt.seed, func(t *testing.T) {
			relMsg, rowMsg := seed(t, tt.seed)
			m, err := decodeMessage(relMsg)
			require.NoError(t, err)
			rm, ok := m.(*pglogrepl.RelationMessage)
			require.True(t, ok)
			rel, err := decodeRelation(t.Context(), rm, IdentityTypes{})
			require.NoError(t, err)
			assert.Equal(t, row.Table{Schema: "public", Name: "companies"}, rel.Table)
			require.Len(t, rel.Columns, 9)
			assert.Equal(t, "monthly_spend", rel.Columns[4].Name)

			m, err = decodeMessage(rowMsg)
			require.NoError(t, err)
			r, ok := rowOf(m)
			require.True(t, ok)
			ch := r.change(rel)
			assert.Equal(t, tt.op, ch.Op)
			require.Len(t, ch.Values, tt.values)
			assert.Equal(t, tt.id, string(ch.Values[0].Text))
			require.Len(t, ch.Old, tt.old)
			if tt.old > 0 {
				assert.Equal(t, tt.oldID, string(ch.Old[0].Text))
			}
		})
	}
	for _, name := range []string{"truncated_tuple", "length_past_end"} {
		_, rowMsg := seed(t, name)
		_, err := decodeMessage(rowMsg)
		assert.ErrorContains(t, err, "malformed", name)
	}
	_, err := decodeMessage([]byte("T\xff\xff\xff\xff\x00\x00\x00\x00\x01"))
	assert.ErrorContains(t, err, "claims 4294967295 relations")
}
