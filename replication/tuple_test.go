package replication

import (
	"encoding/binary"
	"fmt"
	"testing"

	"github.com/jackc/pglogrepl"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// col is one column of a test tuple: kind 'n', 'u', 't' or 'b', and text.
type col struct {
	kind byte
	text string
}

func tuple(cols ...col) []byte {
	b := binary.BigEndian.AppendUint16(nil, uint16(len(cols)))
	for _, c := range cols {
		b = append(b, c.kind)
		if c.kind == 't' || c.kind == 'b' {
			b = binary.BigEndian.AppendUint32(b, uint32(len(c.text)))
			b = append(b, c.text...)
		}
	}
	return b
}

func msg(typ byte, relID uint32, parts ...[]byte) []byte {
	b := binary.BigEndian.AppendUint32([]byte{typ}, relID)
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

var (
	newRow = tuple(col{'t', "42"}, col{'n', ""}, col{'u', ""}, col{'t', ""}, col{'t', "Ünïcødé 🚀"}, col{'b', "\x00\x01"})
	oldKey = tuple(col{'t', "41"})
	oldRow = tuple(col{'t', "41"}, col{'t', "old"}, col{'n', ""}, col{'n', ""}, col{'n', ""}, col{'n', ""})
	// wantNew is newRow as the stream hands it on: an empty text is nil.
	wantNew = []Value{{Text: []byte("42")}, {Null: true}, {Unchanged: true}, {}, {Text: []byte("Ünïcødé 🚀")}, {Text: []byte{0, 1}}}
)

func TestRowMessagesDecodeTheTupleTheStreamKeeps(t *testing.T) {
	for _, tc := range []struct {
		name string
		data []byte
		op   Op
		want []Value
	}{
		{"insert", msg('I', 7, []byte{'N'}, newRow), Insert, wantNew},
		{"update", msg('U', 7, []byte{'N'}, newRow), Update, wantNew},
		{"update with the old key", msg('U', 7, []byte{'K'}, oldKey, []byte{'N'}, newRow), Update, wantNew},
		{"update with the old row", msg('U', 7, []byte{'O'}, oldRow, []byte{'N'}, newRow), Update, wantNew},
		{"delete by key", msg('D', 7, []byte{'K'}, oldKey), Delete, []Value{{Text: []byte("41")}}},
		{"delete of a full row", msg('D', 7, []byte{'O'}, oldRow), Delete,
			[]Value{{Text: []byte("41")}, {Text: []byte("old")}, {Null: true}, {Null: true}, {Null: true}, {Null: true}}},
		{"no columns", msg('I', 7, []byte{'N'}, tuple()), Insert, []Value{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			op, relID, tup, err := rowMessage(tc.data)
			require.NoError(t, err)
			assert.Equal(t, tc.op, op)
			assert.Equal(t, uint32(7), relID)
			got, err := tupleValues(tup)
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
			if len(tc.want) > 0 { // pglogrepl refuses a message this short
				want, err := pglogreplValues(tc.data)
				require.NoError(t, err)
				assert.Equal(t, want, got, "same values as pglogrepl decodes")
			}
		})
	}
}

// pglogreplValues decodes data with pglogrepl, the way the stream did
// before it decoded rows itself.
func pglogreplValues(data []byte) (vals []Value, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("pglogrepl panicked: %v", r)
		}
	}()
	m, err := pglogrepl.Parse(data)
	if err != nil {
		return nil, err
	}
	var tup *pglogrepl.TupleData
	switch m := m.(type) {
	case *pglogrepl.InsertMessage:
		tup = m.Tuple
	case *pglogrepl.UpdateMessage:
		tup = m.NewTuple
	case *pglogrepl.DeleteMessage:
		tup = m.OldTuple
	}
	vals = make([]Value, len(tup.Columns))
	for i, c := range tup.Columns {
		switch c.DataType {
		case pglogrepl.TupleDataTypeNull:
			vals[i].Null = true
		case pglogrepl.TupleDataTypeToast:
			vals[i].Unchanged = true
		default:
			vals[i].Text = append([]byte(nil), c.Data...)
		}
	}
	return vals, nil
}

func TestDecodedValuesOwnTheirBytes(t *testing.T) {
	data := msg('I', 7, []byte{'N'}, tuple(col{'t', "abc"}, col{'t', "def"}))
	_, _, tup, err := rowMessage(data)
	require.NoError(t, err)
	vals, err := tupleValues(tup)
	require.NoError(t, err)

	for i := range data {
		data[i] = 'X' // the connection reuses its read buffer
	}
	_ = append(vals[0].Text, "ZZZ"...) // a consumer appending to one value
	assert.Equal(t, "abc", string(vals[0].Text))
	assert.Equal(t, "def", string(vals[1].Text), "appending to a value must not overwrite the next")
}

func TestARowCostsTwoAllocations(t *testing.T) {
	data := msg('U', 7, []byte{'K'}, oldKey, []byte{'N'}, newRow)
	allocs := testing.AllocsPerRun(100, func() {
		_, _, tup, err := rowMessage(data)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tupleValues(tup); err != nil {
			t.Fatal(err)
		}
	})
	assert.Equal(t, 2.0, allocs, "the Values and one buffer for every column's text")
}

func TestMalformedRowMessagesAreErrorsNotPanics(t *testing.T) {
	for _, tc := range []struct {
		name string
		data []byte
		want string
	}{
		{"too short", []byte{'I', 0, 0}, "too short"},
		{"insert without N", msg('I', 7, []byte{'K'}, oldKey), "want 'N'"},
		{"delete with N", msg('D', 7, []byte{'N'}, newRow), "want 'K' or 'O'"},
		{"update without a new tuple", msg('U', 7, []byte{'K'}, oldKey), "no new tuple"},
		{"update with garbage after the old tuple", msg('U', 7, []byte{'K'}, oldKey, []byte{'X'}, newRow), "want 'N'"},
		{"not a row message", msg('B', 7, []byte{'N'}, newRow), "not a row message"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, _, err := rowMessage(tc.data)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
	for _, tc := range []struct {
		name  string
		tuple []byte
		want  string
	}{
		{"empty", nil, "too short"},
		{"ends before a column", []byte{0, 2, 'n'}, "before column 2"},
		{"length cut short", []byte{0, 1, 't', 0, 0}, "inside the length"},
		{"length past the end", []byte{0, 1, 't', 0, 0, 0, 9, 'a'}, "claims 9 bytes"},
		{"unknown kind", []byte{0, 1, 'x'}, "unknown kind"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tupleValues(tc.tuple)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}

// FuzzRowMessage checks that any bytes decode to an error or to exactly
// what pglogrepl decodes, and never panic.
func FuzzRowMessage(f *testing.F) {
	f.Add(msg('I', 7, []byte{'N'}, newRow))
	f.Add(msg('U', 7, []byte{'O'}, oldRow, []byte{'N'}, newRow))
	f.Add(msg('D', 7, []byte{'K'}, oldKey))
	f.Fuzz(func(t *testing.T, data []byte) {
		_, _, tup, err := rowMessage(data)
		if err != nil {
			return
		}
		got, err := tupleValues(tup)
		if err != nil {
			return
		}
		want, err := pglogreplValues(data)
		if err != nil {
			if len(got) > 0 {
				t.Fatalf("decoded %d columns from a message pglogrepl refuses: %v", len(got), err)
			}
			return // pglogrepl refuses a message without columns as too short
		}
		if len(want) == 0 {
			want = []Value{}
		}
		assert.Equal(t, want, got)
	})
}
